"""TorchServe handler for `minilm`: text(s) -> L2-normalised 384-d sentence embeddings.

Request:  {"text": "..."} -> {"embedding": [384 floats]}
          {"texts": ["...", ...]} -> {"embeddings": [[...], ...]}   (at most max_items_per_request)
          a text/plain body is one text.
Tokenized with the `tokenizers` library from the tokenizer.json inside the .mar (truncated
at max_seq_len). Each TorchServe batch is split into runs of similar length (buckets.py),
each padded to its own longest sequence; model-config.yaml's handler settings
`length_buckets: false` turns that off, `bucket_overhead_tokens` tunes it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from buckets import DEFAULT_OVERHEAD_TOKENS, length_groups
from ort_base import Arrays, InputError, OrtHandler, parse_json, unicode_text
from tokenizers import Tokenizer

MAX_TEXT_CHARS = 100_000  # truncation keeps 256 tokens; don't tokenize megabytes to get them


class MiniLMHandler(OrtHandler):
    def setup(self, model_dir: Path) -> None:
        self.tokenizer = Tokenizer.from_file(str(model_dir / self.manifest["tokenizer"]))
        self.tokenizer.enable_truncation(max_length=int(self.manifest["max_seq_len"]))
        self.tokenizer.no_padding()

    def texts(self, body: Any) -> tuple[list[str], bool]:
        if isinstance(body, str) and not body.lstrip().startswith("{"):
            return [unicode_text(body, "text")], True  # text/plain: TorchServe already decoded it
        payload = parse_json(body)
        if not isinstance(payload, dict):
            raise InputError('body must be {"text": "..."} or {"texts": ["...", ...]}')
        unknown = sorted(set(payload) - {"text", "texts"})
        if unknown:
            raise InputError("unknown field; expected 'text' or 'texts'", unknown[0])
        if ("text" in payload) == ("texts" in payload):
            raise InputError("send exactly one of 'text' or 'texts'", "text")
        if "text" in payload:
            return [unicode_text(payload["text"], "text")], True
        texts = payload["texts"]
        if not isinstance(texts, list):
            raise InputError(f"must be a list of strings, got {type(texts).__name__}", "texts")
        if not texts:
            raise InputError("empty list: send at least one text", "texts")
        if len(texts) > self.max_items():
            raise InputError(f"{len(texts)} texts in one request; the limit is {self.max_items()}", "texts", 413)
        return [unicode_text(t, f"texts[{i}]") for i, t in enumerate(texts)], False

    def preprocess(self, body: Any) -> tuple[Arrays, bool]:
        texts, single = self.texts(body)
        for i, t in enumerate(texts):
            if len(t) > MAX_TEXT_CHARS:
                raise InputError(f"text of {len(t)} characters; the limit is {MAX_TEXT_CHARS}",
                                 "text" if single else f"texts[{i}]", 413)
        encodings = self.tokenizer.encode_batch(texts)
        return self.collate([{"input_ids": np.array([e.ids], dtype=np.int64),
                              "attention_mask": np.array([e.attention_mask], dtype=np.int64)} for e in encodings]), single

    def check_tensors(self, inputs: Arrays) -> None:
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        if ids.shape != mask.shape:
            raise InputError(f"input_ids {list(ids.shape)} and attention_mask {list(mask.shape)} differ in shape", "inputs")
        if ids.shape[1] > int(self.manifest["max_seq_len"]):
            raise InputError(f"sequence of {ids.shape[1]} tokens; the limit is {self.manifest['max_seq_len']}", "input_ids", 413)
        if ids.min() < 0 or ids.max() >= self.tokenizer.get_vocab_size():
            raise InputError(f"token ids must be in [0, {self.tokenizer.get_vocab_size()})", "input_ids")
        if not np.isin(mask, (0, 1)).all():
            raise InputError("attention_mask values must be 0 or 1", "attention_mask")

    def run(self, items: list[Arrays]) -> list[Arrays]:
        """One session.run per length bucket instead of one run padded to the longest item."""
        if not self.settings.get("length_buckets", True) or len(items) < 2:
            return super().run(items)
        shapes = [it["input_ids"].shape for it in items]
        overhead = float(self.settings.get("bucket_overhead_tokens", DEFAULT_OVERHEAD_TOKENS))
        results: list[Arrays] = [{}] * len(items)
        for group in length_groups([s[1] for s in shapes], [s[0] for s in shapes], overhead):
            for i, outputs in zip(group, super().run([items[i] for i in group])):
                results[i] = outputs
        return results

    def collate(self, items: list[Arrays]) -> Arrays:
        """Pad every item to the batch's longest sequence (0 = [PAD], mask 0), then stack."""
        length = max(it["input_ids"].shape[1] for it in items)
        return {name: np.concatenate([np.pad(it[name], ((0, 0), (0, length - it[name].shape[1]))) for it in items])
                for name in ("input_ids", "attention_mask")}

    def postprocess(self, outputs: Arrays, single: bool) -> dict[str, Any]:
        # float32 rows as they come out of the graph: http_reply writes each value in its
        # shortest float32 form (half the bytes and ~1/25 of the time of float64 lists).
        vectors = np.ascontiguousarray(outputs["sentence_embedding"], dtype=np.float32)
        return {"embedding": vectors[0]} if single else {"embeddings": vectors}

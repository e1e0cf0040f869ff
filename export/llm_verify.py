"""Verify a generative ONNX build against its Hugging Face source, the way every model is verified.

    parity  greedy continuations of ONNX Runtime GenAI equal `transformers`' greedy `generate`
            token for token (plain prompts and chat prompts rendered by the model's template);
            the tokenizer and the chat template give the same ids on both sides
    cost    a quantized build against the fp32 `transformers` model on held-out text (teacher
            forced): next-token top-1 agreement and mean KL divergence; and greedy-continuation
            agreement (the share of the fp32 continuation reproduced before the first difference)

Nothing here downloads: both sides read the same local folder.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maas.core.errors import ExportError

log = logging.getLogger(__name__)

PLAIN_PROMPTS = ("The", "Maintenance log, line 4:", "Once upon a time", "The pump reports vibration of")
CHAT_PROMPTS = (
    [{"role": "user", "content": "Which part wears first?"}],
    [{"role": "system", "content": "Answer in one line."}, {"role": "user", "content": "Is the bearing hot?"}],
    [{"role": "user", "content": "Write a maintenance note."}],
    [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}, {"role": "user", "content": "torque?"}],
)
# Held-out text for a quantized build's cost (teacher forced), not seen by any tokenizer trained here.
HELD_OUT = (
    "Every morning the operator walks the line, listens to each machine and writes down what changed since the day before.",
    "A bearing that runs hot for a week rarely fails on the first day; the trend matters more than any single reading.",
    "Replace the filter, check the seals, and record the torque before the belt is tightened again.",
    "The report lists three pumps, two valves and a gearbox whose noise rose after the last service.",
)
# A quantized build's budget, in mean KL divergence (nats) from fp32 over held-out next tokens: refused
# beyond it. Top-1 and greedy agreement are reported beside it, not budgeted: where the model is unsure
# (near-tied logits, as with random weights) the argmax flips on noise, and KL weighs a flip by how sure it was.
COST_BUDGET = {"int8": 0.02, "int4": 0.10, "fp16": 0.005}


class ParityError(ExportError):
    """The ONNX build does not generate what its source model generates."""

    show_type = False


@dataclass(frozen=True)
class Reference:
    """The source model in `transformers`, loaded once for every check."""

    tokenizer: Any
    model: Any

    @classmethod
    def load(cls, source: Path) -> "Reference":
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(source, local_files_only=True, dtype=torch.float32).eval()
        return cls(tokenizer, model)

    def prompt_ids(self, prompt: str | list[dict[str, str]]) -> list[int]:
        if isinstance(prompt, str):
            return list(self.tokenizer(prompt, add_special_tokens=True).input_ids)
        text = self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def greedy(self, ids: list[int], new_tokens: int) -> list[int]:
        import torch

        with torch.inference_mode():
            out = self.model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False, num_beams=1,
                                      temperature=None, top_p=None, top_k=None, repetition_penalty=1.0,
                                      pad_token_id=self.tokenizer.pad_token_id or 0)
        return _until_eos(out[0, len(ids):].tolist(), self.eos_ids)

    def logits(self, ids: list[int]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(torch.tensor([ids])).logits[0].float().numpy()

    @property
    def eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        eos = eos if eos is not None else self.tokenizer.eos_token_id
        return set(eos if isinstance(eos, list) else [eos] if eos is not None else [])


def _until_eos(tokens: list[int], eos: set[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1]
    return tokens


def og_greedy(model: Any, ids: list[int], new_tokens: int, eos: set[int]) -> list[int]:
    """ONNX Runtime GenAI's greedy continuation of `ids`."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + new_tokens, do_sample=False, repetition_penalty=1.0)
    generator = og.Generator(model, params)
    generator.append_tokens(np.asarray(ids, dtype=np.int32))
    out: list[int] = []
    while not generator.is_done() and len(out) < new_tokens:
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
    return _until_eos(out, eos)


def prompts_for(reference: Reference) -> list[str | list[dict[str, str]]]:
    """Four plain prompts, and four chat prompts where the model has a chat template (else plain ones)."""
    chat = list(CHAT_PROMPTS) if getattr(reference.tokenizer, "chat_template", None) else [
        "Replace the filter", "A bearing", "Every morning", "torque"]
    return [*PLAIN_PROMPTS, *chat]


def greedy_pairs(reference: Reference, model: Any, new_tokens: int):
    """(prompt, transformers' greedy tokens, the ONNX build's) for every verification prompt."""
    for prompt in prompts_for(reference):
        ids = reference.prompt_ids(prompt)
        yield prompt, reference.greedy(ids, new_tokens), og_greedy(model, ids, new_tokens, reference.eos_ids)


def tokenizer_parity(reference: Reference, model: Any) -> None:
    """The build's (an og.Model's) tokenizer and chat template give the ids `transformers` gives, on every prompt."""
    import onnxruntime_genai as og

    tokenizer = og.Tokenizer(model)
    for prompt in prompts_for(reference):
        if isinstance(prompt, str):
            text, expected = prompt, reference.prompt_ids(prompt)
        else:
            text = tokenizer.apply_chat_template(json.dumps(prompt), add_generation_prompt=True)
            rendered = reference.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            if text != rendered:
                raise ParityError(f"the chat template renders differently in ONNX Runtime GenAI: {text[:80]!r} vs "
                                  f"transformers' {rendered[:80]!r}")
            expected = reference.prompt_ids(prompt)
        got = [int(t) for t in tokenizer.encode(text)]
        if got != expected:
            raise ParityError(f"the tokenizer encodes {text[:40]!r} differently in ONNX Runtime GenAI: {got[:8]} vs "
                              f"transformers' {expected[:8]}")


def greedy_parity(reference: Reference, onnx_dir: Path, new_tokens: int = 16) -> dict[str, Any]:
    """Greedy tokens of the ONNX build vs `transformers`, per prompt; raises ParityError on any difference."""
    import onnxruntime_genai as og

    model = og.Model(str(onnx_dir))
    tokenizer_parity(reference, model)
    rows = []
    for prompt, expected, got in greedy_pairs(reference, model, new_tokens):
        rows.append({"prompt": prompt if isinstance(prompt, str) else "chat: " + prompt[-1]["content"],
                     "tokens_equal": got == expected, "generated": len(got)})
        log.info("parity %-32s %s", rows[-1]["prompt"][:32], "equal" if got == expected else f"DIFFERS {expected[:8]} vs {got[:8]}")
    bad = [r["prompt"] for r in rows if not r["tokens_equal"]]
    report = {"method": f"greedy, {new_tokens} new tokens, vs transformers generate", "prompts": len(rows),
              "equal": len(rows) - len(bad), "rows": rows}
    if bad:
        raise ParityError(f"the ONNX build generates differently from the source model on {len(bad)} of {len(rows)} "
                          f"prompts ({', '.join(map(repr, bad[:3]))}): not archived")
    return report


def sequence_logits(session: Any, decoder: dict[str, Any], ids: list[int]) -> np.ndarray:
    """Logits [T, vocab] of a builder's decoder graph (its genai_config `decoder` section) for `ids` in
    one pass with an empty cache."""
    feeds: dict[str, np.ndarray] = {}
    for inp in session.get_inputs():
        dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
                 "tensor(int32)": np.int32}[inp.type]
        if inp.name == "input_ids":
            feeds[inp.name] = np.asarray([ids], dtype=dtype)
        elif inp.name == "attention_mask":
            feeds[inp.name] = np.ones((1, len(ids)), dtype=dtype)
        elif inp.name == "position_ids":
            feeds[inp.name] = np.arange(len(ids), dtype=dtype)[None]
        elif inp.name.startswith("past_key_values"):
            feeds[inp.name] = np.zeros((1, decoder["num_key_value_heads"], 0, decoder["head_size"]), dtype=dtype)
        else:
            raise ExportError(f"the decoder graph has an input maas cannot feed for verification: {inp.name}")
    return session.run(["logits"], feeds)[0][0].astype(np.float32)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def quantized_cost(reference: Reference, onnx_dir: Path, precision: str, new_tokens: int = 16,
                   budget: float | None = None) -> dict[str, Any]:
    """What a quantized build costs against fp32 `transformers` on held-out text, and whether it is in budget
    (its tokenizer and chat template checked too)."""
    import onnxruntime as ort
    import onnxruntime_genai as og

    config = json.loads((onnx_dir / "genai_config.json").read_text())
    decoder = config["model"]["decoder"]
    session = ort.InferenceSession(str(onnx_dir / decoder["filename"]), providers=["CPUExecutionProvider"])
    agree, kls, positions = 0, [], 0
    for text in HELD_OUT:
        ids = reference.prompt_ids(text)
        ref = _log_softmax(reference.logits(ids))
        got = _log_softmax(sequence_logits(session, decoder, ids))
        agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
        kls.extend((np.exp(ref) * (ref - got)).sum(-1).tolist())
        positions += len(ids)
    del session
    model = og.Model(str(onnx_dir))  # after the session is gone: one copy of the weights at a time
    tokenizer_parity(reference, model)
    shares = []
    for _prompt, expected, got in greedy_pairs(reference, model, new_tokens):
        same = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
        shares.append(same / max(len(expected), 1))
    budget = COST_BUDGET.get(precision, 0.0) if budget is None else budget
    mean_kl = float(f"{np.mean(kls):.3g}")
    return {"reference": "fp32 transformers, teacher forced on held-out text", "positions": positions,
            "top1_agreement": round(agree / positions, 4), "mean_kl": mean_kl,
            "greedy_agreement": round(float(np.mean(shares)), 4), "kl_budget": budget, "within_budget": mean_kl <= budget}

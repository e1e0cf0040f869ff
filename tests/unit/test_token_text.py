"""The generation handler's streamed text (handlers/token_text.py): every byte a token carries
reaches the client, and the stream's text equals the whole answer decoded at once."""
from pathlib import Path

import numpy as np
from token_text import text_streams

from maas.export.notes_llm import train_tokenizer


class _NoGenAI:
    def create_stream(self):  # the fallback's source: never reached when tokenizer.json reads
        raise AssertionError("GenAI's stream used")


def _tokenizer(tmp_path: Path):
    texts = ["héllo wörld ✓ 日本 pump bearing torque 1500 rpm"] * 20
    train_tokenizer(texts, tmp_path, vocab_size=300)
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tmp_path / "tokenizer.json"))


def _streamed(factory, ids) -> tuple[str, list[str]]:
    stream = factory()
    parts = [stream.decode(int(t)) for t in ids]
    return "".join(parts) + stream.flush(), parts


def test_streamed_text_equals_the_whole_decode_even_for_lone_bytes(tmp_path: Path) -> None:
    tokenizer = _tokenizer(tmp_path)
    factory = text_streams(tmp_path, _NoGenAI())
    ids = np.random.default_rng(0).integers(0, tokenizer.get_vocab_size(), 300)  # random weights' output
    text, _ = _streamed(factory, ids)
    assert text == tokenizer.decode(ids.tolist(), skip_special_tokens=True)
    assert "\ufffd" in text  # lone bytes kept as U+FFFD, not dropped


def test_a_character_is_sent_when_its_last_byte_comes(tmp_path: Path) -> None:
    tokenizer = _tokenizer(tmp_path)
    lone = [tokenizer.token_to_id(t) for t in ("Ã",)]  # byte 0xC3: the first of a two-byte character
    ids = tokenizer.encode("héllo ✓").ids
    text, parts = _streamed(text_streams(tmp_path, _NoGenAI()), ids)
    assert text == "héllo ✓" and parts[-1].endswith("✓")
    text, parts = _streamed(text_streams(tmp_path, _NoGenAI()), ids[:1] + lone)  # an answer cut mid-character
    assert parts[-1] == "" and text.endswith("\ufffd")


def test_without_a_readable_tokenizer_json_genai_streams(tmp_path: Path) -> None:
    class GenAI:
        def create_stream(self):
            class S:
                def decode(self, token: int) -> str:
                    return str(token)
            return S()

    stream = text_streams(tmp_path, GenAI())()  # tmp_path holds no tokenizer.json
    assert stream.decode(7) == "7" and stream.flush() == ""


def test_a_completion_keeps_the_space_a_sentencepiece_decoder_strips_at_a_texts_start(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, normalizers

    # Llama 2 / Mistral / Phi-3's tokenizer.json shape: "▁" for a space, the first one stripped on decode
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁The": 3, "▁capital": 4, "▁is": 5, "▁Paris": 6, ".": 7}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    factory = text_streams(tmp_path, _NoGenAI())
    prompt = [3, 4, 5]  # "The capital is"
    completion = factory(prompt)
    assert "".join(completion.decode(t) for t in (6, 7)) + completion.flush() == " Paris."
    assert tokenizer.decode(prompt) + " Paris." == "The capital is Paris."
    assert "".join(factory().decode(t) for t in (6, 7)) == "Paris."  # a chat answer starts its own text

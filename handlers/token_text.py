"""The text of a stream's tokens, as they come: what each new token adds to the answer.

A token's bytes may complete a character only with the next token's, so a token can add no text
yet. ONNX Runtime GenAI's TokenizerStream also drops bytes that never form a character (a model
can emit a lone continuation byte): their text is lost and the client waits one more token for
an event. Hugging Face `tokenizers`' DecodeStream holds such bytes only until the next token and
then emits them as U+FFFD, so the streamed text always equals `tokenizer.decode(ids)`, what
`transformers` answers. It reads the archive's tokenizer.json; a tokenizer it cannot read keeps
GenAI's stream.

A completion continues its prompt, so its stream starts from the prompt's last tokens: a
SentencePiece decoder (Llama 2, Mistral, Phi-3) strips the space that begins a text, and the
answer to "The capital is" must be " Paris", as prompt + completion reads (vLLM does the same).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

log = logging.getLogger(__name__)


PREFIX_TOKENS = 4  # of the prompt, before a completion's first token: what a decoder's start rules see


class TextStream(Protocol):
    def decode(self, token: int) -> str: ...

    def flush(self) -> str: ...


class _GenAIStream:
    def __init__(self, tokenizer: Any) -> None:
        self._stream = tokenizer.create_stream()

    def decode(self, token: int) -> str:
        return self._stream.decode(token)

    def flush(self) -> str:
        return ""


def text_streams(model_dir: Path, genai_tokenizer: Any) -> Callable[..., TextStream]:
    """A factory of per-stream decoders for the model in `model_dir`: `decode(token)` is the text
    the token completes; `flush()`, at the end, the text of bytes no token completed. `prefix`: the
    tokens the text continues (a completion's prompt), whose own text is not the stream's."""
    try:
        from tokenizers import Tokenizer
        from tokenizers.decoders import DecodeStream

        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    except Exception as exc:  # noqa: BLE001 - any reason: GenAI's own stream still works
        log.info("streamed text through GenAI's TokenizerStream (%s)", exc)
        return lambda prefix=(): _GenAIStream(genai_tokenizer)

    class _Stream:
        __slots__ = ("_stream", "_pending")

        def __init__(self, prefix: Sequence[int] = ()) -> None:
            self._stream = DecodeStream(list(prefix[-PREFIX_TOKENS:]) or None, skip_special_tokens=True)
            self._pending: list[int] = []  # tokens whose bytes are no text yet

        def decode(self, token: int) -> str:
            text = self._stream.step(tokenizer, token)
            if text is None:
                self._pending.append(token)
                return ""
            self._pending.clear()
            return text

        def flush(self) -> str:
            text = tokenizer.decode(self._pending, skip_special_tokens=True) if self._pending else ""
            self._pending.clear()
            return text

    return _Stream

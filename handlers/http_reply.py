"""The one way a maas handler (or workflow function) sets a response's status and headers.

Why this module exists: TorchServe 0.12's worker frames the reason phrase of each response
by its length in *characters* and then writes its *UTF-8 bytes*
(`ts/protocol/otf_message_handler.py`, `create_predict_response`); a single non-ASCII
character makes the lengths disagree, the frontend reads garbage as the next frame length
(`TooLongFrameException`) and drops the worker, failing every request of its batch. A lone
surrogate (`"\\ud83d"` in JSON) cannot be encoded at all and kills the worker the same way.

So, for every handler of this project:
- the reason phrase is the fixed ASCII phrase of the status code (`HTTPStatus`), never a
  message: the details go in the JSON body, which TorchServe frames correctly;
- header names and values are checked here: printable ASCII only, anything else replaced;
- bodies are JSON with `ensure_ascii=True`, so what a client sent comes back escaped.

Answers are often arrays (384 floats per minilm embedding): `json.dumps` of float64 lists
costs ~230 us per embedding here, orjson of the float32 array ~8 us and half the bytes
(float32 values in their shortest round-tripping form). orjson is used when the worker's
environment has it and its output is pure ASCII; anything else (client text echoed in an
error, lone surrogates) takes the standard library's escaping path.

Standard library (orjson optional): it is shipped inside every .mar and .war.
"""
from __future__ import annotations

import json
import re
from http import HTTPStatus
from typing import Any

import numpy as np

try:
    import orjson
except ImportError:  # a worker environment without orjson: the standard library path
    orjson = None

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 header field name
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
MAX_HEADER_VALUE = 256


def reason_phrase(status: int) -> str:
    """The standard ASCII phrase of `status` ("Bad Request", "Payload Too Large", ...)."""
    try:
        return HTTPStatus(int(status)).phrase
    except ValueError:
        return "Error" if int(status) >= 400 else "OK"


def header_value(value: Any) -> str:
    """`value` as a header value TorchServe can frame: printable ASCII, at most 256 characters."""
    return _UNPRINTABLE.sub("?", str(value))[:MAX_HEADER_VALUE]


def set_status(context: Any, idx: int, status: int) -> None:
    """Per-request status with its fixed phrase (TorchServe: context.set_response_status)."""
    context.set_response_status(int(status), reason_phrase(status), idx)


def set_header(context: Any, idx: int, name: str, value: Any) -> None:
    if not _TOKEN.match(name):
        raise ValueError(f"not a valid header name: {name!r}")  # a programming error, never client data
    context.set_response_header(idx, name, header_value(value))


def _plain(value: Any) -> Any:
    """numpy values as JSON-ready Python ones (float32 stays float32 precision via str())."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def json_body(body: Any, fast: bool = True) -> str | bytes:
    """JSON with every non-ASCII character escaped (lone surrogates included); numpy arrays allowed.

    `fast`: orjson when available, kept only if its output is ASCII (else the escaping path).
    """
    if fast and orjson is not None:
        try:
            out = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
        except (TypeError, orjson.JSONEncodeError):  # lone surrogates, exotic types
            out = None
        if out is not None and out.isascii():
            return out
    return json.dumps(body, ensure_ascii=True, default=_plain)


def reply(context: Any, idx: int, body: Any, status: int = 200, headers: dict[str, Any] | None = None,
          fast_json: bool = True) -> str | bytes:
    """Set request `idx`'s content type, headers and status; return its JSON body."""
    context.set_response_content_type(idx, "application/json")
    for name, value in (headers or {}).items():
        set_header(context, idx, name, value)
    if status != 200:
        set_status(context, idx, status)
    return json_body(body, fast_json)


def reply_binary(context: Any, idx: int, header: dict[str, Any], data: bytes,
                 headers: dict[str, Any] | None = None) -> bytes:
    """An answer of the Open Inference Protocol's binary tensor data extension: the JSON header,
    then raw tensor bytes; the header's length in Inference-Header-Content-Length."""
    head = json_body(header)
    head = head.encode("ascii") if isinstance(head, str) else head
    context.set_response_content_type(idx, "application/octet-stream")
    for name, value in {**(headers or {}), "Inference-Header-Content-Length": len(head)}.items():
        set_header(context, idx, name, value)
    return head + data

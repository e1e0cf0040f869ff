"""Reading what a client sent: the primitives every handler validates requests with.

A client's mistake is an InputError: answered with its 4xx and a JSON body naming the field,
never failing the request's batch neighbours. Standard library only (shipped in every .mar).
"""
from __future__ import annotations

import json
import math
from typing import Any

# The image formats handlers accept, by their first bytes (and what a client summary calls them)
IMAGE_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more characters)"


class InputError(ValueError):
    """A client's mistake: answered with `status` (4xx) and a JSON body naming the field.

    Messages and field names often quote what the client sent; both are clipped, so an error
    body stays small (TorchServe's v2 route resets the connection on a 4xx body over 128 KiB).
    """

    def __init__(self, message: str, field: str | None = None, status: int = 400) -> None:
        message, field = clip(message, 500), None if field is None else clip(str(field), 200)
        super().__init__(message)
        self.message, self.field, self.status = message, field, status

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.status, "type": "InputError", "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


def request_body(request: dict[str, Any]) -> Any:
    """TorchServe puts a raw body under "body" and a form field under "data"."""
    for key in ("data", "body"):
        if request.get(key) is not None:
            return request[key]
    values = [v for k, v in request.items() if v is not None]
    if len(values) == 1:
        return values[0]
    raise InputError("request has no body")


def request_header(context: Any, idx: int, name: str) -> Any:
    """Request `idx`'s header `name`, whatever its case (None when absent, or outside TorchServe)."""
    try:
        headers = context.get_all_request_header(idx) or {}
    except Exception:  # noqa: BLE001 - a context without headers (unit tests, workflows)
        return None
    wanted = name.lower()
    return next((v for k, v in headers.items() if str(k).lower() == wanted), None)


def parse_json(body: Any) -> Any:
    """The request's JSON value; TorchServe has already decoded application/json bodies."""
    if isinstance(body, (dict, list)):
        return body
    if isinstance(body, (bytes, bytearray)):
        if not body.strip():
            raise InputError("request body is empty; send a JSON document")
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"request body is not UTF-8 text (byte {exc.start}); send a JSON document") from None
    if isinstance(body, str):
        if not body.strip():
            raise InputError("request body is empty; send a JSON document")
        try:
            return json.loads(body)
        except json.JSONDecodeError as exc:
            raise InputError(f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
        except RecursionError:
            raise InputError("request body is JSON nested too deeply") from None
        except ValueError as exc:  # e.g. an integer of more than 4300 digits
            raise InputError(f"request body could not be read as JSON: {str(exc)[:120]}") from None
    raise InputError(f"unsupported request body of type {type(body).__name__}")


def finite_number(value: Any, field: str, limits: tuple[float, float] | None = None) -> float:
    """A real, finite number (not a bool, not a string), optionally within [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"must be a number, got {type(value).__name__}", field)
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range
        number = math.inf if value > 0 else -math.inf
    if not math.isfinite(number):
        raise InputError("must be a finite number (NaN and infinity are refused)", field)
    if limits is not None and not limits[0] <= number <= limits[1]:
        raise InputError(f"{number:g} is outside the accepted range [{limits[0]:g}, {limits[1]:g}]", field)
    return number


def unicode_text(value: Any, field: str) -> str:
    """A string that is valid Unicode: JSON can carry lone surrogates ("\\ud83d"), which no UTF-8
    consumer (a tokenizer, a log line, TorchServe's framing) can encode."""
    if not isinstance(value, str):
        raise InputError(f"must be a string, got {type(value).__name__}", field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"contains a lone surrogate (U+{ord(value[exc.start]):04X} at character {exc.start}); "
                         "send valid Unicode text", field) from None
    return value

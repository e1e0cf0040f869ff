"""One short line for a request or an answer: what the demo prints instead of raw bodies.

A 384-float embedding or an 8x8 pixel grid says little on a terminal; its shape does.
"""
from __future__ import annotations

import json
from typing import Any

from maas.handlers.inputs import IMAGE_MAGIC


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _dims(value: list) -> list[int]:
    dims = []
    while isinstance(value, list):
        dims.append(len(value))
        value = value[0] if value else None
    return dims


def compact(value: Any, width: int = 60) -> str:
    """JSON with every list of numbers shown as its shape, strings clipped: e.g.
    {"pixels": [8x8 numbers]} or {"text": "The spindle bearing is..."}."""
    def render(v: Any) -> str:
        if isinstance(v, list):
            flat = v
            while flat and isinstance(flat[0], list):
                flat = flat[0]
            if v and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in flat):
                return f"[{'x'.join(str(d) for d in _dims(v))} numbers]"
            if len(v) > 3:
                return "[" + ", ".join(render(x) for x in v[:2]) + f", ... {len(v)} items]"
            return "[" + ", ".join(render(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(k)}: {render(x)}" for k, x in v.items()) + "}"
        if isinstance(v, str):
            return json.dumps(clip(v, 32))
        if isinstance(v, float):
            return f"{v:.4g}"
        return json.dumps(v)
    return clip(render(value), width)


def request_line(body: bytes, content_type: str = "application/json", width: int = 60) -> str:
    """A request body in a few words: an image's format and size, else its JSON compacted."""
    for magic, kind in IMAGE_MAGIC.items():
        if body.startswith(magic):
            try:
                import io

                from PIL import Image

                size = "x".join(str(n) for n in Image.open(io.BytesIO(body)).size)
            except Exception:  # noqa: BLE001 - a summary must never fail the demo
                size = "?"
            return f"{kind} image {size} ({len(body) / 1024:.1f} kB)"
    try:
        return compact(json.loads(body), width)
    except ValueError:
        return f"{content_type}, {len(body)} bytes"


def error_line(status: int, answer: Any) -> str:
    """A 4xx/5xx answer: its status, field and message."""
    if isinstance(answer, dict):
        field = f"{answer['field']}: " if answer.get("field") else ""
        return f"HTTP {status} {field}{clip(str(answer.get('message', '')), 90)}"
    return f"HTTP {status}"

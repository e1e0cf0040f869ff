"""Request bodies and answer checks: what load tests send and what release smoke checks ask.

A zoo model supplies its own (export/zoo/); a packaged model's come from its manifest and
samples, for the generic tensor handler (handlers/tensor.py). No torch here: Locust's
processes import this.
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import IO, Any, Callable, Mapping, Optional

import numpy as np

from maas.core.sampling import draw

Check = Callable[[Any], Optional[str]]  # an answer -> None when right, else what is wrong
Case = tuple[str, bytes, str, Check]  # title, body, content type, check


class Payloads:
    """Round-robin over a pre-generated pool, so request building costs the load generator nothing."""

    def __init__(self, bodies: list[bytes], content_type: str, check: Check) -> None:
        self.bodies, self.content_type, self.check = bodies, content_type, check
        self._i = 0

    def next(self) -> bytes:
        self._i = (self._i + 1) % len(self.bodies)
        return self.bodies[self._i]


# Items whose JSON body would be larger than this travel as .npz bodies (raw bytes, no parsing)
JSON_BODY_LIMIT = 256 * 1024


def tensor_items(manifest: dict[str, Any], samples: dict[str, np.ndarray] | None, seed: int = 0,
                 pool: int = 64) -> list[dict[str, np.ndarray]]:
    """One item per request: the archive's samples, else inputs drawn within the spec's ranges."""
    names = [t["name"] for t in manifest["inputs"]]
    batch = manifest.get("batch_axis")
    if not samples:
        samples = draw(manifest["inputs"], batch, pool if batch else 1, seed)
    if not batch:
        return [{n: samples[n] for n in names}]
    order = np.random.default_rng(seed).permutation(len(samples[names[0]]))
    return [{n: samples[n][i] for n in names} for i in order]


def savez(target: str | Path | IO[bytes], arrays: Mapping[str, np.ndarray]) -> None:
    """What np.savez writes (np.load reads it), without its keyword arguments: a model's input may
    be named `file` or `allow_pickle`."""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def encoded(items: list[dict[str, np.ndarray]]) -> tuple[list[bytes], str]:
    """(bodies, content type) for the generic handler: JSON, or .npz where an item's JSON would
    exceed JSON_BODY_LIMIT (the OCR line or layout page a client sends as bytes, not numbers)."""
    if sum(a.nbytes for a in items[0].values()) * 5 <= JSON_BODY_LIMIT:  # JSON numbers: ~5x their float32 bytes
        return [json.dumps({"inputs": {n: a.tolist() for n, a in item.items()}}).encode() for item in items], \
            "application/json"
    bodies = []
    for item in items:
        buf = io.BytesIO()
        savez(buf, item)
        bodies.append(buf.getvalue())
    return bodies, "application/octet-stream"


def tensor_payloads(manifest: dict[str, Any], samples: dict[str, np.ndarray] | None, seed: int = 0) -> Payloads:
    """The generic handler's bodies for a load test: the archive's samples (or drawn), encoded."""
    bodies, content_type = encoded(tensor_items(manifest, samples, seed))
    return Payloads(bodies, content_type, tensor_check(manifest))


def tensor_check(manifest: dict[str, Any]) -> Check:
    """An answer of the generic tensor handler to one item: every output, shaped as the spec says, finite."""
    batch = manifest.get("batch_axis")

    def check(answer: Any) -> Optional[str]:
        outputs = answer.get("outputs") if isinstance(answer, dict) else None
        if not isinstance(outputs, dict):
            return f"expected {{'outputs': ...}}, got {str(answer)[:80]}"
        for spec in manifest["outputs"]:
            if spec["name"] not in outputs:
                return f"output {spec['name']} is missing"
            array = np.asarray(outputs[spec["name"]])
            if array.dtype == object or (str(spec.get("dtype", "")).startswith("float") and array.dtype.kind not in "fiu"):
                # JSON has no NaN: orjson writes it as null, which numpy reads as an object
                return f"output {spec['name']} is not an array of numbers (null is how NaN is sent)"
            shape = spec["shape"][1:] if batch else spec["shape"]
            if array.ndim != len(shape) or any(isinstance(d, int) and d != n for d, n in zip(shape, array.shape)):
                return f"output {spec['name']} has shape {list(array.shape)}, spec {shape}"
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                return f"output {spec['name']} is not finite"
        return None
    return check

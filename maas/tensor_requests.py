"""Requests and answer checks for the generic tensor handler (handlers/tensor.py), from a manifest.

Load tests send these bodies and check the answers; release smoke cases send them and compare
the answers with ONNX Runtime in-process.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Optional

import numpy as np

from export.sampling import draw

Check = Callable[[Any], Optional[str]]


def tensor_bodies(manifest: dict[str, Any], samples: dict[str, np.ndarray] | None, seed: int = 0,
                  pool: int = 64) -> list[bytes]:
    """One item per request: the archive's samples, else inputs drawn within the spec's ranges."""
    names = [t["name"] for t in manifest["inputs"]]
    batch = manifest.get("batch_axis")
    if not samples:
        samples = draw(manifest["inputs"], batch, pool if batch else 1, seed)
    if not batch:
        return [json.dumps({"inputs": {n: samples[n].tolist() for n in names}}).encode()]
    order = np.random.default_rng(seed).permutation(len(samples[names[0]]))
    return [json.dumps({"inputs": {n: samples[n][i].tolist() for n in names}}).encode() for i in order]


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
            shape = spec["shape"][1:] if batch else spec["shape"]
            if array.ndim != len(shape) or any(isinstance(d, int) and d != n for d, n in zip(shape, array.shape)):
                return f"output {spec['name']} has shape {list(array.shape)}, spec {shape}"
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                return f"output {spec['name']} is not finite"
        return None
    return check

"""Inputs drawn from a model's I/O spec: within declared ranges, at given sizes.

Used where no real inputs are at hand: `maas package` without an example, load tests of a
packaged model without samples. numpy only (the Locust processes import it).
"""
from __future__ import annotations

from typing import Any

import numpy as np


def draw(inputs: list[dict[str, Any]], batch_axis: str | None, rows: int, seed: int = 0,
         sizes: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """One array per input (manifest-style dicts: name, dtype, shape, optional range): floats
    uniform in the range (else ~ N(0, 1)), integers in the range (else 0-9), booleans at random;
    `rows` along the batch axis, `sizes` (default 8) along other symbolic axes."""
    rng = np.random.default_rng(seed)
    out = {}
    for t in inputs:
        shape = [rows if d == batch_axis else ((sizes or {}).get(d, 8) if isinstance(d, str) else d)
                 for d in t["shape"]]
        dtype, bounds = np.dtype(t["dtype"]), t.get("range")
        if dtype.kind == "b":
            out[t["name"]] = rng.random(shape) < 0.5
        elif dtype.kind in "iu":
            lo, hi = (int(bounds[0]), int(bounds[1])) if bounds else (0, 9)
            out[t["name"]] = rng.integers(lo, hi + 1, size=shape).astype(dtype)
        elif bounds:
            out[t["name"]] = rng.uniform(bounds[0], bounds[1], size=shape).astype(dtype)
        else:
            out[t["name"]] = rng.standard_normal(shape).astype(dtype)
    return out

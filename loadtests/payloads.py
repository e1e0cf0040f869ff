"""Varied, valid request bodies for a load test, and a check of each answer.

A zoo model supplies its own generator (export/zoo/<model>.py: ZooModel.payloads); a model
packaged with `maas package` gets bodies from its archive's samples (or drawn within its spec)
for the generic tensor handler. Bodies are generated once per user into a pool, so building
them costs the load generator nothing during the run.
"""
from __future__ import annotations

import os
from pathlib import Path

from maas.core.bodies import Payloads

# Benchmark variants of a model's bodies: "digits-json" compares engines, not image decoding
# (JSON bodies only); "minilm-128"/"minilm-256" send texts of that many tokens; "bench-llm-unseeded"
# samples the bench's language model without a seed.
VARIANTS = {"digits-json": ("digits", {"png_share": 0.0}),
            "minilm-128": ("minilm", {"tokens": 128}), "minilm-256": ("minilm", {"tokens": 256}),
            "bench-llm-unseeded": ("bench-llm", {"seeded": False})}


def for_model(model: str, seed: int = 0, version: str = "", model_store: str = "") -> Payloads:
    """The model's bodies and answer check (maas.export.clients: a zoo model's own generator, else
    its archive's samples); the store is MAAS_MODEL_STORE in a Locust process."""
    from maas.export.clients import client_for

    name, options = VARIANTS.get(model, (model, {}))
    store = Path(model_store or os.environ.get("MAAS_MODEL_STORE") or "model_store")
    return client_for(name, store, version or None).payloads(seed, **options)

"""Varied, valid request bodies for a load test, and a check of each answer.

A zoo model supplies its own generator (export/zoo/<model>.py: ZooModel.payloads); a model
packaged with `maas package` gets bodies from its archive's samples (or drawn within its spec)
for the generic tensor handler. Bodies are generated once per user into a pool, so building
them costs the load generator nothing during the run.
"""
from __future__ import annotations

import os
from pathlib import Path

from maas.core.bodies import Payloads, tensor_bodies, tensor_check

# Benchmark variants of a zoo model's bodies: "digits-json" compares engines, not image
# decoding (JSON bodies only); "minilm-128"/"minilm-256" send texts of that many tokens.
VARIANTS = {"digits-json": ("digits", {"png_share": 0.0}),
            "minilm-128": ("minilm", {"tokens": 128}), "minilm-256": ("minilm", {"tokens": 256})}


def from_archive(model: str, version: str = "", model_store: str = "", seed: int = 0) -> Payloads:
    """Bodies for a model packaged with `maas package`, read from its archive in the model store."""

    from maas.core.store import archive_manifest, archive_samples, find_archive

    store = Path(model_store or os.environ.get("MAAS_MODEL_STORE") or "model_store")
    archive = find_archive(store, model, version or None)
    manifest = archive_manifest(archive)
    return Payloads(tensor_bodies(manifest, archive_samples(archive, manifest), seed), "application/json", tensor_check(manifest))


def for_model(model: str, seed: int = 0, version: str = "", model_store: str = "") -> Payloads:
    """The zoo model's own generator, else bodies from the model's archive (a packaged model)."""
    from maas.export import zoo

    name, options = VARIANTS.get(model, (model, {}))
    if name in zoo.models():
        return zoo.get(name).payloads(seed, **options)
    return from_archive(model, version, model_store, seed)

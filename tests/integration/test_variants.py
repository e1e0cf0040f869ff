"""Optimized variants: each is its own version, its accuracy cost is measured on held-out
data and recorded in its manifest, a variant over budget is never built, and a variant serves."""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import bare_server
from maas.deploy import deploy
from maas.export.build import build
from maas.export.variants import VariantError
from maas.export.zoo import maintenance


def manifest_of(mar: Path) -> dict:
    with zipfile.ZipFile(mar) as z:
        return json.loads(z.read("manifest.json"))


@pytest.fixture(scope="module")
def variant_store(tmp_path_factory: pytest.TempPathFactory, built_models) -> Path:
    """Variants made from the session's verified FP32 archives (a variant starts from its archive)."""
    store, work = tmp_path_factory.mktemp("variant_store"), tmp_path_factory.mktemp("variant_build")
    for name, built in built_models.items():
        shutil.copy(built.mar, store / built.mar.name)
    build("maintenance", work, store, variant="int8")
    build("minilm", work, store, variant="int8")
    build("digits", work, store, variant="fp16")
    return store


def test_variants_record_their_cost_within_budget(variant_store: Path) -> None:
    m = manifest_of(variant_store / "maintenance-1.0-int8.mar")
    assert m["version"] == "1.0-int8" and m["variant"]["name"] == "int8"
    acc = m["variant"]["accuracy"]
    assert acc["within_budget"] and acc["cost"] <= acc["budget"] == 1.0
    assert acc["fp32"]["n"] == acc["variant"]["n"] == 6000  # the held-out split, not the training data

    mini = manifest_of(variant_store / "minilm-1.0-int8.mar")["variant"]["accuracy"]
    assert mini["vs_fp32"]["mean_cosine"] >= 0.99 and mini["vs_fp32"]["sentences"] >= 200
    assert mini["vs_sentence_transformers"]["mean_cosine"] >= 0.99
    assert (variant_store / "minilm-1.0-int8.mar").stat().st_size < 30e6  # FP32 is ~83 MB

    fp16 = manifest_of(variant_store / "digits-1.0-fp16.mar")["variant"]["accuracy"]
    assert fp16["within_budget"] and fp16["variant"]["accuracy"] >= 0.98


def test_a_variant_over_budget_is_not_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, maintenance_built) -> None:
    def costly(fp32: Path, variant: Path) -> dict:
        return {"cost_metric": "accuracy drop (points)", "cost": 3.5, "budget": 1.0, "within_budget": False}

    monkeypatch.setattr(maintenance, "variant_report", costly)
    (tmp_path / "store").mkdir()
    shutil.copy(maintenance_built.mar, tmp_path / "store" / "maintenance.mar")
    with pytest.raises(VariantError, match="exceeds the budget"):
        build("maintenance", tmp_path / "work", tmp_path / "store", variant="int8")
    assert [p.name for p in (tmp_path / "store").glob("*.mar")] == ["maintenance.mar"]  # no variant archive


def test_int8_minilm_serves_beside_fp32(tmp_path_factory: pytest.TempPathFactory, variant_store: Path) -> None:
    ts = bare_server(tmp_path_factory, variant_store)
    try:
        deploy(ts.client, variant_store, "minilm", "1.0")
        deploy(ts.client, variant_store, "minilm", "1.0-int8")
        texts = {"texts": ["The cooling pump keeps failing during the night shift.", "Invoice 42 is missing."]}
        fp32 = np.array(ts.client.predict_json("minilm", texts, version="1.0")["embeddings"])
        int8 = np.array(ts.client.predict_json("minilm", texts, version="1.0-int8")["embeddings"])
        assert np.all(np.sum(fp32 * int8, axis=1) > 0.97)
        resp = ts.client.predict("minilm", json.dumps(texts).encode(), version="1.0-int8")
        assert resp.headers["X-Model-Version"] == "1.0-int8"
    finally:
        ts.stop()

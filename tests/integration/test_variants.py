"""Optimized variants: each is its own version, its accuracy cost is measured on held-out
data and recorded in its manifest, a variant over budget is never built, and a variant serves."""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import onnx
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
def variant_store(tmp_path_factory: pytest.TempPathFactory, built_models, openvino_variants: Path) -> Path:
    """Variants made from the session's verified FP32 archives (a variant starts from its archive),
    and minilm's OpenVINO INT8 (conftest.openvino_variants)."""
    store, work = tmp_path_factory.mktemp("variant_store"), tmp_path_factory.mktemp("variant_build")
    for name, built in built_models.items():
        shutil.copy(built.mar, store / built.mar.name)
    shutil.copy(openvino_variants / "minilm-1.0-ov-int8.mar", store)
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
    def costly(fp32: Path, variant: Path, engine: dict | None = None) -> dict:
        return {"cost_metric": "accuracy drop (points)", "cost": 3.5, "budget": 1.0, "within_budget": False}

    monkeypatch.setattr(maintenance, "variant_report", costly)
    (tmp_path / "store").mkdir()
    shutil.copy(maintenance_built.mar, tmp_path / "store" / "maintenance.mar")
    with pytest.raises(VariantError, match="exceeds the budget"):
        build("maintenance", tmp_path / "work", tmp_path / "store", variant="int8")
    assert [p.name for p in (tmp_path / "store").glob("*.mar")] == ["maintenance.mar"]  # no variant archive


def test_openvino_int8_is_calibrated_priced_on_its_engine_and_still_onnx(openvino_variants: Path) -> None:
    mar = openvino_variants / "minilm-1.0-ov-int8.mar"
    m = manifest_of(mar)
    assert m["engine"] == {"name": "openvino", "precision": "default"} and m["variant"]["name"] == "ov-int8"
    acc = m["variant"]["accuracy"]
    assert acc["within_budget"] and acc["vs_fp32"]["mean_cosine"] >= 0.99 and acc["vs_fp32"]["sentences"] >= 200
    with zipfile.ZipFile(mar) as z:
        graph = onnx.load_from_string(z.read("model.onnx")).graph
        assert "openvino_session.py" in z.namelist()  # the handler opens the engine the manifest names
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # NNCF's calibrated QDQ graph: the artifact stays ONNX


def test_auto_keeps_the_fastest_candidate_within_budget(openvino_variants: Path) -> None:
    choice = json.loads((openvino_variants / ".build" / "digits-1.0-choice.json").read_text())
    rows = {r["variant"]: r for r in choice["candidates"]}
    assert set(rows) == {"fp32", "opt", "int8", "int8-cal", "ov", "ov-int8"}, rows
    # digits' weights are in Conv and Gemm: nothing for int8-cal's smoothing, and the row says so
    assert "no MatMul" in rows["int8-cal"]["left_out"]
    timed = [r for r in rows.values() if "items_per_s" in r]
    assert len(timed) == 5 and all(r["items_per_s"] > 0 and r["engine"] for r in timed), rows
    assert rows["ov"]["engine"].startswith("OpenVINO CPU") and rows["int8"]["engine"] == "CPUExecutionProvider"
    best = max((r for r in timed if r["within_budget"]), key=lambda r: r["items_per_s"])
    assert choice["chosen"] == best["variant"] and choice["machine"]["cores"] >= 1
    archived = sorted(p.name for p in openvino_variants.glob("digits-1.0-*.mar"))
    if best["variant"] == "fp32":  # nothing new: the FP32 archive is already the fastest
        assert archived == []
    else:
        assert archived == [f"digits-1.0-{best['variant']}.mar"]
        assert manifest_of(openvino_variants / archived[0])["variant"]["choice"] == choice


def test_int8_variants_serve_beside_fp32_on_either_engine(tmp_path_factory: pytest.TempPathFactory,
                                                          variant_store: Path) -> None:
    """ONNX Runtime's INT8 and OpenVINO's beside FP32 on one server, the same handler contract on
    both engines: answers close to FP32's, a bad item refused alone, the Open Inference Protocol,
    the version header."""
    ts = bare_server(tmp_path_factory, variant_store)
    try:
        for version in ("1.0", "1.0-int8", "1.0-ov-int8"):
            deploy(ts.client, variant_store, "minilm", version)
        texts = {"texts": ["The cooling pump keeps failing during the night shift.", "Invoice 42 is missing."]}
        fp32 = np.array(ts.client.predict_json("minilm", texts, version="1.0")["embeddings"])
        for version in ("1.0-int8", "1.0-ov-int8"):
            other = np.array(ts.client.predict_json("minilm", texts, version=version)["embeddings"])
            assert np.all(np.sum(fp32 * other, axis=1) > 0.97), version
            resp = ts.client.predict("minilm", json.dumps(texts).encode(), version=version)
            assert resp.headers["X-Model-Version"] == version
        bad = ts.client.predict("minilm", json.dumps({"texts": ["fine", 42]}).encode(), version="1.0-ov-int8")
        assert bad.status_code == 400 and bad.json()["field"] == "texts[1]", bad.text
        # TorchServe's v2 endpoint serves the default version only (501 "Model versioning is not yet supported")
        assert ts.client.management("PUT", "/models/minilm/1.0-ov-int8/set-default")
        v2 = ts.client.request("inference", "POST", "/v2/models/minilm/infer", data=json.dumps({"inputs": [
            {"name": "input_ids", "datatype": "INT64", "shape": [1, 5], "data": [101, 7592, 2088, 999, 102]},
            {"name": "attention_mask", "datatype": "INT64", "shape": [1, 5], "data": [1, 1, 1, 1, 1]}]}),
            headers={"Content-Type": "application/json"})
        assert v2.status_code == 200, v2.text
        assert v2.json()["model_version"] == "1.0-ov-int8" and v2.json()["outputs"][0]["shape"] == [1, 384]
        log_text = (ts.layout.log_dir / "model_log.log").read_text(errors="replace")
        assert "provider OpenVINO CPU" in log_text
        assert ts.worker_restarts() == {}
    finally:
        ts.stop()

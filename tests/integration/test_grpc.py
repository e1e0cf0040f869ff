"""TorchServe's gRPC inference API with the secure defaults: every zoo model answers over gRPC
what it answers over HTTP; bad input is refused with the HTTP body's message; keys are checked;
Locust loads it. (The packaged models' gRPC test is in test_packaged_models.py.)"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from maas import loadtest
from maas.client import TokenRefused
from maas.export import zoo
from maas.grpc_client import GrpcCallError, GrpcInference, grpc_target
from maas.slo import SLO

# One refused request per zoo model: (body, the field the HTTP 400 names).
BAD = {
    "maintenance": (json.dumps({"type": "X", "air_temperature_k": 300, "process_temperature_k": 310,
                                "rotational_speed_rpm": 1500, "torque_nm": 40, "tool_wear_min": 0}).encode(), "type"),
    "digits": (json.dumps({"pixels": [[99] * 8] * 8}).encode(), "pixels[0][0]"),
    "minilm": (json.dumps({"texts": ["fine", 42]}).encode(), "texts[1]"),
}


@pytest.fixture(scope="module")
def grpc_client(server):
    with GrpcInference.for_server(server) as client:
        yield client


def same(a: Any, b: Any) -> bool:
    """Equal JSON, floats to 1e-6 (a batch of other requests may pad a sentence differently)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, abs_tol=1e-6)
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("name", sorted(zoo.models()))
def test_every_zoo_model_answers_over_grpc_as_over_http(server, grpc_client, name: str) -> None:
    model = zoo.get(name)
    payloads = model.payloads(seed=3)
    cases = [(body, ctype, check) for _, body, ctype, check in model.smoke_cases()]
    cases += [(payloads.next(), payloads.content_type, payloads.check) for _ in range(6)]
    for body, content_type, check in cases:
        http = server.client.predict(name, body, content_type)
        assert http.status_code == 200, http.text[:200]
        answer = json.loads(grpc_client.predict(name, body))
        assert same(answer, http.json()), (name, body[:80])
        assert check(answer) is None, (name, body[:80])


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_is_a_grpc_error_with_the_http_message(server, grpc_client, name: str) -> None:
    body, field = BAD[name]
    http = server.client.predict(name, body)
    assert http.status_code == 400 and http.json()["field"] == field
    # TorchServe 0.12 sends the handler's 400 as an OK reply carrying the same body ...
    assert grpc_client.predict_raw(name, body) == http.content
    # ... which the client raises as the gRPC status it stands for.
    with pytest.raises(GrpcCallError) as refused:
        grpc_client.predict(name, body)
    assert refused.value.code == "INVALID_ARGUMENT" and refused.value.message == http.json()["message"]
    assert refused.value.body["field"] == field


def test_the_server_s_own_refusals_are_grpc_statuses(grpc_client) -> None:
    with pytest.raises(GrpcCallError, match="Model not found: nope"):
        grpc_client.predict("nope", b"{}")
    with pytest.raises(GrpcCallError, match="max_request_size") as too_big:  # 1 MiB cap, as over HTTP (413)
        grpc_client.predict("minilm", json.dumps({"text": "a " * 600_000}).encode())
    assert too_big.value.code == "CANCELLED"


def test_a_missing_or_wrong_key_is_refused(server, grpc_client) -> None:
    assert grpc_client.ping() == "Healthy"
    body = zoo.get("maintenance").smoke_cases()[0][1]
    for key in (None, "wrong-key"):
        with GrpcInference(grpc_target(server.props), lambda: key) as client:
            with pytest.raises(TokenRefused, match="Token Authorization failed"):
                client.predict("maintenance", body)
            with pytest.raises(TokenRefused):
                client.ping()


def test_cli_predict_over_grpc_prints_what_http_prints(server) -> None:
    env = dict(os.environ, MAAS_CONFIG=str(server.layout.config), MAAS_RUN_DIR=str(server.layout.run_dir),
               MAAS_MODEL_STORE=str(server.layout.model_store))
    body = zoo.get("maintenance").smoke_cases()[1][1]

    def maas(*args: str, stdin: bytes) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "maas.cli", "predict", *args, "maintenance", "-"], input=stdin,
                              env=env, capture_output=True, timeout=120)

    over_grpc, over_http = maas("--grpc", stdin=body), maas(stdin=body)
    assert over_grpc.returncode == 0, over_grpc.stderr
    assert json.loads(over_grpc.stdout) == json.loads(over_http.stdout)
    bad = maas("--grpc", stdin=b"{oops")
    assert bad.returncode == 1 and b"not valid JSON" in bad.stdout and b"gRPC INVALID_ARGUMENT" in bad.stderr


def test_a_load_test_over_grpc(server, tmp_path: Path) -> None:
    slo = SLO(users=4, spawn_rate=4, warmup_s=1, run_time_s=4)
    test = loadtest.LoadTest("maintenance", slo, protocol="grpc", grpc_target=grpc_target(server.props))
    summary, out = loadtest.run(test, server.endpoints.inference, server.layout.key_file, tmp_path,
                                worker_restarts=server.worker_restarts)
    assert summary["protocol"] == "grpc" and summary["host"] == test.grpc_target
    assert summary["requests"] > 20 and summary["failures"] == 0 and summary["passed"], summary
    assert (out / "throughput_latency.png").is_file()


# ---- the Open Inference Protocol (KServe v2) over gRPC -------------------------------------------
def v2_inputs(name: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    if name == "maintenance":
        return {"features": _maintenance_rows()}
    if name == "digits":
        return {"pixels": rng.integers(0, 17, (2, 1, 8, 8)).astype(np.float32)}
    ids = np.array([[101, 7592, 2088, 102, 0], [101, 2023, 2003, 1037, 102]], dtype=np.int64)
    return {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int64)}


def _maintenance_rows() -> np.ndarray:
    from maas.export.zoo import maintenance

    return maintenance.generate(3, seed=4).features()


def v2_over_http(server, name: str, inputs: dict[str, np.ndarray]) -> Any:
    body = {"inputs": [{"name": k, "datatype": {"float32": "FP32", "int64": "INT64"}[str(v.dtype)],
                        "shape": list(v.shape), "data": v.ravel().tolist()} for k, v in inputs.items()]}
    return server.client.request("inference", "POST", f"/v2/models/{name}/infer", json=body)


@pytest.mark.parametrize("name", sorted(zoo.models()))
def test_v2_over_grpc_answers_as_v2_over_http(server, grpc_client, name: str) -> None:
    inputs = v2_inputs(name)
    http = v2_over_http(server, name, inputs)
    assert http.status_code == 200, http.text[:200]
    over_grpc = grpc_client.v2_infer(name, inputs)
    for out in http.json()["outputs"]:
        got = over_grpc[out["name"]]
        assert list(got.shape) == out["shape"] and np.allclose(got.ravel(), out["data"], atol=1e-6), out["name"]


def test_a_bad_v2_request_over_grpc_is_refused_and_kills_no_worker(server, grpc_client) -> None:
    """TorchServe 0.12's gRPC v2 frontend killed the worker (and its batch) on any refusal whose body
    lacked the v2 answer fields; the handlers' refusals now carry them (handlers/v2.py)."""
    good = {"features": _maintenance_rows()}
    bad = {"features": _maintenance_rows()[:, :7]}
    restarts = server.worker_restarts()
    expected = v2_over_http(server, "maintenance", bad)
    assert expected.status_code == 400
    with ThreadPoolExecutor(8) as pool:  # refusals and answers in the same batches
        futures = [pool.submit(grpc_client.v2_infer, "maintenance", bad if i % 2 else good) for i in range(16)]
    for i, future in enumerate(futures):
        if i % 2:
            with pytest.raises(GrpcCallError) as refused:
                future.result()
            assert refused.value.code == "INVALID_ARGUMENT" and refused.value.message == expected.json()["error"]
        else:
            assert future.result()["failure_probability"].shape == (3,)
    assert server.worker_restarts() == restarts


def test_tritonclient_grpc_cannot_call_torchserve_s_v2_service(server) -> None:
    """Documented in docs/how-to/serve-and-call.md: TorchServe 0.12 names its v2 service after its own
    proto package, so Triton's client (inference.GRPCInferenceService) finds no such method."""
    import tritonclient.grpc as triton_grpc
    from tritonclient.utils import InferenceServerException

    key = server.client.fresh_key("inference")
    client = triton_grpc.InferenceServerClient(grpc_target(server.props))
    with pytest.raises(InferenceServerException, match="UNIMPLEMENTED"):
        client.is_server_live(headers={"authorization": f"Bearer {key}"})

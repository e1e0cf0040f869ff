"""The maintenance handler with a fake TorchServe context: parsing, validation, batching."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ort_base import InputError, ModelIntegrityError, choose_providers, worker_threads

from conftest import FakeContext, call
from maas.export.zoo import maintenance as m

GOOD = {"type": "L", "air_temperature_k": 298.1, "process_temperature_k": 308.6,
        "rotational_speed_rpm": 1551, "torque_nm": 42.8, "tool_wear_min": 0}


def test_single_record_answer_shape(maintenance_handler) -> None:
    (answer,), ctx = call(maintenance_handler, json.dumps(GOOD).encode())
    assert set(answer) == {"failure_probability", "failure", "failure_modes"}
    assert 0 <= answer["failure_probability"] <= 1 and answer["failure"] is False
    assert list(answer["failure_modes"]) == list(m.FAILURE_MODES)
    assert ctx.status == {} and ctx.headers[0]["X-Model-Version"] == "1.0"


def test_answers_equal_onnx_runtime_in_process(maintenance_handler, model_dir: Path) -> None:
    records = m.generate(40, seed=5)
    bodies = [json.dumps(records.as_json(i)).encode() for i in range(40)]
    answers, _ = call(maintenance_handler, *bodies)
    feats = np.array([[1.0 if records.as_json(i)["type"] == t else 0.0 for t in m.PRODUCT_TYPES]
                      + [records.as_json(i)[f] for f in m.NUMERIC_FIELDS] for i in range(40)], dtype=np.float32)
    prob, modes = ort.InferenceSession(str(model_dir / "model.onnx")).run(None, {"features": feats})
    assert np.allclose([a["failure_probability"] for a in answers], prob, atol=1e-6)
    assert np.allclose([list(a["failure_modes"].values()) for a in answers], modes, atol=1e-6)


def test_list_request_gets_a_list(maintenance_handler) -> None:
    (answer,), _ = call(maintenance_handler, json.dumps([GOOD, {**GOOD, "type": "H"}]).encode())
    assert isinstance(answer, list) and len(answer) == 2


def test_already_decoded_json_body_is_accepted(maintenance_handler) -> None:
    (answer,), _ = call(maintenance_handler, dict(GOOD))  # TorchServe decodes application/json
    assert "failure_probability" in answer


BAD = [
    (b"", None, "empty"),
    (b"   ", None, "empty"),
    (b"{not json", None, "not valid JSON"),
    (b"\xff\xfe\x00junk", None, "not UTF-8"),
    (b"[]", None, "empty list"),
    (b'"just text"', None, "JSON object or a list"),
    (b"42", None, "JSON object or a list"),
    (b"[" * 100_000 + b"]" * 100_000, None, "nested too deeply"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "torque_nm"}).encode(), "torque_nm", "missing"),
    (json.dumps({**GOOD, "colour": "red"}).encode(), "colour", "unknown field"),
    (json.dumps({**GOOD, "torque_nm": "42"}).encode(), "torque_nm", "must be a number"),
    (json.dumps({**GOOD, "torque_nm": True}).encode(), "torque_nm", "must be a number"),
    (json.dumps({**GOOD, "torque_nm": None}).encode(), "torque_nm", "must be a number"),
    (json.dumps({**GOOD, "torque_nm": [1]}).encode(), "torque_nm", "must be a number"),
    (b'{"type": "L", "air_temperature_k": NaN, "process_temperature_k": 308.6, "rotational_speed_rpm": 1551,'
     b' "torque_nm": 42.8, "tool_wear_min": 0}', "air_temperature_k", "finite"),
    (json.dumps({**GOOD, "tool_wear_min": 1e400}).encode(), "tool_wear_min", "finite"),
    (json.dumps({**GOOD, "tool_wear_min": 10**30}).encode(), "tool_wear_min", "outside the accepted range"),
    (json.dumps({**GOOD, "torque_nm": -5}).encode(), "torque_nm", "outside the accepted range"),
    (json.dumps({**GOOD, "type": "X"}).encode(), "type", "must be one of"),
    (json.dumps({**GOOD, "type": 1}).encode(), "type", "must be one of"),
    (json.dumps([GOOD, "x"]).encode(), "[1]", "must be a JSON object"),
    (json.dumps([GOOD, {**GOOD, "torque_nm": "x"}]).encode(), "[1].torque_nm", "must be a number"),
]


@pytest.mark.parametrize("body,field,problem", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_input_gets_400_naming_the_field(maintenance_handler, body, field, problem) -> None:
    (answer,), ctx = call(maintenance_handler, body)
    assert ctx.status[0][0] == 400
    assert answer["code"] == 400 and problem in answer["message"]
    assert answer.get("field") == field


def test_too_many_records_is_413(maintenance_handler) -> None:
    (answer,), ctx = call(maintenance_handler, json.dumps([GOOD] * 257).encode())
    assert ctx.status[0][0] == 413 and "limit is 256" in answer["message"]


def test_bad_request_never_fails_its_batch_neighbours(maintenance_handler) -> None:
    bodies = [json.dumps(GOOD).encode(), b"{oops", json.dumps([GOOD, GOOD]).encode(), json.dumps({**GOOD, "type": "Q"}).encode()]
    answers, ctx = call(maintenance_handler, *bodies)
    assert sorted(ctx.status) == [1, 3]
    assert "failure_probability" in answers[0] and len(answers[2]) == 2
    assert answers[0] == answers[2][0]


def test_tampered_model_is_refused_before_the_session(model_dir: Path) -> None:
    from maintenance import MaintenanceHandler

    data = bytearray((model_dir / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (model_dir / "model.onnx").write_bytes(bytes(data))
    handler = MaintenanceHandler()
    with pytest.raises(ModelIntegrityError, match="sha256"):
        handler.initialize(FakeContext(model_dir))
    assert handler.session is None


def test_gpu_id_without_cuda_falls_back_to_cpu(model_dir: Path) -> None:
    """onnxruntime-gpu on a machine without CUDA: the session still comes up, on CPU."""
    from maintenance import MaintenanceHandler

    ctx = FakeContext(model_dir)
    ctx.system_properties["gpu_id"] = 0
    handler = MaintenanceHandler()
    handler.initialize(ctx)
    assert handler.provider in ("CUDAExecutionProvider", "CPUExecutionProvider")
    (answer,), _ = call(handler, json.dumps(GOOD).encode())
    assert "failure_probability" in answer


def test_providers_and_threads() -> None:
    assert choose_providers(None) == ["CPUExecutionProvider"]
    with_gpu = choose_providers(0)
    assert with_gpu[-1] == "CPUExecutionProvider"
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert with_gpu[0] == ("CUDAExecutionProvider", {"device_id": 0})
    assert worker_threads(3, 4) == 3
    assert 1 <= worker_threads(0, 1000) and worker_threads(0, 1) >= worker_threads(0, 2)


def test_pod_cpu_request_bounds_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    # In a pod every node core is visible: MAAS_CPU_CORES (the CPU request) must win.
    monkeypatch.setenv("MAAS_CPU_CORES", "4")
    assert worker_threads(0, 2) == 2 and worker_threads(0, 8) == 1 and worker_threads(3, 2) == 3
    monkeypatch.setenv("MAAS_CPU_CORES", "junk")
    assert worker_threads(0, 1) >= 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=25), children, max_size=8),
    max_leaves=30,
)
record_like = st.fixed_dictionaries(
    {}, optional={k: json_values | st.floats() for k in ["type", *m.NUMERIC_FIELDS]}
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=json_values | record_like | st.lists(record_like, max_size=4) | st.binary(max_size=64))
def test_preprocess_raises_only_input_error(maintenance_handler, payload) -> None:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    try:
        inputs, _ = maintenance_handler.preprocess(body)
    except InputError as err:
        assert 400 <= err.status < 500 and err.message
        return
    feats = inputs["features"]
    assert feats.dtype == np.float32 and feats.shape[1] == 8 and np.isfinite(feats).all()
    assert all(math.isfinite(v) for v in feats.ravel())


def test_io_binding_gives_the_same_answers(maintenance_handler) -> None:
    feeds = {"features": m.generate(5, seed=3).features()}
    plain = maintenance_handler._session_run(feeds)
    maintenance_handler.use_io_binding = True  # "auto" turns it on for CUDA only; CPU can run it too
    bound = maintenance_handler._session_run(feeds)
    for a, b in zip(plain, bound):
        assert np.array_equal(a, b)


def test_a_silent_cpu_fallback_fails_loudly_when_cuda_is_required(model_dir: Path) -> None:
    import yaml
    from maintenance import MaintenanceHandler

    config = yaml.safe_load((model_dir / "model-config.yaml").read_text())
    config["handler"]["require_cuda"] = True
    ctx = FakeContext(model_dir, yaml_config=config)
    ctx.system_properties["gpu_id"] = 0
    handler = MaintenanceHandler()
    try:
        handler.initialize(ctx)
    except RuntimeError as exc:
        assert "fell back to CPU" in str(exc) and "require_cuda" in str(exc)
    else:  # a machine whose ORT really runs CUDA
        assert handler.provider == "CUDAExecutionProvider" and handler.use_io_binding


hostile_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=12) | st.integers(0xD800, 0xDFFF).map(chr)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(st.one_of(
    st.fixed_dictionaries({"type": hostile_text}),
    st.dictionaries(hostile_text, json_values, max_size=3),
    json_values, st.binary(max_size=32)), min_size=1, max_size=6))
def test_a_hostile_batch_gets_one_framable_answer_per_request(maintenance_handler, batch) -> None:
    """handle() never raises, answers each request with ASCII JSON, and sets only phrases and
    headers TorchServe can frame (FakeContext asserts it, as TorchServe's worker would die)."""
    good = json.dumps({"type": "L", "air_temperature_k": 298.1, "process_temperature_k": 308.6,
                       "rotational_speed_rpm": 1551, "torque_nm": 42.8, "tool_wear_min": 0}).encode()
    requests = [{"body": good}] + [{"body": b if isinstance(b, bytes) else json.dumps(b).encode()} for b in batch]
    ctx = FakeContext(Path("."))
    answers = maintenance_handler.handle(requests, ctx)
    assert len(answers) == len(requests) and all(isinstance(a, (str, bytes)) and a.isascii() for a in answers)
    assert 0 not in ctx.status and json.loads(answers[0])["failure"] is False  # the valid neighbour
    for idx in range(1, len(requests)):
        code = ctx.status.get(idx, (200, ""))[0]
        assert code == 200 or 400 <= code < 500, (code, answers[idx])


def test_each_batch_emits_the_handler_metrics_the_dashboards_read(maintenance_handler) -> None:
    """MaasRequests, MaasRejectedRequests, batch sizes and stage times, per model and provider."""
    _, ctx = call(maintenance_handler, json.dumps(GOOD).encode(), b"{}", json.dumps([GOOD, GOOD]).encode())
    metrics = ctx.metrics
    assert metrics.values("MaasRequests") == [3] and metrics.values("MaasRejectedRequests") == [1]
    assert metrics.values("MaasBatchRequests") == [3] and metrics.values("MaasBatchItems") == [3]
    for stage in ("MaasPreprocessMs", "MaasInferenceMs", "MaasPostprocessMs"):
        (ms,) = metrics.values(stage)
        assert 0 <= ms < 10_000
    dims = {tuple(sorted(d.items())) for _, _, d in metrics.emitted}
    assert dims == {(("Level", "Model"), ("ModelName", "maintenance"), ("Provider", maintenance_handler.provider))}


def test_a_first_start_emits_zero_worker_restarts(tmp_path: Path, tiny_maintenance) -> None:
    """The series exists from the first start (0), so a Prometheus increase() can fire on the first restart."""
    import importlib

    from conftest import unpacked

    model_dir = unpacked(tiny_maintenance, tmp_path / "m")
    handler = importlib.import_module(tiny_maintenance.name).MaintenanceHandler()
    ctx = FakeContext(model_dir, name=tiny_maintenance.name)
    handler.initialize(ctx)
    assert ctx.metrics.values("MaasWorkerRestarts") == [0]

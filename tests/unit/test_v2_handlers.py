"""Open Inference Protocol (KServe v2) requests through every handler, with a fake context."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import FakeContext, call, zoo_handlers
from maas.export.zoo import maintenance as m

ROW = [1.0, 0.0, 0.0, 298.1, 308.6, 1551.0, 42.8, 0.0]


@pytest.fixture(scope="module")
def handlers(tiny_models, tmp_path_factory):
    return zoo_handlers(tiny_models, tmp_path_factory)


def v2(name, datatype, shape, data, **extra):
    return {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}], **extra}


def test_v2_answers_equal_the_json_api(handlers) -> None:
    (tensor, record), ctx = call(handlers["maintenance"], v2("features", "FP32", [1, 8], ROW, id="r1"),
                                 {"type": "L", "air_temperature_k": 298.1, "process_temperature_k": 308.6,
                                  "rotational_speed_rpm": 1551, "torque_nm": 42.8, "tool_wear_min": 0})
    assert ctx.status == {} and tensor["id"] == "r1" and tensor["model_name"] == "maintenance"
    outputs = {o["name"]: o for o in tensor["outputs"]}
    assert outputs["failure_probability"]["shape"] == [1] and outputs["failure_probability"]["datatype"] == "FP32"
    assert outputs["failure_probability"]["data"][0] == pytest.approx(record["failure_probability"], abs=1e-6)
    assert outputs["mode_probabilities"]["shape"] == [1, 5]


def test_v2_batches_mix_with_json_requests_and_keep_their_order(handlers) -> None:
    rows = m.generate(6, seed=2).features()
    bodies = [v2("features", "FP32", [2, 8], rows[i:i + 2].ravel().tolist()) for i in (0, 2, 4)]
    answers, ctx = call(handlers["maintenance"], *bodies)
    got = np.concatenate([a["outputs"][0]["data"] for a in answers])
    alone = [call(handlers["maintenance"], v2("features", "FP32", [1, 8], r.tolist()))[0][0]["outputs"][0]["data"][0]
             for r in rows]
    assert np.allclose(got, alone, atol=1e-6) and ctx.status == {}


def test_v2_minilm_and_digits_and_requested_outputs(handlers) -> None:
    (emb,), _ = call(handlers["minilm"], {"inputs": [
        {"name": "input_ids", "datatype": "INT64", "shape": [1, 4], "data": [101, 7592, 2088, 102]},
        {"name": "attention_mask", "datatype": "INT64", "shape": [1, 4], "data": [1, 1, 1, 1]}],
        "outputs": [{"name": "sentence_embedding"}]})
    assert emb["outputs"][0]["shape"] == [1, 384]
    assert np.linalg.norm(emb["outputs"][0]["data"]) == pytest.approx(1.0, abs=1e-4)
    (probs,), _ = call(handlers["digits"], v2("pixels", "FP32", [1, 1, 8, 8], [0.0] * 64))
    assert probs["outputs"][0]["shape"] == [1, 10] and sum(probs["outputs"][0]["data"]) == pytest.approx(1.0, abs=1e-4)


BAD = [
    ("maintenance", v2("features", "FP64", [1, 8], ROW), "datatype must be FP32"),
    ("maintenance", v2("features", "FP32", [1, 9], ROW + [0.0]), "shape must match"),
    ("maintenance", v2("features", "FP32", [2, 8], ROW), "needs 16"),
    ("maintenance", v2("feats", "FP32", [1, 8], ROW), "inputs must be exactly"),
    ("maintenance", v2("features", "FP32", [1, 8], ["x"] * 8), "must be float32 numbers"),
    # a long string among numbers is refused as it is, not made a string array of len x count characters
    ("maintenance", v2("features", "FP32", [1, 8], ROW[:7] + ["x" * 100_000]), "must be float32 numbers"),
    ("maintenance", v2("features", "FP32", [1, 8], [ROW[:4], ROW[4:7]]), "rectangular"),
    ("maintenance", v2("features", "FP32", [1, 8], ROW[:3] + [1e9] + ROW[4:]), "must be in"),
    ("maintenance", v2("features", "FP32", [1, 8], [0.5, 0.5] + ROW[2:]), "one-hot"),
    ("maintenance", {"inputs": [{"name": "features"}]}, "each input needs"),
    ("maintenance", v2("features", "FP32", [1, 8], ROW, outputs=[{"name": "nope"}]), "unknown output"),
    ("maintenance", v2("features", "FP32", [300, 8], ROW * 300), "the limit is 256"),
    ("digits", v2("pixels", "FP32", [1, 1, 8, 8], [99.0] * 64), "pixel values"),
    ("minilm", {"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [1, 2], "data": [101, 999999]},
                           {"name": "attention_mask", "datatype": "INT64", "shape": [1, 2], "data": [1, 1]}]}, "token ids"),
    # JSON values the cast would change are refused, not wrapped or cut: 1.7 is no INT64, "7" and true are no numbers
    ("minilm", {"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [1, 2], "data": [101, 102.7]},
                           {"name": "attention_mask", "datatype": "INT64", "shape": [1, 2], "data": [1, 1]}]}, "fractional"),
    ("minilm", {"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [1, 2], "data": [101, 102]},
                           {"name": "attention_mask", "datatype": "INT64", "shape": [1, 2], "data": ["1", "1"]}]}, "int64 numbers"),
    ("minilm", {"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [1, 2], "data": [101, 2 ** 70]},
                           {"name": "attention_mask", "datatype": "INT64", "shape": [1, 2], "data": [True, True]}]}, "int64 numbers"),
    ("minilm", {"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [1, 2], "data": [101, 102]},
                           {"name": "attention_mask", "datatype": "INT64", "shape": [1, 2], "data": [True, True]}]}, "true/false"),
    # a shape whose product wraps around in int64 (np.prod) is counted in Python integers: a 400, not a 500
    ("minilm", {"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [4, 2 ** 62], "data": []},
                           {"name": "attention_mask", "datatype": "INT64", "shape": [4, 2 ** 62], "data": []}]}, "needs"),
    ("minilm", {"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [1, 600], "data": [101] * 600},
                           {"name": "attention_mask", "datatype": "INT64", "shape": [1, 600], "data": [1] * 600}]}, "the limit is 256"),
]


@pytest.mark.parametrize("model,body,problem", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_v2_requests_are_4xx_with_an_error_field(handlers, model, body, problem) -> None:
    (answer,), ctx = call(handlers[model], body)
    assert 400 <= ctx.status[0][0] < 500 and problem in answer["error"] and answer["error"] == answer["message"]


# TorchServe 0.12's gRPC Open Inference frontend reads id, model_name, model_version and outputs
# from every answer, refusals included, and kills the worker (and its batch) when one is missing.
FRONTEND_READS = {"id", "model_name", "model_version", "outputs"}


@pytest.mark.parametrize("bad,status,problem", [
    (v2("features", "FP32", [1, 7], ROW[:7], id="r9"), 400, "shape must match"),
    (v2("nope", "FP32", [1, 8], ROW), 400, "inputs must be exactly"),
    (v2("features", "INT64", [1, 8], [1] * 8), 400, "datatype must be FP32"),
    (v2("features", "FP32", [257, 8], ROW * 257), 413, "the limit is 256"),
])
def test_a_v2_refusal_carries_what_the_grpc_frontend_reads(handlers, bad, status, problem) -> None:
    (refusal, good), ctx = call(handlers["maintenance"], bad, v2("features", "FP32", [1, 8], ROW))
    assert ctx.status[0][0] == status and 1 not in ctx.status  # the neighbour is served
    assert problem in refusal["error"] and refusal["message"] == refusal["error"]  # REST fields stay
    assert FRONTEND_READS <= set(refusal) and refusal["id"] == bad.get("id", "")
    assert refusal["model_name"] == "maintenance" and refusal["model_version"] == "1.0"
    outputs = {o["name"]: o for o in refusal["outputs"]}
    assert outputs["error"] == {"name": "error", "datatype": "BYTES", "shape": [1], "data": [refusal["error"]]}
    assert outputs["error_code"]["data"] == [status] and outputs["error_code"]["datatype"] == "INT32"
    assert FRONTEND_READS - {"id"} <= set(good)


def test_refusals_of_other_requests_keep_their_own_shape(handlers) -> None:
    (refusal,), ctx = call(handlers["maintenance"], {"type": "X"})
    assert ctx.status[0][0] == 400 and "outputs" not in refusal and "model_name" not in refusal


# ---- the binary tensor data extension ----------------------------------------------------------
def binary_body(arrays: dict[str, np.ndarray], **extra) -> tuple[bytes, int]:
    """(body, JSON header length) as tritonclient sends it with binary_data=True."""
    from maas.handlers.dtypes import DTYPES

    header = json.dumps({"inputs": [{"name": n, "datatype": DTYPES[str(a.dtype)].v2, "shape": list(a.shape),
                                     "parameters": {"binary_data_size": a.nbytes}} for n, a in arrays.items()],
                         **extra}).encode()
    return header + b"".join(a.astype(a.dtype.newbyteorder("<")).tobytes() for a in arrays.values()), len(header)


def split_answer(raw: bytes, length: int) -> dict[str, np.ndarray]:
    from maas.handlers.dtypes import BY_V2

    header, tail, out = json.loads(raw[:length]), raw[length:], {}
    for o in header["outputs"]:
        size = o["parameters"]["binary_data_size"]
        out[o["name"]] = np.frombuffer(tail[:size], dtype=np.dtype(BY_V2[o["datatype"]]).newbyteorder("<")).reshape(o["shape"])
        tail = tail[size:]
    assert not tail
    return out


@pytest.mark.parametrize("with_header", [True, False])
def test_binary_tensors_in_and_out_equal_json_ones(handlers, with_header: bool) -> None:
    rows = m.generate(3, seed=4).features().astype(np.float32)
    body, length = binary_body({"features": rows}, parameters={"binary_data_output": True})
    ctx = FakeContext(Path("."))
    if with_header:  # tritonclient sends it; without it the JSON header's end is found by parsing
        ctx.request_headers = {0: {"inference-header-content-length": str(length)}}
    json_body = json.dumps(v2("features", "FP32", [3, 8], rows.ravel().tolist())).encode()
    raw, as_json = handlers["maintenance"].handle([{"body": body}, {"body": json_body}], ctx)
    assert ctx.status == {} and ctx.headers[0]["content-type"] == "application/octet-stream"
    got = split_answer(raw, int(ctx.headers[0]["Inference-Header-Content-Length"]))
    want = {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in json.loads(as_json)["outputs"]}
    assert set(got) == set(want) and all(np.allclose(got[n], want[n], atol=1e-6) for n in want)
    assert len(raw) - int(ctx.headers[0]["Inference-Header-Content-Length"]) == 4 * (3 + 3 * 5)  # float32 bytes


def test_binary_outputs_can_be_asked_for_one_by_one(handlers) -> None:
    rows = m.generate(2, seed=5).features().astype(np.float32)
    body = v2("features", "FP32", [2, 8], rows.ravel().tolist(),
              outputs=[{"name": "failure_probability", "parameters": {"binary_data": True}}, {"name": "mode_probabilities"}])
    ctx = FakeContext(Path("."))
    (raw,) = handlers["maintenance"].handle([{"body": json.dumps(body).encode()}], ctx)
    length = int(ctx.headers[0]["Inference-Header-Content-Length"])
    header = json.loads(raw[:length])
    assert [o["name"] for o in header["outputs"]] == ["failure_probability", "mode_probabilities"]
    assert "data" not in header["outputs"][0] and len(header["outputs"][1]["data"]) == 10
    assert len(raw) - length == header["outputs"][0]["parameters"]["binary_data_size"] == 8


@pytest.mark.parametrize("cut,problem", [
    (lambda b, n: (b[:-4], n), "needs 32 bytes after the JSON header; the body has 28"),
    (lambda b, n: (b + b"xx", n), "2 bytes follow the JSON header"),
    (lambda b, n: (b, "abc"), "must be a byte count"),
    (lambda b, n: (b, len(b) + 5), "the body has"),
    (lambda b, n: (b.replace(b'"binary_data_size": 32', b'"binary_data_size": -1'), n), "must be a byte count"),
])
def test_broken_binary_requests_are_400_naming_the_problem(handlers, cut, problem) -> None:
    body, length = binary_body({"features": np.ones((1, 8), np.float32)})
    body, length = cut(body, length)
    ctx = FakeContext(Path("."))
    ctx.request_headers = {0: {"Inference-Header-Content-Length": str(length)}, 1: {}}
    bad, good = handlers["maintenance"].handle([{"body": body}, {"body": json.dumps(v2("features", "FP32", [1, 8], ROW)).encode()}], ctx)
    assert ctx.status[0][0] in (400, 413) and problem in json.loads(bad)["message"], bad
    assert 1 not in ctx.status and json.loads(good)["outputs"]


def test_a_json_body_with_non_ascii_text_and_a_trailing_newline_is_all_json(handlers) -> None:
    body = json.dumps(v2("features", "FP32", [1, 8], ROW, id="pompe-é"), ensure_ascii=False).encode() + b"\n"
    ctx = FakeContext(Path("."))
    (answer,) = handlers["maintenance"].handle([{"body": body}], ctx)
    assert ctx.status == {} and json.loads(answer)["id"] == "pompe-é"

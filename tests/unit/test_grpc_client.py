"""The gRPC client's pure parts: stubs generated from TorchServe's own jar, and how a reply that
is a handler's error body becomes a gRPC error."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from maas import grpc_stubs
from maas.grpc_client import HTTP_TO_GRPC, handler_error, refused


def test_stubs_are_generated_from_the_installed_torchserve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAAS_CACHE_DIR", str(tmp_path))
    grpc_stubs.stubs.cache_clear()
    pb = grpc_stubs.stubs()
    (built,) = (tmp_path / "grpc").iterdir()  # one folder, named by the jar's hash
    assert sorted(p.name for p in (built / grpc_stubs.PACKAGE).glob("*_pb2*.py")) == sorted(
        f"{n}.py" for n in vars(pb))
    service = pb.inference_pb2.DESCRIPTOR.services_by_name["InferenceAPIsService"]
    assert {"Ping", "Predictions", "StreamPredictions", "StreamPredictions2"} <= set(service.methods_by_name)
    v2 = pb.open_inference_grpc_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert v2.full_name == "org.pytorch.serve.grpc.openinference.GRPCInferenceService"  # not Triton's name
    assert not list(tmp_path.glob("grpc/.build-*"))  # the temporary build folder is gone


@pytest.mark.parametrize("status,code", [(400, "INVALID_ARGUMENT"), (413, "RESOURCE_EXHAUSTED"), (500, "INTERNAL"),
                                         (418, "UNKNOWN")])
def test_a_handler_error_body_becomes_its_grpc_code(status: int, code: str) -> None:
    body = {"code": status, "type": "InputError", "message": "must be a string, got int", "field": "text"}
    for encoded in (json.dumps(body, separators=(",", ":")), json.dumps(body)):  # orjson's form, json.dumps's
        error = refused(encoded.encode())
        assert error is not None and error.code == code and error.message == body["message"] and error.body == body
    assert HTTP_TO_GRPC.get(status, "UNKNOWN") == code


@pytest.mark.parametrize("answer", [
    b'{"failure_probability":0.01,"failure":false}', b'{"code": 400}', b'{"code":"400","message":"x"}',
    b'{"code":200,"message":"fine"}', b'{"code":400,', b"\x89PNG", b"",
])
def test_answers_are_not_mistaken_for_errors(answer: bytes) -> None:
    assert handler_error(answer) is None and refused(answer) is None

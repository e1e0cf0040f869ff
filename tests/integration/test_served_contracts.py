"""The contracts every served model keeps, the zoo's and a packaged one alike, tested the same
way for each: the server answers what the archive's own handler answers in process; a malformed
request gets a 4xx JSON body naming the problem and the worker stays up; an oversized body gets
413 and the model keeps serving. Each model's bodies come from the client registry
(maas.export.clients), so a new zoo or packaged model joins by being in SERVED."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from conftest import Built
from maas.export import zoo

SERVED = [*zoo.models(), "magika"]  # every zoo model, and one packaged from a file no one here wrote
MALFORMED = [
    (b'{"inputs": ', "application/json"),  # cut-off JSON
    (json.dumps({"unexpected": [1, 2, 3]}).encode(), "application/json"),  # JSON of the wrong shape
]


@pytest.fixture(scope="module")
def served(server, model_store: Path, built_models: dict[str, Built], tmp_path_factory: pytest.TempPathFactory):
    """The session's server with Magika (packaged from its PyPI wheel) registered beside the zoo;
    -> (server, {model: archive})."""
    from maas.demo import magika_files
    from maas.deploy import deploy, undeploy
    from maas.export.package import PackageOptions, package_model

    work = tmp_path_factory.mktemp("contracts")
    onnx_file, spec = magika_files(work / "third-party")
    made = package_model(PackageOptions(onnx=onnx_file, spec_file=spec), work / "build", model_store)
    deploy(server.client, model_store, "magika", None, 1, timeout=180)
    yield server, {**{n: b.mar for n, b in built_models.items()}, "magika": made.mar}
    undeploy(server.client, "magika")
    made.mar.unlink()


@pytest.fixture(scope="module")
def in_process(served, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Each archive's handler initialised in this process, as a worker would be."""
    from maas.inprocess import load_handler

    _, archives = served
    return {name: load_handler(mar, tmp_path_factory.mktemp(f"in-process-{name}"), workers=1)
            for name, mar in archives.items()}


def bodies(model: str, store: Path, n: int = 6) -> tuple[list[bytes], str]:
    from maas.export.clients import client_for

    payloads = client_for(model, store).payloads(seed=3)
    return payloads.bodies[:n], payloads.content_type


def close(a: Any, b: Any, path: str = "") -> str | None:
    """Where two answers differ beyond float rounding (None when they agree)."""
    if isinstance(a, float) or isinstance(b, float):
        ok = isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5)
        return None if ok else f"{path}: {a} != {b}"
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return f"{path}: keys {sorted(a)} != {sorted(b)}"
        return next((d for k in a if (d := close(a[k], b[k], f"{path}.{k}"))), None)
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} items != {len(b)}"
        return next((d for i, (x, y) in enumerate(zip(a, b)) if (d := close(x, y, f"{path}[{i}]"))), None)
    return None if a == b else f"{path}: {a!r} != {b!r}"


def restarts(server, model: str) -> int:
    return sum(n for (name, _), n in server.worker_restarts().items() if name == model)


@pytest.mark.parametrize("model", SERVED)
def test_served_answers_equal_the_archives_handler_in_process(served, in_process, model_store: Path, model: str) -> None:
    """One request at a time (batches of one on both sides: the same kernels), every answer alike."""
    server, _ = served
    handler, context = in_process[model]
    sent, content_type = bodies(model, model_store)
    for body in sent:
        resp = server.client.predict(model, body, content_type)
        assert resp.status_code == 200, resp.text[:300]
        (local,) = handler.handle([{"body": body}], context)
        assert (where := close(resp.json(), json.loads(local))) is None, where


@pytest.mark.parametrize("model", SERVED)
def test_every_model_reads_the_tensor_form_and_v2_alike(served, in_process, model_store: Path, model: str) -> None:
    """Whatever a model's own request form, the tensors it becomes can be sent as they are: as the
    tensor form {"inputs": {...}} (JSON and .npz) and as v2, with the same numbers back, and the
    spec's labels named in "predictions"."""
    import io

    import numpy as np

    from maas.handlers.dtypes import DTYPES

    server, _ = served
    handler, _ = in_process[model]
    (body,), _ = bodies(model, model_store, 1)
    arrays, _ = handler.preprocess(body)  # what its own form becomes
    as_json = server.client.predict(model, json.dumps({"inputs": {k: v.tolist() for k, v in arrays.items()}}).encode())
    packed = io.BytesIO()
    np.savez(packed, **arrays)
    as_npz = server.client.predict(model, packed.getvalue(), "application/octet-stream")
    v2 = server.client.request("inference", "POST", f"/v2/models/{model}/infer", json={"inputs": [
        {"name": k, "datatype": DTYPES[str(v.dtype)].v2, "shape": list(v.shape), "data": v.ravel().tolist()}
        for k, v in arrays.items()]})
    assert as_json.status_code == as_npz.status_code == v2.status_code == 200, (as_json.text[:200], v2.text[:200])
    want = {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in v2.json()["outputs"]}
    for answer in (as_json.json(), as_npz.json()):
        assert set(answer["outputs"]) == set(want)
        for name, value in want.items():
            assert np.allclose(answer["outputs"][name], value, rtol=1e-4, atol=1e-5), (model, name)
    labelled = [o["name"] for o in handler.manifest["outputs"] if o.get("labels")]
    assert sorted(as_json.json().get("predictions", {})) == sorted(labelled)


@pytest.mark.parametrize("model", SERVED)
@pytest.mark.parametrize("case", range(len(MALFORMED)), ids=["cut-off-json", "wrong-shape"])
def test_a_malformed_request_gets_a_4xx_json_body_and_the_worker_stays(served, model_store: Path, model: str,
                                                                        case: int) -> None:
    server, _ = served
    before = restarts(server, model)
    body, content_type = MALFORMED[case]
    resp = server.client.predict(model, body, content_type)
    assert 400 <= resp.status_code < 500, resp.text[:300]
    assert resp.json()["message"], resp.text
    good, good_type = bodies(model, model_store, 1)
    assert server.client.predict(model, good[0], good_type).status_code == 200
    assert restarts(server, model) == before


@pytest.mark.parametrize("model", SERVED)
def test_an_oversized_body_is_413_and_the_model_keeps_serving(served, model_store: Path, model: str) -> None:
    server, _ = served
    cap = int(server.props["max_request_size"])
    resp = server.client.predict(model, b'{"inputs": [' + b"1," * (cap // 2) + b"1]}")
    assert resp.status_code == 413
    good, good_type = bodies(model, model_store, 1)
    assert server.client.predict(model, good[0], good_type).status_code == 200

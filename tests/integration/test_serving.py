"""Against a real TorchServe: served answers, bad input, batching isolation, tokens, recovery."""
from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import psutil
import pytest
import requests

from maas.client import TokenRefused
from maas.export.zoo import maintenance as m
from maas.export.zoo.maintenance import HEALTHY
from maas.keys import read_keys


def worker_pids(server, model: str = "maintenance") -> list[int]:
    return sorted(w["pid"] for w in server.client.describe(model)[0]["workers"])


def post(server, body: bytes, token: str | None = "fresh", content_type: str = "application/json") -> requests.Response:
    headers = {"Content-Type": content_type}
    if token == "fresh":
        token = read_keys(server.layout.key_file)["inference"].value
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return requests.post(f"{server.endpoints.inference}/predictions/maintenance", data=body, headers=headers, timeout=30)


def test_served_answers_equal_in_process_onnx_runtime(server, maintenance_built) -> None:
    records = m.generate(48, seed=11)
    bodies = [records.as_json(i) for i in range(48)]
    # Concurrent single-record requests, so TorchServe really batches them (batchSize 16).
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda b: server.client.predict_json("maintenance", b), bodies))
    feats = np.array([[1.0 if b["type"] == t else 0.0 for t in m.PRODUCT_TYPES] + [b[f] for f in m.NUMERIC_FIELDS]
                      for b in bodies], dtype=np.float32)
    session = ort.InferenceSession(str(maintenance_built.build_dir / "model.onnx"))
    prob, modes = session.run(None, {"features": feats})
    assert np.allclose([a["failure_probability"] for a in answers], prob, atol=1e-6)
    assert np.allclose([list(a["failure_modes"].values()) for a in answers], modes, atol=1e-6)
    assert [a["failure"] for a in answers] == list(prob >= 0.5)
    # and a list in one request gives the same answers in order
    assert server.client.predict_json("maintenance", bodies[:5]) == answers[:5]


def test_response_names_the_version_that_answered(server) -> None:
    resp = post(server, json.dumps(HEALTHY).encode())
    assert resp.status_code == 200 and resp.headers["X-Model-Version"] == "1.0"
    assert resp.headers["content-type"].startswith("application/json")


BAD = [
    (b"{not json", "application/json", "not valid JSON"),
    (b"", "application/json", "empty"),
    (b"\x00\xff\xfe junk \x80", "application/octet-stream", "not UTF-8"),
    (b"[" * 50_000 + b"]" * 50_000, "application/json", "nested too deeply"),
    (json.dumps({**HEALTHY, "torque_nm": "x"}).encode(), "application/json", "torque_nm"),
    (json.dumps({**HEALTHY, "type": "Z"}).encode(), "application/json", "type"),
    (json.dumps({k: v for k, v in HEALTHY.items() if k != "tool_wear_min"}).encode(), "application/json", "tool_wear_min"),
    (json.dumps({**HEALTHY, "extra": 1}).encode(), "application/json", "extra"),
    (b'{"type": "L", "air_temperature_k": NaN, "process_temperature_k": 308.6, "rotational_speed_rpm": 1551,'
     b' "torque_nm": 42.8, "tool_wear_min": 0}', "application/json", "finite"),
    (json.dumps({**HEALTHY, "torque_nm": 1e308}).encode(), "application/json", "outside the accepted range"),
    (b"[]", "application/json", "empty list"),
    (json.dumps(HEALTHY).encode(), "text/plain", None),  # JSON sent as text/plain is still understood
]


@pytest.mark.parametrize("body,content_type,expected", BAD, ids=[f"case{i}" for i in range(len(BAD))])
def test_bad_input_gets_4xx_json_and_the_worker_survives(server, body, content_type, expected) -> None:
    before = worker_pids(server)
    resp = post(server, body, content_type=content_type)
    if expected is None:
        assert resp.status_code == 200
    else:
        assert resp.status_code == 400, resp.text
        error = resp.json()
        assert error["code"] == 400 and (expected in error["message"] or expected == error.get("field"))
    assert worker_pids(server) == before
    assert post(server, json.dumps(HEALTHY).encode()).status_code == 200




def test_bad_requests_never_fail_batch_neighbours(server) -> None:
    good, bad = json.dumps(HEALTHY).encode(), json.dumps({**HEALTHY, "torque_nm": None}).encode()
    bodies = [bad if i % 3 == 0 else good for i in range(60)]
    with ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(lambda b: post(server, b).status_code, bodies))
    assert codes == [400 if i % 3 == 0 else 200 for i in range(60)]


def test_missing_or_wrong_token_is_refused(server) -> None:
    body = json.dumps(HEALTHY).encode()
    assert post(server, body, token=None).status_code in (400, 401)
    assert post(server, body, token="wrong").status_code in (400, 401)
    mgmt = f"{server.endpoints.management}/models"
    assert requests.get(mgmt, timeout=10).status_code in (400, 401)
    inference_key = read_keys(server.layout.key_file)["inference"].value
    assert requests.get(mgmt, headers={"Authorization": f"Bearer {inference_key}"}, timeout=10).status_code in (400, 401)
    assert post(server, body).status_code == 200


def test_client_renews_a_key_the_server_no_longer_accepts(server) -> None:
    """Keys rotated behind the CLI's back (another client renewed them): it re-reads the file."""
    old = read_keys(server.layout.key_file)["inference"].value
    server.client.renew_key("inference")
    assert read_keys(server.layout.key_file)["inference"].value != old
    assert post(server, json.dumps(HEALTHY).encode(), token=old).status_code in (400, 401)
    assert server.client.predict_json("maintenance", HEALTHY)["failure"] is False


def test_wrong_key_file_gives_a_clear_error(server, tmp_path) -> None:
    from maas.client import TorchServeClient

    bad = tmp_path / "key_file.json"
    bad.write_text(json.dumps({k: {"key": "nope"} for k in ("management", "inference", "API")}))
    with pytest.raises(TokenRefused):
        TorchServeClient(server.endpoints, bad).ping()


def test_dead_worker_is_replaced_and_the_server_keeps_answering(server) -> None:
    (pid,) = worker_pids(server)
    psutil.Process(pid).kill()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            workers = server.client.describe("maintenance")[0]["workers"]
            if workers and workers[0]["status"] == "READY" and workers[0]["pid"] != pid:
                break
        except Exception:  # noqa: BLE001 - the management API may briefly report the dead worker
            pass
        time.sleep(0.5)
    else:
        pytest.fail("worker was not replaced within 120 s")
    assert server.client.predict_json("maintenance", HEALTHY)["failure"] is False
    assert server.client.ping()["status"] == "Healthy"
    # The death is visible: in TorchServe's log (maas status), and as MaasWorkerRestarts for Prometheus.
    assert server.worker_restarts().get(("maintenance", "1.0"), 0) >= 1
    from maas.status_table import status_rows

    (row,) = [r for r in status_rows(server.client, "maintenance", restarts=server.worker_restarts())]
    assert row["worker_restarts"] >= 1
    metrics = requests.get(f"{server.endpoints.metrics}/metrics", timeout=10).text
    restarts = re.search(r'^MaasWorkerRestarts\{[^}]*ModelName="maintenance"[^}]*\}\s+(\S+)$', metrics, re.M)
    assert restarts and float(restarts.group(1)) >= 1, metrics[:2000]

"""/explanations/<model> on the real TorchServe: maintenance attributions, the digits occlusion
map, a clear 404 for minilm, and explanation latency measured by Locust like predictions."""
from __future__ import annotations

import json
import logging

from maas.loadtest import LoadTest, run
from maas.slo import SLO, Thresholds

log = logging.getLogger(__name__)
HDF = {"type": "L", "air_temperature_k": 302.5, "process_temperature_k": 310.5,
       "rotational_speed_rpm": 1290, "torque_nm": 52.0, "tool_wear_min": 30}


def explain(server, model: str, body: bytes, content_type: str = "application/json"):
    return server.client.request("inference", "POST", f"/explanations/{model}", data=body,
                                 headers={"Content-Type": content_type}, timeout=30)


def test_explanations_endpoints(server) -> None:
    resp = explain(server, "maintenance", json.dumps(HDF).encode())
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    gap = answer["failure_probability"] - answer["baseline_probability"]
    assert abs(answer["sum_of_attributions"] - gap) <= 1e-5
    assert max(answer["attributions"], key=lambda k: abs(answer["attributions"][k])) in (
        "rotational_speed_rpm", "air_temperature_k", "process_temperature_k")

    grid = [[0] * 8 for _ in range(8)]
    for r in range(1, 7):
        grid[r][3] = grid[r][4] = 16  # a "1"
    occl = explain(server, "digits", json.dumps({"pixels": grid}).encode()).json()
    assert len(occl["occlusion"]) == 8 and all(len(row) == 8 for row in occl["occlusion"])

    missing = explain(server, "minilm", json.dumps({"text": "hi"}).encode())
    assert missing.status_code == 404 and "not available" in missing.json()["message"]
    bad = explain(server, "maintenance", json.dumps({**HDF, "type": "Q"}).encode())
    assert bad.status_code == 400 and bad.json()["field"] == "type"


def test_explanation_latency_is_load_tested(server, tmp_path) -> None:
    slo = SLO(users=4, spawn_rate=4, run_time_s=6, warmup_s=1,
              thresholds=Thresholds(max_p95_ms=5000, max_p99_ms=10000, max_error_ratio=0.0, min_rps=1))
    for model in ("maintenance", "digits"):
        summary, folder = run(LoadTest(model, slo, label="explanations", endpoint="explanations"),
                              server.endpoints.inference, server.layout.key_file, tmp_path)
        log.info("%s explanations: %.0f req/s, p50 %.0f ms, p95 %.0f ms", model, summary["rps"],
                 summary["p50_ms"], summary["p95_ms"])
        assert summary["passed"], summary["broken"]
        assert summary["endpoint"] == "explanations"
        assert (folder / "summary.json").exists() and summary["requests"] > 10


def test_explanations_get_their_own_workers_under_another_name(server) -> None:
    """The documented setup: the same archive registered as maintenance-explain, so explanation
    traffic has its own workers and queue and cannot starve /predictions/maintenance."""
    server.client.management("POST", "/models", params={"url": "maintenance.mar", "model_name": "maintenance-explain",
                                                        "initial_workers": 1, "synchronous": "true"}, timeout=120)
    try:
        resp = explain(server, "maintenance-explain", json.dumps(HDF).encode())
        assert resp.status_code == 200 and "attributions" in resp.json()
        names = {m["modelName"] for m in server.client.list_models()}
        assert {"maintenance", "maintenance-explain"} <= names
    finally:
        server.client.management("DELETE", "/models/maintenance-explain", timeout=120)

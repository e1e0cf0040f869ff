"""A real Prometheus, started the way `maas monitor start` starts it, scraping a real TorchServe:
the handler's and TorchServe's series arrive (a language model's streaming ones too), every Grafana
dashboard query returns data, and a SIGKILLed worker raises MaasWorkerRestarted."""
from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import psutil
import pytest
import requests

from conftest import LLM, ROOT, bare_server, free_ports
from maas import deploy as d
from maas.export import zoo
from maas.monitor import Monitor, slo_models

MODELS = ("maintenance", "digits")


def eventually(what: str, check: Callable[[], Any], timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:g} s")
        time.sleep(2)


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory, built_models, llm_archive):
    """A TorchServe serving two zoo models and a language model, and the Prometheus watching it."""
    store = tmp_path_factory.mktemp("monitored_store")
    for name in MODELS:
        shutil.copy(built_models[name].mar, store / f"{name}.mar")
    shutil.copytree(llm_archive, store / LLM)
    ts = bare_server(tmp_path_factory, store)
    monitor = Monitor(ts.layout.run_dir, ts.endpoints.metrics, slo_models(), free_ports(1)[0])
    try:
        for name in (*MODELS, LLM):
            d.deploy(ts.client, store, name)
        monitor.start()
        yield ts, monitor
    finally:
        monitor.stop()
        ts.stop()


def send_traffic(ts, seconds: float = 12.0) -> int:
    """Valid and invalid requests for every model, spread over `seconds` (so rates have two samples);
    the language model's streams, one of them abandoned by its client each round."""
    sent, deadline = 0, time.monotonic() + seconds
    payloads = {name: zoo.get(name).payloads(seed=7) for name in MODELS}
    with ThreadPoolExecutor(4) as pool:
        while time.monotonic() < deadline:
            bodies = [(n, payloads[n].next(), payloads[n].content_type) for n in MODELS for _ in range(4)]
            bodies.append(("maintenance", b"{not json", "application/json"))  # a rejected one, too
            list(pool.map(lambda b: ts.client.predict(*b), bodies))
            list(pool.map(lambda hang_up: stream_generation(ts, hang_up), (False, False, True)))
            sent += len(bodies) + 3
            time.sleep(0.5)
    return sent


def stream_generation(ts, hang_up: bool) -> None:
    url = f"{ts.endpoints.inference}/predictions/{LLM}/1.0/v1/completions"
    body = {"prompt": "The pump", "max_tokens": 120 if hang_up else 12, "stream": True}
    with requests.post(url, json=body, stream=True, timeout=60,
                       headers={"Authorization": f"Bearer {ts.client.fresh_key('inference')}"}) as resp:
        assert resp.status_code == 200
        for _ in resp.iter_lines() if not hang_up else [next(resp.iter_lines())]:
            pass


def test_a_model_without_workers_under_traffic_raises_model_not_serving(watched) -> None:
    """First in this module: digits has answered nothing yet, so the alert does not wait out the
    minute over which earlier answers would keep its handler's request rate above 0."""
    ts, monitor = watched
    d.scale(ts.client, "digits", 0)
    try:
        body = zoo.get("digits").smoke_cases()[0][1]
        deadline = time.monotonic() + 90
        found: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not found:
            for _ in range(5):
                assert ts.client.predict("digits", body).status_code == 503  # TorchServe: no worker
            found = [a for a in monitor.alerts() if a["labels"]["alertname"] == "MaasModelNotServing"]
            time.sleep(1)
        assert [a["labels"]["model_name"] for a in found] == ["digits"], monitor.alerts()
        assert found[0]["state"] in ("pending", "firing")
    finally:
        d.scale(ts.client, "digits", 1)


def test_prometheus_scrapes_the_handler_and_torchserve_series(watched) -> None:
    ts, monitor = watched
    (target,) = eventually("the scrape target", monitor.targets)
    assert target["scrapeUrl"] == f"{ts.endpoints.metrics}/metrics"
    send_traffic(ts)
    for series in ('MaasRequests{ModelName="maintenance"}', 'MaasRejectedRequests{ModelName="maintenance"}',
                   'MaasInferenceMs{ModelName="digits"}', 'ts_inference_latency_microseconds{model_name="maintenance"}',
                   'ts_queue_latency_microseconds{model_name="digits"}', 'maas:inference_latency_ms:mean1m'):
        eventually(f"{series} in Prometheus", lambda: monitor.query(series))
    (requests_seen,) = monitor.query('MaasRequests{ModelName="maintenance"}')
    assert float(requests_seen["value"][1]) >= 20
    assert monitor.targets()[0]["health"] == "up"
    assert not [a for a in monitor.alerts() if a["state"] == "firing"], monitor.alerts()


def test_every_dashboard_query_returns_data(watched) -> None:
    ts, monitor = watched
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "maas-dashboard.json").read_text())
    queries = [(panel["title"], target["expr"].replace("$model", ".*"))
               for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(queries) >= 10
    send_traffic(ts, 8)

    def empty() -> list[str]:
        return [f"{title}: {expr}" for title, expr in queries if not monitor.query(expr)]

    missing: list[str] = []

    def all_answer() -> bool:
        missing[:] = empty()
        return not missing

    deadline = time.monotonic() + 60
    while not all_answer() and time.monotonic() < deadline:
        time.sleep(2)
    assert missing == [], "dashboard panels without data"


def test_a_killed_worker_raises_the_restart_alert(watched) -> None:
    ts, monitor = watched
    eventually("MaasWorkerRestarts scraped at 0", lambda: monitor.query('MaasWorkerRestarts{ModelName="maintenance"}'))
    pid = ts.client.describe("maintenance")[0]["workers"][0]["pid"]
    psutil.Process(pid).kill()
    eventually("a new READY worker", lambda: [w for w in ts.client.describe("maintenance")[0]["workers"]
                                            if w["status"] == "READY" and w["pid"] != pid], timeout=120)
    send_traffic(ts, 4)

    def restart_alert() -> list[dict[str, Any]]:
        return [a for a in monitor.alerts() if a["labels"]["alertname"] == "MaasWorkerRestarted"
                and a["labels"].get("ModelName") == "maintenance" and a["state"] in ("pending", "firing")]

    (alert,) = eventually("MaasWorkerRestarted pending or firing", restart_alert)
    assert "maintenance died and was replaced" in alert["annotations"]["summary"]
    assert not [a for a in monitor.alerts() if a["labels"].get("ModelName") == "digits"]  # the other model is fine

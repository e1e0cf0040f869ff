"""TorchServe's Prometheus metrics API exports the maas handler metrics with plausible values."""
from __future__ import annotations

import json
import re
import shutil

import onnxruntime as ort
import requests
import yaml
from llm import GENERATION_METRICS

from conftest import ROOT

HEALTHY = {"type": "L", "air_temperature_k": 298.1, "process_temperature_k": 308.6,
        "rotational_speed_rpm": 1551, "torque_nm": 42.8, "tool_wear_min": 0}


def scrape(server) -> dict[tuple[str, str], float]:
    """{(metric, model): value} for the Maas* series."""
    text = requests.get(f"{server.endpoints.metrics}/metrics", timeout=10).text
    out = {}
    for name, labels, value in re.findall(r'^(Maas\w+)\{([^}]*)\}\s+(\S+)$', text, re.M):
        model = re.search(r'ModelName="([^"]+)"', labels).group(1)
        provider = re.search(r'Provider="([^"]+)"', labels).group(1)
        assert provider in ("CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider")
        out[(name, model)] = float(value)
    return out


def test_handler_metrics_after_traffic(server) -> None:
    before = scrape(server).get(("MaasRequests", "maintenance"), 0.0)
    for _ in range(5):
        assert server.client.predict_json("maintenance", [HEALTHY, HEALTHY])
    assert server.client.predict("maintenance", b"{bad").status_code == 400
    server.client.predict_json("minilm", {"text": "metrics please"})
    metrics = scrape(server)
    declared = [m["name"] for kind in ("gauge", "counter")
                for m in yaml.safe_load((ROOT / "metrics.yaml").read_text())["model_metrics"][kind]
                if m["name"].startswith("Maas") and m["name"] not in GENERATION_METRICS]  # test_llm_serving's
    for name in declared:
        assert (name, "maintenance") in metrics, name
    assert metrics[("MaasRequests", "maintenance")] >= before + 6
    assert metrics[("MaasRejectedRequests", "maintenance")] >= 1
    assert 0 < metrics[("MaasInferenceMs", "minilm")] < 10_000
    assert 0 <= metrics[("MaasPreprocessMs", "maintenance")] < 10_000
    assert 1 <= metrics[("MaasBatchRequests", "minilm")] <= 8 and metrics[("MaasBatchItems", "minilm")] >= 1
    # TorchServe's own series are there too
    text = requests.get(f"{server.endpoints.metrics}/metrics", timeout=10).text
    assert 'ts_inference_requests_total{model_name="maintenance"' in text


def test_response_names_the_execution_provider(server) -> None:
    resp = server.client.predict("maintenance", json.dumps(HEALTHY).encode())
    # CPU here; on a GPU host TorchServe assigns a gpu_id and the handler takes CUDA when ORT has it.
    assert resp.headers["X-Execution-Provider"] == ("CUDAExecutionProvider" if gpu_host() else "CPUExecutionProvider")


def test_grafana_dashboard_covers_every_handler_metric() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "maas-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for kind in ("gauge", "counter"):
        for m in yaml.safe_load((ROOT / "metrics.yaml").read_text())["model_metrics"][kind]:
            if m["name"].startswith("Maas"):
                assert m["name"] in exprs, m["name"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def gpu_host() -> bool:
    """TorchServe finds GPUs with nvidia-smi; the handler uses one only when ORT has CUDA."""
    return shutil.which("nvidia-smi") is not None and "CUDAExecutionProvider" in ort.get_available_providers()

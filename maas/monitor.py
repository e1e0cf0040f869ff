"""A real Prometheus beside TorchServe: a generated scrape config, maas's alert and recording
rules, and a process maas starts and stops (`maas monitor start|stop|status`).

Prometheus is Debian's (`make prometheus` installs it); it listens on 127.0.0.1 only and keeps
its data under run/prometheus/. TorchServe 0.12's metrics API wants no key (it listens on
loopback only, as configured); an https metrics address is scraped with the server's CA.
The rules are generated from the SLO files (`maas monitor rules`), so a budget is said once.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
import yaml

from maas.client import ServeError
from maas.pidfile import live_pid, write_pid
from maas.slo import SLO, SLO_DIR

RULES_FILE = "maas-rules.yaml"
SCRAPE_INTERVAL_S = 5  # short, so a worker's death shows within seconds (tests, demos); 15 s is fine in production


class MonitorError(ServeError):
    """Prometheus could not be set up, started or asked (one line saying why)."""


# ---- rules ----------------------------------------------------------------------------------
def slo_models(project_dir: Path | None = None) -> dict[str, SLO]:
    """Every model with an SLO file, by name: the zoo's, then the project's slo/ (which wins)."""
    found = {p.stem: p for p in sorted(SLO_DIR.glob("*.yaml"))}
    if project_dir is not None:
        found.update({p.stem: p for p in sorted((project_dir / "slo").glob("*.yaml"))})
    return {name: SLO.from_file(path) for name, path in sorted(found.items())}


def rules(slos: dict[str, SLO]) -> dict[str, Any]:
    """maas's recording and alert rules; latency and error budgets come from `slos`."""
    by_model = "sum by (model_name)"
    recording = [
        {"record": "maas:inference_requests:rate1m", "expr": f"{by_model} (rate(ts_inference_requests_total[1m]))"},
        {"record": "maas:inference_latency_ms:mean1m",
         "expr": f"{by_model} (rate(ts_inference_latency_microseconds[1m])) / 1000"
                 f" / {by_model} (rate(ts_inference_requests_total[1m]))"},
        {"record": "maas:queue_latency_ms:mean1m",
         "expr": f"{by_model} (rate(ts_queue_latency_microseconds[1m])) / 1000"
                 f" / {by_model} (rate(ts_inference_requests_total[1m]))"},
        # TorchServe 0.12 counts statuses per server, not per model.
        {"record": "maas:server_error_ratio:rate5m",
         "expr": "sum(rate(Requests5XX[5m])) / (sum(rate(Requests2XX[5m])) + sum(rate(Requests4XX[5m]))"
                 " + sum(rate(Requests5XX[5m])))"},
        {"record": "maas:rejected_ratio:rate5m",
         "expr": "sum by (ModelName) (rate(MaasRejectedRequests[5m])) / sum by (ModelName) (rate(MaasRequests[5m]))"},
    ]
    alerts: list[dict[str, Any]] = [
        {"alert": "MaasTorchServeDown", "expr": 'up{job="torchserve"} == 0', "for": "30s",
         "labels": {"severity": "critical"},
         "annotations": {"summary": "Prometheus cannot scrape TorchServe's metrics API at {{ $labels.instance }}"}},
        {"alert": "MaasWorkerRestarted", "expr": "increase(MaasWorkerRestarts[5m]) > 0",
         "labels": {"severity": "warning"},
         "annotations": {"summary": "a worker of {{ $labels.ModelName }} died and was replaced in the last 5 min",
                         "description": "`maas serve status` counts restarts; the worker log says why"}},
        # TorchServe 0.12 exports no worker states: a model it counts requests for while no
        # handler of it answers any has no READY worker (or only stuck ones). Silent without traffic.
        {"alert": "MaasModelNotServing",
         "expr": f"{by_model} (rate(ts_inference_requests_total[1m])) > 0 unless on (model_name) "
                 'label_replace(sum by (ModelName) (rate(MaasRequests[1m])) > 0, "model_name", "$1", "ModelName", "(.*)")',
         "for": "1m", "labels": {"severity": "critical"},
         "annotations": {"summary": "{{ $labels.model_name }} gets requests but no worker of it answers: "
                                    "no READY worker (`maas serve status`)"}},
        {"alert": "MaasQueueTimeGrowing",
         "expr": "deriv(maas:queue_latency_ms:mean1m[5m]) > 0 and maas:queue_latency_ms:mean1m > 50", "for": "2m",
         "labels": {"severity": "warning"},
         "annotations": {"summary": "requests for {{ $labels.model_name }} wait over 50 ms in TorchServe's queue, "
                                    "longer every minute: more workers (`maas scale`) or fewer requests"}},
    ]
    strictest = min((s.thresholds.max_error_ratio for s in slos.values()), default=SLO().thresholds.max_error_ratio)
    alerts.append({"alert": "MaasServerErrorRatio", "expr": f"maas:server_error_ratio:rate5m > {strictest:g}",
                   "for": "2m", "labels": {"severity": "critical"},
                   "annotations": {"summary": "5xx answers are {{ $value | humanizePercentage }} of all "
                                              f"(budget {strictest:g}: the strictest SLO's max_error_ratio)"}})
    for model, slo in slos.items():
        budget = slo.thresholds.max_p95_ms
        alerts.append({
            "alert": "MaasLatencyOverSLO",
            # TorchServe exports latency sums, not histograms: a mean over the p95 budget means
            # the p95 is over it too (the alert is late, never false).
            "expr": f'maas:inference_latency_ms:mean1m{{model_name="{model}"}} > {budget:g}', "for": "1m",
            "labels": {"severity": "warning", "model": model},
            "annotations": {"summary": f"{model}: mean latency {{{{ $value }}}} ms is over the SLO's p95 budget "
                                       f"({budget:g} ms, loadtests/slo/{model}.yaml)"}})
        alerts += generation_alerts(model, slo)
    return {"groups": [{"name": "maas-recording", "rules": recording}, {"name": "maas-alerts", "rules": alerts}]}


def generation_alerts(model: str, slo: SLO) -> list[dict[str, Any]]:
    """A language model's streaming budgets (SLO keys ttft_p95_ms, itl_p95_ms) as alerts. The handler
    exports gauges, not histograms (a request's time to first token; each second's mean inter-token
    gap): the mean of a minute's samples over the p95 budget means the p95 is over it too (late, never false)."""
    found = []
    for key, metric, what in (("max_ttft_p95_ms", "MaasTimeToFirstTokenMs", "time to first token"),
                              ("max_itl_p95_ms", "MaasInterTokenLatencyMs", "inter-token latency")):
        budget = getattr(slo.thresholds, key)
        if budget is None:
            continue
        found.append({
            "alert": f"Maas{metric.removeprefix('Maas').removesuffix('Ms')}OverSLO",
            "expr": f'avg_over_time({metric}{{ModelName="{model}"}}[1m]) > {budget:g}', "for": "1m",
            "labels": {"severity": "warning", "model": model},
            "annotations": {"summary": f"{model}: mean {what} {{{{ $value }}}} ms is over the SLO's p95 budget "
                                       f"({budget:g} ms, slo/{model}.yaml)"}})
    return found


def rules_yaml(slos: dict[str, SLO]) -> str:
    header = "# Generated by `maas monitor rules` from the SLO files; edit those (or maas/monitor.py), not this.\n"
    return header + yaml.safe_dump(rules(slos), sort_keys=False, width=120)


# ---- the scrape config ------------------------------------------------------------------------
def prometheus_config(metrics_address: str, rules_path: Path, ca_file: str | None = None,
                      interval_s: int = SCRAPE_INTERVAL_S) -> dict[str, Any]:
    url = urlsplit(metrics_address)
    job: dict[str, Any] = {"job_name": "torchserve", "scheme": url.scheme or "http", "metrics_path": "/metrics",
                           "static_configs": [{"targets": [url.netloc]}]}
    if url.scheme == "https" and ca_file:
        job["tls_config"] = {"ca_file": ca_file}
    return {"global": {"scrape_interval": f"{interval_s}s", "evaluation_interval": f"{interval_s}s"},
            "rule_files": [str(rules_path)], "scrape_configs": [job]}


# ---- the process --------------------------------------------------------------------------------
@dataclass
class Monitor:
    """One Prometheus for one maas run directory."""

    run_dir: Path
    metrics_address: str
    slos: dict[str, SLO]
    port: int = 9090
    ca_file: str | None = None

    @property
    def home(self) -> Path:
        return self.run_dir / "prometheus"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.home / "prometheus.pid"

    @staticmethod
    def port_file(run_dir: Path) -> Path:
        return run_dir / "prometheus" / "prometheus.port"

    @classmethod
    def last_port(cls, run_dir: Path, default: int = 9090) -> int:
        """The port the last `maas monitor start` of this run dir used (status and stop find it there)."""
        try:
            return int(cls.port_file(run_dir).read_text())
        except (FileNotFoundError, ValueError):
            return default

    def pid(self) -> int | None:
        return live_pid(self.pid_file)

    def start(self, timeout: float = 60.0) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise MonitorError("Prometheus is not installed: `apt-get install prometheus` (in a checkout: `make prometheus`)")
        if self.pid():
            raise MonitorError(f"a Prometheus of {self.run_dir} is already running (pid {self.pid()}) at {self.url}")
        self.home.mkdir(parents=True, exist_ok=True)
        rules_path = self.home / RULES_FILE
        rules_path.write_text(rules_yaml(self.slos))
        config = self.home / "prometheus.yml"
        config.write_text(yaml.safe_dump(prometheus_config(self.metrics_address, rules_path.resolve(), self.ca_file),
                                         sort_keys=False))
        check = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise MonitorError(f"promtool refused {config}: {(check.stdout + check.stderr).strip()[-500:]}")
        log = open(self.home / "prometheus.log", "ab")
        proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={self.home / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=7d"],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        write_pid(self.pid_file, proc.pid)
        self.port_file(self.run_dir).write_text(str(self.port))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = (self.home / "prometheus.log").read_text(errors="replace").splitlines()[-5:]
                raise MonitorError(f"Prometheus exited ({proc.returncode}): {' | '.join(tail)}")
            try:
                if requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        self.stop()
        raise MonitorError(f"Prometheus was not ready at {self.url} within {timeout:g} s; see {self.home / 'prometheus.log'}")

    def stop(self, timeout: float = 20.0) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pid():
            time.sleep(0.2)
        if self.pid():
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True

    # ---- Prometheus' HTTP API ----------------------------------------------------------------
    def _api(self, path: str, **params: Any) -> Any:
        try:
            resp = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        except requests.ConnectionError:
            raise MonitorError(f"Prometheus is not answering at {self.url}: `maas monitor start`") from None
        body = resp.json()
        if body.get("status") != "success":
            raise MonitorError(f"Prometheus refused {path} {params}: {body.get('error', resp.text[:200])}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector."""
        return self._api("query", query=expr)["result"]

    def alerts(self) -> list[dict[str, Any]]:
        return self._api("alerts")["alerts"]

    def targets(self) -> list[dict[str, Any]]:
        return self._api("targets")["activeTargets"]

    def status(self) -> dict[str, Any]:
        info: dict[str, Any] = {"prometheus": self.url, "pid": self.pid(), "config": str(self.home / "prometheus.yml")}
        if info["pid"]:
            info["targets"] = [{"scrape": t["scrapeUrl"], "health": t["health"], "error": t.get("lastError", "")}
                               for t in self.targets()]
            info["alerts"] = [{"alert": a["labels"]["alertname"], "state": a["state"],
                               **{k: v for k, v in a["labels"].items() if k in ("ModelName", "model_name", "model")}}
                              for a in self.alerts()]
        return info


def format_status(info: dict[str, Any]) -> str:
    if not info["pid"]:
        return f"Prometheus: not running ({info['prometheus']}); `maas monitor start`"
    lines = [f"Prometheus {info['prometheus']} (pid {info['pid']}), config {info['config']}"]
    lines += [f"  scrape {t['scrape']}: {t['health']} {t['error']}".rstrip() for t in info["targets"]]
    lines += [f"  alert {a['alert']} {a['state']} {json.dumps({k: v for k, v in a.items() if k not in ('alert', 'state')})}"
              for a in info["alerts"]] or ["  no alert pending or firing"]
    return "\n".join(lines)

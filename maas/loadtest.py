"""Run Locust headless against a served model, summarise, plot, and gate on thresholds.

Writes reports/<timestamp>-<model>/: Locust's CSV and HTML, summary.json (the numbers a
release gate and a dashboard read) and throughput_latency.png.
"""
from __future__ import annotations

import csv
import json
import logging
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import maas.loadtests
from maas import plots
from maas.core.clock import now_iso, stamp
from maas.core.errors import LoadTestError
from maas.core.machine import cores
from maas.gate import evaluate
from maas.locust_csv import read_aggregate, read_errors, recent_rps
from maas.properties import free_loopback_ports
from maas.slo import SLO

log = logging.getLogger(__name__)

LOCUSTFILE = Path(maas.loadtests.__path__[0]) / "locustfile.py"  # loadtests/ in a checkout, package data installed


@dataclass
class LoadTest:
    model: str
    slo: SLO = field(default_factory=SLO)
    version: str = ""
    workers: int = 0  # >0: Locust distributed mode, one master + N worker processes
    label: str = ""  # report folder suffix
    payload: str = ""  # loadtests/payloads.py generator when not the model's own (benchmarks)
    endpoint: str = "predictions"  # or "explanations"
    model_store: Path | None = None  # where a packaged model's archive (and so its request bodies) is
    protocol: str = "http"  # or "grpc": TorchServe's gRPC Predictions at grpc_target
    grpc_target: str = ""
    grpc_ca: Path | None = None  # CA to trust when the server's gRPC uses TLS
    generative: bool = False  # a language model: streamed chat completions (found from its archive too)
    openai_path: str = ""  # generative: the chat completions path when the server is not TorchServe


def _progress(prefix: Path, started: float) -> None:
    path = Path(f"{prefix}_stats_history.csv")
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["Name"] == "Aggregated"]
    if rows:
        r = rows[-1]
        log.info("  %3.0f s  users %-3s  %6.1f req/s  p95 %s ms  failures %s", time.monotonic() - started,
                 r["User Count"], recent_rps(rows), r["95%"], r["Total Failure Count"])


def locust_commands(test: LoadTest, host: str, key_file: Path | None, out: Path) -> list[list[str]]:
    """The Locust process(es): one headless runner, or a master plus test.workers workers."""
    slo = test.slo
    custom = ["--model", test.model, "--model-version", test.version, "--payload", test.payload,
              "--requests-log", str(out),
              "--endpoint", test.endpoint,
              "--key-file", str(key_file or ""),
              "--model-store", str(test.model_store or ""),
              "--warmup", str(slo.warmup_s),
              "--protocol", test.protocol, "--grpc-target", test.grpc_target, "--grpc-ca", str(test.grpc_ca or ""),
              *(["--generative"] if test.generative else []),
              *(["--openai-path", test.openai_path] if test.openai_path else [])]
    base = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--loglevel", "WARNING"]
    runner = base + [
        "--headless", "--users", str(slo.users), "--spawn-rate", str(slo.spawn_rate),
        "--run-time", f"{slo.warmup_s + slo.run_time_s}s", "--stop-timeout", "5", "--host", host,
        "--csv", str(out / "locust"), "--html", str(out / "report.html"), "--only-summary",
        "--exit-code-on-error", "0", *custom,
    ]
    if test.workers <= 0:
        return [runner]
    port = free_loopback_ports(1)[0]
    master = runner + ["--master", "--expect-workers", str(test.workers), "--expect-workers-max-wait", "60",
                       "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port)]
    worker = base + ["--worker", "--master-host", "127.0.0.1", "--master-port", str(port), *custom]
    return [master] + [worker] * test.workers


def run(test: LoadTest, host: str, key_file: Path | None, reports_root: Path,
        server_info: dict[str, Any] | None = None,
        keep_keys_fresh: Callable[[], Any] | None = None,
        worker_restarts: Callable[[], dict[tuple[str, str], int]] | None = None) -> tuple[dict[str, Any], Path]:
    """Run Locust, write the report folder, return (summary, folder). summary['passed'] is the gate.

    `keep_keys_fresh` is called while Locust runs (renewing TorchServe's inference key before
    it expires); Locust's users re-read key_file.json whenever it changes. `worker_restarts`
    (TorchServe.worker_restarts, for a local server) is read before and after: a worker of the
    model that died during the run is in the summary and fails the gate.
    """
    from maas.worker_log import restarts_of

    restarts_before = worker_restarts() if worker_restarts else None
    slo = test.slo
    _find_generative(test)
    out = reports_root / f"{stamp()}-{test.model}{'-' + test.label if test.label else ''}"
    out.mkdir(parents=True, exist_ok=True)
    mode = f", distributed: 1 master + {test.workers} workers" if test.workers else ""
    log.info("load test: %s%s over %s, %d users, %d s warm-up + %d s measured%s -> %s", test.model,
             f" {test.version}" if test.version else "", test.protocol, slo.users, slo.warmup_s, slo.run_time_s,
             mode, out)
    _run_locust(locust_commands(test, host, key_file, out), out, slo, keep_keys_fresh)
    summary = _summary(test, host, out / "locust", server_info)
    if test.generative:
        from maas.generation_report import generation_figures, generation_plot

        summary["generation"] = generation_figures(out, slo.warmup_s, slo.run_time_s)
        png = generation_plot(out, out / "generation.png", f"{test.model}: streaming, {slo.users} users", slo.warmup_s)
        summary["generation_plot"] = png.name if png else None
    if worker_restarts is not None:
        summary["worker_restarts"] = (restarts_of(worker_restarts(), test.model, test.version)
                                      - restarts_of(restarts_before, test.model, test.version))
    broken = evaluate(summary, slo.thresholds)
    if summary["requests"] == 0:  # say why: Locust's users usually failed to start (see locust.log)
        errors = [line for line in (out / "locust.log").read_text(errors="replace").splitlines()
                  if re.match(r"^\w*(Error|Exception)\b", line)]
        if errors:
            broken.append(f"Locust's users failed: {errors[-1][:300]} (see {out / 'locust.log'})")
    summary["passed"], summary["broken"] = not broken, broken
    png = plots.load_plot(out, out / "throughput_latency.png",
                          f"{test.model}{' over gRPC' if test.protocol == 'grpc' else ''}: {slo.users} users, "
                          f"{slo.warmup_s} s warm-up + {slo.run_time_s} s", slo.warmup_s)
    summary["plot"] = png.name if png else None
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary, out


def _run_locust(commands: list[list[str]], out: Path, slo: SLO, keep_keys_fresh: Callable[[], Any] | None) -> None:
    """Locust's processes until the master exits (bounded), printing progress and renewing keys;
    whatever happens, every process is stopped."""
    if keep_keys_fresh is not None:
        keep_keys_fresh()  # now, not one period in: a key about to expire would fail the first requests
    started = time.monotonic()
    limit = slo.warmup_s + slo.run_time_s + 90
    procs = []
    with open(out / "locust.log", "wb") as console:
        for cmd in commands:
            procs.append(subprocess.Popen(cmd, stdout=console, stderr=subprocess.STDOUT, cwd=LOCUSTFILE.parent))
        every = 5 if slo.run_time_s > 10 else 1  # seconds between progress lines (and key renewals)
        reported = started
        try:
            while procs[0].poll() is None:
                if time.monotonic() - started > limit:
                    raise LoadTestError(f"Locust did not stop within {limit} s; see {out / 'locust.log'}")
                time.sleep(0.25)  # Locust's end is noticed within 0.25 s, not within the progress period
                if time.monotonic() - reported < every:
                    continue
                reported = time.monotonic()
                if keep_keys_fresh is not None:
                    keep_keys_fresh()
                _progress(out / "locust", started)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
    if not (out / "locust_stats.csv").exists():
        raise LoadTestError(f"Locust wrote no statistics (exit {procs[0].returncode}); see {out / 'locust.log'}")


def _summary(test: LoadTest, host: str, prefix: Path, server_info: dict[str, Any] | None) -> dict[str, Any]:
    """The run's figures from Locust's CSVs, with the load, the machine and the versions that made them."""
    slo = test.slo
    summary: dict[str, Any] = {"model": test.model, "model_version": test.version or "default",
                               "endpoint": test.endpoint, "protocol": test.protocol, **read_aggregate(prefix)}
    summary["errors_by_status"] = read_errors(prefix)
    summary["error_ratio"] = summary["failures"] / summary["requests"] if summary["requests"] else 1.0
    summary.update(
        users=slo.users, spawn_rate=slo.spawn_rate, run_time_s=slo.run_time_s, warmup_s=slo.warmup_s,
        locust_workers=test.workers, host=test.grpc_target if test.protocol == "grpc" else host, cores=cores(),
        locust_version=metadata.version("locust"), torchserve_version=metadata.version("torchserve"),
        finished=now_iso(), thresholds=asdict(slo.thresholds), **(server_info or {}),
    )
    return summary


def ready_for_load(server: Any, seconds: float) -> Any:
    """The server, checked up, with keys renewed if they would expire during `seconds` of load."""
    server.client.ping()  # fails fast, with a clear message, when the server is down
    # Locust re-reads key_file.json when it changes; renew now what would expire during the run.
    server.client.fresh_key("inference", margin_s=seconds + 120)
    return server


def _find_generative(test: LoadTest) -> None:
    if not test.generative and test.model_store is not None:
        from maas.export.clients import is_generative_model

        test.generative = is_generative_model(test.model_store, test.model, test.version or None)


def run_on_server(server: Any, test: LoadTest, reports_root: Path) -> tuple[dict[str, Any], Path]:
    """`test` against a running maas TorchServe: keys renewed, the gRPC target read off its config,
    the version it serves recorded; -> (summary, report folder)."""
    ready_for_load(server, test.slo.warmup_s + test.slo.run_time_s)
    if test.protocol == "grpc":
        from maas.grpc_client import grpc_target, tls_ca_file

        test.grpc_target = grpc_target(server.props)
        test.grpc_ca = tls_ca_file(server.props, server.layout.config.resolve().parent)
    described = server.client.describe(test.model, test.version or None)
    info = {"served_version": described[0].get("modelVersion") if described else None}
    _find_generative(test)
    if test.generative and not test.version and info["served_version"]:
        test.version = str(info["served_version"])  # OpenAI routes name a version: the default's, not "1.0"
    renew = (lambda: server.client.fresh_key("inference")) if server.client.key_file else None
    return run(test, server.endpoints.inference, server.client.key_file, reports_root, info, renew,
               worker_restarts=server.worker_restarts)

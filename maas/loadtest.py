"""Run Locust headless against a served model, summarise, plot, and gate on thresholds.

Writes reports/<timestamp>-<model>/: Locust's CSV and HTML, summary.json (the numbers a
release gate and a dashboard read) and throughput_latency.png.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import maas.loadtests
from maas import plots
from maas.properties import free_loopback_ports

log = logging.getLogger(__name__)

LOCUSTFILE = Path(maas.loadtests.__path__[0]) / "locustfile.py"  # loadtests/ in a checkout, package data installed
SLO_DIR = LOCUSTFILE.parent / "slo"  # the zoo's SLO files


@dataclass
class Thresholds:
    max_p95_ms: float = 500.0
    max_p99_ms: float = 1000.0
    max_error_ratio: float = 0.01
    min_rps: float = 5.0
    max_worker_restarts: int = 0  # a worker that died under load fails the gate, whatever the figures


@dataclass
class Regression:
    """How much worse than the current default a release candidate may measure."""

    max_p95_increase: float = 0.5  # +50 %: machines here are shared and noisy
    max_rps_decrease: float = 0.3  # -30 %


@dataclass
class SLO:
    """A model's release SLO: the load to apply and the figures it must meet."""

    users: int = 8
    spawn_rate: float = 8.0
    run_time_s: int = 20
    warmup_s: int = 3  # excluded from the figures (stats reset after it)
    thresholds: Thresholds = field(default_factory=Thresholds)
    regression: Regression = field(default_factory=Regression)

    @classmethod
    def from_file(cls, path: Path) -> "SLO":
        """Load a YAML SLO file; unknown keys are an error, not silently ignored."""
        import yaml

        raw = yaml.safe_load(Path(path).read_text()) or {}
        slo = cls()
        keys = {"users", "spawn_rate", "run_time_s", "warmup_s", "p95_ms", "p99_ms", "max_error_ratio",
                "min_rps", "regression"}
        unknown = sorted(set(raw) - keys)
        if unknown:
            raise ValueError(f"{path}: unknown SLO keys {unknown}; known: {sorted(keys)}")
        for key in ("users", "spawn_rate", "run_time_s", "warmup_s"):
            if key in raw:
                setattr(slo, key, type(getattr(slo, key))(raw[key]))
        mapping = {"p95_ms": "max_p95_ms", "p99_ms": "max_p99_ms", "max_error_ratio": "max_error_ratio",
                   "min_rps": "min_rps"}
        for key, attr in mapping.items():
            if key in raw:
                setattr(slo.thresholds, attr, float(raw[key]))
        for key, value in (raw.get("regression") or {}).items():
            if not hasattr(slo.regression, key):
                raise ValueError(f"{path}: unknown regression key {key!r}")
            setattr(slo.regression, key, float(value))
        return slo

    @classmethod
    def for_model(cls, model: str, path: Path | None = None, project_dir: Path | None = None) -> "SLO":
        """The given file, else <project>/slo/<model>.yaml, else the zoo's loadtests/slo/<model>.yaml,
        else defaults."""
        candidates = [path] if path else [(project_dir or Path.cwd()) / "slo" / f"{model}.yaml",
                                          SLO_DIR / f"{model}.yaml"]
        found = next((p for p in candidates if p.exists()), None)
        return cls.from_file(found) if found else cls()


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


def _float(row: dict[str, str], key: str) -> float:
    try:
        return float(row.get(key) or 0.0)
    except ValueError:
        return 0.0


def read_aggregate(prefix: Path) -> dict[str, float]:
    """The 'Aggregated' row of Locust's <prefix>_stats.csv."""
    with open(f"{prefix}_stats.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["Name"] == "Aggregated"]
    if not rows:
        raise RuntimeError(f"{prefix}_stats.csv has no Aggregated row: did Locust run?")
    r = rows[0]
    return {
        "requests": int(_float(r, "Request Count")),
        "failures": int(_float(r, "Failure Count")),
        "rps": _float(r, "Requests/s"),
        "avg_ms": _float(r, "Average Response Time"),
        "p50_ms": _float(r, "50%"),
        "p90_ms": _float(r, "90%"),
        "p95_ms": _float(r, "95%"),
        "p99_ms": _float(r, "99%"),
        "max_ms": _float(r, "Max Response Time"),
    }


def read_errors(prefix: Path) -> dict[str, int]:
    """Failure counts by HTTP status (or 'body' for a 200 with a wrong body, 'connection')."""
    counts: dict[str, int] = {}
    path = Path(f"{prefix}_failures.csv")
    if not path.exists():
        return counts
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            match = re.search(r"HTTP (\d{3})", row["Error"])
            key = match.group(1) if match else ("connection" if "onnect" in row["Error"] else "body")
            counts[key] = counts.get(key, 0) + int(_float(row, "Occurrences"))
    return counts


def evaluate(summary: dict[str, Any], t: Thresholds) -> list[str]:
    """The broken thresholds, each as 'name: measured vs budget'; empty when all hold."""
    broken = []
    if summary["p95_ms"] > t.max_p95_ms:
        broken.append(f"p95 latency {summary['p95_ms']:.1f} ms > budget {t.max_p95_ms:g} ms")
    if summary["p99_ms"] > t.max_p99_ms:
        broken.append(f"p99 latency {summary['p99_ms']:.1f} ms > budget {t.max_p99_ms:g} ms")
    if summary["error_ratio"] > t.max_error_ratio:
        broken.append(f"error ratio {summary['error_ratio']:.4f} > budget {t.max_error_ratio:g}")
    if summary["rps"] < t.min_rps:
        broken.append(f"throughput {summary['rps']:.1f} req/s < minimum {t.min_rps:g} req/s")
    if summary["requests"] == 0:
        broken.append("no request completed")
    restarts = summary.get("worker_restarts")
    if restarts is not None and restarts > t.max_worker_restarts:
        broken.append(f"{restarts} worker restart(s) during the run > budget {t.max_worker_restarts} "
                      "(a worker died: see the server's logs/ts_log.log and model_log.log)")
    return broken


def _progress(prefix: Path, started: float) -> None:
    path = Path(f"{prefix}_stats_history.csv")
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["Name"] == "Aggregated"]
    if rows:
        r = rows[-1]
        log.info("  %3.0f s  users %-3s  %6.1f req/s  p95 %s ms  failures %s", time.monotonic() - started,
                 r["User Count"], _float(r, "Requests/s"), r["95%"], r["Total Failure Count"])


def locust_commands(test: LoadTest, host: str, key_file: Path | None, out: Path) -> list[list[str]]:
    """The Locust process(es): one headless runner, or a master plus test.workers workers."""
    slo = test.slo
    custom = ["--model", test.model, "--model-version", test.version, "--payload", test.payload,
              "--requests-log", str(out),
              "--endpoint", test.endpoint,
              "--key-file", str(key_file or ""),
              "--model-store", str(test.model_store or ""),
              "--warmup", str(slo.warmup_s)]
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
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")[:-4] + "Z"
    out = reports_root / f"{stamp}-{test.model}{'-' + test.label if test.label else ''}"
    out.mkdir(parents=True, exist_ok=True)
    prefix = out / "locust"
    commands = locust_commands(test, host, key_file, out)
    mode = f", distributed: 1 master + {test.workers} workers" if test.workers else ""
    log.info("load test: %s%s, %d users, %d s warm-up + %d s measured%s -> %s", test.model,
             f" {test.version}" if test.version else "", slo.users, slo.warmup_s, slo.run_time_s, mode, out)
    started = time.monotonic()
    limit = slo.warmup_s + slo.run_time_s + 90
    procs = []
    with open(out / "locust.log", "wb") as console:
        for cmd in commands:
            procs.append(subprocess.Popen(cmd, stdout=console, stderr=subprocess.STDOUT, cwd=LOCUSTFILE.parent))
        try:
            while procs[0].poll() is None:
                if time.monotonic() - started > limit:
                    raise RuntimeError(f"Locust did not stop within {limit} s; see {out / 'locust.log'}")
                time.sleep(5 if slo.run_time_s > 10 else 1)
                if keep_keys_fresh is not None:
                    keep_keys_fresh()
                _progress(prefix, started)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
    if not Path(f"{prefix}_stats.csv").exists():
        raise RuntimeError(f"Locust wrote no statistics (exit {procs[0].returncode}); see {out / 'locust.log'}")

    summary: dict[str, Any] = {"model": test.model, "model_version": test.version or "default",
                               "endpoint": test.endpoint, **read_aggregate(prefix)}
    summary["errors_by_status"] = read_errors(prefix)
    if worker_restarts is not None:
        after = worker_restarts()
        summary["worker_restarts"] = (restarts_of(after, test.model, test.version)
                                      - restarts_of(restarts_before, test.model, test.version))
    summary["error_ratio"] = summary["failures"] / summary["requests"] if summary["requests"] else 1.0
    summary.update(
        users=slo.users, spawn_rate=slo.spawn_rate, run_time_s=slo.run_time_s, warmup_s=slo.warmup_s,
        locust_workers=test.workers, host=host, cores=os.cpu_count(), locust_version=metadata.version("locust"),
        torchserve_version=metadata.version("torchserve"),
        finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        thresholds=asdict(slo.thresholds), **(server_info or {}),
    )
    broken = evaluate(summary, slo.thresholds)
    if summary["requests"] == 0:  # say why: Locust's users usually failed to start (see locust.log)
        errors = [line for line in (out / "locust.log").read_text(errors="replace").splitlines()
                  if re.match(r"^\w*(Error|Exception)\b", line)]
        if errors:
            broken.append(f"Locust's users failed: {errors[-1][:300]} (see {out / 'locust.log'})")
    summary["passed"], summary["broken"] = not broken, broken
    png = plots.load_plot(out, out / "throughput_latency.png",
                          f"{test.model}: {slo.users} users, {slo.warmup_s} s warm-up + {slo.run_time_s} s", slo.warmup_s)
    summary["plot"] = png.name if png else None
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary, out


def write_record(reports_dir: Path, model: str, kind: str, record: dict[str, Any]) -> Path:
    """reports/<UTC time>-<model>-<kind>/<kind>.json (release and capacity records)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = reports_dir / f"{stamp}-{model}-{kind}"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{kind}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def figures(summary: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a summary (for release and capacity records)."""
    keys = ("rps", "p50_ms", "p95_ms", "p99_ms", "error_ratio", "requests", "passed")
    return {k: summary[k] for k in keys}


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"{s['model']} ({s.get('served_version') or s['model_version']}): {s['requests']} requests in {s['run_time_s']} s"
        f" (after {s.get('warmup_s', 0)} s warm-up), "
        f"{s['rps']:.1f} req/s, {s['users']} users",
        f"latency ms: p50 {s['p50_ms']:.1f}  p90 {s['p90_ms']:.1f}  p95 {s['p95_ms']:.1f}  "
        f"p99 {s['p99_ms']:.1f}  max {s['max_ms']:.1f}",
        f"errors: {s['failures']} ({s['error_ratio']:.2%}) {s['errors_by_status'] or ''}".rstrip()
        + (f"; worker restarts: {s['worker_restarts']}" if s.get("worker_restarts") is not None else ""),
        "gate: PASS" if s["passed"] else "gate: FAIL\n  - " + "\n  - ".join(s["broken"]),
    ]
    return "\n".join(lines)

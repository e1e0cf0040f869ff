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
from typing import Any

log = logging.getLogger(__name__)

LOCUSTFILE = Path(__file__).resolve().parents[1] / "loadtests" / "locustfile.py"


@dataclass
class Thresholds:
    max_p95_ms: float = 500.0
    max_p99_ms: float = 1000.0
    max_error_ratio: float = 0.01
    min_rps: float = 5.0


@dataclass
class LoadTest:
    model: str
    users: int = 8
    spawn_rate: float = 4.0
    run_time_s: int = 20
    version: str = ""
    thresholds: Thresholds = field(default_factory=Thresholds)


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
    return broken


def plot(prefix: Path, out: Path, title: str) -> Path | None:
    """Throughput and latency percentiles over time from <prefix>_stats_history.csv."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(f"{prefix}_stats_history.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["Name"] == "Aggregated" and _float(r, "Total Request Count") > 0]
    if not rows:
        return None
    t0 = int(rows[0]["Timestamp"])
    t = [int(r["Timestamp"]) - t0 for r in rows]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    ax1.plot(t, [_float(r, "Requests/s") for r in rows], label="requests/s")
    ax1.plot(t, [_float(r, "Failures/s") for r in rows], label="failures/s", color="tab:red")
    ax1b = ax1.twinx()
    ax1b.step(t, [_float(r, "User Count") for r in rows], where="post", color="gray", alpha=0.4, label="users")
    ax1b.set_ylabel("users")
    ax1b.set_ylim(bottom=0)
    ax1.set_ylabel("throughput")
    ax1.legend(loc="upper left")
    for pct in ("50%", "95%", "99%"):
        ax2.plot(t, [_float(r, pct) for r in rows], label=f"p{pct[:-1]}")
    ax2.set_ylabel("latency (ms)")
    ax2.set_xlabel("seconds since first request")
    ax2.legend(loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


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


def run(test: LoadTest, host: str, key_file: Path | None, reports_root: Path,
        server_info: dict[str, Any] | None = None) -> tuple[dict[str, Any], Path]:
    """Run Locust, write the report folder, return (summary, folder). summary['passed'] is the gate."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = reports_root / f"{stamp}-{test.model}"
    out.mkdir(parents=True, exist_ok=True)
    prefix = out / "locust"
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--users", str(test.users), "--spawn-rate", str(test.spawn_rate), "--run-time", f"{test.run_time_s}s",
        "--stop-timeout", "5", "--host", host, "--csv", str(prefix), "--html", str(out / "report.html"),
        "--only-summary", "--loglevel", "WARNING", "--exit-code-on-error", "0",
        "--model", test.model, "--model-version", test.version, "--key-file", str(key_file or ""),
    ]
    log.info("load test: %s, %d users, %g s -> %s", test.model, test.users, test.run_time_s, out)
    started = time.monotonic()
    with open(out / "locust.log", "wb") as console:
        proc = subprocess.Popen(cmd, stdout=console, stderr=subprocess.STDOUT, cwd=LOCUSTFILE.parent)
        deadline = started + test.run_time_s + 60
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"Locust did not stop within {test.run_time_s + 60} s; see {out / 'locust.log'}")
            time.sleep(5 if test.run_time_s > 10 else 1)
            _progress(prefix, started)
    if not Path(f"{prefix}_stats.csv").exists():
        raise RuntimeError(f"Locust wrote no statistics (exit {proc.returncode}); see {out / 'locust.log'}")

    summary: dict[str, Any] = {"model": test.model, "model_version": test.version or "default", **read_aggregate(prefix)}
    summary["errors_by_status"] = read_errors(prefix)
    summary["error_ratio"] = summary["failures"] / summary["requests"] if summary["requests"] else 1.0
    summary.update(
        users=test.users, spawn_rate=test.spawn_rate, run_time_s=test.run_time_s, host=host,
        cores=os.cpu_count(), locust_version=metadata.version("locust"),
        torchserve_version=metadata.version("torchserve"),
        finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        thresholds=asdict(test.thresholds), **(server_info or {}),
    )
    broken = evaluate(summary, test.thresholds)
    summary["passed"], summary["broken"] = not broken, broken
    png = plot(prefix, out / "throughput_latency.png", f"{test.model}: {test.users} users, {test.run_time_s} s")
    summary["plot"] = png.name if png else None
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary, out


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"{s['model']} ({s['model_version']}): {s['requests']} requests in {s['run_time_s']} s, "
        f"{s['rps']:.1f} req/s, {s['users']} users",
        f"latency ms: p50 {s['p50_ms']:.1f}  p90 {s['p90_ms']:.1f}  p95 {s['p95_ms']:.1f}  "
        f"p99 {s['p99_ms']:.1f}  max {s['max_ms']:.1f}",
        f"errors: {s['failures']} ({s['error_ratio']:.2%}) {s['errors_by_status'] or ''}".rstrip(),
        "gate: PASS" if s["passed"] else "gate: FAIL\n  - " + "\n  - ".join(s["broken"]),
    ]
    return "\n".join(lines)

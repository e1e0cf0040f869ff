"""Load-test plots that tell the truth: figures per second, computed from every request.

Locust's own history is a rolling average that restarts at the warm-up reset (a plot of it
shows throughput climbing from 0 for ten seconds: the average filling, not the server
ramping). Here each Locust process logs every request (end time, latency, failed), and each
second's throughput, failures and p50/p95/p99 are counted from those records; the warm-up is
shaded, seconds with errors are marked. Used by load tests, and so by capacity searches and
release gates, which run load tests.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def read_requests(folder: Path) -> np.ndarray:
    """Every request of a run: rows (end time s, latency ms, failed), sorted by end time."""
    rows = []
    for path in sorted(folder.glob("requests-*.csv")):
        with open(path, newline="") as f:
            rows += [(float(r["end_s"]), float(r["latency_ms"]), int(r["failed"])) for r in csv.DictReader(f)]
    data = np.array(rows, dtype=np.float64).reshape(-1, 3)
    return data[np.argsort(data[:, 0])] if len(data) else data


def test_start(folder: Path, data: np.ndarray) -> float:
    """When Locust started the test (its warm-up counts from then), else the first request's end."""
    try:
        return float((folder / "requests-start.txt").read_text())
    except (FileNotFoundError, ValueError):
        return float(data[0, 0])


def per_second(data: np.ndarray, start: float) -> dict[str, np.ndarray]:
    """Per second since `start`: requests and failures completed, latency percentiles.
    The last second is left out when the run stopped within it (a partial second reads as a drop)."""
    seconds = np.floor(np.maximum(data[:, 0] - start, 0)).astype(int)
    n = seconds.max() + (1 if seconds.max() == 0 else 0)
    keep = seconds < n
    seconds, data = seconds[keep], data[keep]
    out = {"t": np.arange(n) + 0.5, "rps": np.bincount(seconds, minlength=n).astype(float),
           "failures": np.bincount(seconds, weights=data[:, 2], minlength=n)}
    for pct in (50, 95, 99):
        out[f"p{pct}"] = np.array([np.percentile(data[seconds == s, 1], pct) if (seconds == s).any() else np.nan
                                   for s in range(n)])
    return out


def load_plot(folder: Path, out: Path, title: str, warmup_s: float = 0.0) -> Path | None:
    """throughput_latency.png of the run whose request logs are in `folder` (None: no request)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = read_requests(folder)
    if not len(data):
        return None
    s = per_second(data, test_start(folder, data))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    ax1.plot(s["t"], s["rps"], color="tab:blue", label="requests/s (completed that second)")
    failed = s["failures"] > 0
    if failed.any():
        ax1.scatter(s["t"][failed], s["failures"][failed], color="tab:red", marker="x", zorder=3,
                    label=f"failures/s ({int(s['failures'].sum())} in all)")
    ax1.set_ylabel("throughput (req/s)")
    ax1.set_ylim(bottom=0)
    for pct, color in (("p50", "tab:green"), ("p95", "tab:orange"), ("p99", "tab:red")):
        ax2.plot(s["t"], s[pct], color=color, label=pct)
    ax2.set_ylabel("latency (ms), per second")
    ax2.set_ylim(bottom=0)
    ax2.set_xlabel("seconds since the test started")
    for ax in (ax1, ax2):
        if warmup_s:
            ax.axvspan(0, warmup_s, color="gray", alpha=0.15, label="warm-up (not in the figures)" if ax is ax1 else None)
        ax.grid(alpha=0.3)
        ax.set_xlim(0, s["t"][-1] + 0.5)
    ax1.legend(loc="lower right", fontsize=8)
    ax2.legend(loc="upper right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out

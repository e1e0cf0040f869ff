"""A language model's load test, read: time to first token, inter-token latency, tokens per second.

Locust's own figures time whole generations (a 64-token answer is one "request"). What a user
of a streaming API feels is measured here from what each Locust process logged
(loadtests/locustfile.py GenerationUser): every generation's time to first token and token
count, and every gap between two events of a stream that carried text (inter-token latency);
and per generation the time per output token after the first (TPOT). The warm-up is left out, as in Locust's
figures; the plot shows them per second over the whole run.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from maas.plots import test_start


def _rows(folder: Path, pattern: str, columns: tuple[str, ...]) -> np.ndarray:
    rows = []
    for path in sorted(folder.glob(pattern)):
        with open(path, newline="") as f:
            rows += [tuple(float(r[c]) for c in columns) for r in csv.DictReader(f)]
    data = np.array(rows, dtype=np.float64).reshape(-1, len(columns))
    return data[np.argsort(data[:, 0])] if len(data) else data


def read_generations(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(generations: end s, ttft ms, tokens, duration ms, failed; token gaps: t s, ms), time-sorted."""
    return (_rows(folder, "generations-*.csv", ("end_s", "ttft_ms", "completion_tokens", "duration_ms", "failed")),
            _rows(folder, "token-gaps-*.csv", ("t_s", "gap_ms")))


def _percentiles(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0}
    return {f"p{p}": round(float(np.percentile(values, p)), 2) for p in (50, 95, 99)}


def generation_figures(folder: Path, warmup_s: float, run_time_s: float) -> dict[str, Any] | None:
    """The streaming figures of the measured part of a run (None: no generation was logged)."""
    generations, gaps = read_generations(folder)
    if not len(generations):
        return None
    start = test_start(folder, generations) + warmup_s
    end = start + run_time_s  # not what ends in Locust's stop timeout after it: tokens over run_time_s
    ended = generations[:, 0]
    window = generations[(ended >= start) & (ended <= end)]
    measured = window[window[:, 4] == 0]
    gaps = gaps[(gaps[:, 0] >= start) & (gaps[:, 0] <= end)]
    streaming_s = np.maximum(measured[:, 3] - measured[:, 1], 1e-3) / 1000
    per_stream = (measured[:, 2] - 1) / streaming_s
    several = measured[:, 2] > 1
    tokens = tokens_in_window(generations[generations[:, 4] == 0], start, end)
    return {
        "generations": int(len(measured)),
        # requests that ended in the measured time, failed ones too: the population of the figures above
        # (Locust's CSV is rewritten once a second and not at exit, so its counts can lag the run's end)
        "requests": int(len(window)),
        "failed": int(len(window) - len(measured)),
        "ttft_ms": _percentiles(measured[:, 1]),
        "itl_ms": _percentiles(gaps[:, 1]),
        # time per output token after the first, per generation (vLLM's TPOT): unlike the gaps between
        # events it counts every token, also those whose bytes complete no character yet
        "tpot_ms": _percentiles(1000 / per_stream[several]),
        "output_tokens": int(round(tokens)),
        "output_tokens_per_s": round(float(tokens / max(run_time_s, 1e-9)), 2),
        "stream_tokens_per_s_p50": round(float(np.median(per_stream[several])), 2) if several.any() else 0.0,
    }


def tokens_in_window(generations: np.ndarray, start: float, end: float) -> float:
    """Output tokens of `generations` (rows of read_generations) emitted within [start, end]: each
    one's first token at its time to first token, the others spread evenly up to its end. Counting
    whole generations by when they end instead makes throughput jump by a generation's tokens when
    streams finish together (a server that runs its slots in lockstep read 68.3 tokens/s or 51.2
    in two rows of one run, 8 x 64 tokens / 30 s apart)."""
    if not len(generations):
        return 0.0
    ends, tokens = generations[:, 0], generations[:, 2]
    firsts = ends - np.maximum(generations[:, 3] - generations[:, 1], 0.0) / 1000
    spans = ends - firsts
    inside = np.clip(np.minimum(ends, end) - np.maximum(firsts, start), 0.0, None)
    rest = np.where(spans > 0, inside / np.where(spans > 0, spans, 1.0), ((ends >= start) & (ends <= end)).astype(float))
    first = ((firsts >= start) & (firsts <= end) & (tokens > 0)).astype(float)
    return float((first + np.maximum(tokens - 1, 0) * rest).sum())


def generation_plot(folder: Path, out: Path, title: str, warmup_s: float = 0.0) -> Path | None:
    """generation.png: time to first token and inter-token latency (p50/p95 per second), and output
    tokens per second, over the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    generations, gaps = read_generations(folder)
    if not len(generations):
        return None
    start = test_start(folder, generations)
    n = int(np.floor(generations[-1, 0] - start)) + 1
    t = np.arange(n) + 0.5

    def by_second(times: np.ndarray, values: np.ndarray, pct: float) -> np.ndarray:
        seconds = np.floor(np.maximum(times - start, 0)).astype(int)
        return np.array([np.percentile(values[seconds == s], pct) if (seconds == s).any() else np.nan for s in range(n)])

    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    for pct, style in ((50, "-"), (95, "--")):
        axes[0].plot(t, by_second(generations[:, 0], generations[:, 1], pct), style, color="tab:purple", label=f"p{pct}")
        if len(gaps):
            axes[1].plot(t, by_second(gaps[:, 0], gaps[:, 1], pct), style, color="tab:orange", label=f"p{pct}")
    seconds = np.floor(np.maximum(generations[:, 0] - start, 0)).astype(int)
    axes[2].bar(t, np.bincount(seconds, weights=generations[:, 2], minlength=n)[:n], width=0.9, color="tab:blue",
                label="tokens of the generations that ended that second")
    for ax, label in zip(axes, ("time to first token (ms)", "inter-token latency (ms)", "output tokens / s")):
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
        if warmup_s:
            ax.axvspan(0, warmup_s, color="gray", alpha=0.15)
    axes[2].set_xlabel("seconds since the test started (gray: warm-up, not in the figures)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out

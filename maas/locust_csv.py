"""Locust's CSV output, read: the aggregate figures and the failures by HTTP status."""
from __future__ import annotations

import csv
import re
from pathlib import Path

from maas.core.errors import LoadTestError


def number(row: dict[str, str], key: str) -> float:
    try:
        return float(row.get(key) or 0.0)
    except ValueError:
        return 0.0


def recent_rps(rows: list[dict[str, str]], window_s: float = 5.0) -> float:
    """Requests per second over the last `window_s` of Locust's history ('Aggregated' rows, one
    a second), from its running request count. Locust's own 'Requests/s' there reads 0 for the
    first seconds of a run and again after the warm-up's reset (it averages a window that
    ends 2 s back); a count that drops marks that reset, and the window starts after it."""
    points = [(number(r, "Timestamp"), number(r, "Total Request Count")) for r in rows]
    if not points:
        return 0.0
    start = len(points) - 1
    while start > 0 and points[start - 1][1] <= points[start][1] and points[-1][0] - points[start - 1][0] <= window_s:
        start -= 1
    (t0, n0), (t1, n1) = points[start], points[-1]
    return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


STALE_KEY = " [stale key, retried]"  # the name suffix of requests retried with a renewed key (locustfile)


def read_aggregate(prefix: Path) -> dict[str, float]:
    """The figures of Locust's <prefix>_stats.csv: its one endpoint's row, or the 'Aggregated' row of
    several. A request retried with a renewed key is reported under a name of its own (STALE_KEY), a
    fast 'success' that would otherwise raise the count and lower the percentiles."""
    with open(f"{prefix}_stats.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    totals = [r for r in rows if r["Name"] == "Aggregated"]
    if not totals:
        raise LoadTestError(f"{prefix}_stats.csv has no Aggregated row: did Locust run?")
    endpoints = [r for r in rows if r["Name"] != "Aggregated" and not r["Name"].endswith(STALE_KEY)]
    r = endpoints[0] if len(endpoints) == 1 else totals[0]
    return {
        "requests": int(number(r, "Request Count")),
        "failures": int(number(r, "Failure Count")),
        "rps": number(r, "Requests/s"),
        "avg_ms": number(r, "Average Response Time"),
        "p50_ms": number(r, "50%"),
        "p90_ms": number(r, "90%"),
        "p95_ms": number(r, "95%"),
        "p99_ms": number(r, "99%"),
        "max_ms": number(r, "Max Response Time"),
    }


def read_errors(prefix: Path) -> dict[str, int]:
    """Failure counts by HTTP status (or 'body' for a 200 with a wrong body, 'connection')."""
    counts: dict[str, int] = {}
    path = Path(f"{prefix}_failures.csv")
    if not path.exists():
        return counts
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            match = re.search(r"HTTP (\d+)", row["Error"])  # HTTP 0: no answer at all (FastHttp's status then)
            key = match.group(1) if match and match.group(1) != "0" else (
                "connection" if (match or "onnect" in row["Error"]) else "body")
            counts[key] = counts.get(key, 0) + int(number(row, "Occurrences"))
    return counts

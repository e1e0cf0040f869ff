"""Worker restarts per model, read from TorchServe's own log.

When a worker process dies (a crash, a kill, a failed load), TorchServe's frontend logs
`W-<port>-<model>_<version> ... WorkerThread - Retry worker: <port> in N seconds.` and starts
another on the same port. That line is the ground truth a status command and a load test
can count; the handler's MaasWorkerRestarts metric is the same count for Prometheus.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

RETRY = re.compile(r" W-\d+-(?P<model>\S+?)_(?P<version>[^_\s]+) \S+WorkerThread - Retry worker: ")
SERVER_START = "Torchserve version:"


def worker_restarts(log_dir: Path) -> dict[tuple[str, str], int]:
    """{(model, version): restarts} since the server in `log_dir` last started."""
    path = log_dir / "ts_log.log"
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return {}
    start = text.rfind(SERVER_START)
    lines = text[start if start >= 0 else 0:].splitlines()
    # TorchServe's log4j config can write a line twice (console and file appenders): count each once.
    seen = dict.fromkeys(line for line in lines if "Retry worker: " in line)
    counts: Counter = Counter()
    for line in seen:
        match = RETRY.search(line)
        if match:
            counts[(match["model"], match["version"])] += 1
    return dict(counts)


def restarts_of(counts: dict[tuple[str, str], int], model: str, version: str | None = None) -> int:
    """Restarts of `model` (all versions, or one)."""
    return sum(n for (m, v), n in counts.items() if m == model and (version in (None, "") or v == version))


def load_failure(log_dir: Path, model: str, version: str) -> str | None:
    """Why the last worker of `model` `version` failed to load, in one line, from model_log.log:
    TorchServe's worker says "Failed to load model M, exception <why>"; else the handler's own
    error line (its traceback ends in the worker's wrapping RuntimeError, which says nothing)."""
    path = log_dir / "model_log.log"
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return None
    tag = f"-{model}_{version}"
    said = [re.sub(r"^.*?MODEL_LOG - ", "", line).strip() for line in lines if tag in line]
    for pattern in (r"^Failed to load model \S+, exception (.+)", r"^(INTEGRITY: .+)", r"^(\w[\w.]*(?:Error|Exception): .+)"):
        found = [m.group(1) for text in said if (m := re.match(pattern, text)) and "Unknown exception" not in text]
        if found:
            return found[-1][:300]
    return None

"""How many threads a worker's ONNX Runtime session may use."""
from __future__ import annotations

import os


def worker_threads(configured: int, max_workers: int) -> int:
    """Explicit intra-op threads: configured, else cores // workers, so workers x threads <= cores."""
    if configured and configured > 0:
        return int(configured)
    return max(1, available_cores() // max(1, max_workers))


def available_cores() -> int:
    """Cores this server may use: MAAS_CPU_CORES when set (a pod sees every core of its node, not
    its CPU request, so the Kubernetes manifests set it), else the process's CPU affinity."""
    pinned = os.environ.get("MAAS_CPU_CORES", "").strip()
    if pinned.isdigit() and int(pinned) > 0:
        return int(pinned)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

"""What a worker knows of itself: how many threads its session may use, whether it replaces one that died."""
from __future__ import annotations

import os
import sys
from pathlib import Path


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


def note_worker_start(model_dir: Path) -> bool:
    """Record this worker's start; True when it replaces a worker that died.

    TorchServe restarts a dead worker on the same socket (`--sock-name .../.ts.sock.9000`),
    while a new worker (scale-up) gets a socket of its own, and every worker of a registration
    shares its model dir: a marker per socket there tells a restart apart. A .mar is unpacked
    afresh for each registration, but an archive folder (a language model's) is a symlink
    (/tmp/models/<registration>/<name>) into the model store itself, where a marker would outlive
    the registration and the next server's first worker would read as a restart: its markers go
    beside the link, in the registration's own directory, and the store is left as it was.
    """
    argv = sys.argv
    sock = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--sock-name", "--port")), None)
    if sock is None:  # not a TorchServe worker (tests, tools)
        return False
    markers = model_dir.parent / f".maas-worker-starts-{model_dir.name}" if model_dir.is_symlink() \
        else model_dir / ".maas-worker-starts"
    marker = markers / Path(sock).name
    try:
        restarted = marker.exists()
        markers.mkdir(exist_ok=True)
        marker.touch()
    except OSError:  # a read-only model dir: restarts stay visible in TorchServe's log
        return False
    return restarted

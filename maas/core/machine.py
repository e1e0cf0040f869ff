"""How many cores this process may use: what load-test records and the bench report as `cores`.

The handler computes the same inside a .mar (handlers/ort_base.available_cores, which also
reads MAAS_CPU_CORES); the archive carries no maas code, so that one copy stays there."""
from __future__ import annotations

import os


def cores() -> int:
    """The process's CPU affinity (a container's cpuset), not the machine's core count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

"""This machine as figures are reported against: how many cores this process may use (what
load-test records and the benches report as `cores`), its CPU and instruction set, the versions
of the engines. The benches and the variant chooser record it beside their figures.

The handler computes the cores the same way inside a .mar (handlers/cores.available_cores, which
also reads MAAS_CPU_CORES)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from maas.core.clock import now_iso


def cores() -> int:
    """The process's CPU affinity (a container's cpuset), not the machine's core count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def machine_info() -> dict[str, Any]:
    import platform
    from importlib import metadata

    versions = {}
    for pkg in ("torch", "onnxruntime-gpu", "torchserve", "locust", "transformers", "openvino"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    return {"cores": cores(), "cpu": _cpu_info("model name") or platform.processor() or platform.machine(),
            "isa": cpu_isa(set(_cpu_info("flags").split())), "python": platform.python_version(), **versions,
            "date": now_iso()}


def _cpu_info(field: str) -> str:
    """The first `field` line of /proc/cpuinfo ("" where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


# The x86 instruction sets that pick ONNX Runtime's (MLAS) and PyTorch's kernels, best first.
# INT8 differs most: VNNI does a u8 x s8 dot product in one instruction, AVX2 needs three.
ISA_LEVELS = (("amx_int8", "AMX"), ("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX2 VNNI"),
              ("avx512f", "AVX-512 (no VNNI)"), ("avx2", "AVX2 (no VNNI)"))


def cpu_isa(flags: set[str]) -> str:
    """The best vector instruction set among the CPU's flags, as the report names it."""
    return next((name for flag, name in ISA_LEVELS if flag in flags), "no AVX2" if flags else "unknown")

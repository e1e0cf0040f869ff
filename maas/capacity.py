"""Capacity search: step the load up until an SLO breaks; report the best step that held."""
from __future__ import annotations

import logging
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

from maas import loadtest
from maas.core.machine import cores
from maas.gate import figures
from maas.records import write_record
from maas.slo import SLO

log = logging.getLogger(__name__)


def capacity_steps(max_users: int) -> list[int]:
    steps, users = [], 1
    while users <= max_users:
        steps.append(users)
        users *= 2
    return steps


def find_capacity(endpoints_inference: str, key_file: Path | None, reports_dir: Path, model: str,
                  slo: SLO, version: str = "", max_users: int = 64, step_s: int = 10,
                  workers: int = 0,
                  worker_restarts: Callable[[], dict[tuple[str, str], int]] | None = None,
                  model_store: Path | None = None,
                  keep_keys_fresh: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Step load (1, 2, 4, ... users) until a latency or error SLO breaks; the best step that held wins.

    Throughput is what is being measured here, so min_rps is not applied per step.
    """
    steps = []
    best = None
    for users in capacity_steps(max_users):
        step_slo = replace(slo, users=users, spawn_rate=float(users), run_time_s=step_s, warmup_s=min(slo.warmup_s, 2),
                           thresholds=replace(slo.thresholds, min_rps=0.0))
        summary, out = loadtest.run(loadtest.LoadTest(model, step_slo, version, workers, f"capacity-{users}u", model_store=model_store),
                                    endpoints_inference, key_file, reports_dir, {"served_version": version or None},
                                    keep_keys_fresh, worker_restarts=worker_restarts)
        steps.append({"users": users, "path": str(out), **figures(summary), "broken": summary["broken"]})
        log.info("capacity: %d users -> %.1f req/s, p95 %.1f ms: %s", users, summary["rps"], summary["p95_ms"],
                 "held" if summary["passed"] else "; ".join(summary["broken"]))
        if not summary["passed"]:
            break
        if best is None or summary["rps"] > best["rps"]:
            best = steps[-1]
    result = {"model": model, "version": version or "default", "slo": asdict(slo), "steps": steps,
              "capacity": best, "cores": cores()}
    result["path"] = str(write_record(reports_dir, model, "capacity", result))
    return result

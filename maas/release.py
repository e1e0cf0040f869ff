"""Release gate: a candidate version becomes the default only when it earns it.

  1. deploy the candidate beside the current default (if it is not registered yet);
  2. it must answer the smoke cases correctly (maas/smoke.py);
  3. it must meet the model's SLO under load (loadtests/slo/<model>.yaml);
  4. it must not regress beyond the SLO's tolerance against the current default's last
     passing summary (measured now when there is none);
  5. only then set-default. Otherwise the current default keeps serving, a candidate
     deployed by this run is removed again, and the reasons are returned.
Every run writes reports/<time>-<model>-release/release.json.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from maas import deploy, loadtest, smoke
from maas.client import ApiError, ServeError, TorchServeClient
from maas.core.clock import now_iso
from maas.core.errors import MaasError
from maas.gate import figures
from maas.records import write_record
from maas.slo import SLO, Regression

log = logging.getLogger(__name__)


def current_default(client: TorchServeClient, model: str) -> str | None:
    try:
        return str(client.describe(model)[0]["modelVersion"])
    except ApiError as err:
        if err.status == 404:
            return None
        raise


def last_summary(reports_dir: Path, model: str, version: str, slo: SLO | None = None,
                 workers: int = 0) -> tuple[dict[str, Any], Path] | None:
    """The newest passing load-test summary of `model` at `version` (by served version) that measured
    what the gate measures: predictions over HTTP, and with `slo` the same users, duration and Locust
    workers; never a capacity step's or an explanations run's."""
    for path in sorted(reports_dir.glob(f"*-{model}*/summary.json"), reverse=True):
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        same_load = slo is None or (summary.get("users"), summary.get("run_time_s"), summary.get("locust_workers", 0)) == (
            slo.users, slo.run_time_s, workers)
        if (summary.get("model") == model and summary.get("served_version") == version and summary.get("passed")
                and summary.get("endpoint", "predictions") == "predictions" and summary.get("protocol", "http") == "http"
                and "-capacity-" not in path.parent.name and same_load):
            return summary, path
    return None


def regressions(candidate: dict[str, Any], baseline: dict[str, Any], tolerance: Regression) -> list[str]:
    found = []
    p95_limit = baseline["p95_ms"] * (1 + tolerance.max_p95_increase)
    if candidate["p95_ms"] > p95_limit:
        found.append(f"p95 {candidate['p95_ms']:.1f} ms > {p95_limit:.1f} ms "
                     f"(baseline {baseline['p95_ms']:.1f} ms +{tolerance.max_p95_increase:.0%})")
    rps_floor = baseline["rps"] * (1 - tolerance.max_rps_decrease)
    if candidate["rps"] < rps_floor:
        found.append(f"throughput {candidate['rps']:.1f} req/s < {rps_floor:.1f} req/s "
                     f"(baseline {baseline['rps']:.1f} req/s -{tolerance.max_rps_decrease:.0%})")
    return found


def release(client: TorchServeClient, endpoints_inference: str, key_file: Path | None, model_store: Path,
            reports_dir: Path, model: str, candidate: str, slo: SLO, workers: int = 0,
            fresh_baseline: bool = False,
            worker_restarts: Callable[[], dict[tuple[str, str], int]] | None = None,
            log_dir: Path | None = None) -> dict[str, Any]:
    """Run the gate; returns the decision record (also written to release.json). With the server's
    `log_dir`, a candidate that cannot load is refused with its worker's reason. A step that fails
    outright (a smoke request timing out, Locust not starting) is a reason too: the candidate this run
    deployed is removed whatever happens."""
    started = time.monotonic()
    record: dict[str, Any] = {"model": model, "candidate": candidate, "slo": asdict(slo),
                              "started": now_iso()}
    default = current_default(client, model)
    record["previous_default"] = default
    renew = (lambda: client.fresh_key("inference")) if key_file else None  # a deploy and two loads can outlast a key
    run = lambda version, label: loadtest.run(  # noqa: E731
        loadtest.LoadTest(model, slo, version, workers, label, model_store=model_store), endpoints_inference,
        key_file, reports_dir, {"served_version": version}, renew, worker_restarts=worker_restarts)
    deployed_here, promoted, reasons = False, False, []
    try:
        if default == candidate:
            reasons.append(f"{candidate} is already the default version")
        else:
            deployed_here, reasons = _deploy_candidate(client, model_store, model, candidate, default, log_dir)
        if not reasons:
            reasons += _measure(record, run, reports_dir, model, candidate, default, slo, workers, fresh_baseline)
        promoted = not reasons
        if promoted:
            deploy.set_default(client, model, candidate)
    except (MaasError, OSError) as err:
        reasons.append(f"{type(err).__name__}: {err}")
    finally:
        if deployed_here and not promoted:
            try:
                deploy.undeploy(client, model, candidate)
            except MaasError as err:
                reasons.append(f"the candidate could not be removed again: {err}")
    record.update(promoted=promoted, reasons=reasons, default_now=current_default(client, model),
                  wall_time_s=round(time.monotonic() - started, 1),
                  finished=now_iso())
    record["path"] = str(write_record(reports_dir, model, "release", record))
    return record


def _deploy_candidate(client: TorchServeClient, model_store: Path, model: str, candidate: str, default: str | None,
                      log_dir: Path | None) -> tuple[bool, list[str]]:
    """(deployed by this run, reasons): the candidate registered beside the default (with as many workers
    as the default has: its load is measured against the default's), then its smoke cases."""
    registered = default is not None and any(
        str(d["modelVersion"]) == candidate for d in client.describe(model, "all"))
    deployed_here = False
    if not registered:
        workers = max(1, len(client.describe(model)[0].get("workers", []))) if default is not None else 1
        log.info("release: deploying %s %s beside the default %s (%d workers)", model, candidate, default, workers)
        try:
            deploy.deploy(client, model_store, model, candidate, workers=workers, log_dir=log_dir)
            deployed_here = True
        except ServeError as err:  # it never served: the default was never at risk
            return False, [f"deploy: {err}"]
    return deployed_here, [f"smoke: {p}" for p in smoke.run_cases(client, model, candidate, model_store)]


def _measure(record: dict[str, Any], run: Callable[[str, str], tuple[dict[str, Any], Path]], reports_dir: Path,
             model: str, candidate: str, default: str | None, slo: SLO, workers: int, fresh_baseline: bool) -> list[str]:
    """The candidate under load against its SLO, then against the default's figures; -> reasons."""
    summary, out = run(candidate, "candidate")
    record["candidate_summary"] = {"path": str(out / "summary.json"), **figures(summary)}
    reasons = [f"SLO: {b}" for b in summary["broken"]]
    if not reasons and default is not None:
        found = None if fresh_baseline else last_summary(reports_dir, model, default, slo, workers)
        if found is None:
            log.info("release: measuring the current default %s for comparison", default)
            baseline, base_out = run(default, "baseline")
            found = (baseline, base_out / "summary.json")
        record["baseline_summary"] = {"path": str(found[1]), **figures(found[0])}
        reasons += [f"regression: {r}" for r in regressions(summary, found[0], slo.regression)]
    return reasons

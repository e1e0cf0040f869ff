"""Deploy, scale, version and undeploy models through TorchServe's management API.

Every operation waits for its effect (READY workers, the worker count) so a script that
calls `maas deploy && maas predict` never races the server.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import yaml

from maas.client import ApiError, ServeError, TorchServeClient, api_path
from maas.core.names import name_problem
from maas.core.store import Archive, StoreError, archive_member, find_archive, workflow_archive
from maas.worker_log import load_failure

log = logging.getLogger(__name__)


def ready_workers(desc: dict[str, Any]) -> list[dict[str, Any]]:
    return [w for w in desc.get("workers", []) if w.get("status") == "READY"]


def wait_for_workers(client: TorchServeClient, model: str, version: str, count: int, timeout: float) -> dict[str, Any]:
    """Poll until `model/version` has exactly `count` workers, all READY."""
    deadline = time.monotonic() + timeout
    desc: dict[str, Any] = {}
    while time.monotonic() < deadline:
        desc = client.describe(model, version)[0]
        workers = desc.get("workers", [])
        if len(workers) == count and len(ready_workers(desc)) == count:
            return desc
        time.sleep(0.3)
    states = [w.get("status") for w in desc.get("workers", [])]
    raise ServeError(f"{model} {version}: {count} READY workers not reached within {timeout:g} s (now {states})")


def deploy(client: TorchServeClient, model_store: Path, model: str, version: str | None = None,
           workers: int | None = None, batch_size: int | None = None, max_batch_delay_ms: int | None = None,
           timeout: float = 180.0, load_retries: int = 2, log_dir: Path | None = None) -> dict[str, Any]:
    """Register an archive from the model store by name, synchronously; returns its description.
    `workers`: None keeps the archive's own (model-config.yaml's minWorkers). With the server's
    `log_dir`, a model that cannot load fails with its worker's reason."""
    for value, what in ((model, "model name"), (version, "version")):
        problem = name_problem(value, what) if value is not None else None
        if problem:
            raise ServeError(problem)
    archive = find_archive(model_store, model, version)
    workers = workers if workers is not None else archive_workers(archive)
    params: dict[str, Any] = {"url": archive.path.name, "initial_workers": workers, "synchronous": "true",
                              "response_timeout": 120}
    if batch_size is not None:
        params["batch_size"] = batch_size
    if max_batch_delay_ms is not None:
        params["max_batch_delay"] = max_batch_delay_ms
    try:
        client.management("POST", "/models", params=params, timeout=timeout)
    except ApiError as err:
        if err.status != 500 or "Failed to start workers" not in err.message:
            raise
        # Registered, but the first worker died while loading (a transient failure, or a
        # model that fails its checks): TorchServe leaves it at 0 workers. Try again.
        _retry_workers(client, archive, workers, timeout, load_retries, err, params, log_dir)
    except ServeError:
        # TorchServe's asynchronous worker (asyncCommunication) never reports a failed load: the
        # registration waits out its startupTimeout. The worker log may say why.
        reason = load_failure(log_dir, archive.model, archive.version) if log_dir is not None else None
        if reason is None:
            raise
        _give_up(client, archive, f"workers failed to load: {reason}")
    # The archive's model-config.yaml (minWorkers/maxWorkers) wins over initial_workers: scale to the ask.
    if len(client.describe(archive.model, archive.version)[0].get("workers", [])) != workers:
        return scale(client, archive.model, workers, None, archive.version, timeout)
    return wait_for_workers(client, archive.model, archive.version, workers, timeout)


def archive_workers(archive: Archive) -> int:
    """The workers an archive asks for (its model-config.yaml's minWorkers; 1 without)."""
    try:
        config = yaml.safe_load(archive_member(archive, "model-config.yaml")) or {}
        return max(1, int(config.get("minWorkers", 1)))
    except (StoreError, yaml.YAMLError, TypeError, ValueError, AttributeError):
        return 1


def _retry_workers(client: TorchServeClient, archive: Archive, workers: int, timeout: float, attempts: int,
                   first: ApiError, register_params: dict[str, Any], log_dir: Path | None = None) -> None:
    path = api_path("models", archive.model, archive.version)
    for attempt in range(1, attempts + 1):
        log.info("%s %s: workers failed to start (%s); retry %d/%d", archive.model, archive.version,
                 first.message, attempt, attempts)
        try:
            client.management("PUT", path, params={"min_worker": workers, "max_worker": workers,
                                                   "synchronous": "true"}, timeout=timeout)
        except ApiError as err:
            if err.status == 404:
                # Depending on timing, TorchServe 0.12 drops the registration when its first
                # workers fail instead of keeping it at 0 workers: register it again.
                try:
                    client.management("POST", "/models", params=register_params, timeout=timeout)
                except ApiError as again:
                    if again.status != 500 or "Failed to start workers" not in again.message:
                        raise
                    continue
            elif err.status != 500:
                raise
            else:
                continue
        deadline = time.monotonic() + min(timeout, 60.0)
        while time.monotonic() < deadline:
            states = [w.get("status") for w in client.describe(archive.model, archive.version)[0].get("workers", [])]
            if len(states) == workers and all(s == "READY" for s in states):
                return
            if "UNLOADING" in states:  # the worker died while loading again
                break
            time.sleep(0.3)
    reason = load_failure(log_dir, archive.model, archive.version) if log_dir is not None else None
    why = f": {reason}" if reason else " (see the worker log, model_log.log, e.g. an INTEGRITY line)"
    _give_up(client, archive, f"workers failed to load {attempts + 1} times{why}")


def _give_up(client: TorchServeClient, archive: Archive, what: str) -> None:
    """Stop TorchServe from restarting a worker that cannot load, over and over; say what happened."""
    try:
        client.management("PUT", api_path("models", archive.model, archive.version),
                          params={"min_worker": 0, "max_worker": 0, "synchronous": "false"})
    except ApiError as err:
        if err.status != 404:  # already dropped by TorchServe: nothing left to stop
            raise
    raise ServeError(f"{archive.model} {archive.version}: {what}; the model stays registered with 0 workers: "
                     f"`maas undeploy {archive.model} --version {archive.version}`")


def resolve_version(client: TorchServeClient, model: str, version: str | None) -> str:
    """`version`, or the model's current default version."""
    return version or str(client.describe(model)[0]["modelVersion"])


def scale(client: TorchServeClient, model: str, min_workers: int, max_workers: int | None = None,
          version: str | None = None, timeout: float = 180.0) -> dict[str, Any]:
    version = resolve_version(client, model, version)
    max_workers = max(min_workers, max_workers if max_workers is not None else min_workers)
    # Asynchronous request, then our own wait: the timeout is ours to report, not an HTTP one.
    client.management("PUT", api_path("models", model, version),
                      params={"min_worker": min_workers, "max_worker": max_workers, "synchronous": "false"})
    return wait_for_workers(client, model, version, min_workers, timeout)


def set_default(client: TorchServeClient, model: str, version: str) -> None:
    client.management("PUT", api_path("models", model, version, "set-default"))


def undeploy(client: TorchServeClient, model: str, version: str | None = None, attempts: int = 10) -> str:
    """Unregister one version (default: the default version); retries while workers are busy.

    TorchServe 0.12 can answer 500 ConcurrentModificationException when a model is
    unregistered while its workers still finish requests (seen right after a load run), or a 500
    NullPointerException from a worker shutting down as it unregisters the model all the same
    (BatchAggregator.sendError): then the next attempt's 404 means it is gone.
    """
    version = resolve_version(client, model, version)
    for attempt in range(1, attempts + 1):
        try:
            client.management("DELETE", api_path("models", model, version), timeout=120)
            return version
        except ApiError as err:
            if err.status == 404 and attempt > 1:
                log.info("unregister %s %s: gone after the failed attempt", model, version)
                return version
            transient = err.status == 500 or "ConcurrentModification" in err.message or err.status == 408
            if not transient or attempt == attempts:
                raise
            log.info("unregister %s %s: %s; retrying (%d/%d)", model, version, err.message, attempt, attempts)
            time.sleep(min(0.5 * attempt, 3.0))
    return version


# ---- workflows (TorchServe .war: a DAG of models and functions, e.g. maintenance-ensemble) ----
def registered_workflows(client: TorchServeClient) -> list[str]:
    return [w["workflowName"] for w in client.management("GET", "/workflows").get("workflows", [])]


def deploy_workflow(client: TorchServeClient, workflow_store: Path, name: str, timeout: float = 300.0) -> dict[str, Any]:
    """Register <name>.war from the workflow store by name; its member models load with it."""
    if workflow_archive(workflow_store, name) is None:
        raise ServeError(f"no workflow archive {name}.war in {workflow_store}: build it (`maas build --ensemble N`)")
    client.management("POST", "/workflows", params={"url": f"{name}.war"}, timeout=timeout)
    return client.management("GET", api_path("workflows", name))


def undeploy_workflow(client: TorchServeClient, name: str) -> None:
    client.management("DELETE", api_path("workflows", name), timeout=120)

"""A served configuration's in-process ceiling: its own handler, no TorchServe, no HTTP.

The archive is unpacked as TorchServe unpacks it, its handler class is found as TorchServe's
model loader finds it (the one class its module defines) and initialised with a minimal
context (model_dir, model-config.yaml, no GPU). Then `workers` processes, started together,
each call `handle()` on batches of `batch` request bodies back to back for `seconds` (for
each batch size in turn, `ceilings`, to show how the work scales): the
same code, threads and layout the server runs, minus the frontend, the sockets and the load
generator. Served throughput over this ceiling is what serving costs.
"""
from __future__ import annotations

import importlib
import inspect
import json
import multiprocessing as mp
import queue
import sys
import tempfile
import time
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from maas.core.errors import ServeError
from maas.core.spec import ServingSpec


class _Metrics:
    """What BaseHandler.handle and our handlers call on context.metrics; records nothing."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class InProcessContext:
    """The parts of TorchServe's Context a handler reads, for one unpacked archive."""

    def __init__(self, model_dir: Path, yaml_config: dict[str, Any], manifest: dict[str, Any]) -> None:
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None,
                                  "batch_size": ServingSpec.from_model_config(yaml_config).batch_size}
        self.model_yaml_config = yaml_config
        self.manifest = manifest
        self.metrics = _Metrics()
        self.request_ids = {}
        self._headers: dict[int, dict[str, str]] = {}

    def get_request_header(self, idx: int, key: str) -> str | None:
        return None

    def set_response_content_type(self, idx: int, value: str) -> None:
        self._headers.setdefault(idx, {})["content-type"] = value

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        self._headers.setdefault(idx, {})[key] = value

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        pass


def load_handler(mar: Path, into: Path, workers: int, handler_settings: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """(handler, context): the archive's handler initialised in this process, as a worker of `workers`."""
    with zipfile.ZipFile(mar) as z:
        z.extractall(into)
    mar_manifest = json.loads((into / "MAR-INF" / "MANIFEST.json").read_text())
    config = yaml.safe_load((into / "model-config.yaml").read_text()) if (into / "model-config.yaml").exists() else {}
    serving = ServingSpec.from_model_config(config)
    config = replace(serving, min_workers=workers, max_workers=workers).written_over(config)
    config["handler"].update(handler_settings or {})
    sys.path.insert(0, str(into))
    module = importlib.import_module(Path(mar_manifest["model"]["handler"]).stem)
    classes = [c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == module.__name__]
    if len(classes) != 1:
        raise ServeError(f"{mar.name}: its handler module defines {len(classes)} classes, TorchServe needs one")
    context = InProcessContext(into, config, mar_manifest)
    handler = classes[0]()
    handler.initialize(context)
    return handler, context


def _worker(mar: str, workers: int, settings: dict[str, Any], bodies: list[Any], batches: list[int], seconds: float,
            start: Any, results: Any) -> None:
    with tempfile.TemporaryDirectory(prefix="maas-ceiling-") as tmp:
        handler, context = load_handler(Path(mar), Path(tmp), workers, settings)
        requests = [{"body": b} for b in bodies]
        i = 0
        for batch in batches:  # every worker runs each batch size at the same time as the others
            handler.handle(requests[:batch], context)  # warm-up (ORT plans per shape)
            start.wait()
            done, latencies = 0, []
            began = time.perf_counter()
            while time.perf_counter() - began < seconds:
                chunk = [requests[(i + k) % len(requests)] for k in range(batch)]
                i += batch
                t = time.perf_counter()
                handler.handle(chunk, context)
                latencies.append((time.perf_counter() - t) * 1000)
                done += batch
            results.put((batch, done / (time.perf_counter() - began), latencies))


def ceiling(mar: Path, workers: int, bodies: list[Any], batch: int, seconds: float,
            handler_settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Requests/s of `workers` processes running the archive's handler on full batches together.

    `bodies` are what TorchServe hands a handler: a dict for a JSON request (already decoded).
    """
    return ceilings(mar, workers, bodies, [batch], seconds, handler_settings)[0]


def ceilings(mar: Path, workers: int, bodies: list[Any], batches: list[int], seconds: float,
             handler_settings: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """`ceiling` at each batch size in turn (one model load per worker): how the work scales."""
    ctx = mp.get_context("spawn")  # a clean interpreter per worker, as TorchServe starts them
    start, results = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(mar), workers, handler_settings or {}, bodies, list(batches),
                                               seconds, start, results), daemon=True) for _ in range(workers)]
    for p in procs:
        p.start()
    out: dict[int, list[tuple[float, list[float]]]] = {b: [] for b in batches}
    deadline = time.monotonic() + seconds * len(batches) + 600  # loading a model takes seconds, not minutes
    while sum(map(len, out.values())) < workers * len(batches):
        try:
            batch, rate, latencies = results.get(timeout=5)
            out[batch].append((rate, latencies))
        except queue.Empty:
            if time.monotonic() > deadline or any(p.exitcode not in (None, 0) for p in procs):
                for p in procs:
                    p.kill()
                raise ServeError(f"in-process ceiling of {mar.name}: a worker failed (exit codes "
                                   f"{[p.exitcode for p in procs]}) or timed out")
    for p in procs:
        p.join(timeout=60)
    rows = []
    for batch in batches:
        latencies = [ms for _, lat in out[batch] for ms in lat]
        rows.append({"items_per_s": float(sum(rate for rate, _ in out[batch])), "batch": batch, "workers": workers,
                     "batch_p50_ms": float(np.percentile(latencies, 50)),
                     "batch_p95_ms": float(np.percentile(latencies, 95))})
    return rows

"""`--variant auto`: the fastest engine and precision for one model on this machine, within its
accuracy budget, chosen by measurement.

Every CPU candidate available here is made from the archive's verified FP32 model and priced on
the model's held-out data (export/variant_archive.py): ONNX Runtime's offline-optimized graph
(opt), dynamic INT8 (int8) and its calibrated form (int8-cal: smoothed, the most sensitive
MatMuls in FP32), OpenVINO at its default precision (ov: bfloat16 on CPUs that have it) and
NNCF's calibrated INT8 on OpenVINO (ov-int8), the OpenVINO ones only where the `openvino` extra
is installed. Then all of them, and the FP32 archive itself, are timed in process on the same
batches (the model's calibration data, `batch` items a run) in the archive's serving layout:
as many sessions as it has workers, cores // workers threads each, run concurrently, as
TorchServe's workers run (an engine that scales worse across one-thread workers than in one
process on every core is ranked by what it will serve: minilm's OpenVINO INT8 kept 0.81 of its
in-process speed per core served against ONNX Runtime's 0.93). Rounds are interleaved so that a
noisy neighbour slows every candidate alike; the best round counts. The fastest within its
budget is archived as <version>-<variant> with every candidate's figures in its manifest
(`variant.choice`); if FP32 is fastest, nothing new is archived.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maas.core.store import archive_manifest, find_archive
from maas.export.engines import describe, has_nncf, has_openvino, open_session
from maas.export.package import Packaged
from maas.export.variant_archive import PricedVariant, archive_variant, calibration_feeds, price_variant
from maas.export.variants import VariantError

log = logging.getLogger(__name__)

CPU_CANDIDATES = ("opt", "int8", "int8-cal", "ov", "ov-int8")


@dataclass
class Choice:
    name: str
    chosen: str  # a variant, or "fp32": the archive as it is
    rows: list[dict[str, Any]]  # every candidate: engine, cost, budget, items/s (or why it was left out)
    packaged: Packaged | None
    report: Path


def candidates() -> tuple[list[str], dict[str, str]]:
    """The variants this Python can make, and why each other one is left out."""
    missing = {}
    if not has_openvino():
        missing["ov"] = "OpenVINO not installed (pip install 'maas[openvino]')"
    if not has_nncf():
        missing["ov-int8"] = "NNCF or OpenVINO not installed (pip install 'maas[openvino]')"
    return [v for v in CPU_CANDIDATES if v not in missing], missing


def timing_feeds(model: Any, spec: Any, source: Any, manifest: dict[str, Any], batch: int,
                 batches: int = 8) -> list[dict[str, np.ndarray]]:
    """`batches` runs of `batch` items from the model's calibration data (or the archive's samples)."""
    feeds = model.timing_batches(batches, batch) if model is not None else []
    if feeds:
        return feeds
    rows = calibration_feeds(None, spec, source, manifest, batches * batch)
    if not spec.batch_axis:
        return rows
    return [{k: np.concatenate([r[k] for r in rows[i:i + batch]]) for k in rows[0]} for i in range(0, len(rows), batch)]


def time_all(sessions: dict[str, list[Any]], feeds: list[dict[str, np.ndarray]], rounds: int = 5,
             seconds: float = 1.5) -> dict[str, float]:
    """Items a second of each candidate over `feeds`, its sessions (one per worker) running
    concurrently: interleaved rounds, the best round of each. Both engines release the GIL while
    they compute, so threads here stand for TorchServe's worker processes."""
    from concurrent.futures import ThreadPoolExecutor

    items = sum(len(next(iter(f.values()))) for f in feeds)

    def loop(session: Any, until: float) -> int:
        done = 0
        while True:
            for feed in feeds:
                session.run(None, feed)
            done += items
            if time.perf_counter() >= until:
                return done

    workers = max(len(group) for group in sessions.values())
    best = dict.fromkeys(sessions, 0.0)
    with ThreadPoolExecutor(workers) as pool:
        for group in sessions.values():  # warm-up: first runs allocate and compile shapes
            list(pool.map(lambda s: loop(s, 0.0), group))
        for _ in range(rounds):
            for key, group in sessions.items():
                started = time.perf_counter()
                done = sum(pool.map(lambda s: loop(s, started + seconds), group))
                best[key] = max(best[key], done / (time.perf_counter() - started))
    return best


def choose_variant(model_store: Path, build_root: Path, name: str, version: str | None = None,
                   batch: int = 8, rounds: int = 5, round_s: float = 1.5) -> Choice:
    """Price and time every candidate (`rounds` interleaved rounds of `round_s` seconds each);
    archive the fastest within budget."""
    from maas.export import zoo
    from maas.handlers.cores import available_cores

    started = time.perf_counter()
    source = find_archive(model_store, name, version)
    manifest = archive_manifest(source)
    usable, missing = candidates()
    rows: list[dict[str, Any]] = [{"variant": "fp32", "engine": "onnxruntime", "cost": 0.0, "within_budget": True}]
    priced: dict[str, PricedVariant] = {}
    for variant in usable:
        log.info("%s: making and pricing the %s candidate ...", name, variant)
        try:
            p = price_variant(model_store, build_root, name, variant, version)
        except VariantError as exc:
            rows.append({"variant": variant, "left_out": str(exc)})
            continue
        priced[variant] = p
        rows.append({"variant": variant, "engine": describe(p.engine), "cost": p.report["cost"],
                     "cost_metric": p.report["cost_metric"], "budget": p.report["budget"],
                     "within_budget": bool(p.report["within_budget"])})
    rows += [{"variant": v, "left_out": why} for v, why in missing.items()]
    rows[0]["budget"] = next((r["budget"] for r in rows if "budget" in r), None)

    model = zoo.models().get(name)
    first = next(iter(priced.values()), None)
    spec = first.spec if first else None
    if first is None:
        raise VariantError(f"{name}: no candidate could be made: " + "; ".join(r.get("left_out", "") for r in rows[1:]))
    fp32 = first.fp32
    workers = max(1, min(spec.serving.max_workers, available_cores()))
    threads = max(1, available_cores() // workers)

    def opened(path: Path, engine: dict[str, Any] | None) -> list[Any]:
        return [open_session(path, engine, threads, pinning=workers == 1) for _ in range(workers)]

    feeds = timing_feeds(model, spec, source, manifest, batch)
    sessions = {"fp32": opened(fp32, None)}
    sessions.update({v: opened(p.made, p.engine) for v, p in priced.items()})
    log.info("%s: timing %s in process as served (%d workers x %d threads, batches of %d) ...", name,
             ", ".join(sessions), workers, threads, batch)
    speed = time_all(sessions, feeds, rounds, round_s)
    for row in rows:
        if row["variant"] in sessions:  # what the engine resolved to: "OpenVINO CPU (bf16)", ...
            row["engine"] = sessions[row["variant"]][0].get_providers()[0]
        if row["variant"] in speed:
            row["items_per_s"] = round(speed[row["variant"]], 1)
            row["speedup_vs_fp32"] = round(speed[row["variant"]] / speed["fp32"], 2)
    eligible = [r for r in rows if r.get("within_budget") and "items_per_s" in r]
    chosen = max(eligible, key=lambda r: r["items_per_s"])["variant"]
    choice = {"chosen": chosen, "workers": workers, "threads": threads, "batch": batch, "machine": _machine(), "candidates": rows}
    report = build_root / f"{name}-{manifest['version']}-choice.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(choice, indent=2) + "\n")
    packaged = archive_variant(priced[chosen], started, choice) if chosen != "fp32" else None
    return Choice(name, chosen, rows, packaged, report)


def _machine() -> dict[str, Any]:
    from maas.core.machine import machine_info  # cores, CPU, ISA, engine versions: what the figures hold for

    return machine_info()


def choice_lines(choice: Choice) -> list[str]:
    """The table `maas build --variant auto` prints."""
    lines = [f"{'variant':8s} {'engine':28s} {'items/s':>9s} {'vs fp32':>8s}  cost (budget)"]
    for r in choice.rows:
        if "left_out" in r:
            lines.append(f"{r['variant']:8s} left out: {r['left_out']}")
            continue
        mark = " <- chosen" if r["variant"] == choice.chosen else ("" if r["within_budget"] else "  over budget")
        budget = f" ({r['budget']:g})" if r.get("budget") is not None else ""
        lines.append(f"{r['variant']:8s} {r['engine']:28s} {r.get('items_per_s', 0):9.1f} "
                     f"{r.get('speedup_vs_fp32', 0):7.2f}x  {r['cost']:.4f}{budget}{mark}")
    return lines


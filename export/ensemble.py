"""`maintenance-ensemble`: N independently trained maintenance models behind one TorchServe
workflow (.war), built only when the ensemble is at least as good as its best member.

    model_store/maintenance-ens<N>-m<i>.mar       the members (seeds 0..N-1), each verified as usual
    workflow_store/maintenance-ensemble.war       spec (pre -> members -> aggregate) + handler + ensemble.json

Members and ensemble are scored on one fresh held-out set that no member trained on.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

import maas.handlers
from maas.core.errors import ExportError
from maas.export.archive import handler_support
from maas.export.build import build
from maas.export.variants import held_out_outputs
from maas.export.zoo import maintenance

log = logging.getLogger(__name__)
WORKFLOW = "maintenance-ensemble"
HANDLER = Path(maas.handlers.__path__[0]) / "ensemble_workflow.py"
HELD_OUT_SEED, HELD_OUT_RECORDS = 2024, 6000


@dataclass
class EnsembleResult:
    built: bool
    war: Path | None
    record: dict[str, Any]


def member_node(i: int) -> str:
    return f"m{i}"


def workflow_spec(member_archives: list[str], batch_size: int = 16, max_batch_delay_ms: int = 5,
                  timeout_ms: int = 5000) -> dict[str, Any]:
    """pre fans out to every member; every member feeds aggregate."""
    models: dict[str, Any] = {"min-workers": 1, "max-workers": 1, "batch-size": batch_size,
                              "max-batch-delay": max_batch_delay_ms, "retry-attempts": 1, "timeout-ms": timeout_ms}
    nodes = [member_node(i) for i in range(len(member_archives))]
    for node, archive in zip(nodes, member_archives):
        models[node] = {"url": archive}
    dag: dict[str, list[str]] = {"pre": nodes}
    dag.update({node: ["aggregate"] for node in nodes})
    return {"models": models, "dag": dag}


def evaluate(member_onnx: list[Path]) -> dict[str, Any]:
    held_out = maintenance.generate(HELD_OUT_RECORDS, seed=HELD_OUT_SEED)
    feats = {"features": held_out.features()}
    probs = [held_out_outputs(p, feats)[0] for p in member_onnx]
    members = [maintenance.binary_metrics(held_out.failure, p) for p in probs]
    ensemble = maintenance.binary_metrics(held_out.failure, np.mean(probs, axis=0))
    best = int(np.argmax([m["roc_auc"] for m in members]))
    return {"held_out": {"records": HELD_OUT_RECORDS, "seed": HELD_OUT_SEED, "failures": int(held_out.failure.sum())},
            "members": {member_node(i): m for i, m in enumerate(members)}, "ensemble": ensemble,
            "best_member": member_node(best),
            "ensemble_at_least_best_auroc": ensemble["roc_auc"] >= members[best]["roc_auc"]}


def build_ensemble(n: int, build_root: Path, model_store: Path, workflow_store: Path,
                   batch_size: int = 16, timeout_ms: int = 5000) -> EnsembleResult:
    if n < 2:
        raise ValueError("an ensemble needs at least 2 members")
    archives, onnx_files = [], []
    for i in range(n):
        result = build("maintenance", build_root, model_store, version=f"ens{n}-m{i}", seed=i)
        archives.append(result.mar.name)
        onnx_files.append(result.build_dir / "model.onnx")
    record = evaluate(onnx_files)
    record["member_archives"] = {member_node(i): a for i, a in enumerate(archives)}
    ens, best = record["ensemble"], record["members"][record["best_member"]]
    log.info("ensemble of %d: AUROC %.4f F1 %.4f accuracy %.4f; best member %s AUROC %.4f", n, ens["roc_auc"],
             ens["f1"], ens["accuracy"], record["best_member"], best["roc_auc"])
    if not record["ensemble_at_least_best_auroc"]:
        log.warning("the ensemble's AUROC is below its best member's: no workflow built; keep %s (%s)",
                    record["best_member"], record["member_archives"][record["best_member"]])
        return EnsembleResult(False, None, record)
    work = build_root / WORKFLOW
    work.mkdir(parents=True, exist_ok=True)
    (work / "workflow.yaml").write_text(yaml.safe_dump(workflow_spec(archives, batch_size, timeout_ms=timeout_ms),
                                                       sort_keys=False))
    (work / "ensemble.json").write_text(json.dumps(record, indent=2) + "\n")
    return EnsembleResult(True, package_workflow(work, workflow_store), record)


def package_workflow(work: Path, workflow_store: Path, name: str = WORKFLOW, handler: Path = HANDLER) -> Path:
    """torch-workflow-archiver: spec + handler + ensemble.json (the metrics) -> <store>/<name>.war."""
    workflow_store.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "workflow_archiver.workflow_packaging", "--workflow-name", name,
           "--spec-file", str(work / "workflow.yaml"), "--handler", str(handler),
           "--export-path", str(workflow_store), "-f"]
    # ensemble.json: the gate's record (when there is one) and the threshold `aggregate` reads at load.
    record = json.loads((work / "ensemble.json").read_text()) if (work / "ensemble.json").exists() else {}
    (work / "ensemble.json").write_text(json.dumps({**record, "threshold": maintenance.THRESHOLD}, indent=2) + "\n")
    extra = [*handler_support(handler, handler.parent), work / "ensemble.json"]
    cmd += ["--extra-files", ",".join(str(p) for p in extra)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise ExportError(f"torch-workflow-archiver failed: {done.stderr.strip() or done.stdout.strip()}")
    war = workflow_store / f"{name}.war"
    log.info("packaged %s", war)
    return war

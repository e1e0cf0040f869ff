"""The zoo's road: train/load -> export -> verify -> manifest -> .mar (the road `maas package` takes).

A zoo model (export/zoo/) trains its module and says what the handler reads; from there it
takes the same road as a user's model: export (export.onnx_export), verification, and
export.package.archive_model.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

from export import archive, onnx_export, variants, zoo
from export.package import archive_model
from export.spec import ModelSpec
from export.trained import Trained

log = logging.getLogger(__name__)


@dataclass
class BuildResult:
    name: str
    version: str
    mar: Path
    build_dir: Path
    seconds: float


def spec_of(name: str) -> ModelSpec:
    return zoo.get(name).spec


def build(name: str, build_root: Path, model_store: Path, version: str | None = None,
          seed: int | None = None, variant: str | None = None) -> BuildResult:
    """Build one zoo model into build_root/<archive>/ and model_store/<archive>.mar.

    With `variant` (see export/variants.py) the verified FP32 file is turned into that variant,
    its accuracy cost measured on held-out data and checked against its budget, and the result
    archived as its own version (default `<spec version>-<variant>`).
    """
    start = time.perf_counter()
    model = zoo.get(name)
    spec = model.spec
    if variant is not None:
        if variant not in variants.VARIANTS:
            raise variants.VariantError(f"unknown variant {variant!r}; known: {', '.join(variants.VARIANTS)}")
        version = version or f"{spec.version}-{variant}"
    archive_name = archive.archive_name(spec.name, version, spec.version)
    spec = replace(spec, version=version or spec.version)
    build_dir = build_root / archive_name
    if build_dir.exists():
        import shutil

        shutil.rmtree(build_dir)
    build_dir.mkdir(parents=True)

    log.info("%s: training / loading", name)
    trained = model.train() if seed is None else model.train(seed=seed)
    onnx_path = onnx_export.export_onnx(trained.module, spec, trained.sample, build_dir / "model.onnx")
    parity = onnx_export.verify(onnx_path, trained.module, spec, trained.sample)
    trained.metrics.update(model.evaluate_onnx(onnx_path, trained))
    if variant is not None:
        onnx_path, trained.extra_manifest = _variant(model, spec, trained, onnx_path, build_dir, variant)
    mar = archive_model(build_dir, spec, onnx_path, model_store, archive_name, parity=parity, metrics=trained.metrics,
                        extra_manifest=trained.extra_manifest, assets=trained.assets, external=[])
    return BuildResult(name, spec.version, mar, build_dir, time.perf_counter() - start)


def _variant(model: zoo.ZooModel, spec: ModelSpec, trained: Trained, fp32: Path, build_dir: Path,
             variant: str) -> tuple[Path, dict]:
    """build_dir/model.onnx becomes the variant (the FP32 file stays as model.fp32.onnx)."""
    kept = fp32.replace(build_dir / "model.fp32.onnx")
    made = variants.make_variant(variant, kept, build_dir, model.optimized_graph(trained))
    onnx_export.check_external_data(made)
    onnx_export.check_contract(made, spec)
    try:
        report = model.variant_report(kept, made)
    except zoo.NoHeldOutEvaluation as exc:
        raise variants.VariantError(str(exc)) from None
    log.info("%s %s: %s %.4f (budget %.4f)", spec.name, variant, report["cost_metric"], report["cost"], report["budget"])
    variants.check_budget(spec.name, variant, report)
    target = made.replace(build_dir / "model.onnx")
    extra = {**trained.extra_manifest, "variant": {
        "name": variant, "description": variants.VARIANTS[variant],
        "fp32_sha256": archive.sha256_file(kept), "accuracy": report}}
    return target, extra

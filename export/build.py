"""train/load -> export -> verify -> manifest -> .mar, for any model of the zoo."""
from __future__ import annotations

import importlib
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from export import archive, onnx_export, variants
from export.spec import ModelSpec

log = logging.getLogger(__name__)

# name -> module with SPEC and train() -> Trained. Adding a model is one line here.
MODELS = {
    "maintenance": "export.maintenance",
    "digits": "export.digits",
    "minilm": "export.minilm",
}


@dataclass
class BuildResult:
    name: str
    version: str
    mar: Path
    build_dir: Path
    seconds: float


def model_module(name: str):
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return importlib.import_module(MODELS[name])


def spec_of(name: str) -> ModelSpec:
    return model_module(name).SPEC


def archive_name_for(spec: ModelSpec, version: str | None) -> str:
    """<model>.mar for the spec's own version, <model>-<version>.mar for a stamped one."""
    return spec.name if version in (None, spec.version) else f"{spec.name}-{version}"


def build(name: str, build_root: Path, model_store: Path, version: str | None = None,
          seed: int | None = None, variant: str | None = None) -> BuildResult:
    """Build one model into build_root/<archive>/ and model_store/<archive>.mar.

    With `variant` (see export/variants.py) the verified FP32 file is turned into that variant,
    its accuracy cost measured on held-out data and checked against its budget, and the result
    archived as its own version (default `<spec version>-<variant>`).
    """
    start = time.perf_counter()
    module = model_module(name)
    spec: ModelSpec = module.SPEC
    if variant is not None:
        if variant not in variants.VARIANTS:
            raise variants.VariantError(f"unknown variant {variant!r}; known: {', '.join(variants.VARIANTS)}")
        version = version or f"{spec.version}-{variant}"
    archive_name = archive_name_for(spec, version)
    version = version or spec.version
    build_dir = build_root / archive_name
    if build_dir.exists():
        shutil.rmtree(build_dir)
    build_dir.mkdir(parents=True)

    log.info("%s: training / loading", name)
    trained = module.train() if seed is None else module.train(seed=seed)
    if trained.assets:
        (build_dir / "assets").mkdir()
        for asset in trained.assets:
            shutil.copy(asset, build_dir / "assets" / asset.name)
    onnx_path = onnx_export.export_onnx(trained.module, spec, trained.sample, build_dir / "model.onnx")
    parity = onnx_export.verify(onnx_path, trained.module, spec, trained.sample)
    if hasattr(module, "evaluate_onnx"):  # model-specific checks of the exported file itself
        trained.metrics.update(module.evaluate_onnx(onnx_path, trained))
    if variant is not None:
        onnx_path, trained.extra_manifest = _variant(module, spec, trained, onnx_path, build_dir, variant)
    archive.write_manifest(build_dir, spec, onnx_path, version, trained.metrics, parity, trained.extra_manifest)
    archive.write_model_config(build_dir, spec)
    mar = archive.package(build_dir, spec, model_store, version, archive_name)
    return BuildResult(name, version, mar, build_dir, time.perf_counter() - start)


def _variant(module, spec: ModelSpec, trained, fp32: Path, build_dir: Path, variant: str) -> tuple[Path, dict]:
    """build_dir/model.onnx becomes the variant (the FP32 file stays as model.fp32.onnx)."""
    if not hasattr(module, "variant_report"):
        raise variants.VariantError(f"{spec.name} has no held-out evaluation for variants")
    kept = fp32.replace(build_dir / "model.fp32.onnx")
    optimized = module.optimized_graph(trained) if hasattr(module, "optimized_graph") else None
    made = variants.make_variant(variant, kept, build_dir, optimized)
    onnx_export.check_external_data(made)
    onnx_export.check_contract(made, spec)
    report = module.variant_report(kept, made)
    log.info("%s %s: %s %.4f (budget %.4f)", spec.name, variant, report["cost_metric"], report["cost"], report["budget"])
    variants.check_budget(spec.name, variant, report)
    target = made.replace(build_dir / "model.onnx")
    extra = {**trained.extra_manifest, "variant": {
        "name": variant, "description": variants.VARIANTS[variant],
        "fp32_sha256": archive.sha256_file(kept), "accuracy": report}}
    return target, extra

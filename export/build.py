"""train/load -> export -> verify -> manifest -> .mar, for any model of the zoo."""
from __future__ import annotations

import importlib
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from export import archive, onnx_export
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
          seed: int | None = None) -> BuildResult:
    """Build one model into build_root/<archive>/ and model_store/<archive>.mar."""
    start = time.perf_counter()
    module = model_module(name)
    spec: ModelSpec = module.SPEC
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
    archive.write_manifest(build_dir, spec, onnx_path, version, trained.metrics, parity, trained.extra_manifest)
    archive.write_model_config(build_dir, spec)
    mar = archive.package(build_dir, spec, model_store, version, archive_name)
    return BuildResult(name, version, mar, build_dir, time.perf_counter() - start)

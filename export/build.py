"""The zoo's road: train/load -> export -> verify -> manifest -> .mar (the road `maas package` takes).

A zoo model (export/zoo/) trains its module and says what the handler reads; from there it
takes the same road as a user's model: export (export.onnx_export), verification, and
export.archive.archive_model.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from maas.core.errors import UnknownModel
from maas.core.extras import require
from maas.core.store import find_archive
from maas.export import archive, onnx_export, variants, zoo
from maas.export.archive import archive_model
from maas.export.variant_archive import package_variant
from maas.export.variant_choice import Choice, choose_variant

log = logging.getLogger(__name__)


AUTO = "auto"  # the fastest variant within budget, chosen by measurement (export/variant_choice.py)


@dataclass
class BuildResult:
    name: str
    version: str
    mar: Path
    build_dir: Path
    seconds: float
    choice: Choice | None = None  # with --variant auto: every candidate's figures


def _variant(model_store: Path, build_root: Path, name: str, variant: str, version: str | None,
             start: float) -> BuildResult:
    if variant == AUTO:
        choice = choose_variant(model_store, build_root, name, version)
        if choice.packaged is None:  # FP32 as it is was fastest
            source = find_archive(model_store, name, version)
            return BuildResult(name, source.version, source.path, choice.report.parent, time.perf_counter() - start, choice)
        made = choice.packaged
        return BuildResult(name, made.version, made.mar, made.build_dir, time.perf_counter() - start, choice)
    made = package_variant(model_store, build_root, name, variant, version)
    return BuildResult(name, made.version, made.mar, made.build_dir, time.perf_counter() - start)


def build(name: str, build_root: Path, model_store: Path, version: str | None = None,
          seed: int | None = None, variant: str | None = None, tiny: bool = False) -> BuildResult:
    """Build one zoo model into build_root/<archive>/ and model_store/<archive>.mar (or, for any
    other model in the store, only its `variant`).

    With `variant` (see export/variants.py) the variant is made from the model's verified FP32
    archive (`version`, else the plain one; built first when the store lacks it) and archived as
    version `<version>-<variant>`, its accuracy cost measured on held-out data and held to its budget.
    With `tiny`, the model's untrained stand-in (ZooModel.tiny) takes the same road minus the
    model's own quality checks, and the manifest says so: for fast tests, never for serving.
    """
    start = time.perf_counter()
    model = zoo.models().get(name)
    if model is None:  # a model packaged with `maas package`: only its variants are built here
        if variant is None:
            raise UnknownModel(f"{name} is not a zoo model ({', '.join(zoo.models())}); package your own model "
                               "with `maas package`, or build a variant of it with --variant")
        return _variant(model_store, build_root, name, variant, version, start)
    spec = model.spec
    require("zoo", f"building the zoo's {name}")
    if variant is not None:
        if variant not in (*variants.VARIANTS, AUTO):
            raise variants.VariantError(f"unknown variant {variant!r}; known: {', '.join(variants.VARIANTS)}, {AUTO}")
        if not (model_store / f"{archive.archive_name(name, version, spec.version)}.mar").exists():
            build(name, build_root, model_store, version=version, seed=seed)
        return _variant(model_store, build_root, name, variant, version, start)
    archive_name = archive.archive_name(spec.name, version, spec.version)
    spec = replace(spec, version=version or spec.version)
    build_dir = build_root / archive_name
    if build_dir.exists():
        shutil.rmtree(build_dir)
    build_dir.mkdir(parents=True)

    log.info("%s: %s", name, "a tiny untrained stand-in" if tiny else "training / loading")
    make = model.tiny if tiny else model.train
    trained = make() if seed is None else make(seed=seed)
    onnx_path = onnx_export.export_onnx(trained.module, spec, trained.sample, build_dir / "model.onnx")
    parity = onnx_export.verify(onnx_path, trained.module, spec, trained.sample)
    spec = onnx_export.batch_invariance(spec, parity)
    if tiny:
        trained.metrics["untrained_stand_in"] = True
    else:
        trained.metrics.update(model.evaluate_onnx(onnx_path, trained))
    mar = archive_model(build_dir, spec, onnx_path, model_store, archive_name, parity=parity, metrics=trained.metrics,
                        extra_manifest=trained.extra_manifest, assets=trained.assets, external=[])
    return BuildResult(name, spec.version, mar, build_dir, time.perf_counter() - start)

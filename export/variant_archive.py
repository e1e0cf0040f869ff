"""A variant of any archive in the model store (zoo and packaged models alike): made from the
archive's verified FP32 model (maas.export.variants), its accuracy cost measured and held to its
budget, archived beside the source as <name>-<version>-<variant>.mar with the same assets and
handler settings."""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from maas.core.spec import GENERIC_HANDLER, ModelSpec
from maas.core.store import Archive, archive_manifest, archive_member, archive_samples, find_archive
from maas.export import archive, onnx_export
from maas.export.calibrated_int8 import recipe_of, row_cosines
from maas.export.engines import open_session
from maas.export.package import SAMPLE_ROWS, Packaged, synthesize
from maas.export.variants import CALIBRATED, VARIANTS, VariantError, check_budget, engine_of, make_variant

log = logging.getLogger(__name__)


VARIANT_COSINE_BUDGET = 0.01  # 1 - mean cosine vs FP32, per output
VARIANT_TOP1_BUDGET = 0.95  # top-1 agreement with FP32, for outputs with labels


def variant_cost(spec: ModelSpec, fp32: Path, candidate: Path, samples: dict[str, np.ndarray],
                 engine: dict[str, Any] | None = None) -> dict[str, Any]:
    """The variant's answers (on `engine`; None: ONNX Runtime) vs FP32's on the samples: mean and
    worst cosine per row, max abs error, and top-1 agreement for labelled outputs. Cost = 1 - the
    lowest mean cosine."""
    base = onnx_export.ort_run(onnx_export.cpu_session(fp32), spec, samples)
    cand = onnx_export.ort_run(open_session(candidate, engine), spec, samples)
    per_output, top1 = {}, {}
    for t, b, c in zip(spec.outputs, base, cand):
        rows_b = b.reshape(len(b), -1).astype(np.float64) if spec.batch_axis else b.reshape(1, -1).astype(np.float64)
        rows_c = c.reshape(rows_b.shape).astype(np.float64)
        cos = row_cosines(rows_b, rows_c)
        per_output[t.name] = {"mean_cosine": float(cos.mean()), "worst_cosine": float(cos.min()),
                              "max_abs_error": float(np.max(np.abs(rows_b - rows_c)))}
        if t.labels:
            top1[t.name] = float(np.mean(b.argmax(axis=-1) == c.argmax(axis=-1)))
    cost = 1.0 - min(o["mean_cosine"] for o in per_output.values())
    within = bool(np.isfinite(cost)) and cost <= VARIANT_COSINE_BUDGET and all(a >= VARIANT_TOP1_BUDGET for a in top1.values())
    return {"cost_metric": "1 - mean cosine vs FP32 (worst output)", "cost": cost, "budget": VARIANT_COSINE_BUDGET,
            "within_budget": within, "outputs": per_output, "top1_agreement": top1,
            "top1_budget": VARIANT_TOP1_BUDGET if top1 else None, "samples": int(len(next(iter(samples.values()))))}


@dataclass
class PricedVariant:
    """A variant made from an archive's verified FP32 model, its accuracy cost measured, not yet archived."""

    variant: str
    source: Archive
    manifest: dict[str, Any]  # the source archive's
    model: Any  # the zoo model, None for a packaged one
    spec: ModelSpec
    handler: str
    build_dir: Path
    fp32: Path
    made: Path
    engine: dict[str, Any] | None
    report: dict[str, Any]


def package_variant(model_store: Path, build_root: Path, name: str, variant: str, version: str | None = None) -> Packaged:
    """A variant of an archive in the model store (zoo and packaged models alike): its verified FP32
    model made into `variant`, the cost measured (a zoo model on its held-out data, a packaged model
    on its archive's samples) and held to its budget, archived as <name>-<version>-<variant>.mar."""
    started = time.perf_counter()
    return archive_variant(price_variant(model_store, build_root, name, variant, version), started)


def price_variant(model_store: Path, build_root: Path, name: str, variant: str, version: str | None = None) -> PricedVariant:
    """Make `variant` of the archive and measure what it costs (the archive is left as it is)."""
    import zipfile

    import yaml

    from maas.export import zoo

    source = find_archive(model_store, name, version)
    manifest = archive_manifest(source)
    model = zoo.models().get(name)
    spec = model.spec if model else ModelSpec.from_archive(manifest, yaml.safe_load(archive_member(source, "model-config.yaml")))
    build_dir = build_root / archive.archive_name(name, f"{manifest['version']}-{variant}")
    if build_dir.exists():
        shutil.rmtree(build_dir)
    (build_dir / "assets").mkdir(parents=True)
    with zipfile.ZipFile(source.path) as z:
        z.extractall(build_dir / "archive")
        handler = json.loads(z.read("MAR-INF/MANIFEST.json"))["model"]["handler"]
    fp32 = build_dir / "archive" / manifest["model_file"]
    engine = engine_of(variant)
    calibration = calibration_feeds(model, spec, source, manifest) if variant in CALIBRATED else None
    made = make_variant(variant, fp32, build_dir, model.optimized_graph(None) if model and engine is None else None,
                        calibration, bool(model and model.transformer))
    onnx_export.check_contract(made, spec)
    report = _cost(model, spec, fp32, made, source, manifest, engine, held_out=variant in CALIBRATED)
    if recipe_of(made):
        report["recipe"] = recipe_of(made)
    log.info("%s %s: %s %.4f (budget %.4f)", name, variant, report["cost_metric"], report["cost"], report["budget"])
    return PricedVariant(variant, source, manifest, model, spec, handler, build_dir, fp32, made, engine, report)


def archive_variant(p: PricedVariant, started: float, choice: dict[str, Any] | None = None) -> Packaged:
    """Archive a priced variant beside its source, if its cost is within budget (`choice`: the
    chooser's figures, recorded in the manifest)."""
    check_budget(p.spec.name, p.variant, p.report)
    new_version = f"{p.manifest['version']}-{p.variant}"
    shutil.copy(p.made, p.build_dir / "model.onnx")
    spec = replace(p.spec, version=new_version, handler=p.handler)
    user_handler = p.build_dir / "archive" / p.handler if p.model is None and p.handler != GENERIC_HANDLER else None
    mar = _rearchive(p.build_dir, spec, p.manifest, p.source, p.variant, p.report, user_handler, choice)
    result = json.loads((p.build_dir / "manifest.json").read_text())
    return Packaged(spec.name, new_version, mar, p.build_dir, spec, result, time.perf_counter() - started)


def calibration_feeds(model: Any, spec: ModelSpec, source: Archive, manifest: dict[str, Any],
                      batches: int = 256) -> list[dict[str, np.ndarray]]:
    """What INT8 calibration runs on, one item a feed: a zoo model's training-side data, else the
    archive's samples (a packaged model's --samples; synthesized from the spec without them)."""
    feeds = model.calibration(batches) if model is not None else []
    if feeds:
        return feeds
    samples = _halves(spec, source, manifest)[0]
    if not spec.batch_axis:
        return [samples]
    rows = len(next(iter(samples.values())))
    return [{k: v[i:i + 1] for k, v in samples.items()} for i in range(min(rows, batches))]


def _halves(spec: ModelSpec, source: Archive, manifest: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(calibration rows, pricing rows) of the archive's samples: the even rows and the odd ones, so
    that a calibrated variant is priced on rows it was not calibrated on; both all rows when there
    are too few to split (fewer than 4, or no batch axis)."""
    samples = archive_samples(source, manifest) or synthesize(spec, SAMPLE_ROWS)
    rows = len(next(iter(samples.values()))) if spec.batch_axis and samples else 0
    if rows < 4:
        return samples, samples
    return {k: v[0::2] for k, v in samples.items()}, {k: v[1::2] for k, v in samples.items()}


def _cost(model: Any, spec: ModelSpec, fp32: Path, made: Path, source: Archive, manifest: dict[str, Any],
          engine: dict[str, Any] | None = None, held_out: bool = False) -> dict[str, Any]:
    """The variant's accuracy cost: a zoo model's own held-out evaluation, else the archive's samples
    (`held_out`, a calibrated variant: only the rows it was not calibrated on)."""
    from maas.export import zoo

    if model is None:
        calibrated_on, priced_on = _halves(spec, source, manifest)
        split = held_out and priced_on is not calibrated_on
        samples = priced_on if split else archive_samples(source, manifest) or synthesize(spec, SAMPLE_ROWS)
        report = variant_cost(spec, fp32, made, samples, engine)
        report["priced_on"] = "the samples it was not calibrated on" if split else "every sample"
        return report
    try:
        return model.variant_report(fp32, made, engine)
    except zoo.NoHeldOutEvaluation as exc:
        raise VariantError(str(exc)) from None


def _rearchive(build_dir: Path, spec: ModelSpec, manifest: dict[str, Any], source: Archive, variant: str,
               report: dict[str, Any], user_handler: Path | None, choice: dict[str, Any] | None = None) -> Path:
    """The variant's archive: the source archive's assets and handler settings, a manifest that
    records the variant and its cost, the same model-config.yaml."""
    extracted = build_dir / "archive"
    # maas's own modules come again from handlers/ (package() adds them); a user's helper modules
    # (shipped with --extra-file) are assets like any other and are copied
    code = {spec.handler, *(p.name for p in archive.handler_support(extracted / spec.handler, archive.HANDLERS_DIR))}
    skip = {manifest["model_file"], "manifest.json", "model-config.yaml", *code,
            *(e["file"] for e in manifest.get("external_data", []))}
    for item in extracted.iterdir():
        if item.is_file() and item.name not in skip:
            shutil.copy(item, build_dir / "assets" / item.name)
    # What the handler reads besides the I/O spec (limits, labels, tokenizer, ...) stays as it was.
    extra = {k: v for k, v in manifest.items() if k not in archive.MANIFEST_OWN_KEYS}
    extra.update(external_data=[], variant={"name": variant, "description": VARIANTS[variant],
                                            "fp32_sha256": manifest["sha256"], "accuracy": report,
                                            **({"choice": choice} if choice else {})})
    extra.pop("engine", None)
    if engine_of(variant):
        extra["engine"] = engine_of(variant)
    archive.write_manifest(build_dir, spec, build_dir / "model.onnx", spec.version, manifest.get("metrics", {}),
                           manifest.get("parity", {}), extra)
    (build_dir / "model-config.yaml").write_text(archive_member(source, "model-config.yaml").decode())
    return archive.package(build_dir, spec, source.path.parent, spec.version,
                           archive.archive_name(spec.name, spec.version), handler_path=user_handler)

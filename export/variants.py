"""Optimized variants of a verified FP32 model, each its own version with its accuracy cost.

    opt    ONNX Runtime graph optimizations saved offline (a model may supply a better graph:
           minilm's is the transformer-fused one, with Attention/BiasGelu ops; SkipLayerNorm
           is left unfused, being slower on CPU: handlers/ort_fusions.py)
    int8   dynamic INT8 quantization for CPU: per-channel 7-bit signed weights (U8S8, reduce_range), weight MatMuls only
           (quantizing activation x activation MatMuls, i.e. attention, cost minilm ~4x more)
    int8-cal  int8 calibrated on the model's samples: SmoothQuant smoothing, 8-bit weights where the CPU
           has VNNI, the most sensitive MatMuls left in FP32 (export/calibrated_int8.py)
    fp16   FP16 weights and compute with FP32 inputs/outputs, for the CUDA provider
    ov     the FP32 file on OpenVINO at its default precision (bfloat16 on CPUs that have it)
    ov-int8  NNCF's post-training INT8 quantization (calibrated on the model's samples), on OpenVINO

An OpenVINO variant is still an ONNX file (OpenVINO reads ONNX); its archive's manifest names the
engine (`engine`), which the handler opens (handlers/openvino_session.py).

Each model module measures the cost on held-out data (`variant_report`); a variant over its
budget is refused, never built. The budget: minilm mean cosine vs FP32 >= 0.99; accuracy
drop <= 1 point for the classifiers.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from maas.core.errors import ExportError
from maas.export.engines import nncf_int8, open_session
from maas.handlers.ort_fusions import CPU_SLOWER_FUSIONS

log = logging.getLogger(__name__)

VARIANTS = {
    "opt": "ONNX Runtime graph optimizations applied offline",
    "int8": "INT8 dynamic quantization (per-channel 7-bit signed weights) for CPU",
    "int8-cal": "INT8 dynamic quantization calibrated on the model's samples (SmoothQuant smoothing, the most "
                "sensitive MatMuls in FP32) for CPU",
    "fp16": "FP16 weights and compute, FP32 inputs/outputs, for GPU",
    "ov": "OpenVINO at its default precision (bfloat16 where the CPU has it)",
    "ov-int8": "NNCF post-training INT8 quantization, calibrated on the model's samples, on OpenVINO",
}
CALIBRATED = ("int8-cal", "ov-int8")  # variants made with the model's calibration data
ENGINES = {"ov": {"name": "openvino", "precision": "default"}, "ov-int8": {"name": "openvino", "precision": "default"}}


def engine_of(variant: str) -> dict[str, Any] | None:
    """The engine a variant's archive runs on (None: ONNX Runtime)."""
    return ENGINES.get(variant)


class VariantError(ExportError):
    """The variant cannot be made, or costs more accuracy than its budget allows."""

    show_type = False


def ort_offline_optimize(src: Path, dst: Path, basic: bool = False) -> Path:
    """ORT's own graph optimizations (extended level: fusions that run on every CPU; basic: constant
    folding and redundant-node removal only), saved."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC if basic
                                        else ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
    options.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"],
                         disabled_optimizers=list(CPU_SLOWER_FUSIONS))  # slower on CPU: handlers/ort_fusions.py
    return dst


def quantize_int8(src: Path, dst: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The exporter's recorded intermediate shapes can be specific to its sample batch, and the
    # quantizer's strict shape inference rejects them: let it infer every shape afresh.
    model = onnx.load(str(src))
    del model.graph.value_info[:]
    clean = dst.with_suffix(".noshapes.onnx")
    onnx.save(model, str(clean))
    # U8S8 with 7-bit weights (reduce_range), as ORT's quantization docs advise for x86 CPUs without
    # VNNI (AVX2, e.g. this AMD EPYC): VPMADDUBSW sums pairs of u8 x s8 products into int16, which
    # saturates with full-range weights (minilm measured mean cosine vs FP32 0.98999 there, over the
    # 0.99 budget) but cannot with 7-bit ones (255 x 63 x 2 < 32767), so every CPU gives the same
    # answers. Measured here: mean cosine 0.99103 (budget 0.99) and 1.23x the speed of U8U8 (0.99248),
    # the previous choice.
    def quantize(path: Path) -> None:
        quantize_dynamic(str(path), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                         extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT})

    try:
        try:
            quantize(clean)
        except (ValueError, KeyError) as first:
            # Graphs from other converters (Paddle2ONNX: weights computed by Constant/Identity nodes)
            # leave the quantizer no initializer to read: fold constants with ONNX Runtime's basic
            # optimizations, as its "pre-processing before quantization" advice says, and try once more.
            folded = ort_offline_optimize(clean, dst.with_suffix(".folded.onnx"), basic=True)
            try:
                quantize(folded)
            except (ValueError, KeyError) as second:
                raise VariantError(f"ONNX Runtime's quantizer refused this graph: {first}; after constant "
                                   f"folding: {second}") from second
            finally:
                folded.unlink(missing_ok=True)
    finally:
        clean.unlink(missing_ok=True)
    return dst


def convert_fp16(src: Path, dst: Path) -> Path:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
    return dst


def make_variant(variant: str, fp32: Path, build_dir: Path, optimized_graph: Callable[[Path], Path] | None,
                 calibration: list[dict[str, np.ndarray]] | None = None, transformer: bool = False) -> Path:
    """Write build_dir/model.<variant>.onnx from the verified FP32 file; returns its path.

    `optimized_graph(dst)` is the model's own optimized FP32 graph when it has one; int8 and
    fp16 (and int8-cal, calibrated on `calibration`) start from it too, as ONNX Runtime's quantizer handles the fused ops. OpenVINO variants
    start from the plain FP32 file (ONNX Runtime's fused ops are its own); ov-int8 is calibrated
    on `calibration` (feeds, one batch each), with NNCF's transformer preset for `transformer`s.
    """
    if variant not in VARIANTS:
        raise VariantError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    start = time.perf_counter()
    with _quiet_ort_tools():
        if variant == "ov":
            out = Path(shutil.copy(fp32, build_dir / "model.ov.onnx"))
        elif variant == "ov-int8":
            if not calibration:
                raise VariantError("ov-int8 needs calibration samples: package the model with --samples")
            out = nncf_int8(fp32, build_dir / "model.ov-int8.onnx", calibration, transformer)
        elif variant == "int8-cal":
            if not calibration:
                raise VariantError("int8-cal needs calibration samples: package the model with --samples")
            out = _make(variant, fp32, build_dir, optimized_graph, calibration)
        else:
            out = _make(variant, fp32, build_dir, optimized_graph)
    log.info("%s variant written: %s (%.1f MB, %.1f s)", variant, out.name, out.stat().st_size / 1e6,
             time.perf_counter() - start)
    return out


def _not_ort_chatter(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or "onnxruntime" not in record.pathname


@contextlib.contextmanager
def _quiet_ort_tools():
    """ORT's optimizer and quantizer log every fused node and tensor type at INFO straight on the
    root logger: while they run, a filter on that logger drops those records (and only those;
    no level changes, other loggers' records never pass a root-logger filter)."""
    root = logging.getLogger()
    root.addFilter(_not_ort_chatter)
    try:
        yield
    finally:
        root.removeFilter(_not_ort_chatter)


def _make(variant: str, fp32: Path, build_dir: Path, optimized_graph: Callable[[Path], Path] | None,
          calibration: list[dict[str, np.ndarray]] | None = None) -> Path:
    base = fp32
    if optimized_graph is not None:
        base = optimized_graph(build_dir / "model.opt.onnx")
    elif variant == "opt":
        base = ort_offline_optimize(fp32, build_dir / "model.opt.onnx")
    out = base if variant == "opt" else build_dir / f"model.{variant}.onnx"
    if variant == "int8":
        quantize_int8(base, out)
    elif variant == "int8-cal":
        from maas.export.calibrated_int8 import calibrated_int8

        try:
            calibrated_int8(base, out, calibration or [])
        except (ValueError, KeyError) as exc:
            raise VariantError(f"int8-cal: {exc}") from exc
    elif variant == "fp16":
        convert_fp16(base, out)
    return out


def check_budget(name: str, variant: str, report: dict[str, Any]) -> None:
    if not report["within_budget"]:
        raise VariantError(
            f"{name} {variant}: {report['cost_metric']} cost {report['cost']:.4f} exceeds the budget "
            f"{report['budget']:.4f}; not built")


def held_out_outputs(path: Path, inputs: dict[str, Any], batch: int = 256, engine: dict[str, Any] | None = None) -> list[Any]:
    """Every output of `path` on held-out inputs, run in batches on the CPU (ONNX Runtime, or `engine`)."""
    session = open_session(path, engine)
    n = len(next(iter(inputs.values())))
    parts = [session.run(None, {k: v[i:i + batch] for k, v in inputs.items()}) for i in range(0, n, batch)]
    return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]

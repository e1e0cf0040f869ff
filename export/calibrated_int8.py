"""The `int8-cal` variant: ONNX Runtime's dynamic INT8, made as accurate as a calibrated one.

Dynamic INT8 quantizes each activation with one scale for the whole tensor, so a few channels
with large values (transformers have them, after every LayerNorm) squeeze every other channel
into a few levels: minilm's plain `int8` loses 0.0090 of mean cosine where NNCF's calibrated INT8
on OpenVINO loses 0.0038. Three steps, each priced on the model's calibration data:

1. SmoothQuant's smoothing (Xiao et al., 2023): activation channel j is divided by
   s_j = max|X_j|^a / max|W_j|^(1-a) (a Mul before the MatMul) and the weight's row j multiplied
   by it, so X @ W is unchanged in FP32 and the activation's range is even across channels.
   The migration strength a is searched, not assumed.
2. Full 8-bit weights where the CPU has VNNI (its u8 x s8 dot product cannot saturate); 7-bit
   (reduce_range) elsewhere, as the plain `int8` variant always uses.
3. The few MatMuls whose quantization still costs most (measured one at a time) stay in FP32,
   each kept only while it buys a real gain: at most one in twelve.

Embedding lookups (Gather, EmbedLayerNormalization) are never quantized: int8 tables shrink the
file but speed nothing up, and they cost minilm 0.0006 of cosine.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

log = logging.getLogger(__name__)

ALPHAS = (0.5, 0.6, 0.7, 0.8)
QUANTIZED_OPS = ("MatMul", "Attention")  # ops whose second input is a [K, N] weight
MAX_FP32_FRACTION = 1 / 12  # of the quantizable nodes, the most that may stay in FP32
MIN_GAIN = 0.10  # a node stays in FP32 only if that lowers the calibration cost by 10 % or more
SENSITIVITY_NODES = 96  # more quantizable nodes than this: no per-node search (it quantizes once per node)
CALIBRATION_FEEDS = 128  # feeds for the activation ranges
SCORING_FEEDS = 48  # feeds each candidate is scored on


def has_vnni() -> bool:
    from maas.core.machine import _cpu_info

    flags = set(_cpu_info("flags").split())
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


def calibrated_int8(src: Path, dst: Path, calibration: list[dict[str, np.ndarray]]) -> Path:
    """Write the int8-cal variant of `src` (an FP32 ONNX file) to `dst`, and its recipe (the
    smoothing strength, the weight range, the nodes left in FP32, each step's calibration cost)
    to dst.with_suffix('.json')."""
    model = onnx.load(str(src))
    del model.graph.value_info[:]  # let the quantizer infer every shape afresh (see quantize_int8)
    work = dst.parent / f"{dst.stem}.work"
    work.mkdir(exist_ok=True)
    try:
        recipe = _search(model, dst, work, calibration)
    finally:
        for f in work.iterdir():
            f.unlink()
        work.rmdir()
    dst.with_suffix(".json").write_text(json.dumps(recipe, indent=2) + "\n")
    return dst


def recipe_of(made: Path) -> dict[str, Any] | None:
    """The recipe calibrated_int8 recorded beside `made`, if any."""
    path = made.with_suffix(".json")
    return json.loads(path.read_text()) if path.exists() else None


def _search(model: onnx.ModelProto, dst: Path, work: Path, calibration: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    targets = _targets(model)
    if not targets:
        raise ValueError("no MatMul with a constant weight to quantize")
    maxima = _activation_maxima(model, targets, calibration[:CALIBRATION_FEEDS])
    scoring = calibration[-SCORING_FEEDS:] if len(calibration) > SCORING_FEEDS else calibration
    plain = work / "fp32.onnx"
    onnx.save(model, str(plain))
    reference = _outputs(plain, scoring)
    full_range = has_vnni()

    def score(alpha: float | None, keep: list[str]) -> float:
        smoothed = work / "smoothed.onnx"
        onnx.save(_smooth(model, targets, maxima, alpha) if alpha else model, str(smoothed))
        out = work / "candidate.onnx"
        _quantize(smoothed, out, full_range, keep)
        return _cost(reference, _outputs(out, scoring))

    costs = {"none": score(None, [])}
    for alpha in ALPHAS:
        costs[str(alpha)] = score(alpha, [])
        log.info("int8-cal: smoothing a=%.1f: calibration cost %.5f (unsmoothed %.5f)", alpha, costs[str(alpha)],
                 costs["none"])
    best = min(costs, key=costs.get)
    alpha = None if best == "none" else float(best)
    cost, keep = costs[best], []
    limit = int(len(targets) * MAX_FP32_FRACTION)
    if limit and len(targets) <= SENSITIVITY_NODES:
        gains = {n.name: cost - score(alpha, [n.name]) for n in targets}
        for name in sorted(gains, key=gains.get, reverse=True)[:limit]:
            if gains[name] <= 0:
                break
            trial = score(alpha, keep + [name])
            if trial > cost * (1 - MIN_GAIN):
                break
            keep, cost = keep + [name], trial
            log.info("int8-cal: %s stays FP32: calibration cost %.5f", name, cost)
    final = work / "final.onnx"
    onnx.save(_smooth(model, targets, maxima, alpha) if alpha else model, str(final))
    _quantize(final, dst, full_range, keep)
    return {"smoothing_alpha": alpha, "weights": "8-bit (VNNI)" if full_range else "7-bit (reduce_range, no VNNI)",
            "fp32_nodes": keep, "quantizable_nodes": len(targets), "calibration_cost": cost,
            "calibration_cost_by_alpha": costs, "cost_metric": "1 - mean cosine vs FP32 on calibration data"}


def _targets(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    weights = {i.name: i for i in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type in QUANTIZED_OPS and len(n.input) > 1
            and n.input[1] in weights and len(weights[n.input[1]].dims) == 2]


def _activation_maxima(model: onnx.ModelProto, targets: list[onnx.NodeProto],
                       feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per input channel (the last axis), the largest |value| each target's activation takes."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = list(dict.fromkeys(n.input[0] for n in targets))
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None)
                              for x in names if x not in known)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    maxima: dict[str, np.ndarray] = {}
    for feed in feeds:
        for name, value in zip(names, session.run(names, feed)):
            channel_max = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0) if value.size else None
            if channel_max is not None:
                maxima[name] = np.maximum(maxima.get(name, channel_max), channel_max)
    return maxima


def _smooth(model: onnx.ModelProto, targets: list[onnx.NodeProto], maxima: dict[str, np.ndarray],
            alpha: float) -> onnx.ModelProto:
    """A copy of `model` with each target's activation divided, and weight rows multiplied, by s."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    weights = {i.name: i for i in out.graph.initializer}
    wanted = {n.name for n in targets}
    inserted: list[tuple[int, onnx.NodeProto]] = []
    for index, node in enumerate(out.graph.node):
        if node.name not in wanted or node.input[0] not in maxima:
            continue
        w = numpy_helper.to_array(weights[node.input[1]])
        x_max = maxima[node.input[0]]
        if x_max.shape[0] != w.shape[0]:
            continue
        s = np.maximum(x_max, 1e-5) ** alpha / np.maximum(np.abs(w).max(axis=1), 1e-5) ** (1 - alpha)
        s = np.clip(s, 1e-2, 1e2).astype(np.float32)
        weights[node.input[1]].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32), node.input[1]))
        inverse = numpy_helper.from_array((1 / s).astype(np.float32), f"{node.name}_smoothing")
        out.graph.initializer.append(inverse)
        smoothed = f"{node.name}_smoothed_input"
        inserted.append((index, helper.make_node("Mul", [node.input[0], inverse.name], [smoothed],
                                                 name=f"{node.name}_smooth")))
        node.input[0] = smoothed
    for index, mul in reversed(inserted):  # each Mul just before its MatMul keeps the order topological
        out.graph.node.insert(index, mul)
    return out


def _no_preprocessing_advice(record: logging.LogRecord) -> bool:
    return "pre-processing before quantization" not in record.getMessage()


def _quantize(src: Path, dst: Path, full_range: bool, keep: list[str]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantizer advises shape pre-processing on the root logger at every call (a dozen calls
    # here); the graph's shapes are inferred afresh anyway.
    root = logging.getLogger()
    root.addFilter(_no_preprocessing_advice)
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=not full_range, op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_exclude=keep,
                         extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        root.removeFilter(_no_preprocessing_advice)


def _outputs(path: Path, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """Each feed's float outputs, flattened into one vector."""
    import onnxruntime as ort

    def flat(outputs: list[np.ndarray]) -> np.ndarray:
        floats = [o.ravel() for o in outputs if isinstance(o, np.ndarray) and np.issubdtype(o.dtype, np.floating)]
        if not floats:
            raise ValueError("the model has no floating-point output to price INT8 against")
        return np.concatenate(floats)

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [flat(session.run(None, f)) for f in feeds]


def _cost(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    """1 - the mean cosine between each feed's outputs and FP32's."""
    cosines = [row_cosines(a.reshape(1, -1), b.reshape(1, -1))[0] for a, b in zip(reference, candidate)]
    return 1.0 - float(np.mean(cosines))  # feeds of their own lengths: one row each


def row_cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """The cosine of each row of `candidate` [rows, n] with the same row of `reference`: 1 where both
    are zero, 0 where only one is, and -1 where the candidate is not finite (a variant answering NaN
    is the worst there is, never a perfect 1 because NaN > 0 is false)."""
    a, b = reference.astype(np.float64), candidate.astype(np.float64)
    finite = np.isfinite(b).all(axis=1)
    b = np.where(np.isfinite(b), b, 0.0)
    norm_a, norm_b = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.sum(a * b, axis=1) / (norm_a * norm_b)
    cos = np.where((norm_a == 0) & (norm_b == 0), 1.0, np.where((norm_a == 0) | (norm_b == 0), 0.0, cos))
    return np.where(finite, cos, -1.0)

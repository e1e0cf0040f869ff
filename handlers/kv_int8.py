"""An int8 KV cache for the batch engine: a quarter of the bytes a token, read faster every step.

A decode step of many streams reads every cached key and value of every stream: on the 568M Llama
at int4 (2 cores, 8 streams, float32 cache) attention took 4.8 ms a step at 100 tokens of context,
13.3 at 400 and 26.1 at 900, beside 16-17 ms of weight products (benchmarks/results/step-profile).
ONNX Runtime's GroupQueryAttention reads a cache stored as int8 with a float scale per layer, head
and channel (PER_CHANNEL): 2.9, 9.0 and 17.6 ms there, at a quarter of the memory a token. This
module makes a copy of the engine's graph that does so. The scales come from
calibration: the engine prefills CALIBRATION_TEXT with its float cache, and each channel's scale is
its largest magnitude there, times MARGIN, over 127 (a value beyond it saturates). A key's rotary
embedding turns each pair of channels by an angle that depends on the position, moving magnitude
between the two, so both channels of a pair get the larger of the pair's largest norms: calibrated
on a few hundred positions, right at any position.

Written beside the decoder once (`<decoder>.kv_int8.onnx`, its weights the decoder's own file) and
again when the decoder's graph changes; the engine checks the copy's logits against the float
cache's on the calibration text (KL) and keeps the float cache when they differ by more than MAX_KL.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MARGIN = 1.25  # headroom above the calibrated magnitudes, for what the calibration text never reached
MAX_KL = 0.05  # nats a position, int8 cache against float, on the calibration text; above: float cache
SOURCE = "maas_kv_int8_source"  # metadata: the digest of the graph the copy was made from
MEASURED_KL = "maas_kv_int8_kl"
CALIBRATION_TOKENS = 512
# Text of several kinds (prose, a chat turn, figures, code): what the scales are taken from
CALIBRATION_TEXT = (
    "Maintenance log, line 4, night shift. The spindle bearing on machine M-1042 reported vibration of 7.2 mm/s "
    "at 02:14; the operator stopped the feed, checked the belt tension (41 Nm) and replaced the worn pulley. "
    "Temperature settled at 305 K within ten minutes. Pump 7 leaked at the inlet valve: gasket replaced, pressure "
    "test passed at 6 bar.\n\nUser: Which part of the gearbox wears first, and why?\nAssistant: Usually the "
    "bearings, because they carry the radial load at every revolution; lubrication and alignment decide how soon.\n\n"
    "Quarterly figures: 1,204 work orders (3.5% more than last quarter), mean time to repair 2.7 h, 96.1% uptime; "
    "costs EUR 48,390.25, of which spare parts 61%.\n\n"
    "def mean_time_between_failures(hours: float, failures: int) -> float:\n"
    "    return hours / max(failures, 1)\n\n"
    "The history of the lighthouse begins in 1873, when the harbour board asked for a light that ships could see "
    "from twenty miles out. Its keepers wrote down the weather twice a day for ninety years; those notebooks, "
    "now in the town archive, are read by climate scientists, students and the curious alike.")


def digest(decoder: Path) -> str:
    """What identifies the graph a copy was made from: its bytes (its weights' names and offsets included)."""
    return hashlib.sha256(decoder.read_bytes()).hexdigest()[:16]


def scales(graph: Any, maxima: list[np.ndarray]) -> list[np.ndarray]:
    """Per KV pair (layer by layer, key then value) the PER_CHANNEL scale [1, kv heads, 1, head size],
    from `maxima` [kv heads, positions, head size] of the float cache's calibration rows. Keys take,
    in each rotary pair of channels, the largest norm of the pair."""
    node = next(n for n in graph.node if n.op_type == "GroupQueryAttention")
    attrs = {a.name: a.i for a in node.attribute}
    cos = next((i for i in graph.initializer if i.name == node.input[7]), None)
    rotary = 2 * int(cos.dims[1]) if attrs.get("do_rotary") and cos is not None else 0
    found = []
    for index, rows in enumerate(maxima):
        largest = np.abs(rows).max(axis=1)  # [kv heads, head size]
        if index % 2 == 0 and rotary:
            half = rotary // 2
            first, second = (np.arange(0, rotary, 2), np.arange(1, rotary, 2)) if attrs.get("rotary_interleaved") \
                else (np.arange(half), np.arange(half, rotary))
            norms = np.sqrt(rows[..., first] ** 2 + rows[..., second] ** 2).max(axis=1)
            largest[..., first] = largest[..., second] = norms
        scale = np.maximum(largest, 1e-6) * MARGIN / 127.0
        found.append(scale.astype(np.float32).reshape(1, scale.shape[0], 1, scale.shape[1]))
    return found


def rewrite(source: Path, maxima: list[np.ndarray]) -> Path:
    """`source`'s graph with an int8 KV cache read with scales from `maxima`, saved beside it (its weights
    stay in the source's data file) as a partial copy: `stamp` makes it the one `made` finds."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(source), load_external_data=False)
    graph = model.graph
    found = scales(graph, maxima)
    for value in [*graph.input, *graph.output]:
        if value.name.startswith(("past_key_values.", "present.")):
            value.type.tensor_type.elem_type = TensorProto.INT8
    attention = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    if 2 * len(attention) != len(found):
        raise ValueError(f"{len(attention)} attention nodes for {len(found)} cached keys and values")
    for layer, node in enumerate(attention):
        names = [f"maas_kv_int8.{layer}.{kv}" for kv in ("key", "value")]
        for name, scale in zip(names, found[2 * layer:2 * layer + 2]):
            graph.initializer.append(numpy_helper.from_array(scale, name))
        inputs = [*node.input, *[""] * (12 - len(node.input))][:12] + names  # k_scale, v_scale: inputs 12, 13
        del node.input[:]
        node.input.extend(inputs)
        node.attribute.extend([helper.make_attribute("k_quant_type", "PER_CHANNEL"),
                               helper.make_attribute("v_quant_type", "PER_CHANNEL"),
                               helper.make_attribute("kv_cache_bit_width", 8)])
    partial = target_of(source).with_suffix(".partial.onnx")
    onnx.save(model, str(partial))
    return partial


def stamp(partial: Path, source: Path, kl: float) -> Path:
    """The partial copy of `source` made the one `made` finds: the digest of `source` and the `kl` it
    was measured at in its metadata. -> its path."""
    import onnx

    model = onnx.load(str(partial), load_external_data=False)
    onnx.helper.set_model_props(model, {SOURCE: digest(source), MEASURED_KL: f"{kl:.6f}"})
    onnx.save(model, str(partial))
    target = target_of(source)
    partial.replace(target)
    return target


def made(decoder: Path) -> tuple[Path, float] | None:
    """(the int8-cache copy of `decoder`, the KL measured when it was made) if it is there and was made
    from this very graph; else None."""
    import onnx

    target = target_of(decoder)
    if not target.is_file():
        return None
    try:
        props = {p.key: p.value for p in onnx.load(str(target), load_external_data=False).metadata_props}
        return (target, float(props[MEASURED_KL])) if props.get(SOURCE) == digest(decoder) else None
    except Exception:  # unreadable: made again
        log.warning("%s is not a graph this worker can read; calibrating again", target, exc_info=True)
        return None


def target_of(decoder: Path) -> Path:
    return decoder.with_name(decoder.stem + ".kv_int8.onnx")


def kl(reference: np.ndarray, other: np.ndarray) -> float:
    """Mean KL divergence (nats) of the distributions of rows of `other` from those of `reference`."""
    p, q = (np.exp(x - x.max(-1, keepdims=True)) for x in (reference.astype(np.float64), other.astype(np.float64)))
    p, q = p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)
    return float(np.mean(np.sum(p * (np.log(p + 1e-300) - np.log(q + 1e-300)), axis=-1)))

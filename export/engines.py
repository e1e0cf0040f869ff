"""The engines an archive's ONNX file can run on, for the build side: the same sessions the
handler opens (handlers/ort_base.py, handlers/openvino_session.py), to price and time variants.

    onnxruntime  the default: every archive without an `engine` in its manifest
    openvino     OpenVINO's CPU plugin reading the same ONNX file (the `openvino` extra); an INT8
                 variant is the QDQ graph NNCF's post-training quantization calibrated
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import numpy as np

from maas.core.errors import ExportError
from maas.handlers.ort_fusions import CPU_SLOWER_FUSIONS

log = logging.getLogger(__name__)

ONNXRUNTIME = {"name": "onnxruntime"}
OPENVINO = "openvino"


def has_openvino() -> bool:
    return importlib.util.find_spec("openvino") is not None


def has_nncf() -> bool:
    return has_openvino() and importlib.util.find_spec("nncf") is not None


def describe(engine: dict[str, Any] | None) -> str:
    engine = engine or ONNXRUNTIME
    return engine["name"] + (f" ({engine['precision']})" if engine.get("precision") else "")


def open_session(path: Path, engine: dict[str, Any] | None = None, threads: int = 0, pinning: bool = True) -> Any:
    """A CPU session on `path` for `engine` (ONNX Runtime when None), with `threads` intra-op
    threads (0: the engine's default); `pinning=False` as the handler opens OpenVINO for one of
    several workers."""
    if (engine or ONNXRUNTIME)["name"] == OPENVINO:
        if not has_openvino():
            raise ExportError("this variant runs on OpenVINO, which is not installed",
                              hint="pip install 'maas[openvino]'")
        from maas.handlers.cores import available_cores
        from maas.handlers.openvino_session import OpenVinoSession

        return OpenVinoSession(path, threads or available_cores(), engine.get("precision", "default"), pinning)
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(CPU_SLOWER_FUSIONS))  # as the handler opens it


def nncf_int8(src: Path, dst: Path, calibration: list[dict[str, np.ndarray]], transformer: bool) -> Path:
    """NNCF's post-training INT8 quantization of the ONNX file, calibrated on `calibration` (feeds
    the model takes, one batch each); written as an ONNX QDQ graph that OpenVINO runs in int8.
    Transformers take NNCF's transformer preset (attention's softmax and norms kept in float)."""
    if not has_nncf():
        raise ExportError("the ov-int8 variant needs NNCF and OpenVINO", hint="pip install 'maas[openvino]'")
    import nncf
    import onnx

    model = onnx.load(str(src))
    options: dict[str, Any] = {"subset_size": len(calibration)}
    if transformer:
        options.update(model_type=nncf.ModelType.TRANSFORMER, preset=nncf.QuantizationPreset.MIXED)
    quantized = nncf.quantize(model, nncf.Dataset(calibration), **options)
    onnx.save(quantized, str(dst))
    return dst


def throughput(path: Path, engine: dict[str, Any] | None, feeds: list[dict[str, np.ndarray]], threads: int,
               seconds: float = 3.0, rounds: int = 3) -> float:
    """Items a second over `feeds` (batches, run in turn), the best of `rounds` rounds of about
    `seconds` each after one warm-up pass: the engine's speed on this machine, in process."""
    import time

    session = open_session(path, engine, threads)
    items = sum(len(next(iter(f.values()))) for f in feeds)
    for feed in feeds:
        session.run(None, feed)
    best = 0.0
    for _ in range(rounds):
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            for feed in feeds:
                session.run(None, feed)
            done += items
        best = max(best, done / (time.perf_counter() - started))
    return best

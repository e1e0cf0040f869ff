"""OpenVINO behind the surface of an ONNX Runtime session, so one handler serves either engine.

An archive's manifest names its engine (`"engine": {"name": "openvino", "precision": ...}`); the
model file stays the verified ONNX file (an INT8 one is the QDQ graph NNCF calibrated), which
OpenVINO reads directly. Only what the handler uses is mirrored: get_inputs(), get_outputs(),
get_providers() and run(output_names, feeds) with NumPy arrays in and out.

precision: "f32", "bf16" (CPUs with AVX-512 BF16 or AMX) or "default" (OpenVINO's choice, which
is bf16 where the CPU has it); an INT8 graph runs its quantized layers in int8 under any of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# OpenVINO's element type names -> ONNX Runtime's, so a Port reads like an ORT NodeArg
ORT_TYPES = {"f32": "float", "f16": "float16", "bf16": "bfloat16", "f64": "double", "i64": "int64", "i32": "int32",
             "i8": "int8", "u8": "uint8", "boolean": "bool"}


@dataclass(frozen=True)
class Port:
    """What a handler reads of an ORT NodeArg."""

    name: str
    shape: list[Any]
    type: str


class OpenVinoSession:
    """One compiled OpenVINO model and one infer request (a TorchServe worker runs one batch at a time)."""

    def __init__(self, model_path: Path, threads: int, precision: str = "default", pinning: bool = True) -> None:
        import openvino as ov

        core = ov.Core()
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
                                  "INFERENCE_NUM_THREADS": int(threads)}
        if not pinning:
            # OpenVINO pins its threads to the first cores; workers of one server (processes) would
            # all pin to the same ones. Its docs: no pinning when processes share the machine.
            config["ENABLE_CPU_PINNING"] = False
        if precision != "default":
            config["INFERENCE_PRECISION_HINT"] = precision
        self.compiled = core.compile_model(core.read_model(str(model_path)), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()  # f32 | bf16
        self._inputs = [self._port(p) for p in self.compiled.inputs]
        self._outputs = [self._port(p) for p in self.compiled.outputs]
        self._index = {p.name: i for i, p in enumerate(self._outputs)}

    @staticmethod
    def _port(port: Any) -> Port:
        shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
        kind = port.get_element_type().to_string()
        return Port(port.get_any_name(), shape, f"tensor({ORT_TYPES.get(kind, kind)})")

    def get_inputs(self) -> list[Port]:
        return self._inputs

    def get_outputs(self) -> list[Port]:
        return self._outputs

    def get_providers(self) -> list[str]:
        return [f"OpenVINO CPU ({self.precision})"]

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.request.infer({name: np.ascontiguousarray(array) for name, array in feeds.items()})
        wanted = output_names or [p.name for p in self._outputs]
        # copies: the request's output tensors are overwritten by the next run
        return [np.array(self.request.get_output_tensor(self._index[name]).data) for name in wanted]

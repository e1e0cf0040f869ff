"""Tensor element types, said once: numpy name -> ONNX, ONNX Runtime and Open Inference Protocol names.

Shipped inside every .mar (the handlers check v2 datatypes with it) and read at build time
by the exporter (contract checks), the spec-file validator and the Triton export (whose
config types are "TYPE_" + the v2 name). Standard library only.
"""
from __future__ import annotations

from typing import NamedTuple


class DType(NamedTuple):
    onnx: int  # onnx.TensorProto.DataType
    ort: str  # onnxruntime's NodeArg.type
    v2: str  # Open Inference Protocol / KServe v2 datatype (Triton: "TYPE_" + v2)


DTYPES: dict[str, DType] = {
    "float32": DType(1, "tensor(float)", "FP32"),
    "uint8": DType(2, "tensor(uint8)", "UINT8"),
    "int8": DType(3, "tensor(int8)", "INT8"),
    "uint16": DType(4, "tensor(uint16)", "UINT16"),
    "int16": DType(5, "tensor(int16)", "INT16"),
    "int32": DType(6, "tensor(int32)", "INT32"),
    "int64": DType(7, "tensor(int64)", "INT64"),
    "bool": DType(9, "tensor(bool)", "BOOL"),
    "float16": DType(10, "tensor(float16)", "FP16"),
    "float64": DType(11, "tensor(double)", "FP64"),
    "uint32": DType(12, "tensor(uint32)", "UINT32"),
    "uint64": DType(13, "tensor(uint64)", "UINT64"),
}
BY_ONNX = {d.onnx: name for name, d in DTYPES.items()}
BY_V2 = {d.v2: name for name, d in DTYPES.items()}


def triton_name(dtype: str) -> str:
    return "TYPE_" + DTYPES[dtype].v2

"""Read a model's I/O spec off its ONNX graph: names, dtypes, shapes with symbolic axes.

Exporters name dynamic axes as they like ("unk__214", "s0", "batch_size"); when every input
has a symbolic axis 0, that axis is the batch axis TorchServe batches along, and it is called
`batch` in the spec (outputs' symbolic axis 0 too). Other symbolic axes keep their names;
an axis with neither a size nor a name, or with a placeholder name such as `?` (Paddle2ONNX),
gets one of its own (`<tensor>_<axis>`): only axes sharing a real name must agree.
"""
from __future__ import annotations

import re
from pathlib import Path

import onnx

from maas.core.errors import ExportError
from maas.core.spec import Dim, TensorSpec
from maas.export.zipmap import output_labels
from maas.handlers.dtypes import BY_ONNX


class GraphSpecError(ExportError, ValueError):
    """The graph's inputs or outputs cannot be served as they are."""


def _axis_name(text: str) -> str:
    """An axis name a spec file takes (ASCII letters, digits and _, not a digit first): "2*N" -> "_2_N",
    a non-ASCII letter its code point ("批" -> "_6279"), so names that differ stay different."""
    name = re.sub(r"[^A-Za-z0-9_]", lambda m: "_" if m.group().isascii() else f"_{ord(m.group()):x}", text)
    return f"_{name}" if name[:1].isdigit() else name


def _dims(value_info: onnx.ValueInfoProto) -> list[Dim]:
    dims: list[Dim] = []
    for axis, d in enumerate(value_info.type.tensor_type.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and re.search(r"\w", d.dim_param):
            dims.append(_axis_name(d.dim_param))
        else:  # no name, or a placeholder such as "?": independent of every other axis
            dims.append(_axis_name(f"{value_info.name}_{axis}"))
    return dims


def _tensor(value_info: onnx.ValueInfoProto) -> tuple[str, str, list[Dim]]:
    if not value_info.type.HasField("tensor_type"):
        raise GraphSpecError(f"{value_info.name!r} is not a tensor (sequences and maps are not served; a "
                             f"scikit-learn classifier's ZipMap output is served as its probability tensor)")
    elem = value_info.type.tensor_type.elem_type
    if elem not in BY_ONNX:
        raise GraphSpecError(f"{value_info.name!r} has element type {onnx.TensorProto.DataType.Name(elem)}, "
                             f"which maas does not serve")
    return value_info.name, BY_ONNX[elem], _dims(value_info)


def graph_io(path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """(inputs, outputs) of the ONNX file, initializers excluded, batch axis named `batch`."""
    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    inputs = [_tensor(v) for v in model.graph.input if v.name not in initializers]
    outputs = [_tensor(v) for v in model.graph.output]
    if not inputs:
        raise GraphSpecError("the graph has no inputs")
    batched = all(dims and isinstance(dims[0], str) for _, _, dims in inputs)
    if batched:
        for _, _, dims in inputs + outputs:
            if dims and isinstance(dims[0], str):
                dims[0] = "batch"
    labels = output_labels(model)
    return (tuple(TensorSpec(n, t, tuple(d)) for n, t, d in inputs),
            tuple(TensorSpec(n, t, tuple(d), labels=labels.get(n)) for n, t, d in outputs))


def merge_declared(graph: tuple[TensorSpec, ...], declared: tuple[TensorSpec, ...], kind: str) -> tuple[TensorSpec, ...]:
    """The declared tensors, checked against the graph's (same names in order, dtypes, ranks)."""
    if not declared:
        return graph
    problems = []
    if [t.name for t in declared] != [t.name for t in graph]:
        problems.append(f"{kind} names {[t.name for t in declared]} differ from the graph's {[t.name for t in graph]}")
    else:
        for d, g in zip(declared, graph):
            if d.dtype != g.dtype:
                problems.append(f"{kind} {d.name}: dtype {d.dtype} declared, the graph has {g.dtype}")
            if len(d.shape) != len(g.shape):
                problems.append(f"{kind} {d.name}: rank {len(d.shape)} declared, the graph has {len(g.shape)}")
                continue
            for axis, (dd, gd) in enumerate(zip(d.shape, g.shape)):
                if isinstance(gd, int) and isinstance(dd, str):
                    problems.append(f"{kind} {d.name}: axis {axis} is declared dynamic ({dd!r}) but the graph "
                                    f"fixes it at {gd}; re-export with that axis dynamic")
                elif isinstance(gd, int) and isinstance(dd, int) and gd != dd:
                    problems.append(f"{kind} {d.name}: axis {axis} is declared {dd}, the graph has {gd}")
    if problems:
        raise GraphSpecError("; ".join(problems))
    return declared

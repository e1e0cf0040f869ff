"""Classifier probabilities as a tensor: scikit-learn graphs' ZipMap outputs, unzipped.

skl2onnx (and other ONNX-ML converters) end a classifier with ZipMap, which turns the [N, C]
probability tensor into a sequence of {class: probability} maps, a type no tensor API (v2,
Triton, KServe) carries. maas serves the tensor ZipMap was given instead, under the same output
name, and keeps the class names as the output's labels (in the model's metadata, where the
graph's reader finds them): the answer is the same numbers, with `predictions` naming the
top classes. A string tensor of predicted class names beside it is left out. Nothing else in the
graph changes.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import onnx
from onnx import helper

log = logging.getLogger(__name__)

LABELS_KEY = "maas.labels."  # + output name: a JSON list of class names


def unzip_maps(path: Path) -> list[str]:
    """Rewrite the ONNX file at `path` so each ZipMap graph output is its probability tensor;
    the names of the outputs rewritten."""
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    outputs = {o.name: o for o in graph.output}
    zipmaps = [n for n in graph.node if n.op_type == "ZipMap" and n.domain == "ai.onnx.ml" and n.output[0] in outputs]
    if not zipmaps:
        return []
    shapes = _inferred_shapes(model)
    _import_default_opset(model)
    for node in zipmaps:
        name, source = node.output[0], node.input[0]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        labels = [str(v.decode() if isinstance(v, bytes) else v)
                  for v in attrs.get("classlabels_strings") or attrs.get("classlabels_int64s") or []]
        dims = shapes.get(source) or [_first_input_dim(graph), len(labels)]
        graph.node.remove(node)
        graph.node.append(helper.make_node("Identity", [source], [name], name=f"maas_unzip_{name}"))
        index = list(graph.output).index(outputs[name])
        graph.output.remove(outputs[name])
        graph.output.insert(index, helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, dims))
        helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                       LABELS_KEY + name: json.dumps(labels)})
        log.info("%s: output %r was a ZipMap (a sequence of maps); served as its [N, %d] probability tensor "
                 "with the class names as labels", path.name, name, len(labels))
    _drop_string_labels(graph, path.name)
    onnx.save(model, str(path))
    return [n.output[0] for n in zipmaps]


def _drop_string_labels(graph: onnx.GraphProto, file: str) -> None:
    """A classifier with string class names also outputs its predicted class as a string tensor,
    which no tensor API here carries: it is left out, the probabilities' labels name the classes
    (top_k 1 answers the same class)."""
    for output in [o for o in graph.output if o.type.tensor_type.elem_type == onnx.TensorProto.STRING]:
        graph.output.remove(output)
        log.info("%s: output %r (class names as strings) left out; the probabilities' labels name the classes",
                 file, output.name)


def output_labels(model: onnx.ModelProto) -> dict[str, tuple[str, ...]]:
    """Class names recorded by unzip_maps, per output."""
    return {p.key[len(LABELS_KEY):]: tuple(json.loads(p.value)) for p in model.metadata_props
            if p.key.startswith(LABELS_KEY)}


def _import_default_opset(model: onnx.ModelProto) -> None:
    """Identity needs the default domain; an ONNX-ML-only graph gets the newest opset its IR version allows."""
    if any(o.domain in ("", "ai.onnx") for o in model.opset_import):
        return
    opset = max((row[2] for row in helper.VERSION_TABLE if row[1] <= model.ir_version), default=7)
    model.opset_import.append(helper.make_opsetid("", max(opset, 7)))


def _inferred_shapes(model: onnx.ModelProto) -> dict[str, list]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - inference is a convenience here; the fallback shape is right
        return {}
    return {v.name: [d.dim_param or d.dim_value or None for d in v.type.tensor_type.shape.dim]
            for v in inferred.graph.value_info if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")}


def _first_input_dim(graph: onnx.GraphProto) -> int | str | None:
    dims = graph.input[0].type.tensor_type.shape.dim if graph.input else []
    return (dims[0].dim_param or dims[0].dim_value or None) if dims else None

"""The KV cache's element type of a language model build, and a build's cache halved to fp16.

ONNX Runtime GenAI's builder keeps a CPU build's KV cache in fp32 (98 KB a token for a 568M
Llama: 8 streams of 1041 tokens fill a 1 GB `kv_cache_mb`). ONNX Runtime's CPU GroupQueryAttention
also takes fp16, so `half_kv_cache` rewrites a build's graph to keep its cache in fp16: the packed
query/key/value is cast to fp16 before each attention and its output back to fp32 after, the
cache's inputs and outputs (past_key_values.*, present.*) and the rotary tables become fp16. The
weights (external data) are untouched. Measured on the 568M Llama at int4, 2 cores
(benchmarks/results/graph-variants/): the same memory holds twice the tokens, and a step of 8
streams costs 1.08-1.15x (the CPU kernel converts what it reads to fp32 to compute); the build's
greedy tokens fed to it, its top token is the build's at 93 % of positions (mean KL 0.0012 nats).
So a memory knob, not a speed one: opt-in (`maas package --llm --kv-cache fp16`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

KV_CACHE_TYPES = ("fp32", "fp16")
_CACHE_PREFIXES = ("past_key_values.", "present.")
# GroupQueryAttention's inputs in its type T, besides the cache: query, key, value (or the packed
# three in query), cos_cache, sin_cache, attention_bias, head_sink
FLOAT_INPUTS = (0, 1, 2, 7, 8, 10, 11)


def kv_cache_type(graph: Any) -> str | None:
    """fp32 or fp16: the element type of a decoder graph's past keys and values (None: it has none)."""
    from onnx import TensorProto

    for value in graph.input:
        if value.name.startswith(_CACHE_PREFIXES[0]):
            return {TensorProto.FLOAT: "fp32", TensorProto.FLOAT16: "fp16"}.get(value.type.tensor_type.elem_type, "other")
    return None


def half_kv(model: Any, folder: Path) -> None:
    """`model` (a decoder graph of `folder`, loaded without its external data) with its KV cache,
    attention inputs/output and rotary tables in fp16; an fp16 cache is left as it is."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    if kv_cache_type(graph) != "fp32":
        return
    tables = {t.name: t for t in graph.initializer}
    nodes, cast = [], {}
    for node in graph.node:
        if node.op_type != "GroupQueryAttention":
            nodes.append(node)
            continue
        for slot in FLOAT_INPUTS:
            name = node.input[slot] if slot < len(node.input) else ""
            if not name:
                continue
            if name in tables:  # the rotary tables: shared by every layer, converted once, in place
                if tables[name].data_type != TensorProto.FLOAT16:
                    tables[name].CopyFrom(numpy_helper.from_array(_values(tables[name], folder).astype(np.float16), name))
                continue
            if name not in cast:
                cast[name] = name + "_fp16"
                nodes.append(helper.make_node("Cast", [name], [cast[name]], to=TensorProto.FLOAT16,
                                              name=f"{node.name}/Cast{slot}"))
            node.input[slot] = cast[name]
        out = node.output[0]
        node.output[0] = out + "_fp16"
        nodes += [node, helper.make_node("Cast", [out + "_fp16"], [out], to=TensorProto.FLOAT, name=node.name + "/CastOut")]
    del graph.node[:]
    graph.node.extend(nodes)
    for value in [*graph.input, *graph.output]:
        if value.name.startswith(_CACHE_PREFIXES):
            value.type.tensor_type.elem_type = TensorProto.FLOAT16


def half_kv_cache(folder: Path, filename: str = "model.onnx") -> None:
    """Rewrite `folder`/`filename` in place with its KV cache in fp16 (see half_kv)."""
    import onnx

    path = folder / filename
    model = onnx.load(str(path), load_external_data=False)
    half_kv(model, folder)
    partial = path.with_name(path.name + ".partial")
    onnx.save(model, str(partial))
    partial.replace(path)


def _values(table: Any, folder: Path) -> np.ndarray:
    """A float32 initializer's values, inline or in the build's weights file. Read directly: onnx's
    own reader refuses a file with several hard links (a build linked into a bench's variants)."""
    from onnx import numpy_helper

    if not table.external_data:
        return numpy_helper.to_array(table)
    where = {entry.key: entry.value for entry in table.external_data}
    with open(folder / where["location"], "rb") as weights:
        weights.seek(int(where.get("offset", 0)))
        raw = weights.read(int(where["length"]))
    return np.frombuffer(raw, np.float32).reshape(tuple(table.dims))

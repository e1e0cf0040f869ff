"""The serving engine's copy of a CPU build's decoder graph: logits of one position, not of all.

ONNX Runtime GenAI's graph computes the LM head for every position it is given, [rows, tokens,
vocabulary]. Decoding gives one token a row, but a prompt's chunk gives many, and the engine
keeps only the last one's logits: the rest is arithmetic and memory thrown away, as many
multiply-accumulates a position as the vocabulary times the hidden size (263 M for Llama 3.2
1B's 128k vocabulary: a 512-token prompt's head alone would cost more than a decode step of
all its layers). The copy gathers the one position the engine asks for (`logits_at`, an int64
[1] input) before the LM head. It shares the build's weights file (one folder, no copy of the
weights); GenAI's Generator and the build's verification keep the graph as built.
"""
from __future__ import annotations

from pathlib import Path

from maas.handlers.llm_engine import BATCH_DECODER, LOGITS_AT

_PASS_THROUGH = {"Cast"}  # between the LM head and the logits output (fp16 builds cast to fp32)


def write_batch_decoder(onnx_dir: Path, filename: str = "model.onnx") -> Path | None:
    """`onnx_dir`/BATCH_DECODER: the decoder with its LM head fed one position (None, and nothing
    written, where the graph's logits do not come from a product of the hidden states)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(onnx_dir / filename), load_external_data=False)
    graph = model.graph
    made = {out: node for node in graph.node for out in node.output}
    head = made.get("logits")
    while head is not None and head.op_type in _PASS_THROUGH:
        head = made.get(head.input[0])
    if head is None or head.op_type not in ("MatMul", "MatMulNBits", "Gemm"):
        return None
    hidden = head.input[0]
    gathered = hidden + "/logits_at"
    head.input[0] = gathered
    at = list(graph.node).index(head)
    graph.node.insert(at, helper.make_node("Gather", [hidden, LOGITS_AT], [gathered], axis=1,
                                           name="/model/logits_at/Gather"))
    graph.input.append(helper.make_tensor_value_info(LOGITS_AT, TensorProto.INT64, [1]))
    for output in graph.output:
        if output.name == "logits":
            output.type.tensor_type.shape.dim[1].dim_value = 1
    path = onnx_dir / BATCH_DECODER
    onnx.save(model, str(path))
    return path

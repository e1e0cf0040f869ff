"""The arithmetic side of a decode step's bound: multiply-accumulates a token costs, and how many
this machine does a second through ONNX Runtime's own GEMMs.

A single stream reads every weight once per token, so memory bandwidth bounds it; many streams
decoded together share that read and the bound becomes arithmetic. int4 builds compute in int8
(MatMulNBits accuracy level 4), so their bound is ONNX Runtime's int8 GEMM (MLAS QGEMM: VNNI where
the CPU has it); fp32 builds run its fp32 GEMM (SGEMM). Each is timed on a large square-ish
product where the GEMM reaches its best, with the threads a worker gets.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np


def macs_per_token(folder: Path) -> int:
    """Multiply-accumulates of one decoded token in the weight products of `folder`'s ONNX graph
    (MatMulNBits and MatMul/Gemm by a constant): attention over the context comes on top."""
    import onnx

    total = 0
    config = folder / "genai_config.json"  # a language model build: its decoder (not its one-position copy too)
    paths = ([folder / json.loads(config.read_text())["model"]["decoder"]["filename"]] if config.is_file()
             else sorted(folder.glob("*.onnx")))
    for path in paths:
        graph = onnx.load(str(path), load_external_data=False).graph
        constants = {i.name: list(i.dims) for i in graph.initializer}
        for node in graph.node:
            if node.op_type == "MatMulNBits":
                attrs = {a.name: a.i for a in node.attribute}
                total += attrs["K"] * attrs["N"]
            elif node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in constants:
                total += math.prod(constants[node.input[1]])
    return total


def gemm_peak_gmacs(kind: str, threads: int, m: int = 512, k: int = 2048, n: int = 4096, rounds: int = 7) -> float:
    """The best GMAC/s of ONNX Runtime's `kind` GEMM ("int8": uint8 x int8 MatMulInteger; "fp32":
    MatMul) on an [m, k] x [k, n] product, with `threads` threads."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if kind == "int8":
        a = rng.integers(0, 255, (m, k), dtype=np.uint8)
        b = rng.integers(-127, 127, (k, n), dtype=np.int8)
        node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
    elif kind == "fp32":
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
        a_type = y_type = TensorProto.FLOAT
    else:
        raise ValueError(f"GEMM kind {kind!r}: int8 or fp32")
    graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("a", a_type, [m, k])],
                              [helper.make_tensor_value_info("y", y_type, [m, n])], [numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    return round(m * k * n / _best_seconds(_session(model, threads), {"a": a}, rounds) / 1e9, 1)


def _session(model: Any, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _vnni_session(model: Any, threads: int) -> Any:
    """A session of `model` with its MatMulNBits on int4_vnni.c's kernel, or None where it cannot run."""
    import tempfile

    import onnx
    import onnxruntime as ort

    from maas.handlers import int4_vnni

    with tempfile.TemporaryDirectory(prefix="maas-int4-vnni-") as folder:
        path = Path(folder) / "products.onnx"
        onnx.save(model, str(path))
        library = int4_vnni.library(Path(folder))
        if library is None or not int4_vnni.rewrite(path, path.with_name("vnni.onnx"), "vnni.onnx.data"):
            return None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.register_custom_ops_library(str(library))
        return ort.InferenceSession(str(path.with_name("vnni.onnx")), options, providers=["CPUExecutionProvider"])


def _best_seconds(session: Any, feeds: dict[str, np.ndarray], rounds: int) -> float:
    """The fastest of `rounds` runs, after one to warm up."""
    session.run(None, feeds)
    best = math.inf
    for _ in range(rounds):
        started = time.perf_counter()
        session.run(None, feeds)
        best = min(best, time.perf_counter() - started)
    return best


INT4_KERNEL_BLOCK = 256  # the block size int4_kernel_gmacs measures at: maas's CPU default


def int4_kernel_gmacs(threads: int, rows: tuple[int, ...] = (1, 8), block: int = INT4_KERNEL_BLOCK, k: int = 1536, n: int = 4096,
                      layers: int = 24, rounds: int = 7, vnni: bool = False) -> dict[int, float]:
    """The best GMAC/s of ONNX Runtime's int4 kernel (MatMulNBits, accuracy level 4: int8 arithmetic)
    at each count of `rows`, what a decode step of that many streams runs. `layers` products of
    [rows, k] x [k, n] in one run, so the weights (75 MB by default) come from memory, not cache.
    One row is bound by bandwidth; several rows by this kernel's arithmetic, which at a few rows
    stays far below the GEMM's best (gemm_peak_gmacs) measured on a large product. `vnni`: the same
    products on handlers/int4_vnni.c's kernel instead ({} where it cannot run here)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    blocks, nodes, weights = -(-k // block), [], []
    for i in range(layers):
        weights += [numpy_helper.from_array(rng.integers(0, 255, (n, blocks, block // 2), dtype=np.uint8), f"w{i}"),
                    numpy_helper.from_array((rng.random(n * blocks) * 0.01 + 0.001).astype(np.float32), f"s{i}")]
        nodes.append(helper.make_node("MatMulNBits", ["x", f"w{i}", f"s{i}"], [f"y{i}"], domain="com.microsoft",
                                      K=k, N=n, bits=4, block_size=block, accuracy_level=4))
    nodes.append(helper.make_node("Sum", [f"y{i}" for i in range(layers)], ["y"]))
    graph = helper.make_graph(nodes, "int4", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", n])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                              ir_version=9)
    session = _vnni_session(model, threads) if vnni else _session(model, threads)
    if session is None:
        return {}
    return {m: round(m * k * n * layers / _best_seconds(session, {"x": rng.standard_normal((m, k), dtype=np.float32)},
                                                         rounds) / 1e9, 1) for m in rows}

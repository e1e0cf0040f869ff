"""The int8-cal variant's pieces on a small graph with the trouble it is for: one activation
channel far larger than the others (what a transformer's LayerNorm outputs carry)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from maas.export import calibrated_int8 as cal


def two_matmuls(path: Path) -> Path:
    """x[N, 32] @ W1[32, 64] -> Relu -> @ W2[64, 16]."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(0, 0.2, (32, 64)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.2, (64, 16)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"], name="second")],
        "two_matmuls", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 32])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 16])], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def feeds(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.normal(0, 1, (4, 32)).astype(np.float32)
        x[:, 3] *= 60  # the outlier channel
        out.append({"x": x})
    return out


def run(model: onnx.ModelProto | Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, feed)[0]


def test_smoothing_leaves_the_fp32_answers_as_they_were(tmp_path: Path) -> None:
    model = onnx.load(str(two_matmuls(tmp_path / "m.onnx")))
    targets = cal._targets(model)
    assert [n.name for n in targets] == ["first", "second"]
    maxima = cal._activation_maxima(model, targets, feeds(8, 1))
    assert maxima["x"].shape == (32,) and maxima["x"].argmax() == 3
    smoothed = cal._smooth(model, targets, maxima, 0.7)
    onnx.checker.check_model(smoothed)
    assert [n.op_type for n in smoothed.graph.node] == ["Mul", "MatMul", "Relu", "Mul", "MatMul"]
    feed = feeds(1, 2)[0]
    np.testing.assert_allclose(run(smoothed, feed), run(model, feed), rtol=1e-4, atol=1e-3)


def test_the_calibrated_variant_beats_plain_dynamic_int8_and_records_its_recipe(tmp_path: Path) -> None:
    src = two_matmuls(tmp_path / "m.onnx")
    dst = cal.calibrated_int8(src, tmp_path / "m.int8-cal.onnx", feeds(64, 3))
    recipe = cal.recipe_of(dst)
    assert recipe is not None and recipe["smoothing_alpha"] in cal.ALPHAS
    assert recipe["calibration_cost"] < recipe["calibration_cost_by_alpha"]["none"]
    assert recipe["quantizable_nodes"] == 2 and recipe["fp32_nodes"] == []  # 1/12 of 2 nodes: none may stay FP32
    ops = {n.op_type for n in onnx.load(str(dst)).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    assert not list(tmp_path.glob("*.work"))  # the search's files are gone

    held_out = feeds(16, 4)
    plain = tmp_path / "plain.onnx"
    cal._quantize(src, plain, cal.has_vnni(), [])
    reference = cal._outputs(src, held_out)
    assert cal._cost(reference, cal._outputs(dst, held_out)) < cal._cost(reference, cal._outputs(plain, held_out))


def test_a_graph_without_a_weight_matmul_is_refused_with_its_reason(tmp_path: Path) -> None:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "relu.onnx"))
    with pytest.raises(ValueError, match="no MatMul"):
        cal.calibrated_int8(tmp_path / "relu.onnx", tmp_path / "out.onnx", feeds(2, 0))


def test_a_variant_answering_nan_or_zeros_is_priced_as_the_worst() -> None:
    """NaN > 0 is false: a NaN row got a perfect cosine of 1 (cost 0, within budget); a row of zeros
    against a non-zero one got 1 too."""
    reference = np.array([[1.0, 2.0], [0.0, 0.0], [1.0, 1.0], [3.0, 4.0]])
    candidate = np.array([[2.0, 4.0], [0.0, 0.0], [0.0, 0.0], [np.nan, 4.0]])
    assert np.allclose(cal.row_cosines(reference, candidate), [1.0, 1.0, 0.0, -1.0])
    assert cal._cost([np.ones(3), np.ones(5)], [np.ones(3), np.full(5, np.nan)]) > 0.99

"""The arithmetic bound of many streams (maas/compute_bound.py): MACs a token costs, read from the
graph, and ONNX Runtime's own GEMMs timed on this machine."""
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper, save

from maas.compute_bound import gemm_peak_gmacs, int4_kernel_gmacs, macs_per_token


def test_macs_per_token_counts_weight_products_not_activations(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),  # 8 x 4 weights: 32
             helper.make_node("MatMulNBits", ["h", "q", "s"], ["g"], domain="com.microsoft", K=4, N=16, bits=4,
                              block_size=16),  # 64
             helper.make_node("MatMul", ["g", "g_t"], ["y"])]  # two activations: not a weight product
    graph = helper.make_graph(nodes, "g", [x], [y], [numpy_helper.from_array(np.ones((8, 4), np.float32), "w")])
    save(helper.make_model(graph), tmp_path / "model.onnx")
    assert macs_per_token(tmp_path) == 32 + 64


@pytest.mark.parametrize("kind", ["int8", "fp32"])
def test_gemm_peak_is_measured(kind: str) -> None:
    assert gemm_peak_gmacs(kind, 1, m=64, k=256, n=256, rounds=2) > 0.1


def test_gemm_kinds_are_named() -> None:
    with pytest.raises(ValueError, match="int8 or fp32"):
        gemm_peak_gmacs("int4", 1)


def test_the_int4_kernel_is_measured_at_each_row_count() -> None:
    rates = int4_kernel_gmacs(1, rows=(1, 4), k=256, n=256, layers=2, rounds=2)
    assert set(rates) == {1, 4} and min(rates.values()) > 0.01

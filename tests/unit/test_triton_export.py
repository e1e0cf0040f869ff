"""Triton model repository: config.pbtxt parsed by Triton's own model-config protobuf, checked
against the ONNX graph, and the same verified model bytes."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from conftest import tamper
from maas.triton import TritonExportError, export

ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.INT64: "TYPE_INT64"}


@pytest.mark.parametrize("name", ["maintenance", "digits", "minilm"])
def test_config_matches_the_onnx_graph(tiny_models, tiny_store: Path, tmp_path: Path, name: str) -> None:
    folder = export(tiny_store, name, tmp_path / "model_repository")
    config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    graph = onnx.load(str(folder / "1" / "model.onnx"), load_external_data=False).graph
    assert config.name == name and config.backend == "onnxruntime" and config.max_batch_size >= 8
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    for declared, actual in ((config.input, graph.input), (config.output, graph.output)):
        assert [t.name for t in declared] == [t.name for t in actual]
        for t, g in zip(declared, actual):
            assert model_config_pb2.DataType.Name(t.data_type) == ONNX_TO_TRITON[g.type.tensor_type.elem_type]
            graph_dims = [d.dim_value if d.HasField("dim_value") else -1 for d in g.type.tensor_type.shape.dim]
            assert graph_dims[0] == -1 and list(t.dims) == graph_dims[1:]  # batch axis left to max_batch_size
    manifest = json.loads((tiny_models[name].build_dir / "manifest.json").read_text())
    assert hashlib.sha256((folder / "1" / "model.onnx").read_bytes()).hexdigest() == manifest["sha256"]


def test_a_tampered_archive_is_not_exported(tiny_maintenance, tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    tamper(tiny_maintenance.mar, store / "maintenance.mar")
    with pytest.raises(TritonExportError, match="sha256"):
        export(store, "maintenance", tmp_path / "repo")


def test_an_openvino_archive_names_tritons_openvino_backend_with_the_handlers_settings() -> None:
    from maas.triton import config_pbtxt

    manifest = {"name": "minilm", "batch_axis": "batch", "engine": {"name": "openvino", "precision": "default"},
                "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]}],
                "outputs": [{"name": "embedding", "dtype": "float32", "shape": ["batch", 384]}]}
    text = config_pbtxt(manifest, {"handler": {"intra_op_threads": 2}})
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.backend == "openvino" and config.default_model_filename == "model.onnx"
    assert {k: v.string_value for k, v in config.parameters.items()} == {
        "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": "2"}

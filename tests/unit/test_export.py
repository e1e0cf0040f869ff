"""Export and verification: one self-contained file, dynamic batch, typed failures."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml

from maas.core.spec import ModelSpec
from maas.export import onnx_export
from maas.export.archive import ArchiveError, check_no_pickle
from maas.export.zoo import maintenance as m
from maas.handlers.integrity import sha256_file


@pytest.fixture(scope="module")
def small_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module, dict]:
    """An untrained MaintenanceNet exported once (fast): the subject of the negative tests."""
    torch.manual_seed(0)
    sample = {"features": m.generate(64, seed=1).features()}
    eng = m.MaintenanceNet.engineer(torch.from_numpy(sample["features"]))
    module = m.MaintenanceNet(eng.mean(0), eng.std(0)).eval()
    path = onnx_export.export_onnx(module, m.SPEC, sample, tmp_path_factory.mktemp("onnx") / "model.onnx")
    return path, module, sample


def test_built_manifest_records_hash_spec_metrics_and_parity(tiny_maintenance) -> None:
    manifest = json.loads((tiny_maintenance.build_dir / "manifest.json").read_text())
    assert manifest["sha256"] == sha256_file(tiny_maintenance.build_dir / "model.onnx")
    assert manifest["inputs"] == m.SPEC.io_dict()["inputs"] and manifest["opset"] == m.SPEC.opset
    assert manifest["features"] == list(m.FEATURES)
    assert {"accuracy", "roc_auc", "f1", "per_mode_f1"} <= set(manifest["metrics"])
    assert manifest["metrics"]["untrained_stand_in"] is True  # the tiny build says what it is
    assert manifest["parity"]["cases"] == ["batch 1", "batch 7", "batch 64"]
    assert manifest["parity"]["max_abs_error"] <= m.SPEC.atol


def test_one_self_contained_file_with_dynamic_batch(tiny_maintenance) -> None:
    files = sorted(p.name for p in tiny_maintenance.build_dir.iterdir())
    assert not [f for f in files if f.endswith(".data")], files
    model = onnx.load(str(tiny_maintenance.build_dir / "model.onnx"))
    dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param == "batch" and not dim0.HasField("dim_value")
    assert {p.key for p in model.metadata_props} >= {"maas.model", "maas.version", "maas.io_spec"}


def test_archive_carries_handler_support_model_manifest_config_and_no_pickle(tiny_maintenance) -> None:
    with zipfile.ZipFile(tiny_maintenance.mar) as z:
        names = set(z.namelist())
        config = yaml.safe_load(z.read("model-config.yaml"))
    assert {"maintenance.py", "ort_base.py", "model.onnx", "manifest.json", "model-config.yaml"} <= names
    assert not [n for n in names if n.endswith((".pt", ".pth", ".pkl"))]
    assert config["batchSize"] == m.SPEC.serving.batch_size and config["handler"]["intra_op_threads"] == 1
    for key in ("minWorkers", "maxWorkers", "maxBatchDelay", "responseTimeout", "startupTimeout"):
        assert key in config


def test_check_no_pickle_refuses_a_pickled_file(tmp_path: Path) -> None:
    mar = tmp_path / "x.mar"
    with zipfile.ZipFile(mar, "w") as z:
        z.writestr("weights.pt", b"\x80\x04")
    with pytest.raises(ArchiveError, match="weights.pt"):
        check_no_pickle(mar)


def test_verify_passes_on_the_exported_module(small_export) -> None:
    path, module, sample = small_export
    report = onnx_export.verify(path, module, m.SPEC, sample)
    assert report["max_abs_error"] < 1e-5 and set(report["per_case"]) == {"batch 1", "batch 7", "batch 64"}


def test_parity_failure_is_an_error_with_the_max_error(small_export) -> None:
    path, module, sample = small_export
    other = m.MaintenanceNet(module.mean, module.std).eval()  # different random weights
    with pytest.raises(onnx_export.AtolError, match=r"max abs error [0-9.e-]+ > atol"):
        onnx_export.verify(path, other, m.SPEC, sample)


def test_checker_failure_is_an_error(small_export, tmp_path: Path) -> None:
    path, module, sample = small_export
    model = onnx.load(str(path))
    model.graph.node[0].input[0] = "no_such_tensor"
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    with pytest.raises(onnx_export.CheckerError):
        onnx_export.verify(broken, module, m.SPEC, sample)


def test_external_data_escaping_the_folder_is_refused(small_export, tmp_path: Path) -> None:
    path, module, sample = small_export
    model = onnx.load(str(path))
    onnx.external_data_helper.convert_model_to_external_data(model, location="w.bin", size_threshold=0)
    (tmp_path / "sub").mkdir()
    target = tmp_path / "sub" / "model.onnx"
    onnx.save_model(model, str(target))
    # A hostile file names a location outside its folder (onnx.save itself refuses to write one).
    model = onnx.load(str(target), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../outside.bin"
    target.write_bytes(model.SerializeToString())
    with pytest.raises(onnx_export.ExternalDataError, match="outside its folder"):
        onnx_export.verify(target, module, m.SPEC, sample)


def test_contract_mismatch_names_the_tensor(small_export) -> None:
    path, module, sample = small_export
    renamed = ModelSpec(**{**m.SPEC.__dict__, "outputs": (m.SPEC.outputs[1], m.SPEC.outputs[0])})
    with pytest.raises(onnx_export.OutputMatchError, match="output names"):
        onnx_export.check_contract(path, renamed)


def test_spec_shapes() -> None:
    t = m.SPEC.inputs[0]
    assert t.dynamic_axes() == {0: "batch"} and t.shape == ("batch", 8)
    assert np.dtype(t.dtype) == np.float32


def test_a_handler_carries_exactly_the_modules_it_imports() -> None:
    """handler_support: the handler's own imports, transitively, and nothing else (maintenance needs
    no tokenizer buckets or image decoding; digits needs image decoding; minilm the length buckets)."""
    from maas.export.archive import HANDLERS_DIR, handler_support

    def carried(handler: str) -> set[str]:
        return {p.name for p in handler_support(HANDLERS_DIR / handler)}

    base = {"ort_base.py", "cores.py", "http_reply.py", "inputs.py", "v2.py", "dtypes.py", "integrity.py",
            "tensor_form.py", "numpy_body.py", "openvino_session.py", "ort_fusions.py"}  # the tensor form beside its own; either engine
    assert carried("maintenance.py") == base
    assert carried("digits.py") == base | {"image_input.py"}
    assert carried("minilm.py") == base | {"buckets.py"}
    assert carried("tensor.py") >= base and "image_input.py" not in carried("tensor.py")
    assert carried("ensemble_workflow.py") == {"http_reply.py"}
    # the generation handler: none of the tensor stack; the int4 kernel's module with its C source
    assert carried("llm.py") == {"cores.py", "derived.py", "http_reply.py", "inputs.py", "int4_vnni.py", "int4_vnni.c", "integrity.py",
                                 "kv_int8.py", "llm_async.py", "llm_engine.py",
                                 "llm_settings.py", "openai_api.py", "prompt_cache.py", "step_metrics.py", "token_sampler.py",
                                 "token_text.py"}


def test_a_classifier_with_string_class_names_is_served_as_labelled_probabilities(tmp_path: Path) -> None:
    """skl2onnx's graph of a classifier with string classes: a string label output and a ZipMap."""
    import onnxruntime as ort
    from onnx import TensorProto as T
    from onnx import helper

    from maas.export.graph_spec import graph_io
    from maas.export.zipmap import unzip_maps

    classes = ["setosa", "versicolor", "virginica"]
    maps = helper.make_sequence_type_proto(helper.make_map_type_proto(T.STRING, helper.make_tensor_type_proto(T.FLOAT, [])))
    graph = helper.make_graph(
        [helper.make_node("LinearClassifier", ["float_input"], ["label", "probability_tensor"], domain="ai.onnx.ml",
                          classlabels_strings=classes, coefficients=[i / 10 for i in range(12)], intercepts=[0.0] * 3,
                          post_transform="SOFTMAX", multi_class=1),
         helper.make_node("Identity", ["label"], ["output_label"]),
         helper.make_node("ZipMap", ["probability_tensor"], ["output_probability"], domain="ai.onnx.ml",
                          classlabels_strings=classes)],
        "skl", [helper.make_tensor_value_info("float_input", T.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("output_label", T.STRING, [None]), helper.make_value_info("output_probability", maps)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15), helper.make_opsetid("ai.onnx.ml", 1)])
    model.ir_version = 8
    path = tmp_path / "classifier.onnx"
    onnx.save(model, path)
    assert unzip_maps(path) == ["output_probability"]
    inputs, outputs = graph_io(path)
    assert [(t.name, t.dtype, t.labels) for t in outputs] == [("output_probability", "float32", tuple(classes))]
    (probabilities,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"float_input": np.ones((2, 4), np.float32)})
    assert probabilities.shape == (2, 3) and np.allclose(probabilities.sum(axis=1), 1)

"""`maas package` on tiny models (seconds): the spec file, the three sources, the verification
traps, and the generic tensor handler with a fake TorchServe context."""
from __future__ import annotations

import io
import json
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from conftest import FakeContext, call
from maas.core.spec_file import SpecError, parse_input_flag, read_spec_file
from maas.export import onnx_export
from maas.export.graph_spec import graph_io
from maas.export.package import PackageOptions, package_model

TINY = '''
import torch
from torch import nn


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))

    def forward(self, x):
        logits = self.body(x)
        return {"logits": logits, "probabilities": torch.softmax(logits, dim=-1)}


class Tagger(nn.Module):
    """Token ids -> per-token scores: a dynamic sequence axis beside the batch."""
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(50, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, ids, mask):
        return self.head(self.embed(ids)) * mask.unsqueeze(-1).float()


class Constant(nn.Module):
    def forward(self, x):
        return x.sum(dim=1, keepdim=True) * 0.0 + 0.5


class BatchNormed(nn.Module):
    """Rows depend on each other (normalised over the batch): TorchServe batching would change answers."""
    def forward(self, x):
        return (x - x.mean(dim=0, keepdim=True)) * 2.0


class Heads(nn.Module):
    """Two outputs of one shape, by name (as a ModelOutput's start_logits and end_logits)."""
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(6, 3), nn.Linear(6, 3)

    def forward(self, x):
        return {"start": self.a(x), "end": self.b(x)}


def make_heads():
    return Heads()


def make_mlp():
    return Mlp()


def make_tagger():
    return Tagger()


def make_constant():
    return Constant()


def make_batch_normed():
    return BatchNormed()


def make_not_a_module():
    return 42
'''


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user's folder holding their model code, as the current directory."""
    (tmp_path / "tiny_models.py").write_text(TINY)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def package(user_dir: Path, **options):
    return package_model(PackageOptions(**options), user_dir / "build", user_dir / "model_store")


def load(mar: Path, into: Path, handler: str = "tensor", cls: str = "TensorHandler"):
    import importlib
    import sys

    with zipfile.ZipFile(mar) as z:
        z.extractall(into)
    if handler not in ("tensor", "ort_base"):  # a user's handler: importable from its model dir, as in TorchServe
        sys.path.insert(0, str(into))
    module = importlib.import_module(handler)
    h = getattr(module, cls)()
    h.initialize(FakeContext(into, name=mar.stem))
    return h


# ---- the spec file ------------------------------------------------------------------------
def test_spec_file_errors_are_all_reported_with_line_and_key(tmp_path: Path) -> None:
    spec = tmp_path / "maas.yaml"
    spec.write_text(textwrap.dedent("""\
        name: bad name
        versoin: "1.0"
        inputs:
          - name: x
            dtype: float
            shape: [batch, 0]
        outputs:
          - name: y
            dtype: float32
            shape: [batch, 3]
            labels: missing.txt
            range: [0, 1]
        serving: {batch_size: -1}
        """))
    with pytest.raises(SpecError) as err:
        read_spec_file(spec)
    text = str(err.value)
    assert "maas.yaml:1: name:" in text and "letters, digits" in text
    assert "maas.yaml:2: versoin: unknown key; did you mean 'version'?" in text
    assert "maas.yaml:5: inputs[0].dtype: 'float' is not a dtype; did you mean 'float32'?" in text
    assert "inputs[0].shape[1]: must be a positive size" in text
    assert "outputs[0].labels: labels file" in text and "outputs[0].range: is an input option" in text
    assert "serving.batch_size: must be a positive integer" in text
    assert text.startswith("7 problem(s)")


def test_a_good_spec_file_reads_into_spec_fields(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("cat\ndog\nbird\n")
    spec = tmp_path / "maas.yaml"
    spec.write_text(textwrap.dedent("""\
        name: pets
        version: 2
        inputs: [{name: x, dtype: float32, shape: [batch, 6], range: [-5, 5]}]
        outputs: [{name: logits, dtype: float32, shape: [batch, 3], labels: labels.txt, top_k: 2, scores: softmax}]
        serving: {batch_size: 4, workers: 2}
        parity: {atol: 1.0e-4}
        """))
    fields = read_spec_file(spec)
    assert fields["name"] == "pets" and fields["version"] == "2" and fields["atol"] == 1e-4
    assert fields["inputs"][0].range == (-5.0, 5.0)
    assert fields["outputs"][0].labels == ("cat", "dog", "bird") and fields["outputs"][0].top_k == 2
    assert fields["serving"].batch_size == 4 and fields["serving"].min_workers == fields["serving"].max_workers == 2


def test_input_flags() -> None:
    t = parse_input_flag("pixels:float32:[batch, 3, 224, 224]")
    assert (t.name, t.dtype, t.shape) == ("pixels", "float32", ("batch", 3, 224, 224))
    for bad in ("pixels:float32", "pixels:f32:[batch]", "pixels:float32:batch,3"):
        with pytest.raises(SpecError):
            parse_input_flag(bad)


# ---- the graph -----------------------------------------------------------------------------
def tiny_onnx(path: Path, batch_names=("unk__1", "unk__2"), external: str | None = None) -> Path:
    """x [N, 4] float -> y = x @ W [N, 3], with exporter-style axis names."""
    w = helper.make_tensor("W", TensorProto.FLOAT, [4, 3], np.arange(12, dtype=np.float32).tobytes(), raw=True)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch_names[0], 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch_names[1], 3])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external:
        (path.parent / external).parent.mkdir(parents=True, exist_ok=True)
        onnx.external_data_helper.convert_model_to_external_data(model, location=external, size_threshold=0)
        onnx.save_model(model, str(path))
    else:
        onnx.save_model(model, str(path))
    return path


def test_graph_io_names_the_batch_axis(tmp_path: Path) -> None:
    inputs, outputs = graph_io(tiny_onnx(tmp_path / "m.onnx"))
    assert inputs[0].shape == ("batch", 4) and outputs[0].shape == ("batch", 3)
    assert inputs[0].dtype == "float32"


def test_onnx_with_external_weights_in_a_subfolder_is_packaged_and_served(user_dir: Path, tmp_path: Path) -> None:
    model = tiny_onnx(user_dir / "exported" / "model.onnx", external="weights/w.bin")
    assert (user_dir / "exported" / "weights" / "w.bin").is_file()
    result = package(user_dir, onnx=model, name="tiny")
    assert result.manifest["external_data"][0]["file"] == "w.bin"
    with zipfile.ZipFile(result.mar) as z:
        assert {"model.onnx", "w.bin", "tensor.py", "ort_base.py", "http_reply.py", "dtypes.py"} <= set(z.namelist())
    handler = load(result.mar, tmp_path / "served")
    (answer,), ctx = call(handler, {"inputs": {"x": [1, 0, 0, 1]}})
    assert answer == {"outputs": {"y": [9.0, 11.0, 13.0]}} and ctx.status == {}


def test_a_tampered_external_weights_file_is_refused_at_load(user_dir: Path, tmp_path: Path) -> None:
    from ort_base import ModelIntegrityError

    result = package(user_dir, onnx=tiny_onnx(user_dir / "m" / "model.onnx", external="w.bin"), name="tiny")
    with zipfile.ZipFile(result.mar) as z:
        z.extractall(tmp_path / "x")
    (tmp_path / "x" / "w.bin").write_bytes(b"\0" * 48)
    from tensor import TensorHandler

    with pytest.raises(ModelIntegrityError, match="w.bin"):
        TensorHandler().initialize(FakeContext(tmp_path / "x"))


def test_a_tampered_labels_file_is_refused_before_the_handler_reads_it(user_dir: Path, tmp_path: Path) -> None:
    """Every file the handler reads beside the model is in the manifest with its sha256 (a tokenizer,
    labels, a user's own module), checked before `setup` reads it, as the model is."""
    from ort_base import ModelIntegrityError
    from tensor import TensorHandler

    (user_dir / "labels.txt").write_text("cat\ndog\nbird\n")
    result = package(user_dir, onnx=tiny_onnx(user_dir / "m" / "model.onnx"), name="tiny",
                     extra_files=(user_dir / "labels.txt",))
    assert set(result.manifest["assets"]) >= {"labels.txt", "samples.npz"}
    with zipfile.ZipFile(result.mar) as z:
        z.extractall(tmp_path / "x")
    TensorHandler().initialize(FakeContext(tmp_path / "x"))
    (tmp_path / "x" / "labels.txt").write_text("cat\ndog\nparrot\n")
    with pytest.raises(ModelIntegrityError, match="labels.txt"):
        TensorHandler().initialize(FakeContext(tmp_path / "x"))


def test_a_graph_without_a_batch_axis_is_served_unbatched(user_dir: Path) -> None:
    fixed = tiny_onnx(user_dir / "fixed.onnx", batch_names=(1, 1))
    for declared in ((), ("x:float32:[1,4]",)):
        result = package(user_dir, onnx=fixed, inputs=declared)
        assert result.manifest["batch_axis"] is None and result.spec.serving.batch_size == 1


def test_a_stateful_model_batched_on_another_axis_round_trips_its_state(user_dir: Path, tmp_path: Path) -> None:
    """A voice-activity detector's shape: audio [batch, samples], a state [2, batch, 128] batched on
    axis 1 and a scalar sample rate. Served unbatched: each request one run with its tensors as given,
    and the state it answers goes back in with the next request."""
    import onnx
    from onnx import TensorProto, helper

    audio = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", "samples"])
    state = helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 128])
    rate = helper.make_tensor_value_info("sr", TensorProto.INT64, [])
    prob = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1])
    new_state = helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "batch", 128])
    nodes = [helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1], keepdims=1),
             helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
             helper.make_node("Div", ["mean", "srf"], ["scaled"]),
             helper.make_node("Sigmoid", ["scaled"], ["output"]),
             helper.make_node("Constant", [], ["one"], value=helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])),
             helper.make_node("Add", ["state", "one"], ["stateN"])]
    graph = helper.make_graph(nodes, "vad", [audio, state, rate], [prob, new_state])
    model = user_dir / "vad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(model))
    result = package(user_dir, onnx=model, name="vad")
    assert result.manifest["batch_axis"] is None and result.spec.serving.batch_size == 1
    handler, carried = load(result.mar, tmp_path / "served"), [[[0.0] * 128]] * 2
    for step in (1, 2):
        body = {"inputs": {"input": [[0.5] * 512], "state": carried, "sr": 16000}}
        (answer,), ctx = call(handler, body)
        assert ctx.status == {} and answer["outputs"]["output"][0][0] > 0.5
        carried = answer["outputs"]["stateN"]
        assert carried[0][0][0] == float(step)
    v2 = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 512], "data": [0.5] * 512},
                     {"name": "state", "datatype": "FP32", "shape": [2, 1, 128], "data": np.ravel(carried).tolist()},
                     {"name": "sr", "datatype": "INT64", "shape": [], "data": [16000]}]}
    (answer,), ctx = call(handler, v2)
    got = {o["name"]: o for o in answer["outputs"]}
    assert ctx.status == {} and got["stateN"]["shape"] == [2, 1, 128] and got["stateN"]["data"][0] == 3.0



# ---- PyTorch sources ------------------------------------------------------------------------
def test_torch_factory_with_a_batch_of_one_example_exports_a_dynamic_batch(user_dir: Path, tmp_path: Path) -> None:
    np.savez(user_dir / "one.npz", x=np.ones((1, 6), np.float32))
    result = package(user_dir, torch="tiny_models:make_mlp", example=user_dir / "one.npz")
    assert result.name == "mlp" and result.mar.name == "mlp.mar"
    dim0 = onnx.load(str(result.build_dir / "model.onnx")).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.HasField("dim_value")
    assert [t.name for t in result.spec.outputs] == ["logits", "probabilities"]
    # one example row repeated is no evidence: parity also ran on rows drawn within the spec
    assert result.manifest["parity"]["max_abs_error"] < 1e-5
    handler = load(result.mar, tmp_path / "served")
    answers, _ = call(handler, {"inputs": {"x": [[0.1] * 6, [0.2] * 6]}}, {"inputs": {"x": [0.3] * 6}})
    assert np.asarray(answers[0]["outputs"]["probabilities"]).shape == (2, 3)
    assert np.asarray(answers[1]["outputs"]["logits"]).shape == (3,)


def test_declared_inputs_are_drawn_and_parity_runs_on_three_batch_sizes(user_dir: Path) -> None:
    result = package(user_dir, torch="tiny_models:make_tagger", name="tagger",
                     inputs=("ids:int64:[batch,sequence]", "mask:int64:[batch,sequence]"))
    parity = result.manifest["parity"]
    assert parity["cases"] == ["batch 1", "batch 3, sequence 5", "batch 8"] and parity["max_abs_error"] < 1e-5
    assert result.spec.outputs[0].shape == ("batch", "sequence", 4)


def test_constant_outputs_are_refused_as_evidence(user_dir: Path) -> None:
    with pytest.raises(onnx_export.DegenerateParityError, match="proves nothing.*output"):
        package(user_dir, torch="tiny_models:make_constant", inputs=("x:float32:[batch,6]",))


def test_rows_that_depend_on_each_other_are_refused(user_dir: Path) -> None:
    with pytest.raises(onnx_export.BatchIndependenceError, match="between a batch of 4 and alone"):
        package(user_dir, torch="tiny_models:make_batch_normed", inputs=("x:float32:[batch,6]",))


def test_parity_failure_names_the_worst_output(user_dir: Path) -> None:
    from maas.export import sources

    result = package(user_dir, torch="tiny_models:make_mlp", inputs=("x:float32:[batch,6]",))
    wrong = lambda feeds: [np.zeros((len(feeds["x"]), 3), np.float32), np.ones((len(feeds["x"]), 3), np.float32)]  # noqa: E731
    sample = {"x": np.random.default_rng(0).standard_normal((8, 6)).astype(np.float32)}
    with pytest.raises(onnx_export.AtolError, match="logits: max abs error"):
        onnx_export.check_parity(result.build_dir / "model.onnx", wrong, result.spec, sample)
    assert sources  # the reference a source gives is the same kind of callable


def test_clear_errors_for_bad_sources(user_dir: Path) -> None:
    from maas.export.sources import SourceError

    with pytest.raises(SourceError, match="not a torch.nn.Module"):
        package(user_dir, torch="tiny_models:make_not_a_module", inputs=("x:float32:[batch,6]",))
    with pytest.raises(SourceError, match="no function"):
        package(user_dir, torch="tiny_models:nope")
    with pytest.raises(SpecError, match="declare the model's inputs"):
        package(user_dir, torch="tiny_models:make_mlp")
    (user_dir / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(SourceError, match="not an ONNX model"):
        package(user_dir, onnx=user_dir / "junk.onnx")
    with pytest.raises(SpecError, match="exactly one model source"):
        package(user_dir)


def test_exported_program_with_its_own_dynamic_batch(user_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(user_dir))
    import tiny_models  # the user's module

    model = tiny_models.make_mlp()
    program = torch.export.export(model, (torch.randn(3, 6),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(user_dir / "mlp.pt2"))
    result = package(user_dir, exported_program=user_dir / "mlp.pt2")
    assert result.name == "mlp" and result.spec.inputs[0].shape == ("batch", 6)
    assert result.manifest["parity"]["cases"] == ["batch 1", "batch 3", "batch 8"]


# ---- the generic tensor handler ---------------------------------------------------------------
@pytest.fixture(scope="module")
def tagger_mar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tagger packaged once for this module's handler tests (each loads its own copy)."""
    user = tmp_path_factory.mktemp("tagger_user")
    (user / "tiny_models.py").write_text(TINY)
    (user / "labels.txt").write_text("O\nPER\nLOC\nORG\n")
    (user / "maas.yaml").write_text(textwrap.dedent("""\
        name: tagger
        inputs:
          - {name: ids, dtype: int64, shape: [batch, sequence], range: [0, 49], pad: 0}
          - {name: mask, dtype: int64, shape: [batch, sequence], range: [0, 1], pad: 0}
        outputs:
          - {name: scores, dtype: float32, shape: [batch, sequence, 4], labels: labels.txt, top_k: 2, scores: softmax}
        serving: {batch_size: 8, max_items_per_request: 4}
        """))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(user)
        return package(user, torch="tiny_models:make_tagger", spec_file=user / "maas.yaml").mar


@pytest.fixture
def tagger(tagger_mar: Path, tmp_path: Path):
    return load(tagger_mar, tmp_path / "served")


def test_unequal_lengths_are_padded_into_one_run_and_cut_back(tagger) -> None:
    runs = []
    original = tagger._session_run
    tagger._session_run = lambda feeds: runs.append({k: v.shape for k, v in feeds.items()}) or original(feeds)
    bodies = [{"inputs": {"ids": [1, 2, 3], "mask": [1, 1, 1]}}, {"inputs": {"ids": [[4, 5, 6, 7, 8]], "mask": [[1] * 5]}}]
    (short, long), ctx = call(tagger, *bodies)
    assert runs == [{"ids": (2, 5), "mask": (2, 5)}]  # one run for both, padded to 5
    assert np.asarray(short["outputs"]["scores"]).shape == (3, 4)
    assert np.asarray(long["outputs"]["scores"]).shape == (1, 5, 4)
    alone, _ = call(tagger, bodies[0])
    assert np.allclose(alone[0]["outputs"]["scores"], short["outputs"]["scores"], atol=1e-6)
    top = short["predictions"]["scores"][0]
    assert len(top) == 2 and top[0]["label"] in {"O", "PER", "LOC", "ORG"} and 0 <= top[0]["score"] <= 1


@pytest.mark.parametrize("body,field,message", [
    ({"inputs": {"ids": [1, 2]}}, "inputs.mask", "missing input"),
    ({"inputs": {"ids": [1, 2], "mask": [1, 1], "x": 1}}, "inputs.x", "unknown input"),
    ({"inputs": {"ids": [1.5, 2], "mask": [1, 1]}}, "inputs.ids", "integers"),
    ({"inputs": {"ids": [1, 99], "mask": [1, 1]}}, "inputs.ids", "within [0, 49]"),
    ({"inputs": {"ids": [1, 2], "mask": [1, 1, 1]}}, "inputs.mask", "'sequence' is 3 here but 2"),
    ({"inputs": {"ids": [[1, 2]], "mask": [1, 1]}}, "inputs.mask", "one item or every input as a batch"),
    ({"inputs": {"ids": [[1], [1, 2]], "mask": [1, 1]}}, "inputs.ids", "rectangular"),
    ({"inputs": {"ids": ["é"], "mask": [1]}}, "inputs.ids", "numbers"),
    ({"inputs": {"ids": [[[1]]], "mask": [1]}}, "inputs.ids", "dimensions"),
    ({"inputs": {"ids": [[1]] * 5, "mask": [[1]] * 5}}, "inputs", "limit is 4"),
    ({"inputs": 3}, "inputs", "body must be"),
    ({"inputs": [1]}, "inputs[0]", "each input needs name, datatype"),  # a list: the v2 protocol
])
def test_bad_tensors_get_a_4xx_naming_the_input_and_neighbours_are_served(tagger, body, field, message) -> None:
    good = {"inputs": {"ids": [1, 2], "mask": [1, 1]}}
    (bad, ok), ctx = call(tagger, body, good)
    assert ctx.status[0][0] in (400, 413) and bad["field"] == field and message in bad["message"], bad
    assert 1 not in ctx.status and "outputs" in ok


def test_v2_requests_are_checked_the_same_way(tagger) -> None:
    v2 = {"inputs": [{"name": "ids", "datatype": "INT64", "shape": [1, 2], "data": [1, 99]},
                     {"name": "mask", "datatype": "INT64", "shape": [1, 2], "data": [1, 1]}]}
    (answer,), ctx = call(tagger, v2)
    assert ctx.status[0][0] == 400 and "within [0, 49]" in answer["message"]
    v2["inputs"][0]["data"] = [1, 2]
    (answer,), ctx = call(tagger, v2)
    assert answer["outputs"][0]["shape"] == [1, 2, 4] and answer["outputs"][0]["datatype"] == "FP32"


def test_a_handler_of_your_own_with_its_labels_file(user_dir: Path, tmp_path: Path) -> None:
    from conftest import ROOT

    example = ROOT / "examples" / "custom_handler"
    result = package(user_dir, torch="tiny_models:make_mlp", inputs=("x:float32:[batch,6]",), name="pets",
                     handler=example / "labels_handler.py", extra_files=(example / "labels.txt",))
    with zipfile.ZipFile(result.mar) as z:
        assert {"labels_handler.py", "labels.txt", "tensor.py", "ort_base.py"} <= set(z.namelist())
        assert json.loads(z.read("MAR-INF/MANIFEST.json"))["model"]["handler"] == "labels_handler.py"
    handler = load(result.mar, tmp_path / "served", "labels_handler", "LabelsHandler")
    (one, many, bad), ctx = call(handler, {"inputs": {"x": [0.5] * 6}}, {"inputs": {"x": [[0.1] * 6, [-2.0] * 6]}},
                                 {"inputs": {"x": [1] * 5}})
    assert one["label"] in {"cat", "dog", "bird"} and 0 < one["score"] <= 1
    assert len(many) == 2 and all(a["label"] in {"cat", "dog", "bird"} for a in many)
    assert ctx.status[2][0] == 400 and "needs 6" in bad["message"]  # the spec's checks still apply


def test_placeholder_axes_are_independent_and_named_axes_agree(tmp_path: Path) -> None:
    """Paddle2ONNX declares x [None, 3, '?', '?']: the two '?' are two axes (a 48x192 image is
    valid), not one symbol; axes that share a real name stay tied."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, "?", "?"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3, "?", "?"])
    mask = helper.make_tensor_value_info("mask", TensorProto.FLOAT, [None, "seq"])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, "seq"])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Identity", ["mask"], ["out"])],
                              "g", [x, mask], [y, out])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    inputs, outputs = graph_io(path)
    assert inputs[0].shape == ("batch", 3, "x_2", "x_3") and outputs[0].shape == ("batch", 3, "y_2", "y_3")
    assert inputs[1].shape == ("batch", "seq") and outputs[1].shape == ("batch", "seq")


def test_warm_up_uses_the_archives_samples_and_a_refused_warm_up_never_costs_the_worker(
        user_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A convolution over a dynamic length refuses the length-1 zeros a spec-shaped warm-up would
    send (a speech model's worker used to die there, forever): the archive's own sample warms it
    up; without samples the refusal is logged and the worker still answers valid requests."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((2, 1, 5), np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, "samples"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, "frames"])
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "conv", [x], [y], [w])
    model = user_dir / "conv.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(model))
    np.savez(user_dir / "x.npz", x=np.random.default_rng(0).standard_normal((2, 1, 16)).astype(np.float32))
    result = package(user_dir, onnx=model, name="conv", example=user_dir / "x.npz")
    body = {"inputs": {"x": np.ones((1, 16)).tolist()}}
    with caplog.at_level("WARNING"):
        (answer,), ctx = call(load(result.mar, tmp_path / "with-samples"), body)
    assert answer["outputs"]["y"] == [[5.0] * 12] * 2 and ctx.status == {}
    assert "warm-up skipped" not in caplog.text
    unpacked = tmp_path / "without-samples"
    with zipfile.ZipFile(result.mar) as z:
        z.extractall(unpacked)
    (unpacked / "samples.npz").unlink()  # an archive without samples (and so without their sha256)
    manifest = json.loads((unpacked / "manifest.json").read_text())
    del manifest["assets"]["samples.npz"]
    (unpacked / "manifest.json").write_text(json.dumps(manifest))
    from tensor import TensorHandler

    handler = TensorHandler()
    with caplog.at_level("WARNING"):
        handler.initialize(FakeContext(unpacked, name="conv"))
    assert "warm-up skipped" in caplog.text
    (answer,), _ = call(handler, body)
    assert answer["outputs"]["y"] == [[5.0] * 12] * 2


def _conv_onnx(path: Path, kernel: int) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((2, 1, kernel), np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, "samples"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, "frames"])
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "conv", [x], [y], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    return path


def test_drawn_sizes_are_ones_the_model_accepts(user_dir: Path) -> None:
    """No example: maas tries sizes until the model runs (a kernel of 10 refuses 8 samples)."""
    result = package(user_dir, onnx=_conv_onnx(user_dir / "conv10.onnx", 10), name="conv10")
    with zipfile.ZipFile(result.mar) as z, z.open("samples.npz") as f, np.load(f) as samples:
        assert samples["x"].shape[1:] == (1, 32)


def test_a_model_that_refuses_every_drawn_size_is_one_clear_error(user_dir: Path) -> None:
    from maas.export.onnx_export import RunError

    with pytest.raises(RunError, match="refused each") as caught:
        package(user_dir, onnx=_conv_onnx(user_dir / "conv99k.onnx", 99_999), name="huge")
    assert "--example" in caught.value.user_message()


def test_a_model_whose_answers_move_with_the_batch_runs_each_row_alone_by_default() -> None:
    from maas.core.spec import ModelSpec, TensorSpec
    from maas.export.onnx_export import batch_invariance

    spec = ModelSpec(name="m", version="1.0", description="", inputs=(TensorSpec("x", "float32", ("batch", 4)),),
                     outputs=(), handler="tensor.py")
    moving = {"batch_variance": {"alone_vs_batched_max_abs": 6.1e-3}}
    assert batch_invariance(spec, moving).serving.fixed_batch_rows == 1
    assert "more than the parity tolerance" in moving["batch_variance"]["default"]
    still = {"batch_variance": {"alone_vs_batched_max_abs": 1.4e-7}}
    assert batch_invariance(spec, still).serving.fixed_batch_rows == 0


def test_batch_variance_is_measured_and_the_fixed_shape_mode_answers_the_same_bits(user_dir: Path,
                                                                                    tmp_path: Path) -> None:
    """The manifest says how far a row's answer moves with its batch neighbours; with
    fixed_batch_rows every run has that many rows (split or padded), and a request gets the same
    bits alone, among others, and in a request larger than the fixed shape."""
    import yaml

    result = package(user_dir, onnx=tiny_onnx(user_dir / "v" / "model.onnx"), name="variance")
    variance = result.manifest["parity"]["batch_variance"]
    assert set(variance) == {"alone_vs_batched_max_abs", "by_batch_size", "fixed_shape_max_abs", "fixed_shape_rows",
                             "default"}
    assert variance["default"].startswith("fixed_batch_rows 0: answers move by")  # within atol: batching kept
    assert variance["fixed_shape_rows"] == result.spec.serving.batch_size and variance["fixed_shape_max_abs"] >= 0
    served = tmp_path / "fixed"
    with zipfile.ZipFile(result.mar) as z:
        z.extractall(served)
    config = yaml.safe_load((served / "model-config.yaml").read_text())
    config["handler"]["fixed_batch_rows"] = 4
    (served / "model-config.yaml").write_text(yaml.safe_dump(config))
    from tensor import TensorHandler

    handler = TensorHandler()
    handler.initialize(FakeContext(served, name="variance"))
    runs = []
    engine = handler._engine_run
    handler._engine_run = lambda feeds: runs.append(len(feeds["x"])) or engine(feeds)
    row = [0.1, 0.2, 0.3, 0.4]
    (alone,), _ = call(handler, {"inputs": {"x": row}})
    crowd, _ = call(handler, *({"inputs": {"x": [float(i), 1.0, 2.0, 3.0]}} for i in range(2)), {"inputs": {"x": row}})
    (big,), _ = call(handler, {"inputs": {"x": [[9.0] * 4] * 5 + [row]}})
    assert alone["outputs"]["y"] == crowd[2]["outputs"]["y"] == big["outputs"]["y"][5]
    assert set(runs) == {4}  # every engine run had exactly the fixed rows, 6 rows as 4 + 4 padded


# ---- NumPy bodies -----------------------------------------------------------------------------
def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def huge_npy_header() -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": (2 ** 40,)})
    return buf.getvalue() + bytes(16)


def corrupt_npz() -> bytes:
    body = bytearray(npz(x=np.zeros((64, 6), np.float32)))
    start = body.index(b"x.npy") + len("x.npy") + 20  # past the member's name and its zip64 field
    body[start:start + 12] = b"\xff" * 12  # the deflated stream's first bytes
    return bytes(body)


def test_npy_and_npz_bodies_answer_as_json_does(user_dir: Path, tmp_path: Path) -> None:
    handler = load(package(user_dir, torch="tiny_models:make_mlp", inputs=("x:float32:[batch,6]",)).mar,
                   tmp_path / "mlp")
    x = np.random.default_rng(0).random((3, 6), dtype=np.float32)
    (as_json, as_npy, as_npz, one_row), ctx = call(handler, {"inputs": {"x": x.tolist()}}, npy(x), npz(x=x), npy(x[0]))
    assert ctx.status == {}
    for answer in (as_npy, as_npz):
        assert np.allclose(answer["outputs"]["logits"], as_json["outputs"]["logits"], atol=1e-7)
    assert np.allclose(one_row["outputs"]["logits"], as_json["outputs"]["logits"][0], atol=1e-6)


@pytest.mark.parametrize("body,problem", [
    (npy(np.array([{"a": 1}], dtype=object)), "object arrays are refused"),
    (npy(np.ones((2, 6), np.float32))[:-8], "not a readable .npy"),
    (npz(y=np.ones((2, 6), np.float32)), "unknown input"),
    (npz(x=np.ones((2, 5), np.float32)), "needs 6"),
    (npy(np.full((1, 6), np.nan, np.float32)), "finite"),
    (b"PK\x03\x04" + b"\0" * 40, "not one"),
    (huge_npy_header(), "declares shape [1099511627776]"),  # numpy would ask for 8 TiB: a MemoryError, a 500
    (corrupt_npz(), "cannot be read"),  # zlib.error, a 500 before
    (npy(np.array([["a"] * 6])), "float32 numbers"),
])
def test_bad_numpy_bodies_are_400_and_spare_their_neighbours(user_dir: Path, tmp_path: Path, body: bytes,
                                                               problem: str) -> None:
    handler = load(package(user_dir, torch="tiny_models:make_mlp", inputs=("x:float32:[batch,6]",)).mar,
                   tmp_path / "mlp")
    (bad, good), ctx = call(handler, body, {"inputs": {"x": [0.1] * 6}})
    assert ctx.status[0][0] == 400 and problem in bad["message"], bad
    assert 1 not in ctx.status and good["outputs"]["logits"]


def test_a_written_spec_reads_back_as_it_was(tmp_path: Path) -> None:
    """`maas package --write-spec` writes what `--spec` reads: the default description, atol 1e-05,
    an output named 17 (the old torch exporter's names), labels with quotes, odd axis names."""
    from maas.core.spec import ModelSpec, TensorSpec
    from maas.core.spec_file import spec_yaml
    from maas.export.graph_spec import _axis_name

    axis = _axis_name("2*N")
    spec = ModelSpec(name="tiny", version="1.0", description="tiny packaged by maas", handler="tensor.py", atol=1e-5,
                     rtol=1e-3, inputs=(TensorSpec("input.1", "float32", ("batch", axis), range=(-1e-3, 2.5), pad=0.0,
                                                   description="yes: a colon"),),
                     outputs=(TensorSpec("17", "float32", ("batch", 3), labels=("it's", 'a "b"', "1.5"), top_k=2,
                                         scores="softmax"),))
    (tmp_path / "maas.yaml").write_text(spec_yaml(spec))
    fields = read_spec_file(tmp_path / "maas.yaml")
    assert (fields["name"], fields["version"], fields["description"]) == ("tiny", "1.0", "tiny packaged by maas")
    assert (fields["atol"], fields["rtol"]) == (1e-5, 1e-3)
    assert fields["inputs"] == spec.inputs and fields["outputs"] == spec.outputs
    assert [_axis_name(n) for n in ("2*N", "批量", "input.1_0")] == ["_2_N", "_6279_91cf", "input_1_0"]


def test_two_batches_are_named_in_the_refusal_and_served_unbatched_once_declared(user_dir: Path) -> None:
    """CLIP's shape (optimum's names): texts and images are two batches, with a cross output."""
    from onnx import TensorProto as T
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node("Transpose", ["image"], ["image_t"], perm=[1, 0]),
         helper.make_node("MatMul", ["text", "image_t"], ["logits_per_text"])], "clip",
        [helper.make_tensor_value_info("text", T.FLOAT, ["text_batch_size", 4]),
         helper.make_tensor_value_info("image", T.FLOAT, ["image_batch_size", 4])],
        [helper.make_tensor_value_info("logits_per_text", T.FLOAT, ["text_batch_size", "image_batch_size"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, user_dir / "clip.onnx")
    with pytest.raises(onnx_export.BatchIndependenceError, match="text: 'text_batch_size', image: 'image_batch_size'"):
        package(user_dir, onnx=user_dir / "clip.onnx")
    (user_dir / "maas.yaml").write_text(textwrap.dedent("""\
        name: clip
        inputs: [{name: text, dtype: float32, shape: [texts, 4]}, {name: image, dtype: float32, shape: [images, 4]}]
        outputs: [{name: logits_per_text, dtype: float32, shape: [texts, images]}]
        """))
    result = package(user_dir, onnx=user_dir / "clip.onnx", spec_file=user_dir / "maas.yaml")
    assert result.spec.batch_axis is None


def test_a_request_the_model_cannot_run_is_its_own_422_and_its_neighbours_run_batched(user_dir: Path,
                                                                                      tmp_path: Path) -> None:
    """An image smaller than the convolution's kernel passes every check a graph's spec allows and
    fails in ONNX Runtime: that request gets a 422 with ORT's reason; the other requests' run is not
    repeated request by request."""
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    kernel = numpy_helper.from_array(np.full((1, 1, 3, 3), 0.1, np.float32), "kernel")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "kernel"], ["features"])], "conv",
        [helper.make_tensor_value_info("image", T.FLOAT, ["batch", 1, "height", "width"])],
        [helper.make_tensor_value_info("features", T.FLOAT, ["batch", 1, "out_height", "out_width"])], [kernel])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, user_dir / "conv.onnx")
    handler = load(package(user_dir, onnx=user_dir / "conv.onnx", name="conv").mar, tmp_path / "served")
    runs = []
    run_group = handler._run_group
    handler._run_group = lambda items: runs.append(len(items)) or run_group(items)
    good = {"inputs": {"image": np.ones((1, 1, 6, 6)).tolist()}}
    (ok, bad, ok_too), ctx = call(handler, good, {"inputs": {"image": np.ones((1, 1, 2, 2)).tolist()}}, good)
    assert ctx.status[1][0] == 422 and "the model cannot run on this input" in bad["message"], bad
    assert "Conv" in bad["message"] and 0 not in ctx.status and 2 not in ctx.status
    assert ok == ok_too and np.asarray(ok["outputs"]["features"]).shape == (1, 1, 4, 4)
    assert sorted(runs) == [1, 2]  # the two good ones in one run, the bad one alone


def test_an_onnx_file_that_answers_nan_is_not_packaged(user_dir: Path) -> None:
    """Without a PyTorch reference only a finite run is checked: it was a logged warning, and the
    archive was built and served all the same."""
    from maas.export.onnx_export import NonFiniteError

    nan = helper.make_tensor("nan", TensorProto.FLOAT, [1], [float("nan")])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "nan"], ["y"])], "nan",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [nan])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(user_dir / "nan.onnx"))
    with pytest.raises(NonFiniteError, match="output y answers the sample with NaN"):
        package(user_dir, onnx=user_dir / "nan.onnx")
    assert not list((user_dir / "model_store").glob("*.mar")) if (user_dir / "model_store").exists() else True


def test_min_workers_alone_raises_max_workers_with_it(tmp_path: Path) -> None:
    spec = tmp_path / "maas.yaml"
    spec.write_text("name: m\ninputs: [{name: x, dtype: float32, shape: [batch, 6]}]\n"
                    "outputs: [{name: y, dtype: float32, shape: [batch, 3]}]\nserving: {min_workers: 3}\n")
    serving = read_spec_file(spec)["serving"]
    assert (serving.min_workers, serving.max_workers) == (3, 3)


def test_declared_outputs_in_another_order_than_a_dicts_keys_are_not_swapped(user_dir: Path, tmp_path: Path) -> None:
    """Declared outputs named the module's outputs by position: a spec listing [end, start] for a
    module returning {start, end} served each under the other's name, and parity passed (by position)."""
    import importlib
    import sys

    spec = user_dir / "maas.yaml"
    spec.write_text("name: heads\ninputs: [{name: x, dtype: float32, shape: [batch, 6]}]\n"
                    "outputs: [{name: end, dtype: float32, shape: [batch, 3]}, {name: start, dtype: float32, shape: [batch, 3]}]\n")
    handler = load(package(user_dir, torch="tiny_models:make_heads", spec_file=spec).mar, tmp_path / "heads")
    x = np.random.default_rng(0).random((2, 6), dtype=np.float32)
    (answer,), _ = call(handler, {"inputs": {"x": x.tolist()}})
    sys.path.insert(0, str(user_dir))
    with torch.no_grad():
        expected = importlib.import_module("tiny_models").make_heads()(torch.from_numpy(x))
    for name in ("start", "end"):
        assert np.allclose(answer["outputs"][name], expected[name].numpy(), atol=1e-5), name

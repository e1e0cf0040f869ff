"""Each command fed a user's typical mistakes ends in one clear line and a non-zero exit, never a
traceback: a missing file, a bad spec, a bad SLO file, an unknown model, a server that is down."""
from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from maas.cli import cli


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `maas init` folder with a valid ONNX file and broken spec and SLO files beside it."""
    home = tmp_path_factory.mktemp("mistakes")
    result = CliRunner().invoke(cli, ["init", str(home)])
    assert result.exit_code == 0, result.output
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(home / "model.onnx"))
    (home / "bad-spec.yaml").write_text("name: ok\ninputs: 3\nserving: {batch_size: -1}\n")
    (home / "bad-slo.yaml").write_text("users: [1\n")
    (home / "wrong-slo.yaml").write_text("users: 2\np95: 100\n")
    (home / "not.onnx").write_text("not a model")
    broken_onnx_files(home, graph)
    return home


def broken_onnx_files(home: Path, graph: onnx.GraphProto) -> None:
    """Files a user may be handed: truncated, from a newer ONNX, with a custom op, with missing
    external weights, with a sequence output."""
    good = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (home / "truncated.onnx").write_bytes(good.SerializeToString()[:40])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 99)], ir_version=9), str(home / "new-opset.onnx"))
    newer = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    newer.ir_version = 99
    (home / "new-ir.onnx").write_bytes(newer.SerializeToString())
    x, y = graph.input[0], graph.output[0]
    custom = helper.make_graph([helper.make_node("FancyRelu", ["x"], ["y"], domain="com.example")], "custom", [x], [y])
    onnx.save(helper.make_model(custom, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
                                ir_version=9), str(home / "custom-op.onnx"))
    w = helper.make_tensor("w", TensorProto.FLOAT, [4], bytes(16), raw=True)  # raw data: what goes external
    weighted = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "weighted", [x], [y], initializer=[w])
    model = helper.make_model(weighted, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, str(home / "external.onnx"), save_as_external_data=True, location="gone.bin", size_threshold=0)
    (home / "gone.bin").unlink()
    seq = helper.make_tensor_sequence_value_info("ys", TensorProto.FLOAT, None)
    listed = helper.make_graph([helper.make_node("SequenceConstruct", ["x"], ["ys"])], "seq", [x], [seq])
    onnx.save(helper.make_model(listed, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(home / "sequence.onnx"))


MISTAKES = {
    "missing onnx file": (["package", "--onnx", "missing.onnx"], "no such file"),
    "not an onnx file": (["package", "--onnx", "not.onnx"], "not an ONNX model"),
    "truncated onnx file": (["package", "--onnx", "truncated.onnx"], "truncated.onnx"),
    "onnx opset too new": (["package", "--onnx", "new-opset.onnx"], "opset"),
    "onnx IR version too new": (["package", "--onnx", "new-ir.onnx"], "IR version"),
    "onnx custom operator": (["package", "--onnx", "custom-op.onnx"], "FancyRelu"),
    "onnx external weights missing": (["package", "--onnx", "external.onnx"], "gone.bin"),
    "onnx sequence output": (["package", "--onnx", "sequence.onnx"], "sequences and maps"),
    "bad spec": (["package", "--onnx", "model.onnx", "--spec", "bad-spec.yaml"], "bad-spec.yaml"),
    "bad input flag": (["package", "--onnx", "model.onnx", "--input", "x:float99:[batch"], "x:float99"),
    "unknown torch module": (["package", "--torch", "nosuch:make", "--input", "x:float32:[batch,2]"], "nosuch"),
    "unparsable SLO file": (["loadtest", "maintenance", "--slo", "bad-slo.yaml"], "bad-slo.yaml"),
    "unknown SLO key": (["loadtest", "maintenance", "--slo", "wrong-slo.yaml"], "unknown SLO keys"),
    "unknown model to deploy": (["deploy", "nosuch"], "no archive for nosuch"),
    "unknown model to build": (["build", "nosuch"], "not a zoo model"),
    "variant of an unknown model": (["build", "nosuch", "--variant", "int8"], "no archive for nosuch"),
    "unknown model to export": (["export-triton", "nosuch"], "no archive for nosuch"),
    "unknown model for kserve": (["export-kserve", "nosuch"], "unknown model nosuch"),
    "server down: predict": (["predict", "maintenance", "model.onnx"], "is TorchServe running"),
    "server down: status": (["status"], "is TorchServe running"),
    "server down: load test": (["loadtest", "maintenance"], "is TorchServe running"),
    "server down: release": (["release", "maintenance", "--candidate", "2.0"], "is TorchServe running"),
    "server down: scale": (["scale", "maintenance", "--min-workers", "2"], "is TorchServe running"),
    "bad bench layout": (["bench", "--layouts", "2:x"], "--layouts"),
}


@pytest.mark.parametrize("case", MISTAKES, ids=list(MISTAKES))
def test_a_mistake_ends_in_one_clear_line(project: Path, case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    args, says = MISTAKES[case]
    monkeypatch.chdir(project)
    for var in ("MAAS_CONFIG", "MAAS_MODEL_STORE", "MAAS_RUN_DIR", "MAAS_REPORTS_DIR", "MAAS_BUILD_DIR"):
        monkeypatch.delenv(var, raising=False)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code in (1, 2), f"{args}: exit {result.exit_code}\n{result.output}"
    assert isinstance(result.exception, SystemExit), f"{args} raised {result.exception!r}"
    assert "Traceback" not in result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(error) == 1 and says in result.output, result.output

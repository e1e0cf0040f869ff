"""Shared fixtures: a model built once per session, and a real TorchServe on free ports.

The server fixture runs the same code path as `maas serve start`: the project's own
config.properties with only the ports changed, a temp run dir and model store; it is
always stopped at the end of the session.
"""
from __future__ import annotations

import json
import shutil
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "handlers"))  # handlers import each other flat, as inside a .mar

from maas.properties import free_loopback_ports, on_free_loopback_ports, read_properties, resolve_paths, write_properties  # noqa: E402
from maas.server import ServerLayout, TorchServe  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/integration/ starts real servers: marked `integration` here, once."""
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)


def free_ports(n: int) -> list[int]:
    return free_loopback_ports(n)


def server_config(path: Path, **overrides: str) -> Path:
    """The project's config.properties on free loopback ports (plus overrides)."""
    props = on_free_loopback_ports(resolve_paths(read_properties(ROOT / "config.properties"), ROOT))
    props.update(overrides)
    write_properties(path, props, header="test copy of config.properties with free ports")
    return path


@dataclass
class Built:
    name: str
    build_dir: Path
    mar: Path


LLM = "tiny-llama"


@pytest.fixture(scope="session")
def llm_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random Llama as a local Hugging Face folder (tests/thirdparty/llm_folders.py)."""
    from thirdparty.llm_folders import make_folder

    return make_folder(tmp_path_factory.mktemp("llm_src") / "llama", "llama")


@pytest.fixture(scope="session")
def llm_archive(tmp_path_factory: pytest.TempPathFactory, llm_source: Path) -> Path:
    """The seeded random Llama packaged once per session with `maas package --llm FOLDER --name
    tiny-llama`: its archive folder in a store of its own."""
    from click.testing import CliRunner

    from maas.cli import cli

    store, build = (tmp_path_factory.mktemp(n) for n in ("llm_store", "llm_build"))
    folder = llm_source
    result = CliRunner().invoke(cli, ["--model-store", str(store), "package", "--llm", str(folder), "--name", LLM],
                                env={"MAAS_BUILD_DIR": str(build)}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "parity: greedy tokens equal transformers' on 8/8 prompts" in result.output, result.output
    return store / LLM


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model_store")


@pytest.fixture(scope="session")
def built_models(tmp_path_factory: pytest.TempPathFactory, model_store: Path) -> dict[str, Built]:
    """Every model of the zoo, built once per session into the session's model store."""
    return build_zoo(tmp_path_factory.mktemp("build"), model_store, tiny=False)


def build_zoo(build_root: Path, store: Path, tiny: bool) -> dict[str, Built]:
    from maas.export import zoo
    from maas.export.build import build

    built = {}
    for name in zoo.models():
        result = build(name, build_root, store, tiny=tiny)
        built[name] = Built(name, result.build_dir, result.mar)
    return built


@pytest.fixture(scope="session")
def openvino_variants(tmp_path_factory: pytest.TempPathFactory, built_models: dict[str, Built]) -> Path:
    """The zoo's FP32 archives, minilm's NNCF INT8 on OpenVINO (minilm-1.0-ov-int8.mar) and what
    `--variant auto` chose for digits, in a store of their own (export/variant_choice.py)."""
    import shutil

    from maas.export.build import build

    store = tmp_path_factory.mktemp("openvino_store")
    work = store / ".build"  # the chooser's report lands here: <name>-<version>-choice.json
    for built in built_models.values():
        shutil.copy(built.mar, store / built.mar.name)
    from maas.export.variant_choice import choose_variant

    build("minilm", work, store, variant="ov-int8")
    choose_variant(store, work, "digits", rounds=2, round_s=0.5)  # `maas build digits --variant auto`, timed briefly
    return store


@pytest.fixture(scope="session")
def maintenance_built(built_models: dict[str, Built]) -> Built:
    return built_models["maintenance"]


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny_model_store")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory, tiny_store: Path) -> dict[str, Built]:
    """Every zoo model as its untrained stand-in (ZooModel.tiny) in tiny_store: the unit tier's
    models, built in seconds. Their answers have the right form, not the right values: what
    needs a trained model (held-out accuracy, known answers) uses built_models."""
    return build_zoo(tmp_path_factory.mktemp("tiny_build"), tiny_store, tiny=True)


@pytest.fixture(scope="session")
def tiny_maintenance(tiny_models: dict[str, Built]) -> Built:
    return tiny_models["maintenance"]


@pytest.fixture(scope="session")
def maintenance_v2(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """maintenance 2.0: a second training (seed 1), archived as maintenance-2.0.mar."""
    from maas.export.build import build

    result = build("maintenance", tmp_path_factory.mktemp("build_v2"), tmp_path_factory.mktemp("store_v2"),
                   version="2.0", seed=1)
    return Built("maintenance", result.build_dir, result.mar)


@pytest.fixture(scope="session")
def ensemble_built(tmp_path_factory: pytest.TempPathFactory):
    """3 maintenance members and their gate decision; the workflow is packaged either way, so
    the serving path is tested even where the gate (rightly) refuses to ship it.
    Returns (EnsembleResult, build dir, model store, workflow store)."""
    from maas.export.ensemble import build_ensemble, package_workflow, workflow_spec

    work = tmp_path_factory.mktemp("ens_build")
    store, wf_store = tmp_path_factory.mktemp("ens_store"), tmp_path_factory.mktemp("ens_wf")
    result = build_ensemble(3, work, store, wf_store)
    if not result.built:
        spec_dir = work / "forced"
        spec_dir.mkdir()
        (spec_dir / "workflow.yaml").write_text(yaml.safe_dump(workflow_spec(list(result.record["member_archives"].values()))))
        package_workflow(spec_dir, wf_store)
    return result, work, store, wf_store


def package_variant(built: Built, store: Path, work: Path, archive_name: str, rewrite_handler: Callable[[str], str],
                    model_name: str | None = None, version: str = "1.0", **config: Any) -> Path:
    """An archive of `built`'s verified model whose handler source is rewritten (a test double
    for a broken or slow release), with optional model-config.yaml changes."""
    from maas.export import zoo
    from maas.export.archive import package

    handlers, build = work / f"{archive_name}_handlers", work / f"{archive_name}_build"
    handlers.mkdir()
    build.mkdir()
    for f in (ROOT / "handlers").glob("*.py"):
        shutil.copy(f, handlers / f.name)
    source = (handlers / f"{built.name}.py").read_text()
    rewritten = rewrite_handler(source)
    assert rewritten != source, "the rewrite changed nothing"
    (handlers / f"{built.name}.py").write_text(rewritten)
    for f in ("model.onnx", "manifest.json"):
        shutil.copy(built.build_dir / f, build / f)
    cfg = {**yaml.safe_load((built.build_dir / "model-config.yaml").read_text()), **config}
    (build / "model-config.yaml").write_text(yaml.safe_dump(cfg))
    spec = zoo.get(built.name).spec
    spec = spec.__class__(**{**spec.__dict__, "name": model_name or spec.name})
    return package(build, spec, store, version, archive_name, handlers_dir=handlers)


def tamper(src: Path, dst: Path, model_name: str | None = None, version: str | None = None) -> None:
    """A copy of an archive whose model bytes changed after packaging (optionally registered as
    `model_name`, or as `version`)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "model.onnx":
                data = data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:]
            if item.filename == "MAR-INF/MANIFEST.json" and (model_name or version):
                manifest = json.loads(data)
                manifest["model"]["modelName"] = model_name or manifest["model"]["modelName"]
                manifest["model"]["modelVersion"] = version or manifest["model"]["modelVersion"]
                data = json.dumps(manifest).encode()
            zout.writestr(item, data)


def bare_server(tmp_path_factory: pytest.TempPathFactory, store: Path, **overrides: str) -> TorchServe:
    """A started server on `store` that loads nothing at start (models come through deploy)."""
    run_dir = tmp_path_factory.mktemp("bare_run")
    config = server_config(run_dir / "config.properties", **overrides)
    text = "\n".join(line for line in config.read_text().splitlines() if not line.startswith("load_models="))
    config.write_text(text + "\n")
    ts = TorchServe(ServerLayout(config, store, run_dir))
    ts.start()
    return ts


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, model_store: Path, built_models: dict[str, Built]) -> TorchServe:
    run_dir = tmp_path_factory.mktemp("run")
    config = server_config(run_dir / "config.properties")
    ts = TorchServe(ServerLayout(config, model_store, run_dir))
    ts.start(timeout=240)
    yield ts
    ts.stop()


class RecordedMetrics:
    """TorchServe's context.metrics (MetricsCacheYamlImpl) signatures, recording each emission
    as (name, value, {dimension: value}) so tests can assert what a handler emits."""

    def __init__(self) -> None:
        self.emitted: list[tuple[str, float, dict[str, str]]] = []

    def _record(self, name: str, value: float, dimensions: list | None) -> None:
        assert isinstance(value, (int, float)), f"{name}: {value!r} is not a number"
        self.emitted.append((name, value, {d.name: d.value for d in dimensions or []}))

    def add_time(self, name, value, idx=None, unit="ms", dimensions=None, metric_type=None) -> None:
        self._record(name, value, dimensions)

    def add_metric(self, name, value, unit, idx=None, dimensions=None, metric_type=None) -> None:
        self._record(name, value, dimensions)

    def add_counter(self, name, value, idx=None, dimensions=None) -> None:
        self._record(name, value, dimensions)

    def values(self, name: str) -> list[float]:
        return [v for n, v, _ in self.emitted if n == name]


def call(handler: Any, *bodies: Any, explain: bool = False) -> tuple[list[Any], "FakeContext"]:
    """One handle() of a batch, as TorchServe makes it: bytes and str bodies as they are (TorchServe
    hands text/plain over as str), others JSON-encoded; -> the decoded answers and the context
    that recorded statuses, headers and metrics."""
    ctx = FakeContext(Path("."))
    if explain:
        ctx.request_headers = {i: {"explain": "True"} for i in range(len(bodies))}
    out = handler.handle([{"body": b if isinstance(b, (bytes, str)) else json.dumps(b).encode()} for b in bodies], ctx)
    return [json.loads(o) for o in out], ctx


def png(grid: Any, scale: int = 12, fmt: str = "PNG", mode: str = "L", dark_ink: bool = True) -> bytes:
    """A digit grid (0-16) as an image file, the way a scanner or a phone would send it."""
    import io

    import numpy as np
    from PIL import Image

    ink = np.kron(grid, np.ones((scale, scale))) / 16 * 255
    img = Image.fromarray((255 - ink if dark_ink else ink).astype(np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


class FakeContext:
    """The parts of TorchServe's Context a handler uses, recording per-request status and metrics."""

    def __init__(self, model_dir: Path, yaml_config: dict[str, Any] | None = None, name: str = "maintenance") -> None:
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None, "batch_size": 8}
        archived = Path(model_dir) / "model-config.yaml"  # as TorchServe reads it from the .mar
        self.model_yaml_config = yaml_config or (yaml.safe_load(archived.read_text()) if archived.exists()
                                                 else {"maxWorkers": 1, "handler": {"intra_op_threads": 1}})
        self.manifest = {"model": {"modelName": name, "modelVersion": "1.0"}}
        self.status: dict[int, tuple[int, str]] = {}
        self.headers: dict[int, dict[str, str]] = {}
        self.request_headers: dict[int, dict[str, str]] = {}  # what TorchServe sets, e.g. explain: True
        self.metrics = RecordedMetrics()

    def get_request_header(self, idx: int, key: str) -> str | None:
        return self.request_headers.get(idx, {}).get(key)

    def get_all_request_header(self, idx: int) -> dict[str, str]:
        return self.request_headers.get(idx, {})

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        framed(phrase)
        self.status[idx] = (code, phrase)

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.set_response_header(idx, "content-type", value)

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        framed(key), framed(value)
        self.headers.setdefault(idx, {})[key] = value


def framed(text: str) -> None:
    """What TorchServe 0.12 needs of a phrase or header to frame it (otf_message_handler): its length
    in characters equal to its length in UTF-8 bytes. Anything else kills the worker (issue 13)."""
    assert isinstance(text, str) and len(text) == len(text.encode("utf-8", "surrogatepass")), \
        f"{text[:80]!r} would desync TorchServe's framing and kill the worker"


def unpacked(built: Built, into: Path) -> Path:
    """What TorchServe unpacks from the .mar: model, manifest, assets, handler modules."""
    with zipfile.ZipFile(built.mar) as z:
        z.extractall(into)
    return into


def load_handler(built: Built, into: Path):
    """The archive's handler class (the one its handler module defines, as TorchServe finds it), initialised."""
    import importlib
    import inspect

    model_dir = unpacked(built, into)
    module = importlib.import_module(built.name)
    (cls,) = [c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == module.__name__
              and hasattr(c, "handle")]
    handler = cls()
    handler.initialize(FakeContext(model_dir, name=built.name))
    return handler

# A heat-dissipation failure record: process - air = 8 K < 8.6 K and speed 1290 < 1380 rpm.
HDF = {"type": "L", "air_temperature_k": 302.5, "process_temperature_k": 310.5,
       "rotational_speed_rpm": 1290, "torque_nm": 52.0, "tool_wear_min": 30}


def zoo_handlers(models: dict[str, Built], factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every zoo model's handler, initialised from its archive (tiny or trained builds)."""
    from maas.export import zoo

    return {n: load_handler(models[n], factory.mktemp(n)) for n in zoo.models()}


@pytest.fixture
def model_dir(tmp_path: Path, tiny_maintenance: Built) -> Path:
    return unpacked(tiny_maintenance, tmp_path / "model_dir")


@pytest.fixture
def maintenance_handler(tmp_path: Path, tiny_maintenance: Built):
    return load_handler(tiny_maintenance, tmp_path / "maintenance")

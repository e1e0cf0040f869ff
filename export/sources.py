"""Where a user's model comes from: an .onnx file, an nn.Module factory, or a torch.export program.

Each source yields what the packaging road needs: the ONNX file (exported where needed), the
I/O spec as far as the source tells it, and for PyTorch sources a reference that computes
PyTorch's outputs for parity.
"""
from __future__ import annotations

import importlib
import logging
import re
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from maas.core.spec import Dim, ModelSpec, TensorSpec
from maas.export.graph_spec import graph_io, merge_declared
from maas.export.onnx_export import (
    ExportError,
    export_onnx,
    external_files,
    flatten_outputs,
)
from maas.export.zipmap import unzip_maps

log = logging.getLogger(__name__)

Reference = Callable[[dict[str, np.ndarray]], list[np.ndarray]]
# Weights past this go to external data: protobuf cannot hold one file over 2 GB.
EXTERNAL_DATA_BYTES = 1_500_000_000


class SourceError(ExportError):
    """The model source cannot be loaded or exported as given."""


@dataclass
class Loaded:
    """A model source, loaded: a PyTorch callable (None for ONNX files) and what it says of its I/O."""

    kind: str  # "onnx" | "torch" | "exported-program"
    default_name: str
    model: Any = None  # nn.Module or ExportedProgram
    inputs: tuple[TensorSpec, ...] = ()  # what the source itself declares (exported programs)
    example: dict[str, np.ndarray] | None = None  # example inputs the source carries
    onnx_file: Path | None = None


# ---- loading ---------------------------------------------------------------------------------
def load_onnx(path: Path) -> Loaded:
    if not path.is_file():
        raise SourceError(f"--onnx {path}: no such file")
    try:
        onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several kinds
        raise SourceError(f"--onnx {path}: not an ONNX model ({type(exc).__name__}: {str(exc)[:200]})") from None
    return Loaded("onnx", path.stem, onnx_file=path)


def load_factory(target: str) -> Loaded:
    """`package.module:function` -> the nn.Module the function returns (the current directory is importable)."""
    import torch

    module_name, _, func_name = target.partition(":")
    if not module_name or not func_name:
        raise SourceError(f"--torch {target!r}: expected MODULE:FUNCTION, e.g. my_pkg.models:make_model")
    sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - the user's module may fail any way
        raise SourceError(f"--torch {target!r}: importing {module_name} failed: {type(exc).__name__}: {exc}") from None
    finally:
        sys.path.remove(str(Path.cwd()))
    factory = getattr(module, func_name, None)
    if not callable(factory):
        raise SourceError(f"--torch {target!r}: {module_name} has no function {func_name!r}")
    try:
        model = factory()
    except Exception as exc:  # noqa: BLE001 - the user's factory may fail any way
        raise SourceError(f"--torch {target!r}: {func_name}() failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, torch.nn.Module):
        raise SourceError(f"--torch {target!r}: {func_name}() returned {type(model).__name__}, not a torch.nn.Module")
    return Loaded("torch", func_name.removeprefix("make_").removeprefix("build_").replace("_", "-"), model.eval())


def load_exported_program(path: Path) -> Loaded:
    """A `torch.export.save`d program: its inputs (names, dtypes, dynamic axes) and example inputs."""
    if not path.is_file():
        raise SourceError(f"--exported-program {path}: no such file")
    program = _load_program(path)
    inputs = _program_inputs(program)
    example = None
    args = getattr(program, "example_inputs", None)
    if args and not args[1] and len(args[0]) == len(inputs):
        example = {t.name: a.detach().cpu().numpy() for t, a in zip(inputs, args[0])}
    return Loaded("exported-program", path.stem, program, inputs, example)


def _load_program(path: Path) -> Any:
    """torch.export.load, importing the modules whose output classes it must rebuild (a program
    returning transformers' ModelOutput needs transformers imported first)."""
    import logging as _logging

    import torch

    imported: set[str] = set()
    while True:
        caught = _Capture()
        export_log = _logging.getLogger("torch.export")
        export_log.addHandler(caught)
        try:
            return torch.export.load(str(path))
        except Exception as exc:  # noqa: BLE001
            needed = re.findall(r"Deserializing ([\w.]+)\.\w+ in pytree is not registered", caught.text)
            module = next((m for m in needed if m not in imported), None)
            if module is None or not _try_import(module):
                raise SourceError(f"--exported-program {path}: not a loadable torch.export program "
                                  f"({type(exc).__name__}: {str(exc)[:200]} {caught.text.strip()[-400:]})") from None
            imported.add(module)
        finally:
            export_log.removeHandler(caught)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.text = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.text += logging.Formatter().format(record) + "\n"  # with the logged exception's text


def _try_import(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False


def _program_inputs(program: Any) -> tuple[TensorSpec, ...]:
    import torch

    user = list(program.graph_signature.user_inputs)
    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    tensors = []
    for name in user:
        val = nodes[name].meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise SourceError(f"exported program input {name!r} is not a tensor")
        dims: list[Dim] = [int(d) if isinstance(d, int) else str(d) for d in val.shape]
        tensors.append(TensorSpec(name, str(val.dtype).removeprefix("torch."), tuple(dims)))
    if tensors and all(t.shape and isinstance(t.shape[0], str) for t in tensors):
        rename = {t.shape[0]: "batch" for t in tensors}  # torch.export calls it s0, s77, ...
        tensors = [replace(t, shape=tuple(rename.get(d, d) if isinstance(d, str) else d for d in t.shape))
                   for t in tensors]
    return tuple(tensors)


# ---- the reference (PyTorch's own answers) ----------------------------------------------------
def reference(loaded: Loaded, spec: ModelSpec) -> Reference | None:
    import torch

    if loaded.model is None:
        return None
    call = loaded.model.module() if loaded.kind == "exported-program" else loaded.model

    def run(inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        args = tuple(torch.from_numpy(np.asarray(inputs[n], order="C")) for n in spec.input_names)
        with torch.no_grad():
            out = call(*args)
        return [t.detach().cpu().numpy() for _, t in flatten_outputs(out)]
    return run


def output_names(loaded: Loaded, spec: ModelSpec, example: dict[str, np.ndarray]) -> tuple[str, ...]:
    """Names for a PyTorch model's outputs from one run: dict keys (ModelOutput fields), else output[_i]."""
    import torch

    call = loaded.model.module() if loaded.kind == "exported-program" else loaded.model
    args = tuple(torch.from_numpy(np.ascontiguousarray(example[n][:2])) for n in spec.input_names)
    with torch.no_grad():
        out = call(*args)
    return tuple(name for name, _ in flatten_outputs(out))


# ---- to one ONNX file ---------------------------------------------------------------------------
def to_onnx(loaded: Loaded, spec: ModelSpec, example: dict[str, np.ndarray], build_dir: Path) -> Path:
    """build_dir/model.onnx: the user's file (with its external weights, flattened beside it) or an export."""
    target = build_dir / "model.onnx"
    if loaded.kind == "onnx":
        _copy_onnx(loaded.onnx_file, target)
        unzip_maps(target)
        return target
    size = _weight_bytes(loaded.model)
    try:
        return export_onnx(loaded.model, spec, example, target, external_data=size > EXTERNAL_DATA_BYTES)
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch.export / the ONNX exporter fail in many ways
        message = str(exc).strip().splitlines()
        raise SourceError(f"exporting {spec.name} to ONNX failed: {type(exc).__name__}: "
                          f"{' '.join(message[:6])[:1200]}") from None


def _weight_bytes(model: Any) -> int:
    import torch

    module = model.module() if isinstance(model, torch.export.ExportedProgram) else model
    return sum(p.numel() * p.element_size() for p in module.state_dict().values() if isinstance(p, torch.Tensor))


def _copy_onnx(source: Path, target: Path) -> Path:
    """Copy the model and its external weights; locations in sub-folders are flattened (a .mar
    unpacks every file into one folder), which rewrites the model file's references."""
    files = external_files(source)
    folder = source.parent.resolve()
    for location in files:
        resolved = (folder / location).resolve()
        if not location or not resolved.is_relative_to(folder):
            raise SourceError(f"{source.name}: external weights point outside its folder: {location!r}")
        if not resolved.is_file():
            raise SourceError(f"{source.name}: external weights file {location!r} is missing")
    flat = {loc: Path(loc).name for loc in files}
    if len(set(flat.values())) != len(flat):
        raise SourceError(f"{source.name}: two external weight files share a name in different folders")
    if any(loc != name for loc, name in flat.items()):
        model = onnx.load(str(source), load_external_data=False)
        for tensor in onnx.external_data_helper._get_all_tensors(model):  # noqa: SLF001
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = flat[entry.value]
        target.write_bytes(model.SerializeToString())
    else:
        shutil.copyfile(source, target)
    for location, name in flat.items():
        shutil.copyfile(folder / location, target.parent / name)
    return target


def graph_spec(path: Path, spec: ModelSpec) -> ModelSpec:
    """The spec with inputs and outputs read off the graph, the declared ones checked against it
    (and keeping their ranges, labels and padding)."""
    inputs, outputs = graph_io(path)
    return replace(spec, inputs=merge_declared(inputs, spec.inputs, "input"),
                   outputs=merge_declared(outputs, spec.outputs, "output"))

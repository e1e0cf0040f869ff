"""Export a torch module to ONE self-contained .onnx file and verify it.

Verification cannot be skipped or downgraded: the full onnx.checker, the I/O contract of
the spec (names, dtypes, dynamic axes), external-data paths, and ONNX Runtime vs PyTorch
parity on batch sizes other than the export one. Every failure is collected first, then
raised as one typed error.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from export.spec import ModelSpec

log = logging.getLogger(__name__)


class ExportError(Exception):
    """An exported model that must not be packaged."""


class CheckerError(ExportError):
    """onnx.checker rejected the model."""


class ExternalDataError(ExportError):
    """The model references weights outside its own file (or outside its folder)."""


class OutputMatchError(ExportError):
    """Tensor names or dtypes differ from the model's spec."""


class ShapeError(ExportError):
    """ONNX Runtime's output shape differs from PyTorch's."""


class AtolError(ExportError):
    """ONNX Runtime's values differ from PyTorch's beyond the spec's tolerance."""


def _as_tensors(spec: ModelSpec, arrays: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(arrays[name])) for name in spec.input_names)


def _take(spec: ModelSpec, arrays: dict[str, np.ndarray], sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """Inputs resized per symbolic axis: `batch` rows cycle through the sample, other axes are cut."""
    out = {}
    for t in spec.inputs:
        a = arrays[t.name]
        for axis, dim in t.dynamic_axes().items():
            if dim not in sizes:
                continue
            if dim == "batch":
                a = np.take(a, np.arange(sizes[dim]) % a.shape[axis], axis=axis)
            else:
                a = np.take(a, np.arange(min(sizes[dim], a.shape[axis])), axis=axis)
        out[t.name] = np.ascontiguousarray(a)
    return out


def export_onnx(module: torch.nn.Module, spec: ModelSpec, sample: dict[str, np.ndarray], path: Path) -> Path:
    """torch.onnx.export (dynamo) with the spec's dynamic axes and opset, weights embedded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    dims: dict[str, Any] = {}
    dynamic_shapes = tuple(
        {axis: dims.setdefault(name, torch.export.Dim(name)) for axis, name in t.dynamic_axes().items()}
        for t in spec.inputs
    )
    args = _as_tensors(spec, _take(spec, sample, {"batch": spec.export_batch_size}))
    with torch.no_grad():
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=spec.input_names,
            output_names=spec.output_names,
            opset_version=spec.opset,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            external_data=False,  # one file: a .mar carries the .onnx, not a sidecar .onnx.data
        )
    model = onnx.load(str(path))
    meta = {"maas.model": spec.name, "maas.version": spec.version, "maas.io_spec": json.dumps(spec.io_dict())}
    for key, value in meta.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    model.doc_string = spec.description
    onnx.save_model(model, str(path), save_as_external_data=False)
    log.info("%s: exported %s (%.1f KiB, opset %d)", spec.name, path, path.stat().st_size / 1024, spec.opset)
    return path


def check_external_data(path: Path) -> None:
    """Refuse weights stored outside the file whose location escapes the model's folder."""
    model = onnx.load(str(path), load_external_data=False)
    folder = path.parent.resolve()
    for tensor in onnx.external_data_helper._get_all_tensors(model):  # noqa: SLF001 (no public iterator)
        if not onnx.external_data_helper.uses_external_data(tensor):
            continue
        location = {e.key: e.value for e in tensor.external_data}.get("location", "")
        target = (folder / location).resolve()
        if not target.is_relative_to(folder):
            raise ExternalDataError(f"{path.name}: tensor {tensor.name!r} points outside its folder: {location!r}")
        raise ExternalDataError(
            f"{path.name}: tensor {tensor.name!r} is stored in {location!r}; maas packages one self-contained file"
        )


def check_contract(path: Path, spec: ModelSpec) -> None:
    """The graph's inputs/outputs have exactly the spec's names, dtypes and ranks."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    problems = []
    for kind, declared, actual in (
        ("input", spec.inputs, session.get_inputs()),
        ("output", spec.outputs, session.get_outputs()),
    ):
        if [t.name for t in declared] != [a.name for a in actual]:
            problems.append(f"{kind} names {[a.name for a in actual]} != spec {[t.name for t in declared]}")
            continue
        for t, a in zip(declared, actual):
            if a.type != f"tensor({_ort_type(t.dtype)})":
                problems.append(f"{kind} {t.name}: dtype {a.type} != spec {t.dtype}")
            if len(a.shape) != len(t.shape):
                problems.append(f"{kind} {t.name}: rank {len(a.shape)} != spec {len(t.shape)}")
            for axis, dim in enumerate(a.shape[: len(t.shape)]):
                if isinstance(t.shape[axis], str) and isinstance(dim, int):
                    problems.append(f"{kind} {t.name}: axis {axis} is fixed at {dim}, spec says dynamic {t.shape[axis]!r}")
    if problems:
        raise OutputMatchError(f"{spec.name}: " + "; ".join(problems))


def _ort_type(dtype: str) -> str:
    return {"float32": "float", "float16": "float16", "int64": "int64", "int32": "int32", "bool": "bool"}[dtype]


def check_parity(path: Path, module: torch.nn.Module, spec: ModelSpec, sample: dict[str, np.ndarray]) -> dict[str, Any]:
    """ORT vs PyTorch on each of spec.parity_cases; returns the max errors."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    module.eval()
    shape_errors, value_errors, per_case = [], [], {}
    for case in spec.parity_cases:
        label = ", ".join(f"{k} {v}" for k, v in case.items())
        inputs = _take(spec, sample, case)
        with torch.no_grad():
            expected = module(*_as_tensors(spec, inputs))
        expected = expected if isinstance(expected, (tuple, list)) else (expected,)
        actual = session.run(spec.output_names, inputs)
        worst = 0.0
        for name, e, a in zip(spec.output_names, expected, actual):
            e = e.numpy()
            if e.shape != a.shape:
                shape_errors.append(f"{label}, {name}: ORT shape {a.shape} != PyTorch {e.shape}")
                continue
            err = float(np.max(np.abs(e.astype(np.float64) - a.astype(np.float64)))) if e.size else 0.0
            worst = max(worst, err)
            if not np.allclose(a, e, atol=spec.atol, rtol=spec.rtol):
                value_errors.append(f"{label}, {name}: max abs error {err:.3g} > atol {spec.atol:g} (rtol {spec.rtol:g})")
        per_case[label] = worst
    if shape_errors:
        raise ShapeError(f"{spec.name}: " + "; ".join(shape_errors + value_errors))
    if value_errors:
        raise AtolError(f"{spec.name}: " + "; ".join(value_errors))
    report = {"cases": list(per_case), "max_abs_error": max(per_case.values()), "per_case": per_case,
              "atol": spec.atol, "rtol": spec.rtol}
    log.info("%s: parity ORT vs PyTorch on %s: max abs error %.3g (atol %g)",
             spec.name, "; ".join(per_case), report["max_abs_error"], spec.atol)
    return report


def verify(path: Path, module: torch.nn.Module, spec: ModelSpec, sample: dict[str, np.ndarray]) -> dict[str, Any]:
    """Every check, in order of cost; raises an ExportError subclass on the first failing kind."""
    check_external_data(path)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise CheckerError(f"{path.name}: onnx.checker: {exc}") from exc
    check_contract(path, spec)
    return check_parity(path, module, spec, sample)

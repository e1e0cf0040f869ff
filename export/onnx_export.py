"""Export a torch module to ONE self-contained .onnx file and verify it.

Verification cannot be skipped or downgraded: the full onnx.checker, the I/O contract of
the spec (names, dtypes, dynamic axes), external-data paths, and ONNX Runtime vs PyTorch
parity on batch sizes other than the export one. Every failure is collected first, then
raised as one typed error.
"""
from __future__ import annotations

import json
import logging
import re
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch

from maas.core.errors import ExportError
from maas.core.spec import ModelSpec
from maas.handlers.dtypes import DTYPES

log = logging.getLogger(__name__)


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


Reference = Callable[[dict[str, np.ndarray]], list[np.ndarray]]  # inputs by name -> outputs in spec order


class DegenerateParityError(ExportError):
    """The outputs barely change with the inputs, so agreeing with PyTorch proves nothing."""


class NonFiniteError(ExportError):
    """The model answers its sample with NaN or infinity."""


class BatchIndependenceError(ExportError):
    """A row's answer depends on the other rows of its batch: TorchServe's batching would change answers."""


def _as_tensors(spec: ModelSpec, arrays: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.asarray(arrays[name], order="C")) for name in spec.input_names)


def _take(spec: ModelSpec, arrays: dict[str, np.ndarray], sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """Inputs resized per symbolic axis: batch rows cycle through the sample, other axes are cut.

    A size keyed "batch" applies to the spec's batch axis, whatever it is called.
    """
    batch = spec.batch_axis
    sizes = {(batch if k == "batch" and batch else k): v for k, v in sizes.items()}
    out = {}
    for t in spec.inputs:
        a = arrays[t.name]
        for axis, dim in t.dynamic_axes().items():
            if dim not in sizes:
                continue
            if dim == batch:
                a = np.take(a, np.arange(sizes[dim]) % a.shape[axis], axis=axis)
            else:
                a = np.take(a, np.arange(min(sizes[dim], a.shape[axis])), axis=axis)
        out[t.name] = np.asarray(a, order="C")  # ascontiguousarray would make a scalar 1-d
    return out


def flatten_outputs(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """A module's outputs as (name, tensor) in the order torch.export flattens them: a tensor is
    `output`, dict keys (and transformers' ModelOutput fields) name theirs, tuples are numbered."""
    if isinstance(value, torch.Tensor):
        return [(prefix or "output", value)]
    if isinstance(value, dict) or hasattr(value, "to_tuple"):  # ModelOutput is an OrderedDict
        items = [(k, v) for k, v in value.items() if v is not None]
        return [pair for k, v in items for pair in flatten_outputs(v, f"{prefix}_{k}" if prefix else str(k))]
    if isinstance(value, (tuple, list)):
        return [pair for i, v in enumerate(value) for pair in flatten_outputs(v, f"{prefix or 'output'}_{i}")]
    raise ExportError(f"the model returned {type(value).__name__}; maas serves tensors (or dicts/tuples of them)")


def module_reference(module: torch.nn.Module, spec: ModelSpec) -> Reference:
    """PyTorch's outputs for the spec's inputs (no grad, eval mode), as numpy, in output order."""
    module.eval()

    def run(inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = module(*_as_tensors(spec, inputs))
        return [t.detach().cpu().numpy() for _, t in flatten_outputs(out)]
    return run


def export_onnx(model: torch.nn.Module | torch.export.ExportedProgram, spec: ModelSpec, sample: dict[str, np.ndarray],
                path: Path, external_data: bool = False) -> Path:
    """torch.onnx.export (dynamo) with the spec's dynamic axes and opset, weights embedded.

    The sample is tiled to spec.export_batch_size rows (at least 2: a batch of 1 can come out
    as a graph fixed at batch 1). An ExportedProgram brings its own dynamic shapes. Weights go
    to one file unless `external_data` (models past protobuf's 2 GB limit).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    exported_program = isinstance(model, torch.export.ExportedProgram)
    dynamic_shapes = None
    if not exported_program:
        model.eval()
        dims: dict[str, Any] = {}
        dynamic_shapes = tuple(
            {axis: dims.setdefault(name, torch.export.Dim(name)) for axis, name in t.dynamic_axes().items()}
            for t in spec.inputs
        )
    args = _as_tensors(spec, _take(spec, sample, {"batch": max(2, spec.export_batch_size)}))
    with torch.no_grad(), warnings.catch_warnings():
        # The exporter's own chatter, not about the model: a deprecation inside torch's pytree, and
        # "axis name X will not be used" when two inputs share one dynamic axis (as declared).
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*The axis name: .* will not be used.*", category=UserWarning)
        torch.onnx.export(
            model,
            args,
            str(path),
            input_names=spec.input_names,
            output_names=spec.output_names,
            opset_version=spec.opset,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            external_data=external_data,  # one file: a .mar carries the .onnx, not a sidecar .onnx.data
            verbose=False,
        )
    model_proto = onnx.load(str(path), load_external_data=False)
    meta = {"maas.model": spec.name, "maas.version": spec.version, "maas.io_spec": json.dumps(spec.io_dict())}
    for key, value in meta.items():
        prop = model_proto.metadata_props.add()
        prop.key, prop.value = key, value
    model_proto.doc_string = spec.description
    path.write_bytes(model_proto.SerializeToString())  # external tensors, if any, keep their files
    log.info("%s: exported %s (%.1f KiB, opset %d)", spec.name, path, path.stat().st_size / 1024, spec.opset)
    return path


def external_files(path: Path) -> list[str]:
    """The files a model's external tensors live in (relative to its folder), sorted."""
    model = onnx.load(str(path), load_external_data=False)
    found = set()
    for tensor in onnx.external_data_helper._get_all_tensors(model):  # noqa: SLF001 (no public iterator)
        if onnx.external_data_helper.uses_external_data(tensor):
            found.add({e.key: e.value for e in tensor.external_data}.get("location", ""))
    return sorted(found)


def check_external_data(path: Path, allow: bool = False) -> list[str]:
    """Refuse external weights whose location escapes the model's folder (or any, unless `allow`);
    returns the external files."""
    folder = path.parent.resolve()
    files = external_files(path)
    for location in files:
        target = (folder / location).resolve()
        if not location or not target.is_relative_to(folder):
            raise ExternalDataError(f"{path.name}: external weights point outside its folder: {location!r}")
        if not allow:
            raise ExternalDataError(f"{path.name}: weights are stored in {location!r}; "
                                    "maas packages one self-contained file")
        if not target.is_file():
            raise ExternalDataError(f"{path.name}: external weights file {location!r} is missing")
    return files


class RuntimeLoadError(ExportError):
    """ONNX Runtime cannot load the model (an IR version or operator it does not know, ...)."""


class RunError(ExportError):
    """The model refused the inputs maas ran it on (sizes it does not accept, say)."""


SIZES_HINT = ("give an example with sizes the model accepts (--example inputs.npz, one array per input), "
              "or fixed sizes in the spec (e.g. --input x:float32:[batch,3,224,224])")


def run_model(run: Callable[[dict[str, np.ndarray]], Any], feeds: dict[str, np.ndarray], engine: str) -> Any:
    """run(feeds), with the engine's own failure (ONNX Runtime's or PyTorch's, from any user's
    model) turned into a RunError naming the input shapes, the engine's words and the fix."""
    try:
        return run(feeds)
    except Exception as exc:  # noqa: BLE001 - each engine raises its own kinds, and a user's model anything
        shapes = ", ".join(f"{name} {list(np.shape(a))}" for name, a in feeds.items())
        words = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise RunError(f"{engine} refused inputs {shapes}: {words[:400]}", hint=SIZES_HINT) from None


def ort_run(session: Any, spec: ModelSpec, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return run_model(lambda f: session.run(spec.output_names, f), feeds, "ONNX Runtime")


def cpu_session(path: Path) -> Any:
    """An ONNX Runtime CPU session on `path`, or a RuntimeLoadError saying why there is none."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # a run the model refuses becomes a RunError; ORT's own log would repeat it
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph/... kinds
        raise RuntimeLoadError(f"ONNX Runtime {ort.__version__} cannot load {path.name}: {ort_words(exc)}",
                               hint="export with an opset and IR version this ONNX Runtime supports (torch.onnx.export's "
                                    "opset_version, or onnx.version_converter) and only standard operators") from None


def ort_words(exc: Exception) -> str:
    """ONNX Runtime's message without its C++ source location and signature (what a user can act on)."""
    text = str(exc).split(" : ")[-1]
    text = re.sub(r"^Load model from \S+ failed:", "", text).strip()
    text = re.sub(r"^/\S+:\d+ .*?\) (?=[A-Z])", "", text)  # "/onnxruntime_src/...cc:256 void onnxruntime::F(...) "
    return text[:400]


def check_contract(path: Path, spec: ModelSpec) -> None:
    """The graph's inputs/outputs have exactly the spec's names, dtypes and ranks, and every axis the
    spec calls dynamic is dynamic in the graph (an exporter can silently fix one at its sample size)."""
    session = cpu_session(path)
    problems = []
    for kind, declared, actual in (
        ("input", spec.inputs, session.get_inputs()),
        ("output", spec.outputs, session.get_outputs()),
    ):
        if [t.name for t in declared] != [a.name for a in actual]:
            problems.append(f"{kind} names {[a.name for a in actual]} != spec {[t.name for t in declared]}")
            continue
        for t, a in zip(declared, actual):
            if a.type != DTYPES[t.dtype].ort:
                problems.append(f"{kind} {t.name}: dtype {a.type} != spec {t.dtype}")
            if len(a.shape) != len(t.shape):
                problems.append(f"{kind} {t.name}: rank {len(a.shape)} != spec {len(t.shape)}")
            for axis, dim in enumerate(a.shape[: len(t.shape)]):
                if isinstance(t.shape[axis], str) and isinstance(dim, int):
                    problems.append(f"{kind} {t.name}: axis {axis} is fixed at {dim}, spec says dynamic {t.shape[axis]!r}")
    if problems:
        raise OutputMatchError(f"{spec.name}: " + "; ".join(problems))


def _tolerance(spec: ModelSpec, expected: np.ndarray) -> float:
    """atol + rtol x the output's own scale (max |value|): float error grows with the magnitude of
    the whole output, not of each element, so logits in the thousands get a fair bound."""
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    return spec.atol + spec.rtol * scale


def check_parity(path: Path, reference: Reference | torch.nn.Module, spec: ModelSpec, sample: dict[str, np.ndarray],
                 cases: tuple[dict[str, int], ...] | None = None) -> dict[str, Any]:
    """ORT vs the reference (PyTorch) on each case (sizes per symbolic axis); returns the errors.

    Each output must satisfy max|ort - torch| <= atol + rtol * max|torch|. Evidence that proves
    nothing is refused: an output that barely varies across the largest case's rows (e.g. random
    weights that make a classifier answer the same for every input) unless the spec lists it in
    constant_outputs.
    """
    if isinstance(reference, torch.nn.Module):
        reference = module_reference(reference, spec)
    session = cpu_session(path)
    shape_errors, value_errors, per_case = [], [], {}
    largest: tuple[int, list[np.ndarray]] | None = None
    for case in cases or spec.parity_cases:
        label = ", ".join(f"{k} {v}" for k, v in case.items()) or "the example"
        inputs = _take(spec, sample, case)
        expected = run_model(reference, inputs, "the PyTorch model")
        actual = ort_run(session, spec, inputs)
        if len(expected) != len(actual):
            raise OutputMatchError(f"{spec.name}: PyTorch returned {len(expected)} outputs, the graph {len(actual)}")
        worst = 0.0
        for name, e, a in zip(spec.output_names, expected, actual):
            if e.shape != a.shape:
                shape_errors.append(f"{label}, {name}: ORT shape {a.shape} != PyTorch {e.shape}")
                continue
            err = float(np.max(np.abs(e.astype(np.float64) - a.astype(np.float64)))) if e.size else 0.0
            allowed = _tolerance(spec, e)
            worst = max(worst, err)
            if not err <= allowed:
                value_errors.append(f"{label}, {name}: max abs error {err:.3g} > atol {spec.atol:g} + rtol {spec.rtol:g}"
                                    f" x scale {allowed - spec.atol:.3g}")
        per_case[label] = worst
        rows = len(next(iter(inputs.values()))) if spec.batch_axis else 0
        if largest is None or rows > largest[0]:
            largest = (rows, expected)
    if shape_errors:
        raise ShapeError(f"{spec.name}: " + "; ".join(shape_errors + value_errors))
    if value_errors:
        raise AtolError(f"{spec.name}: " + "; ".join(value_errors))
    if largest is not None:
        _check_evidence(spec, largest[1])
    report = {"cases": list(per_case), "max_abs_error": max(per_case.values()), "per_case": per_case,
              "atol": spec.atol, "rtol": spec.rtol, "tolerance": "atol + rtol * max|output|"}
    log.info("%s: parity ORT vs PyTorch on %s: max abs error %.3g (atol %g, rtol %g x output scale)",
             spec.name, "; ".join(per_case), report["max_abs_error"], spec.atol, spec.rtol)
    return report


def _check_evidence(spec: ModelSpec, expected: list[np.ndarray]) -> None:
    """Outputs must vary across rows by much more than the tolerance, else parity is no evidence."""
    flat = []
    for name, e in zip(spec.output_names, expected):
        if name in spec.constant_outputs or e.ndim == 0 or e.shape[0] < 2 or not np.issubdtype(e.dtype, np.number):
            continue
        rows = e.reshape(e.shape[0], -1).astype(np.float64)
        spread = float(np.max(rows.max(axis=0) - rows.min(axis=0))) if rows.size else 0.0
        allowed = _tolerance(spec, e)
        if spread <= 10 * allowed:
            flat.append(f"{name} (spread {spread:.3g} across {e.shape[0]} inputs, tolerance {allowed:.3g})")
    if flat:
        raise DegenerateParityError(
            f"{spec.name}: parity with PyTorch proves nothing for output(s) that hardly change with the input: "
            f"{'; '.join(flat)}. Are the weights random or untrained? Give inputs that exercise the model "
            "(--example), or list the output under parity.constant_outputs if it is constant by design")


def check_batch_independence(path: Path, spec: ModelSpec, sample: dict[str, np.ndarray], rows: int = 4) -> float:
    """Each row answered in a batch equals that row answered alone: TorchServe batches requests
    along the batch axis, so a model whose rows interact would change answers. Returns the max error."""
    if not spec.batch_axis:
        return 0.0
    session = cpu_session(path)
    batch = _take(spec, sample, {"batch": rows})
    together = ort_run(session, spec, batch)
    worst, problems = 0.0, []
    for i in range(rows):
        alone = ort_run(session, spec, {k: v[i:i + 1] for k, v in batch.items()})
        for name, t, a in zip(spec.output_names, together, alone):
            if t.ndim == 0 or t.shape[0] != rows:
                problems.append(f"output {name} has shape {t.shape}: no batch axis of {rows} rows")
                continue
            err = float(np.max(np.abs(t[i:i + 1].astype(np.float64) - a.astype(np.float64)))) if a.size else 0.0
            worst = max(worst, err)
            if not err <= _tolerance(spec, a):  # NaN is never within it
                problems.append(f"row {i} of output {name} differs by {err:.3g} between a batch of {rows} and alone")
    if problems:
        raise BatchIndependenceError(f"{spec.name}: " + "; ".join(dict.fromkeys(problems)) + _batch_names_hint(path))
    return worst


def _batch_names_hint(path: Path) -> str:
    """Where the graph names its inputs' first axes differently (CLIP's text_batch_size and
    image_batch_size), they may be two batches, not one: how to serve it so."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    names = {v.name: v.type.tensor_type.shape.dim[0].dim_param for v in graph.input
             if v.name not in initializers and v.type.tensor_type.shape.dim}
    if len(set(names.values())) < 2:
        return ""
    return (f". The graph names its inputs' first axes differently ({', '.join(f'{k}: {v!r}' for k, v in names.items())}): "
            "if they are independent batches, declare them so in a spec file (`maas package --write-spec maas.yaml`, "
            "give each input's axis 0 its own name, then `--spec maas.yaml`); the model is then served unbatched")


def batch_variance(path: Path, spec: ModelSpec, sample: dict[str, np.ndarray], probes: int = 3,
                   seed: int = 0) -> dict[str, Any]:
    """How far one row's answer moves with what TorchServe batches it with. Each probe row is
    answered alone, then at a random position among random neighbours (other sample rows) at
    batch sizes up to the model's batchSize; and twice at the fixed shape (batchSize rows, other
    neighbours, another position), the handler's fixed_batch_rows mode. Max abs differences."""
    if not spec.batch_axis:
        return {}
    session, rng = cpu_session(path), np.random.default_rng(seed)
    rows, top = len(sample[spec.input_names[0]]), max(2, spec.serving.batch_size)
    sizes = sorted({2, 3, 4, 8, top} & set(range(2, top + 1)))
    by_size, fixed = dict.fromkeys(sizes, 0.0), 0.0

    def answer_in(i: int, size: int) -> list[np.ndarray]:
        neighbours = list(rng.integers(0, rows, size - 1))
        position = int(rng.integers(0, size))
        order = neighbours[:position] + [i] + neighbours[position:]
        outs = ort_run(session, spec, {k: v[order] for k, v in sample.items()})
        return [o[position:position + 1] for o in outs]

    def gap(a: list[np.ndarray], b: list[np.ndarray]) -> float:
        return max((float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) if x.size else 0.0)
                   for x, y in zip(a, b))

    for i in range(min(probes, rows)):
        alone = ort_run(session, spec, {k: v[i:i + 1] for k, v in sample.items()})
        for size in sizes:
            by_size[size] = max(by_size[size], gap(answer_in(i, size), alone))
        fixed = max(fixed, gap(answer_in(i, top), answer_in(i, top)))
    return {"alone_vs_batched_max_abs": max(by_size.values()), "by_batch_size": {str(k): v for k, v in by_size.items()},
            "fixed_shape_max_abs": fixed, "fixed_shape_rows": top}


def batch_invariance(spec: ModelSpec, parity: dict[str, Any]) -> ModelSpec:
    """serving.fixed_batch_rows from the measured batch variance, when the spec leaves it at 0.

    Kept at 0 (batch freely) when a row's answer moves with its batch neighbours by no more than
    the tolerance parity already accepts against PyTorch (atol): batching then changes answers
    less than exporting did, and costs nothing. Set to 1 when it moves more: every row runs
    alone, so a request's answer is bit-identical whatever traffic it shares a batch with, at
    the cost of batching's throughput. The choice and its reason go into the manifest."""
    variance = parity.get("batch_variance")
    if not variance or spec.serving.fixed_batch_rows:
        return spec
    moved, tolerance = variance["alone_vs_batched_max_abs"], spec.atol
    if moved <= tolerance:
        variance["default"] = (f"fixed_batch_rows 0: answers move by {moved:.2g} with their neighbours, within "
                               f"the parity tolerance {tolerance:g}; batching is kept")
        return spec
    variance["default"] = (f"fixed_batch_rows 1: answers move by {moved:.2g} with their neighbours, more than the "
                           f"parity tolerance {tolerance:g}; each row runs alone (bit-identical whatever the traffic)")
    log.info("%s: %s", spec.name, variance["default"])
    return replace(spec, serving=replace(spec.serving, fixed_batch_rows=1))


def runs_finite(path: Path, spec: ModelSpec, sample: dict[str, np.ndarray]) -> bool:
    """ONNX Runtime answers the sample with finite numbers (what can be checked without a reference);
    NonFiniteError when it does not: a model that answers NaN is not packaged on a warning."""
    outputs = ort_run(cpu_session(path), spec, sample)
    bad = [name for name, o in zip(spec.output_names, outputs)
           if np.issubdtype(o.dtype, np.floating) and not np.isfinite(o).all()]
    if bad:
        raise NonFiniteError(f"{spec.name}: output {bad[0]} answers the sample with NaN or infinity. If the sample "
                             "lies outside what the model takes, give its inputs' ranges in a spec "
                             "(inputs: [{name, range: [low, high]}]) or an example of your own (--example)")
    return True


def verify(path: Path, reference: Reference | torch.nn.Module | None, spec: ModelSpec, sample: dict[str, np.ndarray],
           allow_external_data: bool = False, cases: tuple[dict[str, int], ...] | None = None) -> dict[str, Any]:
    """Every check, in order of cost; raises an ExportError subclass on the first failing kind.

    Without a reference (an ONNX file has no PyTorch source) parity is replaced by a finite-output
    run; batch independence is checked either way.
    """
    check_external_data(path, allow=allow_external_data)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise CheckerError(f"{path.name}: onnx.checker: {exc}") from exc
    check_contract(path, spec)
    if reference is None:
        report: dict[str, Any] = {"reference": None, "note": "an ONNX file has no PyTorch source to compare with",
                                  "finite_outputs": runs_finite(path, spec, sample)}
    else:
        report = check_parity(path, reference, spec, sample, cases)
    report["batch_independence_max_abs_error"] = check_batch_independence(path, spec, sample)
    report["batch_variance"] = batch_variance(path, spec, sample)
    return report

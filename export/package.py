"""`maas package`: a user's own model -> a verified, served-ready archive in the model store.

    source (--onnx FILE | --torch MODULE:FACTORY | --exported-program FILE)
      + spec (maas.yaml and/or --input flags and --example inputs.npz; the rest read off the graph)
      -> build/<archive>/model.onnx     exported where needed (dynamic axes as declared, batch >= 2)
      -> verify                         onnx.checker, ONNX Runtime loads it, I/O = spec (dynamic axes
                                        really dynamic), parity vs PyTorch on 3 batch sizes with a
                                        tolerance scaled to the outputs, evidence that is not degenerate,
                                        each row answered alone = answered in a batch
      -> manifest.json (sha256 of the model and its external weights) + model-config.yaml
      -> model_store/<name>.mar  (or <name>-<version>.mar), served by handlers/tensor.py or the
         user's own handler
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from maas.core.bodies import savez
from maas.core.sampling import draw
from maas.core.spec import ATOL, GENERIC_HANDLER, RTOL, ModelSpec, ServingSpec, TensorSpec
from maas.core.spec_file import (
    SpecError,
    check_model_name,
    parse_input_flag,
    read_spec_file,
    spec_yaml,
)
from maas.export import archive, onnx_export, sources

log = logging.getLogger(__name__)

DEFAULT_VERSION = "1.0"
SAMPLE_ROWS = 16
MAX_EXAMPLE_REQUEST_BYTES = 64 * 1024


@dataclass
class PackageOptions:
    """What `maas package` was given (exactly one of onnx, torch, exported_program)."""

    onnx: Path | None = None
    torch: str | None = None
    exported_program: Path | None = None
    name: str | None = None
    version: str | None = None
    spec_file: Path | None = None
    example: Path | None = None
    inputs: tuple[str, ...] = ()
    handler: Path | None = None
    extra_files: tuple[Path, ...] = ()
    samples: Path | None = None
    seed: int = 0


@dataclass
class Packaged:
    name: str
    version: str
    mar: Path | None
    build_dir: Path
    spec: ModelSpec
    manifest: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


class Steps:
    """'[3/7] verify ... (12.4 s)': the long steps of packaging, logged as they start."""

    def __init__(self, name: str, total: int) -> None:
        self.name, self.total, self.done, self.started = name, total, 0, time.perf_counter()

    def __call__(self, what: str) -> None:
        self.done += 1
        log.info("%s [%d/%d] %s (%.1f s)", self.name, self.done, self.total, what, time.perf_counter() - self.started)


def load_source(opts: PackageOptions) -> sources.Loaded:
    given = [k for k in ("onnx", "torch", "exported_program") if getattr(opts, k)]
    if len(given) != 1:
        raise SpecError("give exactly one model source: --onnx FILE, --torch MODULE:FACTORY or --exported-program FILE")
    if opts.onnx:
        return sources.load_onnx(Path(opts.onnx))
    if opts.torch:
        return sources.load_factory(opts.torch)
    return sources.load_exported_program(Path(opts.exported_program))


def read_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as exc:  # noqa: BLE001
        raise SpecError(f"{what} {path}: not a .npz of arrays ({type(exc).__name__}: {exc})") from None


def declared_spec(opts: PackageOptions, loaded: sources.Loaded) -> ModelSpec:
    """The spec from the spec file, the flags and the source, before the graph is read."""
    fields = read_spec_file(Path(opts.spec_file)) if opts.spec_file else {}
    name = check_model_name(opts.name or fields.pop("name", None) or loaded.default_name,
                            "model name (give one with --name)")
    fields.pop("name", None)
    version = opts.version or fields.pop("version", None) or DEFAULT_VERSION
    fields.pop("version", None)
    check_model_name(version, "version")
    inputs = tuple(parse_input_flag(f) for f in opts.inputs) or fields.pop("inputs", None) or loaded.inputs
    fields.pop("inputs", None)
    handler_file = str(opts.handler) if opts.handler else fields.pop("handler_file", None)
    fields.pop("handler_file", None)
    if opts.handler and not Path(opts.handler).is_file():
        raise SpecError(f"--handler {opts.handler}: no such file")
    if handler_file and Path(handler_file).is_file():
        support = sorted(p.name for p in archive.handler_support(Path(handler_file)))
        if Path(handler_file).name in {GENERIC_HANDLER, *support}:
            raise SpecError(f"handler {handler_file}: call it something else than the support modules {support}")
    extra = tuple(str(p) for p in opts.extra_files) + tuple(fields.pop("extra_files", ()))
    for f in opts.extra_files:
        if not Path(f).is_file():
            raise SpecError(f"--extra-file {f}: no such file")
    samples = str(opts.samples) if opts.samples else fields.pop("samples", None)
    fields.pop("samples", None)
    return ModelSpec(
        name=name, version=version, description=fields.pop("description", f"{name} packaged by maas"),
        inputs=tuple(inputs), outputs=fields.pop("outputs", ()),
        handler=Path(handler_file).name if handler_file else GENERIC_HANDLER,
        atol=fields.pop("atol", ATOL), rtol=fields.pop("rtol", RTOL), export_batch_size=2,
        serving=fields.pop("serving", ServingSpec()),
        handler_file=handler_file, extra_files=extra, samples=samples, **fields)


def synthesize(spec: ModelSpec, rows: int, seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Inputs drawn within the spec's ranges (export.sampling): the example when none is given."""
    return draw(spec.io_dict()["inputs"], spec.batch_axis, rows, seed, sizes)


def _inputs_from_example(example: dict[str, np.ndarray]) -> tuple[TensorSpec, ...]:
    """Declared by an example alone: axis 0 is the batch axis, the rest fixed at the example's sizes."""
    return tuple(TensorSpec(n, str(a.dtype), ("batch", *a.shape[1:])) for n, a in example.items())


def example_inputs(opts: PackageOptions, loaded: sources.Loaded, spec: ModelSpec,
                   path: Path | None = None) -> tuple[ModelSpec, dict]:
    """(spec with inputs, example arrays): from --example, the source, or drawn from the spec at
    sizes the model accepts (`path`: the ONNX file, when the source is one)."""
    example = read_npz(Path(opts.example), "--example") if opts.example else loaded.example
    if example is not None:
        if not spec.inputs:
            spec = replace(spec, inputs=_inputs_from_example(example))
        missing = [t.name for t in spec.inputs if t.name not in example]
        if missing or len(example) != len(spec.inputs):
            raise SpecError(f"the example has arrays {sorted(example)}; the model's inputs are {spec.input_names}")
        for t in spec.inputs:
            a = example[t.name]
            if a.ndim != len(t.shape) or any(isinstance(d, int) and d != n for d, n in zip(t.shape, a.shape)):
                raise SpecError(f"example {t.name}: shape {list(a.shape)} does not fit the declared {list(t.shape)}")
        example = {t.name: np.asarray(example[t.name], order="C").astype(t.dtype) for t in spec.inputs}
        return spec, example
    if not spec.inputs:
        raise SpecError("declare the model's inputs: --example inputs.npz (one array per input), "
                        "--input NAME:DTYPE:[DIMS] (e.g. pixels:float32:[batch,3,224,224]) or inputs: in the spec")
    return spec, drawn_example(spec, opts.seed, _runner(loaded, spec, path))


# Sizes tried, in order, for every dynamic axis but the batch axis when maas must draw inputs:
# 8 suits most tabular and token models, 32-multiples and 224 convolutional vision models (stride
# 32), 1024 and 16000 audio front ends (a 16 kHz second). The spatial axes of an image-like input
# ([N, 1|3, H, W]) try strides of 32 and common resolutions instead. A row over MAX_PROBE_ELEMENTS
# is skipped.
SIZE_CANDIDATES = (8, 32, 64, 224, 1024, 16000)
IMAGE_SIZE_CANDIDATES = (32, 64, 224, 320, 640)
MAX_PROBE_ELEMENTS = 1 << 22


def image_axes(spec: ModelSpec) -> set[str]:
    """Symbolic axes that are an image's height or width: a 4-d float input with 1 or 3 channels."""
    return {d for t in spec.inputs if len(t.shape) == 4 and t.dtype.startswith("float") and t.shape[1] in (1, 3)
            for d in t.shape[2:] if isinstance(d, str)}


def size_candidates(spec: ModelSpec, axes: list[str]) -> list[dict[str, int]]:
    """Sizes for `axes`, one dict per attempt: each axis walks its own modality's list."""
    images = image_axes(spec)
    lists = {a: IMAGE_SIZE_CANDIDATES if a in images else SIZE_CANDIDATES for a in axes}
    attempts = max(len(v) for v in lists.values())
    return [{a: v[min(i, len(v) - 1)] for a, v in lists.items()} for i in range(attempts)]


def drawn_example(spec: ModelSpec, seed: int, run: Any) -> dict[str, np.ndarray]:
    """Inputs drawn within the spec, at the first candidate sizes the model runs on (`run`: the
    ONNX Runtime session or PyTorch model); a RunError naming every size tried when none runs."""
    axes = sorted({d for t in spec.inputs for d in t.shape if isinstance(d, str) and d != spec.batch_axis})
    if not axes or run is None:
        return synthesize(spec, SAMPLE_ROWS, seed)
    refused: list[tuple[str, str]] = []
    for sizes in size_candidates(spec, axes):
        tried = ", ".join(f"{a}={n}" for a, n in sizes.items()) if len(set(sizes.values())) > 1 \
            else f"{', '.join(axes)} = {sizes[axes[0]]}"
        probe = synthesize(spec, 2, seed, sizes)
        per_row = max(a[0].size if spec.batch_axis else a.size for a in probe.values())
        if per_row > MAX_PROBE_ELEMENTS:
            break
        try:
            onnx_export.run_model(run, probe, "the model")
        except onnx_export.RunError as exc:
            refused.append((tried, str(exc).split(": ", 1)[-1][:200]))
            continue
        if refused:
            log.info("%s: the model runs with %s (it refused %s)", spec.name, tried, "; ".join(t for t, _ in refused))
        return synthesize(spec, SAMPLE_ROWS, seed, sizes)
    raise onnx_export.RunError(
        f"{spec.name}: maas drew inputs for the dynamic axes at sizes {'; '.join(t for t, _ in refused)}, "
        f"and the model refused each ({': '.join(refused[0]) if refused else ''})",
        hint=onnx_export.SIZES_HINT)


def _runner(loaded: sources.Loaded, spec: ModelSpec, path: Path | None) -> Any:
    """What probing runs: the ONNX file in ONNX Runtime, else the PyTorch model (None: nothing to run)."""
    if loaded.kind == "onnx" and path is not None:
        session = onnx_export.cpu_session(path)
        return lambda feeds: session.run(None, feeds)
    return sources.reference(loaded, spec)




def varied(spec: ModelSpec, example: dict[str, np.ndarray], seed: int, rows: int = 8) -> dict[str, np.ndarray]:
    """The example, with drawn rows added when it has fewer than 4 distinct ones: parity on copies of
    one input cannot tell a model that answers everything alike from one that works."""
    if spec.batch_axis is None:
        return example
    distinct = len({b"".join(example[n][i].tobytes() for n in spec.input_names)
                    for i in range(len(example[spec.input_names[0]]))})
    if distinct >= 4:
        return example
    sizes = {d: example[t.name].shape[ax] for t in spec.inputs for ax, d in enumerate(t.shape)
             if isinstance(d, str) and d != spec.batch_axis}
    drawn = synthesize(spec, rows, seed, sizes)
    log.info("%s: the example has %d distinct row(s); parity also runs on %d drawn within the spec", spec.name,
             distinct, rows)
    return {n: np.concatenate([example[n], drawn[n]]) for n in spec.input_names}


def unbatched(spec: ModelSpec) -> ModelSpec:
    """A graph whose inputs share no dynamic leading axis (a state tensor batched on axis 1, a
    scalar, fixed sizes) is served as it is: each request one run with its tensors exactly as
    given, so TorchServe's batch size is 1 (a larger one would only add its batch delay)."""
    shapes = "; ".join(f"{t.name} {list(t.shape)}" for t in spec.inputs)
    log.info("%s: no dynamic batch axis shared by every input (%s): served unbatched, batch size 1, each "
             "request a whole set of tensors; to batch, export with a dynamic first axis "
             "(torch.export: dynamic_shapes={'<input>': {0: torch.export.Dim('batch')}})", spec.name, shapes)
    return replace(spec, serving=replace(spec.serving, batch_size=1))


def parity_cases(spec: ModelSpec, example: dict[str, np.ndarray]) -> tuple[dict[str, int], ...]:
    """Three batch sizes other than the export's (2), and other symbolic axes cut to 2/3 in one case
    (a model without a batch axis: the example as it is)."""
    if spec.batch_axis is None:
        return ({},)
    others = {}
    for t in spec.inputs:
        for axis, dim in t.dynamic_axes().items():
            if dim != spec.batch_axis:
                others[dim] = max(1, example[t.name].shape[axis] * 2 // 3)
    return ({"batch": 1}, {"batch": 3, **others}, {"batch": 8})


def _samples(opts: PackageOptions, spec: ModelSpec, example: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    samples = read_npz(Path(spec.samples), "samples") if spec.samples else example
    missing = [n for n in spec.input_names if n not in samples]
    if missing:
        raise SpecError(f"samples {spec.samples}: missing arrays for inputs {missing}")
    if spec.batch_axis is None:  # one whole set of tensors, as a request sends them
        return {n: np.asarray(samples[n], order="C").astype(t.dtype) for n, t in zip(spec.input_names, spec.inputs)}
    rows = min(len(samples[n]) for n in spec.input_names)
    per_row = sum(samples[n][0].nbytes for n in spec.input_names) or 1
    keep = max(1, min(rows, 64, (8 << 20) // per_row))
    return {n: np.ascontiguousarray(samples[n][:keep]).astype(t.dtype) for n, t in zip(spec.input_names, spec.inputs)}


def example_request(spec: ModelSpec, samples: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """The first sample as one item's request body for the generic handler (None when it would be large)."""
    body = {"inputs": {n: (samples[n][0] if spec.batch_axis else samples[n]).tolist() for n in spec.input_names}}
    return body if len(json.dumps(body)) <= MAX_EXAMPLE_REQUEST_BYTES else None


def package_model(opts: PackageOptions, build_root: Path, model_store: Path, write_spec: Path | None = None) -> Packaged:
    """The whole road; with `write_spec`, stop after writing the spec read off the graph."""
    started = time.perf_counter()
    loaded = load_source(opts)
    spec = declared_spec(opts, loaded)
    step = Steps(f"package {spec.name}", 3 if write_spec else 4)
    step(f"load {loaded.kind} source")
    archive_name = archive.archive_name(spec.name, opts.version)  # --version stamps <name>-<version>.mar
    build_dir = build_root / archive_name
    if build_dir.exists():
        shutil.rmtree(build_dir)
    (build_dir / "assets").mkdir(parents=True)

    if loaded.kind == "onnx":
        step("copy the ONNX file and read its inputs and outputs")
        path = sources.to_onnx(loaded, spec, {}, build_dir)
        spec = sources.graph_spec(path, spec)
        spec, example = example_inputs(opts, loaded, spec, path)
    else:
        spec, example = example_inputs(opts, loaded, spec)
        own = sources.output_names(loaded, spec, example)
        if spec.outputs and set(own) == set(spec.output_names):
            # Declared outputs name the module's outputs by position; a dict's (ModelOutput's) keys say
            # which is which: declared in another order, they would be served swapped
            spec = replace(spec, outputs=tuple(next(t for t in spec.outputs if t.name == n) for n in own))
        named = spec if spec.outputs else replace(spec, outputs=tuple(TensorSpec(n, "float32", ()) for n in own))
        step("export to ONNX (torch.onnx dynamo exporter)")
        path = sources.to_onnx(loaded, named, example, build_dir)
        spec = sources.graph_spec(path, spec)
    if spec.batch_axis is None:
        spec = unbatched(spec)
    spec = replace(spec, parity_cases=parity_cases(spec, example))
    if write_spec is not None:
        write_spec.write_text(spec_yaml(spec))
        step(f"wrote {write_spec}")
        return Packaged(spec.name, spec.version, None, build_dir, spec, seconds=time.perf_counter() - started)

    reference = sources.reference(loaded, spec)
    example = varied(spec, example, opts.seed)
    step("verify: onnx.checker, ONNX Runtime, I/O contract, " +
         ("parity vs PyTorch" if reference else "a run of the example") + ", batch independence")
    parity = onnx_export.verify(path, reference, spec, example, allow_external_data=True)
    spec = onnx_export.batch_invariance(spec, parity)
    external = onnx_export.external_files(path)

    step(f"manifest, model-config.yaml and {archive_name}.mar")
    samples = _samples(opts, spec, example)
    savez(build_dir / "assets" / "samples.npz", samples)
    extra_manifest = {
        "source": {"kind": loaded.kind, "from": str(opts.onnx or opts.torch or opts.exported_program)},
        "samples": "samples.npz",
        "example_request": example_request(spec, samples),
        "packaged_by": "maas package",
    }
    mar = archive.archive_model(build_dir, spec, path, model_store, archive_name, parity=parity, metrics={},
                                extra_manifest=extra_manifest, assets=[Path(f) for f in spec.extra_files], external=external)
    manifest = json.loads((build_dir / "manifest.json").read_text())
    return Packaged(spec.name, spec.version, mar, build_dir, spec, manifest, time.perf_counter() - started)

"""The model spec a user keeps beside their model (`maas.yaml`): read, validate, write.

    name: resnet-tiny                 # letters, digits, ".", "_", "-"
    version: "1.0"
    description: A tiny ResNet image classifier
    inputs:
      - name: pixel_values
        dtype: float32                # handlers/dtypes.py: float32, int64, int32, uint8, bool, ...
        shape: [batch, 3, 32, 32]     # a name marks a dynamic (symbolic) axis
        range: [-3.0, 3.0]            # optional: accepted values
        pad: 0                        # optional: pad symbolic axes with this to batch unequal requests
    outputs:
      - name: logits
        dtype: float32
        shape: [batch, 10]
        labels: labels.txt            # optional: a file (one per line) or a list
        top_k: 3
        scores: softmax               # raw | softmax | sigmoid
    serving: {batch_size: 8, max_batch_delay_ms: 5, workers: 1, response_timeout_s: 30}
    parity: {atol: 1.0e-4, rtol: 1.0e-3, constant_outputs: []}
    handler: my_handler.py            # optional: subclass of TensorHandler / OrtHandler
    extra_files: [tokenizer.json]     # optional: travel inside the archive
    samples: samples.npz              # optional: inputs for load tests and variant costs

Every problem is collected, then raised at once as one SpecError naming the file, line and key.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from maas.core.errors import SpecError
from maas.core.names import NAME, name_problem
from maas.core.spec import MODEL_CONFIG_KEYS, ModelSpec, ServingSpec, TensorSpec
from maas.handlers.dtypes import DTYPES

AXIS = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
TOP = {"name", "version", "description", "inputs", "outputs", "serving", "parity", "handler", "extra_files",
       "samples", "opset"}
TENSOR = {"name", "dtype", "shape", "description", "range", "pad", "labels", "top_k", "scores"}
SERVING = {"workers", *MODEL_CONFIG_KEYS}  # `workers` sets min_workers and max_workers at once
PARITY = {"atol", "rtol", "constant_outputs"}
SCORES = ("raw", "softmax", "sigmoid")
ALIASES = {"float": "float32", "double": "float64", "half": "float16", "int": "int64", "long": "int64"}


def check_model_name(name: str, what: str = "model name") -> str:
    """Names maas builds URLs and file names from (maas.names): letters, digits, '.', '_', '-'."""
    problem = name_problem(name, what)
    if problem:
        raise SpecError(problem)
    return name


@dataclass
class _Lines:
    """Line numbers of the YAML nodes, by key path ("inputs[0].dtype")."""

    file: str
    lines: dict[str, int]

    def at(self, path: str) -> str:
        while path and path not in self.lines:
            path = path.rsplit(".", 1)[0] if "." in path else (path.rsplit("[", 1)[0] if "[" in path else "")
        line = self.lines.get(path)
        return f"{self.file}:{line}" if line else self.file


def _python(node: yaml.Node, path: str, lines: dict[str, int]) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out = {}
        for key_node, value_node in node.value:
            key = key_node.value
            out[key] = _python(value_node, f"{path}.{key}" if path else key, lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_python(v, f"{path}[{i}]", lines) for i, v in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))  # a scalar, typed as safe_load types it


def load_yaml(path: Path) -> tuple[dict[str, Any], _Lines]:
    text = Path(path).read_text()
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    lines: dict[str, int] = {}
    data = _python(root, "", lines) if root is not None else {}
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a model spec is a YAML mapping (name:, inputs:, outputs:, ...)")
    return data, _Lines(str(path), lines)


class _Checker:
    def __init__(self, where: _Lines) -> None:
        self.where, self.problems = where, []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{self.where.at(path)}: {path}: {message}")

    def keys(self, data: dict[str, Any], allowed: set[str], path: str) -> None:
        for key in data:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(sorted(allowed))}"
                self.fail(f"{path}.{key}" if path else str(key), f"unknown key{hint}")

    def number(self, value: Any, path: str, positive: bool = False, integer: bool = False) -> Any:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (not integer or isinstance(value, int))
        if not ok or (positive and value <= 0):
            self.fail(path, f"must be a {'positive ' if positive else ''}{'integer' if integer else 'number'}, got {value!r}")
            return None
        return value


def _shape(c: _Checker, value: Any, path: str) -> tuple | None:
    if not isinstance(value, list) or not value:
        c.fail(path, f"must be a list of sizes and axis names, e.g. [batch, 3, 224, 224]; got {value!r}")
        return None
    out = []
    for i, d in enumerate(value):
        if isinstance(d, bool) or not (isinstance(d, int) and d > 0 or isinstance(d, str) and AXIS.match(d)):
            c.fail(f"{path}[{i}]", f"must be a positive size or an axis name (letters, digits, _), got {d!r}")
            return None
        out.append(d)
    return tuple(out)


def _labels(c: _Checker, value: Any, path: str, base: Path) -> tuple[str, ...] | None:
    if isinstance(value, list) and all(isinstance(v, (str, int)) for v in value):
        return tuple(str(v) for v in value)
    if isinstance(value, str):
        file = base / value
        if not file.is_file():
            c.fail(path, f"labels file {file} does not exist")
            return None
        return tuple(line.strip() for line in file.read_text().splitlines() if line.strip())
    c.fail(path, f"must be a labels file (one label per line) or a list of labels, got {value!r}")
    return None


def _tensor(c: _Checker, raw: Any, path: str, kind: str, base: Path) -> TensorSpec | None:
    if not isinstance(raw, dict):
        c.fail(path, f"each {kind} is a mapping with name, dtype and shape")
        return None
    c.keys(raw, TENSOR, path)
    for key in ("name", "dtype", "shape"):
        if key not in raw:
            c.fail(path, f"missing required key {key!r}")
    name, dtype = raw.get("name"), raw.get("dtype")
    if "name" in raw and (not isinstance(name, str) or not name):
        c.fail(f"{path}.name", f"must be a tensor name, got {name!r}")
    if "dtype" in raw and dtype not in DTYPES:
        close = [ALIASES[dtype]] if dtype in ALIASES else difflib.get_close_matches(str(dtype), list(DTYPES), n=1)
        c.fail(f"{path}.dtype", f"{dtype!r} is not a dtype" + (f"; did you mean {close[0]!r}?" if close
                                                                    else f"; one of {', '.join(DTYPES)}"))
    shape = _shape(c, raw["shape"], f"{path}.shape") if "shape" in raw else None
    options: dict[str, Any] = {}
    if kind == "input":
        for key in ("labels", "top_k", "scores"):
            if key in raw:
                c.fail(f"{path}.{key}", "is an output option")
        if "range" in raw:
            r = raw["range"]
            if (not isinstance(r, list) or len(r) != 2 or any(c.number(v, f"{path}.range") is None for v in r)
                    or r[0] > r[1]):
                c.fail(f"{path}.range", f"must be [low, high] with low <= high, got {r!r}")
            else:
                options["range"] = (float(r[0]), float(r[1]))
        if "pad" in raw and c.number(raw["pad"], f"{path}.pad") is not None:
            options["pad"] = raw["pad"]
    else:
        for key in ("range", "pad"):
            if key in raw:
                c.fail(f"{path}.{key}", "is an input option")
        if "labels" in raw:
            options["labels"] = _labels(c, raw["labels"], f"{path}.labels", base)
        if "top_k" in raw and c.number(raw["top_k"], f"{path}.top_k", positive=True, integer=True) is not None:
            options["top_k"] = raw["top_k"]
        if "scores" in raw:
            if raw["scores"] not in SCORES:
                c.fail(f"{path}.scores", f"must be one of {', '.join(SCORES)}, got {raw['scores']!r}")
            else:
                options["scores"] = raw["scores"]
        if ("top_k" in raw or "scores" in raw) and "labels" not in raw:
            c.fail(path, "top_k and scores need labels")
    if not isinstance(name, str) or dtype not in DTYPES or shape is None:
        return None
    return TensorSpec(name, dtype, shape, str(raw.get("description", "")), **options)


def _serving(c: _Checker, raw: Any) -> ServingSpec:
    if not isinstance(raw, dict):
        c.fail("serving", "must be a mapping, e.g. {batch_size: 8, max_batch_delay_ms: 5, workers: 1}")
        return ServingSpec()
    c.keys(raw, SERVING, "serving")
    values = {}
    may_be_zero = ("intra_op_threads", "fixed_batch_rows")  # 0: derived / off
    for key, value in raw.items():
        if key in SERVING and c.number(value, f"serving.{key}", positive=key not in may_be_zero, integer=True) is not None:
            values[key] = value
    workers = values.pop("workers", None)
    if workers is not None:
        values.setdefault("min_workers", workers)
        values.setdefault("max_workers", workers)
    if "min_workers" in values and "max_workers" not in values:  # min_workers: 3 alone means at least 3
        values["max_workers"] = max(values["min_workers"], ServingSpec().max_workers)
    if values.get("min_workers", 1) > values.get("max_workers", values.get("min_workers", 1)):
        c.fail("serving.min_workers", "must not exceed max_workers")
    return ServingSpec(**values)


def from_dict(data: dict[str, Any], where: _Lines, base: Path, require_io: bool = True) -> dict[str, Any]:
    """The ModelSpec fields a spec mapping declares (validated); raises SpecError listing every problem."""
    c = _Checker(where)
    c.keys(data, TOP, "")
    fields: dict[str, Any] = {**_identity(c, data)}
    for kind in ("inputs", "outputs"):
        if kind in data:
            tensors = _tensors(c, data[kind], kind, base)
            if tensors is not None:
                fields[kind] = tensors
        elif require_io:
            c.fail(kind, "missing: list the model's " + kind)
    if "serving" in data:
        fields["serving"] = _serving(c, data["serving"])
    if "parity" in data:
        fields.update(_parity(c, data["parity"]))
    if "opset" in data and c.number(data["opset"], "opset", positive=True, integer=True) is not None:
        fields["opset"] = data["opset"]
    fields.update(_files(c, data, base))
    outputs = {t.name for t in fields.get("outputs", ())}
    for name in fields.get("constant_outputs", ()):
        if outputs and name not in outputs:
            c.fail("parity.constant_outputs", f"{name!r} is not an output")
    if c.problems:
        ordered = sorted(c.problems, key=lambda p: int(m.group(1)) if (m := re.search(r":(\d+): ", p)) else 0)
        raise SpecError(f"{len(c.problems)} problem(s) in the model spec:\n  " + "\n  ".join(ordered))
    return fields


def _identity(c: _Checker, data: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if "name" in data:
        try:
            fields["name"] = check_model_name(data["name"])
        except SpecError as exc:
            c.fail("name", str(exc))
    if "version" in data:
        version = str(data["version"])
        if not NAME.match(version):
            c.fail("version", f"{version!r}: use letters, digits, '.', '_' and '-' only")
        fields["version"] = version
    if "description" in data:
        fields["description"] = str(data["description"])
    return fields


def _tensors(c: _Checker, raw: Any, kind: str, base: Path) -> tuple[TensorSpec, ...] | None:
    if not isinstance(raw, list) or not raw:
        c.fail(kind, "must be a non-empty list")
        return None
    tensors = [_tensor(c, t, f"{kind}[{i}]", kind[:-1], base) for i, t in enumerate(raw)]
    names = [t.name for t in tensors if t is not None]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        c.fail(kind, f"{dup!r} is declared twice")
    return tuple(t for t in tensors if t is not None)


def _parity(c: _Checker, parity: Any) -> dict[str, Any]:
    if not isinstance(parity, dict):
        c.fail("parity", "must be a mapping, e.g. {atol: 1.0e-4, rtol: 1.0e-3}")
        return {}
    c.keys(parity, PARITY, "parity")
    fields: dict[str, Any] = {}
    for key in ("atol", "rtol"):
        if key in parity and c.number(parity[key], f"parity.{key}", positive=True) is not None:
            fields[key] = float(parity[key])
    constant = parity.get("constant_outputs", [])
    if not isinstance(constant, list) or not all(isinstance(n, str) for n in constant):
        c.fail("parity.constant_outputs", "must be a list of output names")
    else:
        fields["constant_outputs"] = tuple(constant)
    return fields


def _files(c: _Checker, data: dict[str, Any], base: Path) -> dict[str, Any]:
    """handler, samples and extra_files, relative to the spec file, each checked to exist."""
    fields: dict[str, Any] = {}
    for key in ("handler", "samples"):
        if key in data:
            file = base / str(data[key])
            if not file.is_file():
                c.fail(key, f"file {file} does not exist")
            fields["handler_file" if key == "handler" else key] = str(file)
    if "handler" in data and not str(data["handler"]).endswith(".py"):
        c.fail("handler", "must be a Python file (.py)")
    if "extra_files" in data:
        extra = data["extra_files"]
        if not isinstance(extra, list):
            c.fail("extra_files", "must be a list of files")
        else:
            for i, f in enumerate(extra):
                if not (base / str(f)).is_file():
                    c.fail(f"extra_files[{i}]", f"file {base / str(f)} does not exist")
            fields["extra_files"] = tuple(str(base / str(f)) for f in extra)
    return fields


def read_spec_file(path: Path, require_io: bool = False) -> dict[str, Any]:
    """ModelSpec fields from a YAML spec file (paths in it are relative to the file)."""
    data, where = load_yaml(path)
    return from_dict(data, where, Path(path).resolve().parent, require_io=require_io)


def parse_input_flag(flag: str) -> TensorSpec:
    """`--input pixels:float32:[batch,3,224,224]` -> TensorSpec."""
    parts = flag.split(":", 2)
    if len(parts) != 3:
        raise SpecError(f"--input {flag!r}: expected NAME:DTYPE:[DIMS], e.g. pixels:float32:[batch,3,224,224]")
    name, dtype, dims = parts
    text = dims.strip()
    if not (text.startswith("[") and text.endswith("]")):
        raise SpecError(f"--input {flag!r}: the shape goes in brackets, e.g. [batch,3,224,224]")
    shape_items = [d.strip() for d in text[1:-1].split(",") if d.strip()]
    raw = {"name": name, "dtype": dtype, "shape": [int(d) if d.isdigit() else d for d in shape_items]}
    c = _Checker(_Lines("--input", {}))
    tensor = _tensor(c, raw, name or "input", "input", Path.cwd())
    if c.problems or tensor is None:
        raise SpecError("; ".join(p.split(": ", 1)[1] for p in c.problems) or f"--input {flag!r} is not valid")
    return tensor


def _yaml(value: Any) -> str:
    """`value` as YAML reads it back: a string that looks like a number quoted, a float with its
    point (PyYAML reads 1e-05 as a string), no end-of-document marker."""
    return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=1 << 30).strip().removesuffix("\n...")


def spec_yaml(spec: ModelSpec) -> str:
    """A commented spec file for `spec` (what `maas package --write-spec` writes; read_spec_file
    reads it back as it was)."""
    def tensor(t: TensorSpec, kind: str) -> str:
        lines = [f"  - name: {_yaml(t.name)}", f"    dtype: {t.dtype}", f"    shape: {_yaml(list(t.shape))}"]
        if t.description:
            lines.append(f"    description: {_yaml(t.description)}")
        if kind == "input":
            lines.append("    # range: [low, high]     accepted values" if t.range is None
                         else f"    range: {_yaml([float(v) for v in t.range])}")
            if t.pad is not None:
                lines.append(f"    pad: {_yaml(float(t.pad))}")
        elif t.labels:
            lines += [f"    labels: {_yaml(list(t.labels))}", f"    top_k: {t.top_k}", f"    scores: {t.scores}"]
        else:
            lines.append("    # labels: labels.txt      class names along the last axis (then top_k, scores)")
        return "\n".join(lines)

    s = spec.serving
    return "\n".join([
        "# maas model spec: `maas package --spec maas.yaml ...` (reference: docs/reference/model-spec.md)",
        f"name: {_yaml(spec.name)}",
        f"version: {_yaml(str(spec.version))}",
        f"description: {_yaml(spec.description or spec.name)}",
        "inputs:  # a name in a shape marks a dynamic axis; axis 0 shared by all inputs is the batch axis",
        *[tensor(t, "input") for t in spec.inputs],
        "outputs:",
        *[tensor(t, "output") for t in spec.outputs],
        "serving:  # TorchServe's batching and workers (model-config.yaml)",
        f"  batch_size: {s.batch_size}",
        f"  max_batch_delay_ms: {s.max_batch_delay_ms}",
        f"  workers: {s.max_workers}",
        f"  response_timeout_s: {s.response_timeout_s}",
        f"  max_items_per_request: {s.max_items_per_request}",
        "parity:  # ONNX Runtime vs PyTorch: |ort - torch| <= atol + rtol * max|torch| per output",
        f"  atol: {_yaml(float(spec.atol))}",
        f"  rtol: {_yaml(float(spec.rtol))}",
        "# handler: my_handler.py     your pre/post-processing (subclass tensor.TensorHandler)",
        "# extra_files: [labels.txt]   files the handler reads from its model directory",
        "# samples: samples.npz        inputs for load tests and variant costs (one array per input)",
        "",
    ])

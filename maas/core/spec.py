"""One declarative I/O and serving spec per model.

The exporter, the manifest, the handler's load-time check and the tests all read the
same `ModelSpec`; nothing else restates tensor names, dtypes or dynamic axes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

Dim = Union[int, str]  # an int is a fixed size, a str names a dynamic (symbolic) axis


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32", "int64" (handlers/dtypes.py lists them)
    shape: tuple[Dim, ...]
    description: str = ""
    # Inputs: accepted values [lo, hi] (checked by the generic handler; load tests draw from it).
    range: tuple[float, float] | None = None
    # Inputs: requests whose symbolic non-batch axes differ are padded with this value to share
    # one run (outputs on the same axes are cut back); without it they run separately.
    pad: float | None = None
    # Outputs: class names along the last axis, answered as the top_k labels with their scores
    # (scores: "raw" values, or "softmax"/"sigmoid" of them).
    labels: tuple[str, ...] | None = None
    top_k: int = 1
    scores: str = "raw"

    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}


# The handler of every model without one of its own (`{"inputs": {...}}` and v2 in, `{"outputs": ...}` out).
GENERIC_HANDLER = "tensor.py"

# Default parity tolerances (a spec may set its own): the only place they are written.
ATOL, RTOL = 1e-5, 1e-4

# The one table of serving settings: the ServingSpec field (also its maas.yaml `serving:` key) and
# where TorchServe's model-config.yaml keeps it ("handler." = the handler's own section). The spec
# file, model-config.yaml both ways, the KServe snapshot, Triton's config and the bench read this.
MODEL_CONFIG_KEYS: dict[str, str] = {
    "batch_size": "batchSize",
    "max_batch_delay_ms": "maxBatchDelay",
    "min_workers": "minWorkers",
    "max_workers": "maxWorkers",
    "response_timeout_s": "responseTimeout",
    "startup_timeout_s": "startupTimeout",
    "intra_op_threads": "handler.intra_op_threads",
    "max_items_per_request": "handler.max_items_per_request",
    "worker_memory_mib": "handler.worker_memory_mib",
    "fixed_batch_rows": "handler.fixed_batch_rows",
}


@dataclass(frozen=True)
class ServingSpec:
    """What goes into `model-config.yaml`: TorchServe's batching/workers + handler settings."""

    batch_size: int = 8
    max_batch_delay_ms: int = 5
    min_workers: int = 1
    max_workers: int = 1
    response_timeout_s: int = 30
    startup_timeout_s: int = 120
    # 0 = derive at initialize(): max(1, cpu_count // max_workers), so workers x threads <= cores.
    intra_op_threads: int = 0
    max_items_per_request: int = 256
    # Memory a worker needs beyond the Java frontend (Python + ORT + the model), for the
    # Kubernetes resource requests written by `maas export-kserve`.
    worker_memory_mib: int = 384
    # > 0: every ONNX Runtime run at exactly this many rows (split or padded), so the kernels do not
    # change with the batch size (batch 1 vs >= 2 can differ); the manifest's parity.batch_variance
    # says how far answers move with and without it. 0: runs at the batch's own size (faster).
    fixed_batch_rows: int = 0

    def model_config(self) -> dict[str, Any]:
        """These settings as model-config.yaml holds them (the handler's under `handler:`)."""
        config: dict[str, Any] = {"handler": {}}
        for name, key in MODEL_CONFIG_KEYS.items():
            section, _, leaf = key.rpartition(".")
            (config["handler"] if section else config)[leaf] = getattr(self, name)
        return config

    def written_over(self, config: dict[str, Any]) -> dict[str, Any]:
        """`config` (a model-config.yaml) with these settings in place of its own; other keys kept."""
        mine = self.model_config()
        return {**config, **mine, "handler": {**(config.get("handler") or {}), **mine["handler"]}}

    @classmethod
    def from_model_config(cls, config: dict[str, Any]) -> "ServingSpec":
        """The settings a model-config.yaml holds (defaults for what it leaves out)."""
        handler = config.get("handler") or {}
        values = {}
        for name, key in MODEL_CONFIG_KEYS.items():
            section, _, leaf = key.rpartition(".")
            value = (handler if section else config).get(leaf)
            if value is not None:
                values[name] = int(value)
        return cls(**values)

    def snapshot_settings(self) -> dict[str, int]:
        """The top-level model-config.yaml settings (workers, batching, timeouts), for TorchServe's
        config snapshot (model_snapshot in config.properties)."""
        return {key: getattr(self, name) for name, key in MODEL_CONFIG_KEYS.items()
                if "." not in key and key != "startupTimeout"}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    description: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    handler: str  # file under handlers/ (the support modules it imports travel with it: export.archive)
    opset: int = 18
    atol: float = ATOL  # parity: |ort - torch| <= atol + rtol * max|torch|, per output
    rtol: float = RTOL
    export_batch_size: int = 16
    # Parity runs on sizes other than the export one, so dynamic axes must really be dynamic:
    # each case gives a size per symbolic axis (rows cycle for "batch", others are cut).
    parity_cases: tuple[dict[str, int], ...] = ({"batch": 1}, {"batch": 7}, {"batch": 64})
    serving: ServingSpec = field(default_factory=ServingSpec)
    # A model packaged with `maas package`: the user's own handler file (else handlers/<handler>),
    # files that travel in the archive beside the model, sample inputs (.npz) for load tests and
    # variant costs, and outputs allowed to stay (nearly) constant over the parity inputs.
    handler_file: str | None = None
    extra_files: tuple[str, ...] = ()
    samples: str | None = None
    constant_outputs: tuple[str, ...] = ()

    @property
    def batch_axis(self) -> str | None:
        """The symbolic axis 0 every input shares (TorchServe batches requests along it), or None."""
        first = {t.shape[0] if t.shape and isinstance(t.shape[0], str) else None for t in self.inputs}
        return first.pop() if len(first) == 1 else None

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def io_dict(self) -> dict[str, Any]:
        """The I/O part of the manifest (read back by the handler at load time)."""
        return {
            "inputs": [_tensor_dict(t, "input") for t in self.inputs],
            "outputs": [_tensor_dict(t, "output") for t in self.outputs],
            "batch_axis": self.batch_axis,
            "opset": self.opset,
            "atol": self.atol,
            "rtol": self.rtol,
        }

    def model_config(self) -> dict[str, Any]:
        """TorchServe `model-config.yaml` contents for this model."""
        config = self.serving.model_config()
        config["handler"]["use_tensorrt"] = False
        return config

    @classmethod
    def from_archive(cls, manifest: dict[str, Any], model_config: dict[str, Any]) -> "ModelSpec":
        """The spec an archive was built with, read back from its manifest.json and model-config.yaml."""
        def tensors(items: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(t["name"], t["dtype"], tuple(t["shape"]), t.get("description", ""),
                                    tuple(t["range"]) if t.get("range") else None, t.get("pad"),
                                    tuple(t["labels"]) if t.get("labels") else None, t.get("top_k", 1),
                                    t.get("scores", "raw")) for t in items)

        serving = ServingSpec.from_model_config(model_config)
        return cls(name=manifest["name"], version=str(manifest["version"]), description=manifest.get("description", ""),
                   inputs=tensors(manifest["inputs"]), outputs=tensors(manifest["outputs"]), handler=GENERIC_HANDLER,
                   opset=int(manifest.get("opset", 18)), atol=float(manifest.get("atol", ATOL)),
                   rtol=float(manifest.get("rtol", RTOL)), serving=serving)


def _tensor_dict(t: TensorSpec, kind: str) -> dict[str, Any]:
    """A tensor as the manifest holds it: name, dtype, shape, description, and only the options it uses."""
    out: dict[str, Any] = {"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "description": t.description}
    if kind == "input":
        if t.range is not None:
            out["range"] = list(t.range)
        if t.pad is not None:
            out["pad"] = t.pad
    elif t.labels is not None:
        out.update(labels=list(t.labels), top_k=t.top_k, scores=t.scores)
    return out

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


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    description: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    handler: str  # file under handlers/
    opset: int = 18
    atol: float = 1e-5
    rtol: float = 1e-4
    export_batch_size: int = 16
    # Parity runs on sizes other than the export one, so dynamic axes must really be dynamic:
    # each case gives a size per symbolic axis (rows cycle for "batch", others are cut).
    parity_cases: tuple[dict[str, int], ...] = ({"batch": 1}, {"batch": 7}, {"batch": 64})
    # handlers/ modules this model's handler imports beyond the base ones every archive carries
    # (export.archive.BASE_HANDLER_FILES: ort_base.py, http_reply.py)
    handler_support_files: tuple[str, ...] = ()
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
        s = self.serving
        return {
            "minWorkers": s.min_workers,
            "maxWorkers": s.max_workers,
            "batchSize": s.batch_size,
            "maxBatchDelay": s.max_batch_delay_ms,
            "responseTimeout": s.response_timeout_s,
            "startupTimeout": s.startup_timeout_s,
            "handler": {
                "intra_op_threads": s.intra_op_threads,
                "max_items_per_request": s.max_items_per_request,
                "use_tensorrt": False,
                "worker_memory_mib": s.worker_memory_mib,
            },
        }

    @classmethod
    def from_archive(cls, manifest: dict[str, Any], model_config: dict[str, Any]) -> "ModelSpec":
        """The spec an archive was built with, read back from its manifest.json and model-config.yaml."""
        def tensors(items: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(t["name"], t["dtype"], tuple(t["shape"]), t.get("description", ""),
                                    tuple(t["range"]) if t.get("range") else None, t.get("pad"),
                                    tuple(t["labels"]) if t.get("labels") else None, t.get("top_k", 1),
                                    t.get("scores", "raw")) for t in items)

        handler = model_config.get("handler") or {}
        defaults = ServingSpec()
        serving = ServingSpec(
            batch_size=int(model_config.get("batchSize", defaults.batch_size)),
            max_batch_delay_ms=int(model_config.get("maxBatchDelay", defaults.max_batch_delay_ms)),
            min_workers=int(model_config.get("minWorkers", defaults.min_workers)),
            max_workers=int(model_config.get("maxWorkers", defaults.max_workers)),
            response_timeout_s=int(model_config.get("responseTimeout", defaults.response_timeout_s)),
            startup_timeout_s=int(model_config.get("startupTimeout", defaults.startup_timeout_s)),
            intra_op_threads=int(handler.get("intra_op_threads", 0)),
            max_items_per_request=int(handler.get("max_items_per_request", defaults.max_items_per_request)),
            worker_memory_mib=int(handler.get("worker_memory_mib", defaults.worker_memory_mib)))
        return cls(name=manifest["name"], version=str(manifest["version"]), description=manifest.get("description", ""),
                   inputs=tensors(manifest["inputs"]), outputs=tensors(manifest["outputs"]), handler="tensor.py",
                   opset=int(manifest.get("opset", 18)), atol=float(manifest.get("atol", 1e-5)),
                   rtol=float(manifest.get("rtol", 1e-4)), serving=serving)


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

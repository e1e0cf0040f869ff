"""One declarative I/O and serving spec per model.

The exporter, the manifest, the handler's load-time check and the tests all read the
same `ModelSpec`; nothing else restates tensor names, dtypes or dynamic axes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Union

Dim = Union[int, str]  # an int is a fixed size, a str names a dynamic (symbolic) axis


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32", "int64"
    shape: tuple[Dim, ...]
    description: str = ""

    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def concrete_shape(self, **sizes: int) -> tuple[int, ...]:
        """Shape with each symbolic axis replaced by `sizes[name]` (default 1)."""
        return tuple(d if isinstance(d, int) else sizes.get(d, 1) for d in self.shape)


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

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def io_dict(self) -> dict[str, Any]:
        """The I/O part of the manifest (read back by the handler at load time)."""
        return {
            "inputs": [{**asdict(t), "shape": list(t.shape)} for t in self.inputs],
            "outputs": [{**asdict(t), "shape": list(t.shape)} for t in self.outputs],
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
            },
        }

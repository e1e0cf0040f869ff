"""The zoo: models whose training code lives here, one registered object each.

A zoo model is one module in this package defining one `ZooModel` subclass decorated with
`@register`; nothing else in the project names it. Build, demo, smoke checks, load-test
payloads, the benchmark and the tests look models up here instead of branching per model.
The modules import torch only inside functions, so the client side (Locust processes, smoke
checks) can use a model's requests without loading it.
"""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any, Callable, ClassVar

from maas.core.bodies import Case, Payloads
from maas.core.errors import ExportError, UnknownModel
from maas.core.spec import ModelSpec


class NoHeldOutEvaluation(ExportError):
    """The model has no held-out data to price a variant on."""


class ZooModel:
    """What every zoo model declares (and the optional hooks, with their defaults)."""

    name: ClassVar[str]
    spec: ClassVar[ModelSpec]

    # ---- build side (torch allowed, imported inside) -------------------------------------
    def train(self, seed: int = 0) -> Any:
        """-> export.trained.Trained: the eval-mode module, held-out sample inputs, metrics,
        what the handler reads besides the I/O spec, and files the archive carries."""
        raise NotImplementedError

    def tiny(self, seed: int = 0) -> Any:
        """-> export.trained.Trained: an untrained, smaller stand-in with the real interface (the
        same spec, handler settings and assets) for the fast unit tier: its answers have the right
        form, not the right values. Built by `build(..., tiny=True)`, which skips evaluate_onnx."""
        raise NotImplementedError(f"{self.name} has no tiny stand-in")

    def evaluate_onnx(self, path: Path, trained: Any) -> dict[str, Any]:
        """Model-specific checks of the exported file (raise an ExportError to refuse it)."""
        return {}

    def variant_report(self, fp32: Path, variant: Path, engine: dict[str, Any] | None = None) -> dict[str, Any]:
        """The variant's accuracy cost on held-out data, run on `engine` (None: ONNX Runtime):
        cost_metric, cost, budget, within_budget."""
        raise NoHeldOutEvaluation(f"{self.name} has no held-out evaluation for variants")

    def calibration(self, items: int) -> list[dict[str, Any]]:
        """`items` feeds of one item each, from training-side data (never the held-out set) and
        spanning the inputs the model will be sent: what static INT8 calibrates on. Empty: none."""
        return []

    def timing_batches(self, batches: int, batch: int) -> list[dict[str, Any]]:
        """`batches` feeds of `batch` items like a load test's requests: what the variant chooser
        times. By default the calibration items, `batch` at a time."""
        import numpy as np

        items = self.calibration(batches * batch)
        return [{k: np.concatenate([it[k] for it in items[i:i + batch]]) for k in items[0]}
                for i in range(0, len(items) - batch + 1, batch)]

    transformer: ClassVar[bool] = False  # NNCF's transformer preset for its INT8 quantization

    def optimized_graph(self, trained: Any | None) -> Callable[[Path], Path] | None:
        """A better FP32 graph than ONNX Runtime's own optimizations, if the model has one (made
        from `trained`, or from a fresh train() when None)."""
        return None

    # ---- client side (no torch) -----------------------------------------------------------
    def payloads(self, seed: int = 0) -> Payloads:
        """Varied valid request bodies and a check of each answer, for load tests."""
        raise NotImplementedError

    def demo_requests(self, example: Any) -> list[tuple[str, bytes, str]]:
        """(title, body, content type) shown by `maas demo`, after the manifest's example request."""
        return []

    def smoke_cases(self) -> list[Case]:
        """Requests with known answers a release candidate must get right."""
        return []

    def answer_summary(self, answer: Any) -> str:
        """An answer in a few words (what `maas demo` prints)."""
        from maas.core.summary import compact

        return compact(answer, 70)


_REGISTRY: dict[str, ZooModel] = {}


def register(cls: type[ZooModel]) -> type[ZooModel]:
    """Class decorator: the model joins the zoo under cls.name."""
    _REGISTRY[cls.name] = cls()
    return cls


def models() -> dict[str, ZooModel]:
    """Every zoo model by name (the modules of this package, imported once)."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    return dict(sorted(_REGISTRY.items()))


def get(name: str) -> ZooModel:
    found = models()
    if name not in found:
        raise UnknownModel(f"unknown model {name!r}; the zoo has {', '.join(found)}")
    return found[name]

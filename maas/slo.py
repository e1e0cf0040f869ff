"""A model's release SLO: the load to apply and the figures it must meet (YAML, validated)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import maas.loadtests
from maas.core.errors import LoadTestError

SLO_DIR = Path(maas.loadtests.__path__[0]) / "slo"  # the zoo's SLO files


class SLOError(LoadTestError, ValueError):
    """An SLO file that cannot be used as it is."""

    show_type = False


@dataclass
class Thresholds:
    max_p95_ms: float = 500.0
    max_p99_ms: float = 1000.0
    max_error_ratio: float = 0.01
    min_rps: float = 5.0
    max_worker_restarts: int = 0  # a worker that died under load fails the gate, whatever the figures
    # Language models (streamed): not gated unless the SLO file sets them
    max_ttft_p95_ms: float | None = None
    max_itl_p95_ms: float | None = None
    max_tpot_p95_ms: float | None = None
    min_output_tokens_per_s: float | None = None


@dataclass
class Regression:
    """How much worse than the current default a release candidate may measure."""

    max_p95_increase: float = 0.5  # +50 %: machines here are shared and noisy
    max_rps_decrease: float = 0.3  # -30 %


@dataclass
class SLO:
    """A model's release SLO: the load to apply and the figures it must meet."""

    users: int = 8
    spawn_rate: float = 8.0
    run_time_s: int = 20
    warmup_s: int = 3  # excluded from the figures (stats reset after it)
    thresholds: Thresholds = field(default_factory=Thresholds)
    regression: Regression = field(default_factory=Regression)

    @classmethod
    def from_file(cls, path: Path) -> "SLO":
        """Load a YAML SLO file; unknown keys and unreadable values are an SLOError, not silently ignored."""
        import yaml

        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise SLOError(f"{path}: cannot be read as YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise SLOError(f"{path}: expected a mapping of SLO keys (users, p95_ms, ...), got {type(raw).__name__}")
        try:
            return cls._from_mapping(raw, path)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, SLOError):
                raise
            raise SLOError(f"{path}: {exc}") from None

    @classmethod
    def _from_mapping(cls, raw: dict, path: Path) -> "SLO":
        slo = cls()
        keys = {"users", "spawn_rate", "run_time_s", "warmup_s", "p95_ms", "p99_ms", "max_error_ratio",
                "min_rps", "regression", "ttft_p95_ms", "itl_p95_ms", "tpot_p95_ms", "min_output_tokens_per_s"}
        unknown = sorted(set(raw) - keys)
        if unknown:
            raise SLOError(f"{path}: unknown SLO keys {unknown}; known: {sorted(keys)}")
        for key in ("users", "spawn_rate", "run_time_s", "warmup_s"):
            if key in raw:
                setattr(slo, key, type(getattr(slo, key))(raw[key]))
        mapping = {"p95_ms": "max_p95_ms", "p99_ms": "max_p99_ms", "max_error_ratio": "max_error_ratio",
                   "min_rps": "min_rps", "ttft_p95_ms": "max_ttft_p95_ms", "itl_p95_ms": "max_itl_p95_ms",
                   "tpot_p95_ms": "max_tpot_p95_ms", "min_output_tokens_per_s": "min_output_tokens_per_s"}
        for key, attr in mapping.items():
            if key in raw:
                setattr(slo.thresholds, attr, float(raw[key]))
        regression = raw.get("regression") or {}
        if not isinstance(regression, dict):
            raise SLOError(f"{path}: regression must be a mapping (e.g. max_p95_increase: 0.2)")
        for key, value in regression.items():
            if not hasattr(slo.regression, key):
                raise SLOError(f"{path}: unknown regression key {key!r}")
            setattr(slo.regression, key, float(value))
        return slo

    @classmethod
    def for_model(cls, model: str, path: Path | None = None, project_dir: Path | None = None) -> "SLO":
        """The given file, else <project>/slo/<model>.yaml, else the zoo's loadtests/slo/<model>.yaml,
        else defaults."""
        candidates = [path] if path else [(project_dir or Path.cwd()) / "slo" / f"{model}.yaml",
                                          SLO_DIR / f"{model}.yaml"]
        found = next((p for p in candidates if p.exists()), None)
        return cls.from_file(found) if found else cls()


def slo_for(model: str, slo_file: str | Path | None = None, project_dir: Path | None = None,
            **overrides: Any) -> SLO:
    """defaults < slo/<model>.yaml of the project or the zoo's (or `slo_file`) < overrides (flags; None = unset)."""
    slo = SLO.for_model(model, Path(slo_file) if slo_file else None, project_dir)
    for key in ("users", "spawn_rate", "run_time_s", "warmup_s"):
        if overrides.get(key) is not None:
            setattr(slo, key, overrides[key])
    for key in ("max_p95_ms", "max_p99_ms", "max_error_ratio", "min_rps"):
        if overrides.get(key) is not None:
            setattr(slo.thresholds, key, overrides[key])
    return slo

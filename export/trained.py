"""What a model module's train() returns to the build pipeline."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn


@dataclass
class Trained:
    module: nn.Module  # eval-mode module whose forward takes the spec's inputs in order
    sample: dict[str, np.ndarray]  # held-out inputs for parity checks, keyed by input name
    metrics: dict[str, Any]  # held-out quality, recorded in the manifest
    extra_manifest: dict[str, Any] = field(default_factory=dict)  # what the handler reads besides the I/O spec
    assets: list[Path] = field(default_factory=list)  # files the handler needs inside the .mar (tokenizer.json, ...)

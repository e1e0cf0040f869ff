"""A handler of your own: the model's logits -> {"label": ..., "score": ...} from a labels file.

Package it with your model; the labels file travels in the archive beside it:

    maas package --torch my_models:make_classifier --input features:float32:[batch,6] \
        --handler labels_handler.py --extra-file labels.txt --name pets

Requests are the generic tensor handler's ({"inputs": {"features": [...]}}), checked against
the spec the same way; only the answer changes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tensor import TensorHandler  # shipped in every archive beside this file


class LabelsHandler(TensorHandler):
    def setup(self, model_dir: Path) -> None:
        """Called once per worker, before the model is loaded: read what the archive carries."""
        self.labels = (model_dir / "labels.txt").read_text().split()

    def postprocess(self, outputs: dict[str, np.ndarray], single: bool) -> Any:
        """One request's outputs (with the batch axis) -> its JSON answer."""
        logits = outputs["logits"].astype(np.float64)
        probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        answers = [{"label": self.labels[int(i)], "score": round(float(p[i]), 6)} for p, i in zip(probs, probs.argmax(-1))]
        return answers[0] if single else answers

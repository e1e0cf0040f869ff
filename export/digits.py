"""`digits`: a small CNN on scikit-learn's bundled handwritten digits (1,797 real 8x8 scans).

The graph takes raw pixel values (0-16, as in the data set) and returns class
probabilities: scaling and softmax are inside it, so any engine can serve it as is.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from export.spec import ModelSpec, ServingSpec, TensorSpec
from export.trained import Trained, fit

log = logging.getLogger(__name__)

LABELS = [str(d) for d in range(10)]

SPEC = ModelSpec(
    name="digits",
    version="1.0",
    description="CNN: handwritten digit (0-9) from an 8x8 grayscale scan, sklearn load_digits",
    inputs=(TensorSpec("pixels", "float32", ("batch", 1, 8, 8), "8x8 intensities 0 (background) to 16 (ink)"),),
    outputs=(TensorSpec("probabilities", "float32", ("batch", 10), "softmax over digits 0-9"),),
    handler="digits.py",
    handler_support_files=("image_input.py",),
    atol=1e-5,
    serving=ServingSpec(batch_size=16, max_batch_delay_ms=5, intra_op_threads=1, max_items_per_request=64),
)


class DigitsNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 4 * 4, 128), nn.ReLU(),
                                        nn.Dropout(0.3), nn.Linear(128, 10))

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(pixels / 16.0))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(pixels), dim=1)


def _split(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, ...]:
    """Stratified 80/20 split: x_train, y_train, x_test, y_test."""
    from sklearn.model_selection import train_test_split

    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    return x_tr, y_tr, x_te, y_te


def _shift(batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Augment: move each digit by up to one pixel (scans are not perfectly centred)."""
    dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=gen))
    return torch.roll(batch, shifts=(dy, dx), dims=(2, 3))


def train(seed: int = 0, epochs: int = 60) -> Trained:
    torch.manual_seed(seed)
    x_tr, y_tr, x_te, y_te = _split(*_arrays(), seed)
    x, y = torch.from_numpy(x_tr), torch.from_numpy(y_tr).long()
    model = DigitsNet()
    fit(model, lambda idx, gen: nn.functional.cross_entropy(model.logits(_shift(x[idx], gen)), y[idx]), len(x),
        name="digits", epochs=epochs, batch_size=64, lr=2e-3, weight_decay=1e-4, seed=seed)
    with torch.no_grad():
        prob = model(torch.from_numpy(x_te)).numpy()
    pred = prob.argmax(1)
    metrics = {
        "accuracy": float((pred == y_te).mean()),
        "top5_accuracy": float(np.mean([y in np.argsort(-p)[:5] for p, y in zip(prob, y_te)])),
        "test_images": int(len(y_te)),
        "train_images": int(len(y_tr)),
        "seed": seed,
    }
    log.info("digits held-out: accuracy %.4f on %d images", metrics["accuracy"], len(y_te))
    extra = {
        "labels": LABELS,
        "topk": 5,
        "image": {"size": 8, "max_value": 16, "max_pixels": 16_000_000, "formats": ["PNG", "JPEG"]},
        "example_request": {"pixels": x_te[0, 0].astype(int).tolist()},
    }
    return Trained(model, {"pixels": x_te}, metrics, extra)


def variant_report(fp32: Path, variant: Path) -> dict[str, Any]:
    """Held-out accuracy of both files on the 360 test scans; the cost is the drop in points."""
    from export.variants import held_out_outputs

    _, _, x_te, y_te = _split(*_arrays(), 0)
    base, cand = (float((held_out_outputs(p, {"pixels": x_te})[0].argmax(1) == y_te).mean()) for p in (fp32, variant))
    drop = 100 * (base - cand)
    return {"cost_metric": "accuracy drop (points)", "cost": drop, "budget": 1.0, "within_budget": drop <= 1.0,
            "fp32": {"accuracy": base}, "variant": {"accuracy": cand}, "test_images": int(len(y_te))}


def _arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.float32)[:, None, :, :], digits.target

"""`digits`: a small CNN on scikit-learn's bundled handwritten digits (1,797 real 8x8 scans).

The graph takes raw pixel values (0-16, as in the data set) and returns class
probabilities: scaling and softmax are inside it, so any engine can serve it as is.
"""
from __future__ import annotations

import functools
import io
import json
import logging
import random
from pathlib import Path
from typing import Any, Optional

import numpy as np

from maas.core.bodies import Case, Payloads
from maas.core.spec import ModelSpec, ServingSpec, TensorSpec
from maas.export.trained import Trained, fit
from maas.export.zoo import ZooModel, register

log = logging.getLogger(__name__)

LABELS = [str(d) for d in range(10)]
TOP_K = 5  # answers carry the 5 likeliest digits, like TorchServe's image classifier

SPEC = ModelSpec(
    name="digits",
    version="1.0",
    description="CNN: handwritten digit (0-9) from an 8x8 grayscale scan, sklearn load_digits",
    inputs=(TensorSpec("pixels", "float32", ("batch", 1, 8, 8), "8x8 intensities 0 (background) to 16 (ink)",
                       range=(0.0, 16.0)),),
    outputs=(TensorSpec("probabilities", "float32", ("batch", 10), "softmax over digits 0-9", labels=tuple(LABELS),
                        top_k=TOP_K),),
    handler="digits.py",
    atol=1e-5,
    serving=ServingSpec(batch_size=16, max_batch_delay_ms=5, intra_op_threads=1, max_items_per_request=64),
)


@functools.cache
def _net_class() -> type:
    """DigitsNet, defined on first use: torch is imported only when a model is built."""
    import torch
    from torch import nn

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

    return DigitsNet


def __getattr__(name: str) -> Any:  # PEP 562: `digits.DigitsNet` without importing torch up front
    if name == "DigitsNet":
        return _net_class()
    raise AttributeError(name)


def _split(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, ...]:
    """Stratified 80/20 split: x_train, y_train, x_test, y_test."""
    from sklearn.model_selection import train_test_split

    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    return x_tr, y_tr, x_te, y_te


def _shift(batch: Any, gen: Any) -> Any:
    """Augment: move each digit by up to one pixel (scans are not perfectly centred)."""
    import torch

    dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=gen))
    return torch.roll(batch, shifts=(dy, dx), dims=(2, 3))


def train(seed: int = 0, epochs: int = 60) -> Trained:
    import torch
    from torch import nn

    torch.manual_seed(seed)
    x_tr, y_tr, x_te, y_te = _split(*_arrays(), seed)
    x, y = torch.from_numpy(x_tr), torch.from_numpy(y_tr).long()
    model = _net_class()()
    if epochs:
        fit(model, lambda idx, gen: nn.functional.cross_entropy(model.logits(_shift(x[idx], gen)), y[idx]), len(x),
            name="digits", epochs=epochs, batch_size=64, lr=2e-3, weight_decay=1e-4, seed=seed)
    model.eval()
    with torch.no_grad():
        prob = model(torch.from_numpy(x_te)).numpy()
    pred = prob.argmax(1)
    metrics = {
        "accuracy": float((pred == y_te).mean()),
        "top5_accuracy": float(np.mean([y in np.argsort(-p)[:TOP_K] for p, y in zip(prob, y_te)])),
        "test_images": int(len(y_te)),
        "train_images": int(len(y_tr)),
        "seed": seed,
    }
    log.info("digits held-out: accuracy %.4f on %d images", metrics["accuracy"], len(y_te))
    extra = {
        "image": {"size": 8, "max_value": 16, "max_pixels": 16_000_000, "formats": ["PNG", "JPEG"]},
        "example_request": {"pixels": x_te[0, 0].astype(int).tolist()},
    }
    return Trained(model, {"pixels": x_te}, metrics, extra)


def variant_report(fp32: Path, variant: Path, engine: dict[str, Any] | None = None) -> dict[str, Any]:
    """Held-out accuracy of both files on the 360 test scans; the cost is the drop in points."""
    from maas.export.variants import held_out_outputs

    _, _, x_te, y_te = _split(*_arrays(), 0)
    base, cand = (float((held_out_outputs(p, {"pixels": x_te}, engine=e)[0].argmax(1) == y_te).mean())
                  for p, e in ((fp32, None), (variant, engine)))
    drop = 100 * (base - cand)
    return {"cost_metric": "accuracy drop (points)", "cost": drop, "budget": 1.0, "within_budget": drop <= 1.0,
            "fp32": {"accuracy": base}, "variant": {"accuracy": cand}, "test_images": int(len(y_te))}


def _arrays() -> tuple[np.ndarray, np.ndarray]:
    """load_digits()'s images and labels. Read from the file scikit-learn ships when it is where
    load_digits reads it: importing sklearn.datasets costs 1.5 s, and every Locust process that
    loads digits pays it before its first request."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    shipped = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if shipped is not None and shipped.is_file():
        rows = np.loadtxt(shipped, delimiter=",")
        return rows[:, :-1].reshape(-1, 1, 8, 8).astype(np.float32), rows[:, -1].astype(int)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.float32)[:, None, :, :], digits.target


# ---- requests: load tests, demo, release smoke checks (no torch) -------------------------------
# load_digits()[3]: a real scan of the digit 3.
THREE = [[0, 0, 7, 15, 13, 1, 0, 0], [0, 8, 13, 6, 15, 4, 0, 0], [0, 2, 1, 13, 13, 0, 0, 0],
         [0, 0, 2, 15, 11, 1, 0, 0], [0, 0, 0, 1, 12, 12, 1, 0], [0, 0, 0, 0, 1, 10, 8, 0],
         [0, 0, 8, 4, 5, 14, 9, 0], [0, 0, 7, 13, 13, 9, 0, 0]]


def check_top_k(answer: Any) -> Optional[str]:
    if not isinstance(answer, dict) or len(answer) != TOP_K:
        return f"expected an object of {TOP_K} labels, got {str(answer)[:80]}"
    probs = list(answer.values())
    if not set(answer) <= set(LABELS) or any(not isinstance(p, float) or not 0 <= p <= 1 for p in probs):
        return f"labels/probabilities out of range: {answer}"
    if probs != sorted(probs, reverse=True) or sum(probs) > 1.0001:
        return f"top {TOP_K} not sorted or sums over 1: {answer}"
    return None


def top1(label: str) -> Any:
    def check(answer: Any) -> Optional[str]:
        top = next(iter(answer), None) if isinstance(answer, dict) else None
        return None if top == label else f"expected top label {label}, got {str(answer)[:120]}"
    return check


def png_scan(grid: np.ndarray, scale: int) -> bytes:
    """A scan as a PNG upload: dark ink on light paper, `scale` times the 8x8 size."""
    from PIL import Image

    paper = (255 - np.kron(grid, np.ones((scale, scale))) / 16 * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(paper).save(buf, format="PNG")
    return buf.getvalue()


@register
class Digits(ZooModel):
    name = "digits"
    spec = SPEC

    def train(self, seed: int = 0) -> Trained:
        return train(seed=seed)

    def tiny(self, seed: int = 0) -> Trained:
        return train(seed=seed, epochs=0)

    def variant_report(self, fp32: Path, variant: Path, engine: dict[str, Any] | None = None) -> dict[str, Any]:
        return variant_report(fp32, variant, engine)

    def calibration(self, items: int) -> list[dict[str, Any]]:
        x_tr = _split(*_arrays(), 0)[0]
        return [{"pixels": x_tr[i:i + 1]} for i in range(min(items, len(x_tr)))]

    def payloads(self, seed: int = 0, pool: int = 256, png_share: float = 0.25) -> Payloads:
        """Real scans from scikit-learn's load_digits: 3 in 4 as JSON pixels, 1 in 4 as a PNG upload
        (png_share=0: the engines compared, not image decoding)."""
        images = _arrays()[0][:, 0]
        rng = random.Random(seed)
        bodies = []
        for _ in range(pool):
            grid = images[rng.randrange(len(images))]
            if rng.random() < png_share:
                bodies.append(png_scan(grid, rng.choice((4, 8, 16))))
            else:
                bodies.append(json.dumps({"pixels": grid.astype(int).tolist()}).encode())
        # One content type per pool keeps Locust simple: TorchServe hands bytes of either kind to the handler.
        return Payloads(bodies, "application/octet-stream", check_top_k)

    def demo_requests(self, example: Any) -> list[tuple[str, bytes, str]]:
        return [("a scan of a 3 uploaded as a PNG (24x24)", png_scan(np.asarray(THREE, np.float32), 3), "image/png"),
                ("a mistake: a pixel of 99 -> 400", json.dumps({"pixels": [[99] * 8] + THREE[1:]}).encode(),
                 "application/json")]

    def answer_summary(self, answer: Any) -> str:
        top = list(answer.items())[:3]
        return ", ".join(f"{label} ({p:.3f})" for label, p in top) + f" ... top {len(answer)}"

    def smoke_cases(self) -> list[Case]:
        return [("a scanned 3", json.dumps({"pixels": THREE}).encode(), "application/json", top1("3"))]

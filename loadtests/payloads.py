"""Varied, valid request bodies per model, and a check of each response body.

Bodies are generated once per user into a pool (building them costs the load generator
nothing during the run). A check returns None when the body is right, else what is wrong.
"""
from __future__ import annotations

import json
import random
from typing import Any, Callable, Optional

Check = Callable[[Any], Optional[str]]
FAILURE_MODES = ("TWF", "HDF", "PWF", "OSF", "RNF")


def maintenance_record(rng: random.Random) -> dict[str, Any]:
    """A plausible machine record (ranges of the AI4I 2020 data set)."""
    air = rng.gauss(300.0, 2.0)
    torque = min(max(rng.gauss(40.0, 10.0), 3.8), 76.6)
    return {
        "type": rng.choices("LMH", weights=(5, 3, 2))[0],
        "air_temperature_k": round(air, 1),
        "process_temperature_k": round(air + 10.0 + rng.gauss(0.0, 1.0), 1),
        "rotational_speed_rpm": round(min(max(1538 - 15.75 * (torque - 40) + rng.gauss(0, 85), 1168), 2886)),
        "torque_nm": round(torque, 1),
        "tool_wear_min": rng.randint(0, 253),
    }


def check_maintenance_answer(answer: Any) -> Optional[str]:
    if not isinstance(answer, dict):
        return f"expected a JSON object, got {type(answer).__name__}"
    p = answer.get("failure_probability")
    if not isinstance(p, float) or not 0.0 <= p <= 1.0:
        return f"failure_probability {p!r} is not a probability"
    if not isinstance(answer.get("failure"), bool):
        return "failure is not a boolean"
    modes = answer.get("failure_modes")
    if not isinstance(modes, dict) or set(modes) != set(FAILURE_MODES):
        return f"failure_modes {modes!r} lacks {FAILURE_MODES}"
    return None


class Payloads:
    """Round-robin over a pre-generated pool, so request building costs the load generator nothing."""

    def __init__(self, bodies: list[bytes], content_type: str, check: Check) -> None:
        self.bodies, self.content_type, self.check = bodies, content_type, check
        self._i = 0

    def next(self) -> bytes:
        self._i = (self._i + 1) % len(self.bodies)
        return self.bodies[self._i]


def maintenance(seed: int = 0, pool: int = 512) -> Payloads:
    rng = random.Random(seed)
    bodies = [json.dumps(maintenance_record(rng)).encode() for _ in range(pool)]
    return Payloads(bodies, "application/json", check_maintenance_answer)


def check_top5(answer: Any) -> Optional[str]:
    if not isinstance(answer, dict) or len(answer) != 5:
        return f"expected an object of 5 labels, got {str(answer)[:80]}"
    probs = list(answer.values())
    if not set(answer) <= set("0123456789") or any(not isinstance(p, float) or not 0 <= p <= 1 for p in probs):
        return f"labels/probabilities out of range: {answer}"
    if probs != sorted(probs, reverse=True) or sum(probs) > 1.0001:
        return f"top 5 not sorted or sums over 1: {answer}"
    return None


def digits(seed: int = 0, pool: int = 256, png_share: float = 0.25) -> Payloads:
    """Real scans from scikit-learn's load_digits: 3 in 4 as JSON pixels, 1 in 4 as a PNG upload."""
    import io

    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    images = load_digits().images
    rng = random.Random(seed)
    bodies = []
    for _ in range(pool):
        grid = images[rng.randrange(len(images))]
        if rng.random() < png_share:
            paper = (255 - np.kron(grid, np.ones((rng.choice((4, 8, 16)),) * 2)) / 16 * 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(paper).save(buf, format="PNG")
            bodies.append(buf.getvalue())
        else:
            bodies.append(json.dumps({"pixels": grid.astype(int).tolist()}).encode())
    # One content type per pool keeps Locust simple: TorchServe hands bytes of either kind to the handler.
    return Payloads(bodies, "application/octet-stream", check_top5)


WORDS = ("the machine spindle bearing motor torque sensor reading failed after hours of heavy load "
         "maintenance team replaced worn tool and checked temperature pressure vibration levels on line "
         "three before restarting production customer asked about delivery invoice refund order status "
         "model latency throughput dashboard alert triggered overnight please review logs").split()


def sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(6, 30))]
    return " ".join(words).capitalize() + rng.choice(".?!")


def check_embedding(answer: Any) -> Optional[str]:
    vec = answer.get("embedding") if isinstance(answer, dict) else None
    if not isinstance(vec, list) or len(vec) != 384:
        return f"expected a 384-d embedding, got {str(answer)[:80]}"
    norm = sum(v * v for v in vec) ** 0.5
    if abs(norm - 1.0) > 1e-3:
        return f"embedding norm {norm:.4f} is not 1"
    return None


def minilm(seed: int = 0, pool: int = 512) -> Payloads:
    """One 6-30 word sentence per request."""
    rng = random.Random(seed)
    bodies = [json.dumps({"text": sentence(rng)}).encode() for _ in range(pool)]
    return Payloads(bodies, "application/json", check_embedding)


def digits_json(seed: int = 0) -> Payloads:
    """JSON pixels only (benchmarks: the engines compared, not image decoding)."""
    return digits(seed, png_share=0.0)


FACTORIES: dict[str, Callable[..., Payloads]] = {"maintenance": maintenance, "digits": digits, "minilm": minilm,
                                                 "digits-json": digits_json}


def from_archive(model: str, version: str = "", model_store: str = "", seed: int = 0) -> Payloads:
    """Bodies for a model packaged with `maas package`, read from its archive in the model store."""
    import io
    import os
    from pathlib import Path

    import numpy as np

    from maas.deploy import archive_manifest, archive_member, find_archive
    from maas.tensor_requests import tensor_bodies, tensor_check

    store = Path(model_store or os.environ.get("MAAS_MODEL_STORE") or "model_store")
    archive = find_archive(store, model, version or None)
    manifest = archive_manifest(archive)
    samples = None
    if manifest.get("samples"):
        with np.load(io.BytesIO(archive_member(archive, manifest["samples"])), allow_pickle=False) as data:
            samples = {k: data[k] for k in data.files}
    return Payloads(tensor_bodies(manifest, samples, seed), "application/json", tensor_check(manifest))


def for_model(model: str, seed: int = 0, version: str = "", model_store: str = "") -> Payloads:
    """The zoo's own generators, else bodies from the model's archive (a packaged model)."""
    if model in FACTORIES:
        return FACTORIES[model](seed)
    return from_archive(model, version, model_store, seed)

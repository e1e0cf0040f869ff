"""Varied, valid request bodies per model, and a check of each response body.

Standard library only, so Locust workers start fast and can run on any host.
A check returns None when the body is right, else what is wrong with it.
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


FACTORIES: dict[str, Callable[..., Payloads]] = {"maintenance": maintenance}


def for_model(model: str, seed: int = 0) -> Payloads:
    if model not in FACTORIES:
        raise KeyError(f"no load-test payloads for model {model!r}; known: {', '.join(FACTORIES)}")
    return FACTORIES[model](seed)

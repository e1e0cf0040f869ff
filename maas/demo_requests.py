"""Requests the demo sends (and the README shows) for each model: typical inputs, a batch
in one request, and a mistake that gets a 400."""
from __future__ import annotations

import json

HEALTHY = {"type": "L", "air_temperature_k": 298.1, "process_temperature_k": 308.6,
            "rotational_speed_rpm": 1551, "torque_nm": 42.8, "tool_wear_min": 0}
# HDF: process - air = 8.3 K < 8.6 K and speed 1320 rpm < 1380 rpm.
HEAT_FAILURE = {"type": "M", "air_temperature_k": 302.5, "process_temperature_k": 310.8,
         "rotational_speed_rpm": 1320, "torque_nm": 52.0, "tool_wear_min": 40}
# OSF: tool wear 220 min x torque 60 Nm = 13,200 min Nm > 11,000 for type L.
OVERSTRAIN = {"type": "L", "air_temperature_k": 299.0, "process_temperature_k": 309.5,
           "rotational_speed_rpm": 1400, "torque_nm": 60.0, "tool_wear_min": 220}

# load_digits()[3]: a real scan of the digit 3.
THREE = [[0, 0, 7, 15, 13, 1, 0, 0], [0, 8, 13, 6, 15, 4, 0, 0], [0, 2, 1, 13, 13, 0, 0, 0],
          [0, 0, 2, 15, 11, 1, 0, 0], [0, 0, 0, 1, 12, 12, 1, 0], [0, 0, 0, 0, 1, 10, 8, 0],
          [0, 0, 8, 4, 5, 14, 9, 0], [0, 0, 7, 13, 13, 9, 0, 0]]

DEMO_REQUESTS: dict[str, list[tuple[str, bytes]]] = {
    "maintenance": [
        ("a healthy machine", json.dumps(HEALTHY).encode()),
        ("heat dissipation failure (HDF rule)", json.dumps(HEAT_FAILURE).encode()),
        ("two records in one request (overstrain OSF, healthy)", json.dumps([OVERSTRAIN, HEALTHY]).encode()),
        ("a mistake: torque as text -> 400 naming the field", json.dumps({**HEALTHY, "torque_nm": "high"}).encode()),
    ],
    "digits": [
        ("an 8x8 scan of a 3 as JSON pixels (0 = paper, 16 = ink)", json.dumps({"pixels": THREE}).encode()),
        ("a mistake: a pixel of 99 -> 400", json.dumps({"pixels": [[99] * 8] + THREE[1:]}).encode()),
    ],
    "minilm": [
        ("one sentence", json.dumps({"text": "The spindle bearing is overheating."}).encode()),
        ("a mistake: texts must be strings -> 400", json.dumps({"texts": ["fine", 42]}).encode()),
    ],
}

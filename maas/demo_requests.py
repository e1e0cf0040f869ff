"""Requests the demo sends (and the README shows): a healthy machine, two known failure
rules, a batch in one request, and a mistake that gets a 400."""
from __future__ import annotations

import json

_HEALTHY = {"type": "L", "air_temperature_k": 298.1, "process_temperature_k": 308.6,
            "rotational_speed_rpm": 1551, "torque_nm": 42.8, "tool_wear_min": 0}
# HDF: process - air = 8.3 K < 8.6 K and speed 1320 rpm < 1380 rpm.
_HEAT = {"type": "M", "air_temperature_k": 302.5, "process_temperature_k": 310.8,
         "rotational_speed_rpm": 1320, "torque_nm": 52.0, "tool_wear_min": 40}
# OSF: tool wear 220 min x torque 60 Nm = 13,200 min Nm > 11,000 for type L.
_STRAIN = {"type": "L", "air_temperature_k": 299.0, "process_temperature_k": 309.5,
           "rotational_speed_rpm": 1400, "torque_nm": 60.0, "tool_wear_min": 220}

DEMO_REQUESTS: dict[str, list[tuple[str, bytes]]] = {
    "maintenance": [
        ("a healthy machine", json.dumps(_HEALTHY).encode()),
        ("heat dissipation failure (HDF rule)", json.dumps(_HEAT).encode()),
        ("two records in one request (overstrain OSF, healthy)", json.dumps([_STRAIN, _HEALTHY]).encode()),
        ("a mistake: torque as text -> 400 naming the field", json.dumps({**_HEALTHY, "torque_nm": "high"}).encode()),
    ],
}

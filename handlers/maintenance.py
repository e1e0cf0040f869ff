"""TorchServe handler for `maintenance`: JSON machine record(s) -> failure risk.

Request:  {"type": "L", "air_temperature_k": 298.1, "process_temperature_k": 308.6,
           "rotational_speed_rpm": 1551, "torque_nm": 42.8, "tool_wear_min": 0}
          or a JSON list of such records.
Response: {"failure_probability": 0.01, "failure": false,
           "failure_modes": {"TWF": ..., "HDF": ..., "PWF": ..., "OSF": ..., "RNF": ...}}
          (a list for a list). Field names, product types and ranges come from manifest.json.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from ort_base import Arrays, InputError, OrtHandler, finite_number, parse_json


class MaintenanceHandler(OrtHandler):
    def record_features(self, record: Any, where: str) -> list[float]:
        spec = self.manifest["record"]
        if not isinstance(record, dict):
            raise InputError(f"a record must be a JSON object, got {type(record).__name__}", where or None)
        prefix = f"{where}." if where else ""
        allowed = {"type", *spec["numeric_fields"]}
        unknown = sorted(set(record) - allowed)
        if unknown:
            raise InputError(f"unknown field; expected only {sorted(allowed)}", prefix + str(unknown[0]))
        missing = [f for f in ["type", *spec["numeric_fields"]] if f not in record]
        if missing:
            raise InputError("missing required field", prefix + missing[0])
        product = record["type"]
        if product not in spec["product_types"]:
            raise InputError(f"product type must be one of {spec['product_types']}, got {product!r}"[:200], prefix + "type")
        onehot = [1.0 if product == t else 0.0 for t in spec["product_types"]]
        numbers = [finite_number(record[f], prefix + f, tuple(spec["limits"][f])) for f in spec["numeric_fields"]]
        return onehot + numbers

    def preprocess(self, body: Any) -> tuple[Arrays, bool]:
        payload = parse_json(body)
        single = isinstance(payload, dict)
        if single:
            records = [payload]
        elif isinstance(payload, list):
            records = payload
            if not records:
                raise InputError("empty list: send at least one record")
            if len(records) > self.max_items():
                raise InputError(f"{len(records)} records in one request; the limit is {self.max_items()}", status=413)
        else:
            raise InputError(f"body must be a JSON object or a list of objects, got {type(payload).__name__}")
        rows = [self.record_features(r, "" if single else f"[{i}]") for i, r in enumerate(records)]
        return {"features": np.asarray(rows, dtype=np.float32)}, single

    def check_tensors(self, inputs: Arrays) -> None:
        spec, feats = self.manifest["record"], inputs["features"]
        n_types = len(spec["product_types"])
        onehot = feats[:, :n_types]
        if not (np.isin(onehot, (0.0, 1.0)).all() and (onehot.sum(axis=1) == 1).all()):
            raise InputError(f"the first {n_types} features must one-hot encode {spec['product_types']}", "features")
        for j, name in enumerate(spec["numeric_fields"]):
            lo, hi = spec["limits"][name]
            column = feats[:, n_types + j]
            if column.min() < lo or column.max() > hi:
                raise InputError(f"{name} (feature {n_types + j}) must be in [{lo:g}, {hi:g}]", "features")

    def postprocess(self, outputs: Arrays, single: bool) -> Any:
        threshold = float(self.manifest["threshold"])
        modes = self.manifest["failure_modes"]
        answers = [
            {
                "failure_probability": round(float(p), 6),
                "failure": bool(p >= threshold),
                "failure_modes": {m: round(float(v), 6) for m, v in zip(modes, row)},
            }
            for p, row in zip(outputs["failure_probability"], outputs["mode_probabilities"])
        ]
        return answers[0] if single else answers

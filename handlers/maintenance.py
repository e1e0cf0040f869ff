"""TorchServe handler for `maintenance`: JSON machine record(s) -> failure risk.

Request:  {"type": "L", "air_temperature_k": 298.1, "process_temperature_k": 308.6,
           "rotational_speed_rpm": 1551, "torque_nm": 42.8, "tool_wear_min": 0}
          or a JSON list of such records.
Response: {"failure_probability": 0.01, "failure": false,
           "failure_modes": {"TWF": ..., "HDF": ..., "PWF": ..., "OSF": ..., "RNF": ...}}
          (a list for a list). Field names, product types and ranges come from manifest.json.
"""
from __future__ import annotations

from itertools import combinations
from math import factorial
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
        modes = next(o["labels"] for o in self.manifest["outputs"] if o["name"] == "mode_probabilities")
        answers = [
            {
                "failure_probability": round(float(p), 6),
                "failure": bool(p >= threshold),
                "failure_modes": {m: round(float(v), 6) for m, v in zip(modes, row)},
            }
            for p, row in zip(outputs["failure_probability"], outputs["mode_probabilities"])
        ]
        return answers[0] if single else answers

    # ---- explanations -----------------------------------------------------------------
    def players(self) -> list[tuple[str, list[int]]]:
        """Shapley players: the product type (its one-hot columns together) and each reading."""
        spec = self.manifest["record"]
        n_types = len(spec["product_types"])
        return [("type", list(range(n_types)))] + [(f, [n_types + j]) for j, f in enumerate(spec["numeric_fields"])]

    def explain(self, inputs: Arrays, single: bool) -> Any:
        """Exact Shapley values of the failure probability against the manifest's baseline record.

        6 players -> 2**6 coalitions, all scored in ONE session.run per record; the values sum
        to p(record) - p(baseline) up to float rounding (efficiency).
        """
        players = self.players()
        n = len(players)
        baseline = np.asarray(self.record_features(self.manifest["explanation"]["baseline"], "baseline"), np.float32)
        masks = np.array([[(m >> i) & 1 for i in range(n)] for m in range(2 ** n)], dtype=bool)
        weight = {k: factorial(k) * factorial(n - k - 1) / factorial(n) for k in range(n)}
        answers = []
        for row in inputs["features"]:
            rows = np.repeat(baseline[None, :], len(masks), axis=0)
            for i, (_, cols) in enumerate(players):
                rows[np.ix_(masks[:, i], cols)] = row[cols]
            prob = self._session_run({"features": rows})[0].astype(np.float64)
            index = {tuple(m): p for m, p in zip(masks.tolist(), prob)}
            phi = np.zeros(n)
            for i in range(n):
                others = [j for j in range(n) if j != i]
                for k in range(n):
                    for subset in combinations(others, k):
                        without = [j in subset for j in range(n)]
                        with_i = [j in subset or j == i for j in range(n)]
                        phi[i] += weight[k] * (index[tuple(with_i)] - index[tuple(without)])
            full, empty = float(prob[-1]), float(prob[0])
            answers.append({
                "failure_probability": round(full, 6),
                "baseline_probability": round(empty, 6),
                "attributions": {name: round(float(v), 6) for (name, _), v in zip(players, phi)},
                "sum_of_attributions": round(float(phi.sum()), 6),
                "method": f"exact Shapley values over {n} features ({len(masks)} forward passes); "
                          "absent features take the baseline record's values",
                "baseline": self.manifest["explanation"]["baseline"],
            })
        return answers[0] if single else answers

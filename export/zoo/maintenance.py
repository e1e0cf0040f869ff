"""`maintenance`: failure risk of a milling machine from its sensor readings.

Data follow the published rules of the AI4I 2020 predictive-maintenance data set
(Matzka 2020, UCI id 601), regenerated here from a seed so nothing is downloaded:
- product type L/M/H (50/30/20 %); air temperature ~300 K (sd 2 K); process temperature
  = air + 10 K (sd 1 K); torque ~ N(40, 10) Nm, non-negative; rotational speed falls
  with torque around 1538 rpm (the data set's correlation is about -0.88); tool wear
  0-253 min.
- TWF: the tool fails at a random wear time between 200 and 240 min;
  HDF: process - air < 8.6 K and speed < 1380 rpm;
  PWF: power (torque x speed in rad/s) < 3500 W or > 9000 W;
  OSF: tool wear x torque > 11,000 (L), 12,000 (M), 13,000 (H) min Nm;
  RNF: 0.1 % of records fail at random. `failure` is any of the five.
"""
from __future__ import annotations

import functools
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from maas.core.bodies import Case, Check, Payloads
from maas.core.spec import ModelSpec, ServingSpec, TensorSpec
from maas.export.trained import Trained, fit
from maas.export.zoo import ZooModel, register

log = logging.getLogger(__name__)

PRODUCT_TYPES = ("L", "M", "H")
NUMERIC_FIELDS = (
    "air_temperature_k",
    "process_temperature_k",
    "rotational_speed_rpm",
    "torque_nm",
    "tool_wear_min",
)
# Order of the model's `features` input: one-hot product type, then the numeric fields.
FEATURES = tuple(f"type_{t}" for t in PRODUCT_TYPES) + NUMERIC_FIELDS
FAILURE_MODES = ("TWF", "HDF", "PWF", "OSF", "RNF")
# Physically plausible ranges; a request outside them is refused (400), not extrapolated.
FIELD_LIMITS = {
    "air_temperature_k": (250.0, 350.0),
    "process_temperature_k": (250.0, 400.0),
    "rotational_speed_rpm": (0.0, 10_000.0),
    "torque_nm": (0.0, 500.0),
    "tool_wear_min": (0.0, 1_000.0),
}
OSF_LIMIT = {"L": 11_000.0, "M": 12_000.0, "H": 13_000.0}
THRESHOLD = 0.5  # failure_probability at or above it answers "failure": true (the manifest carries it)

SPEC = ModelSpec(
    name="maintenance",
    version="1.0",
    description="MLP: failure probability and failure modes of a milling machine (AI4I 2020 rules)",
    inputs=(
        TensorSpec("features", "float32", ("batch", len(FEATURES)), "one-hot type L/M/H, then " + ", ".join(NUMERIC_FIELDS)),
    ),
    outputs=(
        TensorSpec("failure_probability", "float32", ("batch",), "P(machine failure)"),
        TensorSpec("mode_probabilities", "float32", ("batch", len(FAILURE_MODES)), "P(mode) for " + ", ".join(FAILURE_MODES),
                   labels=FAILURE_MODES, top_k=len(FAILURE_MODES), scores="raw"),
    ),
    handler="maintenance.py",
    serving=ServingSpec(batch_size=16, max_batch_delay_ms=5, intra_op_threads=1, max_items_per_request=256),
)


@dataclass
class Records:
    """A column-oriented table of machine records and their labels."""

    product_type: np.ndarray  # str, "L"/"M"/"H"
    numeric: np.ndarray  # float32 [n, 5], NUMERIC_FIELDS order
    failure: np.ndarray  # bool [n]
    modes: np.ndarray  # bool [n, 5], FAILURE_MODES order

    def __len__(self) -> int:
        return len(self.product_type)

    def features(self) -> np.ndarray:
        onehot = (self.product_type[:, None] == np.array(PRODUCT_TYPES)[None, :]).astype(np.float32)
        return np.concatenate([onehot, self.numeric.astype(np.float32)], axis=1)

    def subset(self, idx: np.ndarray) -> "Records":
        return Records(self.product_type[idx], self.numeric[idx], self.failure[idx], self.modes[idx])

    def as_json(self, i: int) -> dict[str, Any]:
        """Record i as the JSON object the endpoint accepts."""
        rec: dict[str, Any] = {"type": str(self.product_type[i])}
        for j, name in enumerate(NUMERIC_FIELDS):
            value = float(self.numeric[i, j])
            rec[name] = round(value, 1) if name.endswith("_k") else round(value)
        return rec


def failure_modes(product_type: np.ndarray, numeric: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The AI4I 2020 failure rules -> bool [n, 5] (TWF, HDF, PWF, OSF, RNF)."""
    air, proc, speed, torque, wear = (numeric[:, i].astype(np.float64) for i in range(5))
    n = len(air)
    # Each tool fails (or is replaced) at its own random wear time in [200, 240] min; a
    # record shows TWF when its wear sits within 1 min of that time (~1 % of records).
    fail_at = rng.uniform(200, 240, n)
    twf = np.abs(wear - fail_at) <= 1
    hdf = ((proc - air) < 8.6) & (speed < 1380)
    power_w = torque * speed * 2 * np.pi / 60
    pwf = (power_w < 3500) | (power_w > 9000)
    osf_limit = np.vectorize(OSF_LIMIT.get)(product_type)
    osf = wear * torque > osf_limit
    rnf = rng.random(n) < 0.001
    return np.stack([twf, hdf, pwf, osf, rnf], axis=1)


def generate(n: int, seed: int = 0) -> Records:
    """n machine records drawn from the AI4I 2020 process, deterministic for a seed."""
    rng = np.random.default_rng(seed)
    product_type = rng.choice(np.array(PRODUCT_TYPES), size=n, p=[0.5, 0.3, 0.2])
    air = 300.0 + rng.normal(0, 2, n)
    proc = air + 10.0 + rng.normal(0, 1, n)
    torque = np.clip(rng.normal(40, 10, n), 3.8, 76.6)
    speed = np.clip(1538 - 15.75 * (torque - 40) + rng.normal(0, 85, n), 1168, 2886)
    wear_bonus = np.select([product_type == "H", product_type == "M"], [5, 3], 2)
    wear = np.clip(rng.integers(0, 250, n) + rng.integers(0, wear_bonus + 1), 0, 253).astype(np.float64)
    numeric = np.stack([air, proc, np.round(speed), torque, wear], axis=1).astype(np.float32)
    modes = failure_modes(product_type, numeric, rng)
    return Records(product_type, numeric, modes.any(axis=1), modes)


@functools.cache
def _net_class() -> type:
    """MaintenanceNet, defined on first use: torch is imported only when a model is built."""
    import torch
    from torch import nn

    class MaintenanceNet(nn.Module):
        """Raw features in, probabilities out: feature engineering and scaling live in the graph,
        so a caller (TorchServe, Triton, KServe) sends sensor readings as they are."""

        def __init__(self, mean: torch.Tensor, std: torch.Tensor, hidden: int = 64) -> None:
            super().__init__()
            self.register_buffer("mean", mean)
            self.register_buffer("std", std)
            width = mean.shape[0]
            self.body = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
            self.head = nn.Linear(hidden, 1 + len(FAILURE_MODES))

        @staticmethod
        def engineer(features: torch.Tensor) -> torch.Tensor:
            """Append the quantities the failure rules are written in."""
            air, proc, speed, torque, wear = (features[:, 3 + i : 4 + i] for i in range(5))
            temp_diff = proc - air
            power_kw = torque * speed * (2 * torch.pi / 60_000)
            strain = wear * torque / 1000
            return torch.cat([features, temp_diff, power_kw, strain], dim=1)

        def logits(self, features: torch.Tensor) -> torch.Tensor:
            z = (self.engineer(features) - self.mean) / self.std
            return self.head(self.body(z))

        def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            probs = torch.sigmoid(self.logits(features))
            return probs[:, 0], probs[:, 1:]

    return MaintenanceNet


def __getattr__(name: str) -> Any:  # PEP 562: `maintenance.MaintenanceNet` without importing torch up front
    if name == "MaintenanceNet":
        return _net_class()
    raise AttributeError(name)


def binary_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float = THRESHOLD) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    pred = prob >= threshold
    return {
        "accuracy": float(accuracy_score(y_true, pred)),
        "f1": float(f1_score(y_true, pred, zero_division=0)),
        "roc_auc": float(roc_auc_score(y_true, prob)),
        "positives": int(y_true.sum()),
        "n": int(len(y_true)),
    }


def baseline_record(records: Records) -> dict[str, Any]:
    types, counts = np.unique(records.product_type, return_counts=True)
    record: dict[str, Any] = {"type": str(types[counts.argmax()])}
    record.update({f: round(float(np.median(records.numeric[:, j])), 1) for j, f in enumerate(NUMERIC_FIELDS)})
    return record


def split(n_records: int = 30_000, seed: int = 0) -> tuple[Records, Records]:
    """The 80/20 train/held-out split every build (and every variant's evaluation) uses."""
    data = generate(n_records, seed)
    order = np.random.default_rng(seed + 1).permutation(len(data))
    cut = int(0.8 * len(data))
    return data.subset(order[:cut]), data.subset(order[cut:])


def variant_report(fp32: Path, variant: Path, engine: dict[str, Any] | None = None) -> dict[str, Any]:
    """Held-out failure metrics of both files; the cost is the accuracy drop in points."""
    from maas.export.variants import held_out_outputs

    _, test_set = split()
    feats = {"features": test_set.features()}
    base, cand = (binary_metrics(test_set.failure, held_out_outputs(p, feats, engine=e)[0])
                  for p, e in ((fp32, None), (variant, engine)))
    drop = 100 * (base["accuracy"] - cand["accuracy"])
    return {"cost_metric": "accuracy drop (points)", "cost": drop, "budget": 1.0, "within_budget": drop <= 1.0,
            "fp32": base, "variant": cand,
            "auc_delta": cand["roc_auc"] - base["roc_auc"], "f1_delta": cand["f1"] - base["f1"]}


def train(n_records: int = 30_000, seed: int = 0, epochs: int = 60, hidden: int = 64) -> Trained:
    """Generate data, train the MLP, report held-out metrics for `failure`."""
    import torch
    from torch import nn

    MaintenanceNet = _net_class()
    torch.manual_seed(seed)
    train_set, test_set = split(n_records, seed)

    x = torch.from_numpy(train_set.features())
    y = torch.from_numpy(np.concatenate([train_set.failure[:, None], train_set.modes], axis=1).astype(np.float32))
    eng = MaintenanceNet.engineer(x)
    model = MaintenanceNet(eng.mean(0), eng.std(0).clamp_min(1e-6), hidden=hidden)
    # Failures are ~4 % of records: weight positives so the rare modes are learned at all.
    pos_weight = ((1 - y.mean(0)) / y.mean(0).clamp_min(1e-3)).clamp(max=20.0).sqrt()
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    if epochs:
        fit(model, lambda idx, _gen: loss_fn(model.logits(x[idx]), y[idx]), len(x),
            name="maintenance", epochs=epochs, batch_size=256, lr=3e-3, seed=seed)
    model.eval()
    with torch.no_grad():
        prob, mode_prob = model(torch.from_numpy(test_set.features()))
    metrics = binary_metrics(test_set.failure, prob.numpy())
    metrics["per_mode_f1"] = {
        m: binary_metrics(test_set.modes[:, j], mode_prob[:, j].numpy())["f1"] for j, m in enumerate(FAILURE_MODES)
    }
    metrics["train_records"], metrics["test_records"], metrics["seed"] = len(train_set), len(test_set), seed
    log.info(
        "maintenance held-out: accuracy %.4f  F1 %.4f  ROC-AUC %.4f  (%d records, %d failures)",
        metrics["accuracy"], metrics["f1"], metrics["roc_auc"], metrics["n"], metrics["positives"],
    )
    extra = {
        "features": list(FEATURES),
        "record": {
            "product_types": list(PRODUCT_TYPES),
            "numeric_fields": list(NUMERIC_FIELDS),
            "limits": {k: list(v) for k, v in FIELD_LIMITS.items()},
        },
        "threshold": THRESHOLD,
        "example_request": test_set.as_json(0),
        # Explanations measure each reading against this typical record (most common type,
        # median readings of the training split).
        "explanation": {"baseline": baseline_record(train_set)},
    }
    return Trained(model, {"features": test_set.features()}, metrics, extra)


# ---- requests: load tests, demo, release smoke checks (no torch) -------------------------------
HEALTHY = {"type": "L", "air_temperature_k": 298.1, "process_temperature_k": 308.6,
           "rotational_speed_rpm": 1551, "torque_nm": 42.8, "tool_wear_min": 0}
# HDF: process - air = 8.3 K < 8.6 K and speed 1320 rpm < 1380 rpm.
HEAT_FAILURE = {"type": "M", "air_temperature_k": 302.5, "process_temperature_k": 310.8,
                "rotational_speed_rpm": 1320, "torque_nm": 52.0, "tool_wear_min": 40}
# OSF: tool wear 220 min x torque 60 Nm = 13,200 min Nm > 11,000 for type L.
OVERSTRAIN = {"type": "L", "air_temperature_k": 299.0, "process_temperature_k": 309.5,
              "rotational_speed_rpm": 1400, "torque_nm": 60.0, "tool_wear_min": 220}


def random_record(rng: random.Random) -> dict[str, Any]:
    """A plausible machine record (ranges of the AI4I 2020 data set)."""
    air = rng.gauss(300.0, 2.0)
    torque = min(max(rng.gauss(40.0, 10.0), 3.8), 76.6)
    return {
        "type": rng.choices(PRODUCT_TYPES, weights=(5, 3, 2))[0],
        "air_temperature_k": round(air, 1),
        "process_temperature_k": round(air + 10.0 + rng.gauss(0.0, 1.0), 1),
        "rotational_speed_rpm": round(min(max(1538 - 15.75 * (torque - 40) + rng.gauss(0, 85), 1168), 2886)),
        "torque_nm": round(torque, 1),
        "tool_wear_min": rng.randint(0, 253),
    }


def check_answer(answer: Any) -> Optional[str]:
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


def expect_failure(expected: bool, mode: str | None = None) -> Check:
    def check(answer: Any) -> Optional[str]:
        if not isinstance(answer, dict) or answer.get("failure") is not expected:
            return f"expected failure={expected}, got {str(answer)[:120]}"
        if mode and answer["failure_modes"].get(mode, 0) < THRESHOLD:
            return f"expected {mode} >= {THRESHOLD}, got {answer['failure_modes']}"
        return None
    return check


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


@register
class Maintenance(ZooModel):
    name = "maintenance"
    spec = SPEC

    def train(self, seed: int = 0) -> Trained:
        return train(seed=seed)

    def tiny(self, seed: int = 0) -> Trained:
        return train(seed=seed, epochs=0, hidden=8)

    def variant_report(self, fp32: Path, variant: Path, engine: dict[str, Any] | None = None) -> dict[str, Any]:
        return variant_report(fp32, variant, engine)

    def calibration(self, items: int) -> list[dict[str, Any]]:
        features = split()[0].features()
        return [{"features": features[i:i + 1]} for i in range(min(items, len(features)))]

    def payloads(self, seed: int = 0, pool: int = 512) -> Payloads:
        rng = random.Random(seed)
        return Payloads([_json(random_record(rng)) for _ in range(pool)], "application/json", check_answer)

    def demo_requests(self, example: Any) -> list[tuple[str, bytes, str]]:
        return [("heat dissipation failure (HDF rule)", _json(HEAT_FAILURE), "application/json"),
                ("two records in one request (overstrain OSF, healthy)", _json([OVERSTRAIN, HEALTHY]), "application/json"),
                ("a mistake: torque as text -> 400 naming the field", _json({**example, "torque_nm": "high"}),
                 "application/json")]

    def answer_summary(self, answer: Any) -> str:
        def one(a: dict[str, Any]) -> str:
            modes = [f"{m} {p:.2f}" for m, p in a["failure_modes"].items() if p >= THRESHOLD]
            verdict = ("failure" + (f" ({', '.join(modes)})" if modes else "")) if a["failure"] else "no failure"
            return f"P(failure) {a['failure_probability']:.3f}: {verdict}"
        return "; ".join(one(a) for a in answer) if isinstance(answer, list) else one(answer)

    def smoke_cases(self) -> list[Case]:
        return [("healthy machine", _json(HEALTHY), "application/json", expect_failure(False)),
                ("heat dissipation failure", _json(HEAT_FAILURE), "application/json", expect_failure(True, "HDF")),
                ("overstrain failure", _json(OVERSTRAIN), "application/json", expect_failure(True, "OSF"))]

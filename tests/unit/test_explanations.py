"""Explanations from forward passes of the ONNX model only, on the tiny untrained models:
maintenance's exact Shapley values add up; digits' occlusion map is 8x8 and exact where the
image is blank; explanation requests mix safely with predictions in one batch. That they blame
the right readings needs a trained model: tests/integration/test_trained_zoo.py."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import HDF, FakeContext, zoo_handlers
from maas.export.zoo import maintenance as m


@pytest.fixture(scope="module")
def handlers(tiny_models, tmp_path_factory):
    return zoo_handlers(tiny_models, tmp_path_factory)


def ask(handler, bodies: list, explain: list[bool]) -> tuple[list, FakeContext]:
    ctx = FakeContext(Path("."))
    ctx.request_headers = {i: {"explain": "True"} for i, e in enumerate(explain) if e}
    out = handler.handle([{"body": json.dumps(b).encode()} for b in bodies], ctx)
    return [json.loads(o) for o in out], ctx


def test_shapley_values_add_up(handlers) -> None:
    (answer,), ctx = ask(handlers["maintenance"], [HDF], [True])
    assert 0 not in ctx.status or ctx.status[0][0] == 200
    phi = answer["attributions"]
    assert set(phi) == {"type", *m.NUMERIC_FIELDS}
    gap = answer["failure_probability"] - answer["baseline_probability"]
    assert abs(sum(phi.values()) - gap) <= 1e-5  # efficiency: stated tolerance 1e-5


def test_shapley_values_add_up_on_held_out_records(handlers) -> None:
    records = [m.generate(40, seed=9).as_json(i) for i in range(0, 40, 4)]
    answers, _ = ask(handlers["maintenance"], [records], [True])
    for a in answers[0]:
        gap = a["failure_probability"] - a["baseline_probability"]
        assert abs(a["sum_of_attributions"] - gap) <= 1e-5


def test_explanations_and_predictions_share_a_batch(handlers) -> None:
    bad = {**HDF, "torque_nm": "lots"}
    answers, ctx = ask(handlers["maintenance"], [HDF, HDF, bad, HDF], [True, False, True, False])
    assert "attributions" in answers[0] and "failure_modes" in answers[1] and "failure_modes" in answers[3]
    assert ctx.status[2][0] == 400 and answers[2]["field"] == "torque_nm"
    assert answers[1]["failure_probability"] == pytest.approx(answers[0]["failure_probability"], abs=1e-6)
    too_many, ctx = ask(handlers["maintenance"], [[HDF] * 17], [True])
    assert ctx.status[0][0] == 413


def test_digits_occlusion_map(handlers) -> None:
    from sklearn.datasets import load_digits

    image = load_digits().images[7]
    (answer,), _ = ask(handlers["digits"], [{"pixels": image.astype(int).tolist()}], [True])
    grid = np.array(answer["occlusion"])
    assert grid.shape == (8, 8) and answer["label"] in "0123456789"
    assert np.all(grid[image == 0] == 0)  # blanking a blank pixel changes nothing
    assert grid.max() > 0.0


def test_models_without_explanations_say_so(handlers) -> None:
    (answer,), ctx = ask(handlers["minilm"], [{"text": "hello"}], [True])
    assert ctx.status[0][0] == 404 and "not available" in answer["message"]

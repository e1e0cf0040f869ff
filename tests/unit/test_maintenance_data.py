"""The AI4I 2020 generator follows the published failure rules."""
import numpy as np
import pytest

from maas.export.zoo import maintenance as m


@pytest.fixture(scope="module")
def data() -> m.Records:
    return m.generate(20_000, seed=3)


def test_same_seed_same_records() -> None:
    a, b = m.generate(500, seed=7), m.generate(500, seed=7)
    assert np.array_equal(a.numeric, b.numeric) and np.array_equal(a.modes, b.modes)
    assert not np.array_equal(a.numeric, m.generate(500, seed=8).numeric)


def test_distributions_match_the_data_set(data: m.Records) -> None:
    air, proc, speed, torque, wear = data.numeric.T
    shares = {t: np.mean(data.product_type == t) for t in m.PRODUCT_TYPES}
    assert shares["L"] == pytest.approx(0.5, abs=0.02) and shares["H"] == pytest.approx(0.2, abs=0.02)
    assert air.mean() == pytest.approx(300, abs=0.2) and air.std() == pytest.approx(2, abs=0.1)
    assert (proc - air).mean() == pytest.approx(10, abs=0.05)
    assert torque.mean() == pytest.approx(40, abs=0.5) and torque.min() >= 0
    assert np.corrcoef(speed, torque)[0, 1] < -0.8
    assert wear.min() >= 0 and wear.max() <= 253


def test_heat_dissipation_rule(data: m.Records) -> None:
    air, proc, speed = data.numeric[:, 0], data.numeric[:, 1], data.numeric[:, 2]
    expected = ((proc - air) < 8.6) & (speed < 1380)
    assert np.array_equal(data.modes[:, 1], expected) and expected.any()


def test_power_rule(data: m.Records) -> None:
    power = data.numeric[:, 3] * data.numeric[:, 2] * 2 * np.pi / 60
    assert np.array_equal(data.modes[:, 2], (power < 3500) | (power > 9000))


def test_overstrain_threshold_depends_on_product_type(data: m.Records) -> None:
    strain = data.numeric[:, 4].astype(np.float64) * data.numeric[:, 3]
    limits = np.array([m.OSF_LIMIT[t] for t in data.product_type])
    assert np.array_equal(data.modes[:, 3], strain > limits)


def test_tool_wear_failures_only_between_200_and_240_minutes(data: m.Records) -> None:
    wear = data.numeric[:, 4][data.modes[:, 0]]
    assert len(wear) > 0 and wear.min() >= 199 and wear.max() <= 241


def test_failure_is_any_mode_and_random_failures_are_rare(data: m.Records) -> None:
    assert np.array_equal(data.failure, data.modes.any(axis=1))
    assert 0.0 < data.modes[:, 4].mean() < 0.003
    assert 0.02 < data.failure.mean() < 0.12


def test_json_records_round_trip_the_features(data: m.Records) -> None:
    rec = data.as_json(0)
    assert set(rec) == {"type", *m.NUMERIC_FIELDS}
    onehot = [1.0 if rec["type"] == t else 0.0 for t in m.PRODUCT_TYPES]
    assert np.allclose(onehot + [rec[f] for f in m.NUMERIC_FIELDS], data.features()[0], atol=0.06)

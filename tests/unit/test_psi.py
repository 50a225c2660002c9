"""PSI arithmetic of the local monitor against hand-computed values."""
import math

import pytest

from shared.local.monitor import feature_psi, psi


def test_identical_distributions_have_zero_psi():
    assert psi([0.25, 0.25, 0.5], [0.25, 0.25, 0.5]) == pytest.approx(0.0)


def test_psi_matches_the_formula():
    e, a = [0.5, 0.5], [0.8, 0.2]
    expected = (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)
    assert psi(e, a) == pytest.approx(expected)


def test_numeric_values_fall_into_the_baseline_bins():
    spec = {"type": "numeric", "edges": [10.0, 20.0], "shares": [1 / 3, 1 / 3, 1 / 3]}
    assert feature_psi(spec, [5, 15, 25] * 10) == pytest.approx(0.0)
    assert feature_psi(spec, [25] * 30) > 1.0
    assert feature_psi(spec, ["x", None]) == 0.0  # nothing readable: no evidence of drift


def test_unseen_categories_count_as_drift():
    spec = {"type": "categorical", "shares": {"a": 0.5, "b": 0.5}}
    assert feature_psi(spec, ["a", "b"] * 10) == pytest.approx(0.0)
    assert feature_psi(spec, ["c"] * 20) > 1.0

"""PSI of the drift engine (which the local monitor uses) against hand-computed values, on baseline.json specs."""
import math

import pytest

from shared.drift.engine import Thresholds, compare, psi

FEW = Thresholds(min_rows=1)


def _psi(spec: dict, values: list) -> float | None:
    return compare({"rows": 300, "features": {"f": spec}}, {"f": values}, thresholds=FEW).features["f"].stats.get("psi")


def test_identical_distributions_have_zero_psi():
    assert psi([25, 25, 50], [25, 25, 50]) == pytest.approx(0.0)


def test_psi_matches_the_formula():
    e, a = [50, 50], [80, 20]
    expected = (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)
    assert psi(e, a) == pytest.approx(expected)


def test_numeric_values_fall_into_the_baseline_bins():
    spec = {"type": "numeric", "edges": [10.0, 20.0], "shares": [1 / 3, 1 / 3, 1 / 3]}
    assert _psi(spec, [5, 15, 25] * 10) == pytest.approx(0.0)
    assert _psi(spec, [25] * 30) > 1.0
    assert _psi(spec, [math.nan, None]) is None  # nothing readable: no evidence of drift


def test_unseen_categories_count_as_drift():
    spec = {"type": "categorical", "shares": {"a": 0.5, "b": 0.5}}
    assert _psi(spec, ["a", "b"] * 10) == pytest.approx(0.0)
    assert _psi(spec, ["c"] * 20) > 1.0

"""The drift engine against the reference implementations (scipy), on random and adversarial data, and its decisions."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.spatial.distance import jensenshannon

from shared.drift import engine
from shared.drift.engine import Baseline, Thresholds, compare
from shared.training.baseline_profile import QUANTILES, Coded, build_profile, read_profile

TOL = dict(rtol=1e-12, atol=1e-12)
finite = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)
tied = st.sampled_from([-2.0, 0.0, 0.5, 0.5000000000000001, 1.0, 3.0, 1e6])
samples = st.one_of(st.lists(finite, min_size=1, max_size=60), st.lists(tied, min_size=1, max_size=60))


@settings(max_examples=400, deadline=None)
@given(samples, samples)
def test_ks_and_wasserstein_equal_scipy_on_ties_tiny_and_unequal_samples(a, b):
    a, b = np.sort(np.array(a)), np.sort(np.array(b))
    assert np.isclose(engine.ks_statistic(a, b), stats.ks_2samp(a, b).statistic, **TOL)
    assert np.isclose(engine.wasserstein_distance(a, b), stats.wasserstein_distance(a, b), **TOL)


@pytest.mark.parametrize("seed", range(5))
def test_ks_and_wasserstein_equal_scipy_on_large_random_samples(seed):
    rng = np.random.default_rng(seed)
    a = np.sort(rng.lognormal(size=20_000 + seed))
    b = np.sort(rng.lognormal(0.05 * seed, 1.0, size=7_001))
    assert np.isclose(engine.ks_statistic(a, b), stats.ks_2samp(a, b).statistic, **TOL)
    assert np.isclose(engine.wasserstein_distance(a, b), stats.wasserstein_distance(a, b), **TOL)


def test_compare_drops_nan_and_infinity_then_agrees_with_scipy_and_reports_the_missing_share():
    rng = np.random.default_rng(7)
    base = rng.normal(size=3000)
    window = rng.normal(0.3, 1.0, size=1000)
    window[::10] = np.nan
    window[5] = np.inf
    result = compare(Baseline.from_samples({"x": base}), {"x": window}, workers=1)
    x = result.features["x"]
    kept = window[np.isfinite(window)]
    assert np.isclose(x.stats["ks"], stats.ks_2samp(base, kept).statistic, **TOL)
    assert np.isclose(x.stats["wasserstein_raw"], stats.wasserstein_distance(base, kept), **TOL)
    assert x.stats["wasserstein"] == pytest.approx(x.stats["wasserstein_raw"] / base.std())
    assert x.stats["missing"] == pytest.approx(101 / 1000)
    assert x.rows == kept.size and x.method == "exact"


with_gaps = st.lists(st.one_of(finite, tied, st.sampled_from([math.nan, math.inf, -math.inf])), min_size=0, max_size=50)


@settings(max_examples=200, deadline=None)
@given(with_gaps, with_gaps)
def test_compare_with_raw_samples_agrees_with_scipy_on_the_finite_values_or_stays_inconclusive(a, b):
    a, b = np.array(a, dtype=float), np.array(b, dtype=float)
    x = compare(Baseline.from_samples({"x": a}), {"x": b}, thresholds=Thresholds(min_rows=1), workers=1).features["x"]
    fa, fb = a[np.isfinite(a)], b[np.isfinite(b)]
    if fa.size == 0 or fb.size == 0:
        assert x.status == "inconclusive" and "ks" not in x.stats
        return
    assert np.isclose(x.stats["ks"], stats.ks_2samp(fa, fb).statistic, **TOL)
    assert np.isclose(x.stats["wasserstein_raw"], stats.wasserstein_distance(fa, fb), **TOL)
    assert x.stats["missing"] == pytest.approx(1 - fb.size / b.size)


def test_constant_columns():
    same = compare(Baseline.from_samples({"c": np.full(500, 3.0)}), {"c": np.full(200, 3.0)}, workers=1)
    moved = compare(Baseline.from_samples({"c": np.full(500, 3.0)}), {"c": np.full(200, 4.5)}, workers=1)
    assert same.features["c"].stats["ks"] == 0.0 and same.features["c"].stats["wasserstein"] == 0.0
    assert not same.drifted
    # std 0: the normalised Wasserstein is the shift in the feature's own units
    assert moved.features["c"].stats["ks"] == 1.0 and moved.features["c"].stats["wasserstein"] == pytest.approx(1.5)
    assert moved.drifted


counts = st.lists(st.integers(min_value=0, max_value=10_000), min_size=2, max_size=30)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_jensen_shannon_distance_equals_scipy(data):
    p = data.draw(counts.filter(lambda c: sum(c) > 0))
    q = data.draw(st.lists(st.integers(0, 10_000), min_size=len(p), max_size=len(p)).filter(lambda c: sum(c) > 0))
    assert np.isclose(engine.js_distance(p, q), jensenshannon(p, q, base=2), **TOL)
    assert np.isclose(engine.js_distance(p, q, base=math.e), jensenshannon(p, q), **TOL)


@pytest.mark.parametrize("dof", [1, 2, 3, 4, 5, 9, 10, 25, 50, 99, 100])
@pytest.mark.parametrize("x", [1e-6, 0.01, 0.5, 1.0, 2.5, 7.0, 20.0, 60.0, 150.0, 400.0, 700.0])
def test_chi2_survival_function_equals_scipy(dof, x):
    assert engine.chi2_sf(x, dof) == pytest.approx(stats.chi2.sf(x, dof), rel=1e-10, abs=1e-300)


def test_chi2_survival_function_edges():
    assert engine.chi2_sf(0.0, 3) == 1.0
    assert engine.chi2_sf(math.inf, 3) == 0.0
    assert engine.chi2_sf(1e6, 4) == 0.0  # underflows like the true value
    with pytest.raises(ValueError):
        engine.chi2_sf(1.0, 0)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(st.data())
def test_chi2_homogeneity_equals_scipy_chi2_contingency(data):
    k = data.draw(st.integers(2, 12))
    a = np.array(data.draw(st.lists(st.integers(0, 5000), min_size=k, max_size=k)))
    b = np.array(data.draw(st.lists(st.integers(0, 5000), min_size=k, max_size=k)))
    table = np.vstack([a, b])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        assert engine.chi2_homogeneity(a, b)[2] == 1.0  # nothing to test: no evidence of a difference
        return
    stat, dof, p, v = engine.chi2_homogeneity(a, b)
    ref = stats.chi2_contingency(table, correction=False)
    assert stat == pytest.approx(ref.statistic, rel=1e-12, abs=1e-12)
    assert dof == ref.dof
    assert p == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-300)
    assert v == pytest.approx(math.sqrt(ref.statistic / table.sum()), rel=1e-12, abs=1e-12)


def test_psi_matches_the_formula_with_the_floor():
    e, a = np.array([50, 50, 0]), np.array([80, 20, 0])
    expected = 0.3 * math.log(0.8 / 0.5) - 0.3 * math.log(0.2 / 0.5)  # the empty bin: (1e-4 - 1e-4) ln 1 = 0
    assert engine.psi(e, a) == pytest.approx(expected)
    assert engine.psi([10, 0], [0, 10]) == pytest.approx(2 * (1 - 1e-4) * math.log(1 / 1e-4))


@pytest.mark.parametrize("shape", ["normal", "lognormal", "integers"])
def test_sketch_statistics_are_close_to_the_exact_ones(shape):
    rng = np.random.default_rng(3)
    draw = {"normal": lambda n, s: rng.normal(s, 1.0, n), "lognormal": lambda n, s: rng.lognormal(s, 0.8, n),
            "integers": lambda n, s: rng.poisson(3 + s, n).astype(float)}[shape]
    a, b = np.sort(draw(50_000, 0.0)), np.sort(draw(20_000, 0.2))
    knots = np.array(build_profile({"x": a}, {}, rows=a.size)["features"]["x"]["quantiles"])
    assert abs(engine.ks_statistic_sketch(knots, b) - engine.ks_statistic(a, b)) <= 1.5 / QUANTILES
    assert abs(engine.wasserstein_distance_sketch(knots, b) - engine.wasserstein_distance(a, b)) <= 0.02 * a.std()


def test_sketch_wasserstein_is_the_exact_integral_against_the_interpolated_cdf():
    rng = np.random.default_rng(4)
    knots = np.sort(np.concatenate([rng.normal(size=40), [0.5, 0.5, 0.5]]))  # repeated knots: a jump
    b = np.sort(np.concatenate([rng.normal(0.3, 1.2, size=300), [0.5] * 5]))
    grid = np.linspace(min(knots[0], b[0]) - 1, max(knots[-1], b[-1]) + 1, 2_000_001)
    fa = engine.sketch_cdf(knots, grid, "right")
    fb = np.searchsorted(b, grid, side="right") / b.size
    numeric = np.trapezoid(np.abs(fa - fb), grid)
    assert engine.wasserstein_distance_sketch(knots, b) == pytest.approx(numeric, rel=1e-4)
    # and the KS statistic is the supremum of the same difference
    assert engine.ks_statistic_sketch(knots, b) == pytest.approx(np.abs(fa - fb).max(), abs=1e-4)


@settings(max_examples=150, deadline=None)
@given(st.lists(tied, min_size=2, max_size=40), st.lists(tied, min_size=1, max_size=80), st.integers(1, 9))
def test_the_chunked_sketch_pass_does_not_depend_on_the_chunk_size(knots, b, chunk):
    knots, b = np.sort(np.array(knots)), np.sort(np.array(b))
    whole = engine.sketch_distances(knots, b, chunk=10_000)
    assert np.allclose(engine.sketch_distances(knots, b, chunk=chunk), whole, rtol=1e-12, atol=1e-12)
    # and KS is the supremum of |Fa - Fb| at the points where either can jump
    points = np.unique(np.concatenate([knots, b]))
    fb_right = np.searchsorted(b, points, side="right") / b.size
    fb_left = np.searchsorted(b, points, side="left") / b.size
    sup = max(np.abs(engine.sketch_cdf(knots, points, "right") - fb_right).max(),
              np.abs(engine.sketch_cdf(knots, points, "left") - fb_left).max())
    assert whole[0] == pytest.approx(sup, abs=1e-12)


def _frame(rng, n, shift=0.0, colours=("red", "green", "blue")):
    return ({"age": rng.normal(40 + shift, 10, n), "income": rng.lognormal(10, 0.5, n)},
            {"colour": list(rng.choice(colours, n))})


def test_a_shifted_window_drifts_and_an_unshifted_one_does_not():
    rng = np.random.default_rng(11)
    num, cat = _frame(rng, 20_000)
    profile = build_profile(num, cat, rows=20_000)
    same_num, same_cat = _frame(rng, 5_000)
    moved_num, moved_cat = _frame(rng, 5_000, shift=8.0)
    calm = compare(profile, {**same_num, **same_cat})
    drifted = compare(profile, {**moved_num, **same_cat})
    assert calm.status == "no_drift" and calm.top() == []
    assert drifted.status == "drift"
    [top] = drifted.top()
    assert top.name == "age" and {"psi", "ks", "wasserstein"} <= set(top.fired)
    assert top.method == "sketch" and not drifted.features["income"].drifted


def test_too_few_rows_are_inconclusive_never_drift():
    rng = np.random.default_rng(12)
    num, cat = _frame(rng, 5_000)
    small_num, small_cat = _frame(rng, 60, shift=50.0)
    result = compare(build_profile(num, cat, rows=5_000), {**small_num, **small_cat}, thresholds=Thresholds(min_rows=100))
    assert result.status == "inconclusive" and not result.drifted and result.top() == []
    assert "fewer than 100" in result.features["age"].reason
    assert result.features["age"].stats["psi"] > 1  # still reported, just not acted on


def test_unseen_categories_missing_values_and_chi2_fire():
    rng = np.random.default_rng(13)
    num, cat = _frame(rng, 10_000)
    profile = build_profile(num, cat, rows=10_000)
    w_num, _ = _frame(rng, 2_000)
    w_num["age"][:600] = np.nan
    colours = list(rng.choice(["red", "green", "blue", "purple"], 2_000, p=[0.2, 0.2, 0.2, 0.4]))
    result = compare(profile, {**w_num, "colour": colours})
    assert "missing" in result.features["age"].fired
    colour = result.features["colour"]
    assert {"unseen", "chi2", "psi", "js"} <= set(colour.fired)
    assert colour.stats["unseen"] == pytest.approx(colours.count("purple") / 2_000)
    reported = result.to_dict()["features"]["colour"]
    expected = "chi2_p" if colour.statistic == "chi2" else colour.statistic
    assert reported["signal"]["metric"] == expected
    below = expected == "chi2_p"  # a p-value fires under its threshold, the others over
    assert (reported["signal"]["value"] < reported["signal"]["threshold"]) == below


def test_reported_statistics_keep_six_significant_digits():
    small = engine.FeatureResult("c", "categorical", "drift", 500, 500, {"chi2_p": 1.234567891e-30, "psi": 0.31234567},
                                 {"chi2": 2.0})
    assert small.to_dict()["stats"] == {"chi2_p": 1.23457e-30, "psi": 0.312346}


def test_profile_and_raw_baselines_give_the_same_binned_statistics_and_coded_equals_strings():
    rng = np.random.default_rng(14)
    num, cat = _frame(rng, 8_000)
    w_num, w_cat = _frame(rng, 3_000, shift=2.0, colours=("red", "green", "blue", "cyan"))
    exact = compare(Baseline.from_samples(num, cat), {**w_num, **w_cat}, workers=1)
    sketch = compare(build_profile(num, cat, rows=8_000), {**w_num, **w_cat}, workers=2)
    names = sorted(set(w_cat["colour"]))
    coded = Coded(np.array([names.index(v) for v in w_cat["colour"]]), names)
    via_codes = compare(build_profile(num, cat, rows=8_000), {**w_num, "colour": coded})
    for stat in ("psi", "js", "missing"):
        for f in ("age", "income", "colour"):
            assert exact.features[f].stats[stat] == pytest.approx(sketch.features[f].stats[stat], rel=1e-12)
    assert via_codes.features["colour"].stats == sketch.features["colour"].stats
    assert exact.features["age"].method == "exact" and sketch.features["age"].method == "sketch"


def test_predictions_are_compared_when_both_sides_have_them():
    rng = np.random.default_rng(15)
    profile = build_profile({"x": rng.normal(size=5000)}, {}, rows=5000, prediction=rng.beta(2, 5, 5000))
    result = compare(profile, {"x": rng.normal(size=2000)}, predictions=rng.beta(5, 2, 2000))
    assert result.features["prediction"].drifted and [f.name for f in result.top()] == ["prediction"]
    assert "prediction" not in compare(profile, {"x": rng.normal(size=2000)}).features


def test_a_schema_1_baseline_still_gives_binned_statistics_and_says_ks_is_unavailable():
    old = {"rows": 1000, "features": {
        "x": {"type": "numeric", "edges": [0.0, 1.0], "shares": [0.25, 0.5, 0.25]},
        "c": {"type": "categorical", "shares": {"a": 0.5, "b": 0.5}}}}
    rng = np.random.default_rng(16)
    result = compare(old, {"x": rng.uniform(-1, 2, 500) + 2.0, "c": ["a"] * 250 + ["b"] * 250})
    assert result.features["x"].drifted and result.features["x"].stats["ks"] is None
    assert result.features["c"].stats["psi"] == pytest.approx(0.0)
    assert read_profile(old)["upgraded_from"] == 1
    with pytest.raises(ValueError, match="newer"):
        read_profile({"schema_version": 3, "features": {}})


def test_a_feature_absent_from_the_window_is_inconclusive():
    rng = np.random.default_rng(17)
    result = compare(build_profile({"x": rng.normal(size=500), "y": rng.normal(size=500)}, {}, rows=500),
                     {"x": rng.normal(size=500)})
    assert result.features["y"].status == "inconclusive" and result.features["y"].reason == "absent from the window"
    assert result.status == "no_drift"

"""The drift card: top features, window and sample sizes as facts, and a baseline-against-current chart of the top
feature drawn with Adaptive Card columns; valid Adaptive Card 1.5, from a monitor's event to the alert."""
from __future__ import annotations

import json

import numpy as np

from shared import eventgrid
from shared.cards import build_card, render_text
from shared.domain import Alert
from shared.drift.chart import CHART_FACT, details, facts, histogram, read_details
from shared.training.baseline_profile import Coded, build_profile
from tests.unit.test_cards import fixture_schema, validate, validator  # noqa: F401  (our Adaptive Cards 1.5 schema)


def _profile():
    rng = np.random.default_rng(3)
    return build_profile({"tenure": rng.normal(24, 6, 5000)},
                         {"plan": rng.choice(["monthly", "one-year", "two-year"], 5000, p=[0.5, 0.3, 0.2])},
                         rows=5000)


def test_a_numeric_histogram_has_the_profile_bins_and_both_shares():
    profile = _profile()
    rng = np.random.default_rng(4)
    chart = histogram("tenure", profile["features"]["tenure"], rng.normal(34, 6, 800))
    assert chart["feature"] == "tenure" and chart["kind"] == "numeric" and len(chart["bins"]) == 10
    base = [b[1] for b in chart["bins"]]
    now = [b[2] for b in chart["bins"]]
    assert abs(sum(base) - 1) < 1e-3 and abs(sum(now) - 1) < 1e-3
    assert all(abs(b - 0.1) < 0.01 for b in base), "deciles: a tenth of the baseline in each bin"
    assert now[-1] > 0.5 and chart["bins"][0][0].startswith("< ") and chart["bins"][-1][0].startswith("≥ ")


def test_a_categorical_histogram_counts_named_categories_and_other():
    spec = _profile()["features"]["plan"]
    chart = histogram("plan", spec, Coded(np.array([0, 0, 1, 2, -1]), ["monthly", "brand-new", "two-year"]))
    assert [b[0] for b in chart["bins"]] == ["monthly", "one-year", "two-year", "other"]
    assert [b[2] for b in chart["bins"]] == [0.5, 0.0, 0.25, 0.25]
    assert histogram("plan", spec, []) is None


def _alert(detail: dict) -> Alert:
    return Alert(kind="drift_detected", severity="warning", title="Drift: churn-endpoint", summary="retrain.",
                 facts=(("Endpoint", "churn-endpoint"), ("Signal", "ks 0.412"), *facts(detail)))


def _detail():
    rng = np.random.default_rng(5)
    chart = histogram("tenure", _profile()["features"]["tenure"], rng.normal(34, 6, 800))
    top = [{"feature": "tenure", "signal": {"metric": "ks", "value": 0.412, "threshold": 0.1}, "rows": 800,
            "baseline_rows": 5000},
           {"feature": "plan", "signal": {"metric": "chi2_p", "value": 1e-9, "threshold": 0.001}, "rows": 800,
            "baseline_rows": 5000}]
    return read_details(details(top, {"start": "2026-12-02T13:00:00+00:00", "end": "2026-12-02T14:00:00+00:00",
                                      "minutes": 60}, 800, chart))


def test_the_card_lists_top_features_window_and_draws_the_chart(validator):  # noqa: F811
    detail = _detail()
    alert = _alert(detail)
    shown = dict(alert.facts)
    assert shown["Top features"] == ("tenure: ks 0.412 > 0.1 (800 vs 5,000 rows); "
                                     "plan: chi2_p 1e-09 < 0.001 (800 vs 5,000 rows)")
    assert shown["Window"] == "2026-12-02T13:00:00+00:00 → 2026-12-02T14:00:00+00:00, 800 rows"
    card = build_card(alert)
    validate(validator, card)
    factset = next(e for e in card["body"] if e["type"] == "FactSet")
    assert CHART_FACT not in [f["title"] for f in factset["facts"]] and "Top features" in [
        f["title"] for f in factset["facts"]]
    # one row per bin: label, two bars whose filled weight is the share in thousandths
    rows = [e for e in card["body"] if e["type"] == "ColumnSet" and len(e["columns"]) == 3]
    assert len(rows) == len(detail["chart"]["bins"])
    for row, (label, base, now) in zip(rows, detail["chart"]["bins"], strict=True):
        assert row["columns"][0]["items"][0]["text"] == label
        bars = row["columns"][1]["items"]
        for bar, share, style in zip(bars, (base, now), ("accent", "warning"), strict=True):
            filled = [c for c in bar["columns"] if c.get("style") == style]
            assert sum(c["width"] for c in bar["columns"]) == 1000
            assert (filled[0]["width"] if filled else 0) == round(share * 1000)
    assert "image" not in json.dumps(card).lower(), "no image, no URL to fetch"
    assert "Top features" in render_text(alert)


def test_a_monitor_event_carries_its_details_to_the_drift_message():
    detail = _detail()
    event = {"id": "d1", "eventType": "MLOps.DriftDetected", "subject": "endpoints/e",
             "data": {"endpoint": "e", "deployment": "v1", "metric": "ks", "value": 0.412, "threshold": 0.1,
                      "monitor": "mlops-drift-monitor", "rows": 800, "window": detail["window"],
                      "top": [{"feature": "tenure", "signal": {"metric": "ks", "value": 0.412, "threshold": 0.1},
                               "rows": 800, "baseline_rows": 5000}],
                      "chart": detail["chart"]}}
    message = eventgrid.to_message(event)
    assert message.details["chart"] == detail["chart"] and message.details["top"][0]["feature"] == "tenure"
    assert message.details["rows"] == 800
    # junk in the optional parts is dropped, never fatal
    event["data"].update(top="x", chart={"bins": [["a", 2.0, "b"]]}, window=[1])
    assert eventgrid.to_message(event).details == {"rows": 800}

"""The local monitor's drift check runs the drift engine over the request log and emits one event carrying results."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pytest

from shared.domain import Deployment, Endpoint, Model
from shared.local.monitor import LocalMonitor
from shared.local.workspace import LocalWorkspace
from shared.training.baseline_profile import build_profile


class Workspace(LocalWorkspace):
    """The embedded workspace's request log, with one endpoint serving one model whose folder holds ``baseline``."""

    def __init__(self, root, baseline: dict):
        super().__init__(root)
        model_dir = root / "model"
        model_dir.mkdir()
        (model_dir / "baseline.json").write_text(json.dumps(baseline))
        self.model = Model("churn-model", "1.1", path=str(model_dir))
        self.endpoint = Endpoint("ep", (Deployment("v1-1", "churn-model", "1.1"),), {"v1-1": 100})

    def get_endpoint(self, name):
        return self.endpoint if name == "ep" else None

    def get_model(self, name, version):
        return self.model


def _rows(rng, n, shift=0.0, plan=("one-year", "two-year", "monthly")):
    return [{"tenure": float(t), "plan": str(p)} for t, p in zip(rng.normal(24 + shift, 6, n), rng.choice(plan, n),
                                                                 strict=True)]


@pytest.fixture
def setup(tmp_path):
    rng = np.random.default_rng(5)
    train = _rows(rng, 4000)
    baseline = build_profile({"tenure": [r["tenure"] for r in train]}, {"plan": [r["plan"] for r in train]},
                             rows=4000, prediction=rng.beta(2, 5, 4000))
    ws = Workspace(tmp_path, baseline)
    events: list[dict] = []
    monitor = LocalMonitor(ws, emit=events.append, clock=lambda: datetime.now(timezone.utc))
    return rng, ws, monitor, events


def _serve(ws, rows, scores, per_request=10):
    for i in range(0, len(rows), per_request):
        ws.record_request(endpoint="ep", deployment="v1-1", inputs=rows[i:i + per_request],
                          outputs=scores[i:i + per_request], latency_ms=5.0, status=200)


def test_a_drifted_window_emits_one_event_with_per_feature_results_and_the_top_features(setup):
    rng, ws, monitor, events = setup
    _serve(ws, _rows(rng, 300, shift=12.0), list(rng.beta(2, 5, 300)))
    ws.record_request(endpoint="ep", deployment="v1-1", inputs=[{"tenure": 999.0}], outputs=[], latency_ms=1,
                      status=500)  # failed requests are not evidence
    report = monitor.check_drift("ep", threshold=0.2)
    assert report.drifted and report.requests == 300 and report.psi["tenure"] > 0.2
    [event] = events
    data = event["data"]
    assert event["eventType"] == "MLOps.DriftDetected" and data["endpoint"] == "ep"
    # the existing fields keep their meaning: the strongest signal, its threshold, feature -> PSI
    assert data["metric"] in ("psi", "ks", "wasserstein", "js") and data["value"] > data["threshold"]
    assert data["features"] == {"tenure": report.psi["tenure"]} and data["requests"] == 300
    [top] = data["top"]
    assert top["feature"] == "tenure" and top["status"] == "drift" and top["method"] == "sketch"
    assert set(data["results"]) == {"tenure", "plan", "prediction"}
    assert data["results"]["plan"]["status"] == "no_drift" and data["results"]["prediction"]["status"] == "no_drift"
    assert "tenure" in data["description"] and data["monitor"] == "local-drift"
    json.dumps(event)  # publishable as is


def test_an_undrifted_window_emits_nothing(setup):
    rng, ws, monitor, events = setup
    _serve(ws, _rows(rng, 300), list(rng.beta(2, 5, 300)))
    report = monitor.check_drift("ep")
    assert report.status == "no_drift" and not report.drifted and events == []
    assert set(report.psi) == {"tenure", "plan"}


def test_an_unseen_category_or_a_prediction_shift_is_drift_even_when_psi_is_calm(setup):
    rng, ws, monitor, events = setup
    rows = _rows(rng, 300, plan=("one-year", "two-year", "monthly", "weekly"))
    _serve(ws, rows, list(rng.beta(5, 2, 300)))
    report = monitor.check_drift("ep", threshold=50.0)  # PSI cannot fire
    fired = {f.name: set(f.fired) for f in report.result.top()}
    assert "unseen" in fired["plan"] and fired["prediction"] and report.drifted and len(events) == 1


def test_too_few_rows_are_inconclusive_and_emit_nothing(setup):
    rng, ws, monitor, events = setup
    _serve(ws, _rows(rng, 40, shift=30.0), list(rng.beta(2, 5, 40)))
    report = monitor.check_drift("ep", min_requests=50)
    assert report.status == "inconclusive" and not report.drifted and events == []


def test_a_schema_1_baseline_from_an_older_model_still_works(tmp_path):
    rng = np.random.default_rng(6)
    old = {"rows": 1000, "features": {"tenure": {"type": "numeric", "edges": [18.0, 24.0, 30.0],
                                                 "shares": [0.16, 0.34, 0.34, 0.16]},
                                      "plan": {"type": "categorical", "shares": {"one-year": 0.3, "two-year": 0.3,
                                                                                 "monthly": 0.4}}}}
    ws = Workspace(tmp_path, old)
    events: list[dict] = []
    _serve(ws, _rows(rng, 200, shift=15.0), list(rng.beta(2, 5, 200)))
    report = LocalMonitor(ws, emit=events.append).check_drift("ep")
    assert report.drifted and report.result.features["tenure"].stats["ks"] is None
    assert events[0]["data"]["metric"] == "psi"

"""From drifted traffic to the drift card on the local backend: the monitor's event carries the top features, the
window and a chart of the top feature, and the alert the policy sends shows them."""
from __future__ import annotations

import dataclasses
import json

import httpx
import pytest

from shared.cards import build_card
from shared.config import Settings
from shared.drift.chart import CHART_FACT
from shared.local import cli
from shared.local.churn import feature_rows
from shared.local.serving import score
from tests.helpers import Recording
from tests.integration.test_degradation_local import _serving

pytestmark = pytest.mark.slow


def test_the_drift_alert_shows_top_features_and_the_chart(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLOPS_WORKSPACE", raising=False)
    monkeypatch.setenv("MLOPS_MIN_PRIMARY", "0.6")
    stack = cli.local_stack(dataclasses.replace(Settings.from_env(), backend="local"), port=0,
                            notifier=Recording())
    try:
        assert cli.main(["land", "churn", "1", "--rows", "1500", "--url", stack.host.url, "--key",
                         stack.host.key]) == 0
        _serving(stack)
        with httpx.Client() as client:
            for i in range(12):
                score(stack.runtime.workspace, "churn-endpoint", feature_rows(10, seed=i, drift=1.0), client=client)
        [report] = cli.check_drift(stack.runtime)
        assert report.event is not None and report.event["data"]["chart"]["feature"] == report.result.top()[0].name
        stack.grid.drain(timeout=30)
        [alert] = [a for a in stack.runtime.notifier.alerts if a.kind == "drift_detected"]
        shown = dict(alert.facts)
        top = report.result.top()[0]
        assert shown["Top features"].startswith(f"{top.name}: {top.signal(report.result.thresholds)[0]} ")
        assert "120 rows" in shown["Window"]
        chart = json.loads(shown[CHART_FACT])
        assert chart["feature"] == top.name and chart["bins"]
        card = json.dumps(build_card(alert), ensure_ascii=False)
        assert "baseline against this window" in card and f'"text": "{chart["bins"][0][0]}"' in card
    finally:
        stack.close()

"""`make demo` end to end: the scenario passes every check, and with a webhook set every card reaches it."""
from __future__ import annotations

import json

import pytest

from shared.local import demo
from shared.local.outbox import SqliteOutbox
from tests.integration.test_teams_delivery import Hook, path_of

pytestmark = pytest.mark.slow


def _texts(card: dict) -> str:
    return json.dumps(card)


def test_the_demo_passes_every_stage_and_posts_each_alert_to_the_webhook(tmp_path, monkeypatch, capsys):
    hook = Hook()
    try:
        monkeypatch.setenv("MLOPS_TEAMS_WEBHOOK_URL", hook.url("demo"))
        assert demo.main(["--home", str(tmp_path / "demo")]) == 0
        out = capsys.readouterr().out
        assert "0 failed" in out and "FAIL " not in out
        assert "=== Delivery" in out and "every card reached Teams in time" in out
        cards = [h.card for h in hook.hits_for("demo")]
        assert all(h.path == path_of("demo") for h in hook.hits)
        assert all(c.get("type") == "AdaptiveCard" and c.get("version") == "1.5" for c in cards)
        text = "\n".join(_texts(c) for c in cards)
        for expected in ("Training started: churn v1", "Model rejected by the gate: churn v3",
                         "Canary started on churn-endpoint", "Canary advanced on churn-endpoint",
                         "Promoted on churn-endpoint", "Rolled back churn-endpoint", "Rollout aborted on churn-endpoint",
                         "Retired deployments on churn-endpoint", "Approval needed on churn-eu-endpoint",
                         "Approved and deployed to churn-eu-endpoint at 100 %", "Review and approve"):
            assert expected in text, f"no card says {expected!r}"
        # every alert the scenario raised was delivered to the webhook, once, and none is left waiting
        stats = SqliteOutbox(tmp_path / "demo" / "outbox.db").stats()
        assert stats["pending"] == 0 and stats["failed"] == 0
        assert len(cards) == stats["delivered"] >= 10
        assert hook.url("demo") not in out  # the webhook URL never reaches the console
    finally:
        hook.close()

"""Rejected events are alerted as a digest per source and window, and real alerts never queue behind junk
(issue 11, item 13)."""
from __future__ import annotations

import json

import httpx

from shared.domain import Alert
from shared.local import wire
from shared.local.outbox import SqliteOutbox
from shared.notify import Outbox, Router
from tests.helpers import EpochClock, Recorder
from tests.reliability.test_ingress import WEBHOOK, served  # noqa: F401 - the served fixture

NOTIFY = {"aeg-event-type": "Notification"}


def test_a_flood_of_junk_events_makes_one_card_and_a_real_alert_still_gets_its_own(served):  # noqa: F811
    host, runtime = served
    with httpx.Client(timeout=10) as client:
        for i in range(300):
            r = client.post(host.url + WEBHOOK, params={"functionName": "on_custom_event", "code": host.key},
                            headers=NOTIFY, content=json.dumps([{"id": f"junk-{i}", "eventType": 7}]).encode())
            assert r.status_code == 202
        # A real alert: drift reported by our monitor (nothing to act on here, so it is recorded and alerted).
        real = client.post(host.url + WEBHOOK, params={"functionName": "on_custom_event", "code": host.key},
                           headers=NOTIFY, content=json.dumps([wire.custom(
                               "MLOps.DriftDetected", "endpoints/churn-endpoint",
                               {"endpoint": "churn-endpoint", "metric": "psi", "value": 0.4, "threshold": 0.2})]))
        assert real.status_code == 202
        # A person's request that fails on their side (nothing to roll back: 404) is answered to them and audited,
        # and pages no one.
        manual = client.post(host.url + "/api/rollbacks", params={"code": host.key},
                             json={"endpoint": "churn-endpoint", "reason": "manual rollback after the flood"})
    assert manual.status_code == 404
    stats = runtime.notifier.store.stats()
    assert stats["suppressed"] == 299  # every junk event is counted...
    assert stats["pending"] + stats["delivered"] == 2  # ...but the outbox holds one junk card and the real one
    assert len(runtime.audit.recent(limit=1000, decisions=["rejected"])) == 300  # and each is still on record
    assert [(r.message, r.actor) for r in runtime.audit.recent(limit=1000, decisions=["failed"])] == [
        ("RollBack", "http:http-caller")]


def test_the_next_card_after_the_window_is_a_digest_with_the_count_and_samples(tmp_path):
    clock = EpochClock()
    channel = Recorder("teams")
    outbox = Outbox(SqliteOutbox(tmp_path / "outbox.db", clock=clock), Router(always=[channel]),
                    dedupe_window_minutes=10, clock=clock)

    def junk(i: int) -> Alert:
        return Alert(kind="event_rejected", severity="error", title="junk", summary="unreadable event",
                     incident_key="rejected:eventgrid", event_id=f"junk-{i}")

    for i in range(4):
        outbox.notify(junk(i))
    clock.advance(11 * 60)
    outbox.notify(junk(4))
    outbox.flush()
    assert [a.event_id for a in channel.sent] == ["junk-0", "junk-4"]
    facts = dict(channel.sent[1].facts)
    assert facts["Repeats held back"].startswith("3 since the previous card")
    assert facts["Some of them"] == "junk-1, junk-2, junk-3"

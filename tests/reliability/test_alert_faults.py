"""Fault injection on the alert path (issue 11): the outbox on Table Storage (Azurite) with 20 % of its requests
failed in the SDK's transport (503, 429, refused connection), delivering to a Teams Workflows webhook (a real local
HTTP server) that answers 20 % of posts with a 503. Every alert is delivered, and exactly once: no card reaches
Teams twice, none is dropped."""
from __future__ import annotations

import json
import random
import uuid

import httpx
import pytest

from shared.adapters.tables import build_stores, with_app_retries
from shared.adapters.teams import TeamsWebhook
from shared.config import Settings
from shared.domain import Alert
from shared.notify import build_notifier
from tests.helpers import EpochClock
from tests.integration.test_teams_delivery import Hook, Reply, path_of
from tests.reliability.faults import FaultyTransport, route_table_waits
from tests.reliability.storm import size, write_figures

pytestmark = pytest.mark.slow


def test_every_alert_is_delivered_exactly_once_through_table_and_webhook_faults(azurite, monkeypatch):
    route_table_waits(monkeypatch)  # retry waits recorded, not slept
    alerts = size(30, 300)
    rng = random.Random(5)
    hook = Hook()
    name = "ops"
    url = hook.url(name)
    refusals = [Reply(503, "busy") if rng.random() < 0.2 else Reply(202) for _ in range(alerts * 20)]
    hook.script[path_of(name)] = list(refusals)
    tables = FaultyTransport(fault_rate=0.0, seed=9)
    clock = EpochClock()  # outbox and store share it, so the test can step past leases and retry times
    suffix = uuid.uuid4().hex[:10]
    stores = build_stores(with_app_retries(azurite.service(transport=tables)),
                          names={k: f"{k}{suffix}" for k in ("ledger", "audit", "outbox", "states")}, clock=clock)
    tables.fault_rate = 0.2
    with httpx.Client() as client:
        webhook = TeamsWebhook(client, max_per_second=200, windows=((10_000, 30.0),), max_attempts=2,
                               backoff_base=0.01, backoff_max=0.02)
        outbox = build_notifier(Settings(teams_webhook_url=url), store=stores["outbox"], webhook=webhook,
                                clock=clock, retry_base_seconds=0.01, retry_max_seconds=0.05)
        titles = [f"alert {i} {uuid.uuid4().hex[:8]}" for i in range(alerts)]
        queued = 0
        for i, title in enumerate(titles):
            for _ in range(20):  # notify never raises; a queueing lost to a fault is noticed here and repeated
                before = outbox.counters["queued"]
                outbox.notify(Alert(kind="training_failed", severity="error", title=title, summary="s",
                                    incident_key=f"incident-{i}"))
                if outbox.counters["queued"] > before:
                    queued += 1
                    break
        for _ in range(200):
            outbox.flush(max_seconds=5)
            # A flush a fault stopped half-way leaves its alerts claimed for a lease (60 s): step past it.
            clock.advance(61)
            if len(delivered(hook, titles, refusals)) == alerts:
                break
        tables.fault_rate = 0.0
        clock.advance(3600)
        outbox.flush(max_seconds=5)  # anything still due would be sent now: a duplicate would show up
    hook.close()

    counts = delivered(hook, titles, refusals)
    assert queued == alerts
    assert set(counts) == set(titles), "an alert was never delivered"
    assert [t for t, n in counts.items() if n != 1] == [], "an alert reached Teams twice"
    refused = sum(1 for reply in refusals[:len(hook.hits)] if reply.status != 202)
    assert refused > 0 and tables.total_injected > 0  # the faults really happened
    write_figures("alerts", {"alerts": alerts, "delivered_once": sum(1 for n in counts.values() if n == 1),
                             "table_faults": tables.total_injected, "table_requests": tables.requests,
                             "webhook_posts": len(hook.hits), "webhook_faults": refused})


def delivered(hook: Hook, titles: list[str], replies: list[Reply]) -> dict[str, int]:
    """Alert title -> posts Teams accepted (202). A post the webhook answered 503 was refused, not delivered. The
    hook answers its n-th post with the n-th scripted reply (both under its lock)."""
    accepted: dict[str, int] = {}
    with hook.lock:
        hits = list(hook.hits)
    assert len(hits) <= len(replies), "more posts than scripted replies"
    for hit, reply in zip(hits, replies, strict=False):
        if reply.status != 202:
            continue
        text = json.dumps(hit.card)
        for title in titles:
            if title in text:
                accepted[title] = accepted.get(title, 0) + 1
    return accepted

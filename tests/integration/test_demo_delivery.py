"""The demo's delivery summary, against a local HTTP receiver that accepts and one that is down."""
from __future__ import annotations

import dataclasses
import socket

import httpx
import pytest

from shared.config import Settings
from shared.domain import Alert
from shared.local import delivery
from shared.local.outbox import SqliteOutbox
from shared.notify import build_notifier
from tests.integration.test_teams_delivery import Hook, Reply, path_of, url_for

pytestmark = pytest.mark.slow


def cards(outbox, n: int = 3) -> None:
    for i in range(n):
        outbox.notify(Alert(kind="rollback", severity="critical", title=f"Rolled back e{i}", summary="why",
                            facts=(("Endpoint", f"e{i}"),), incident_key=f"rb:{i}", event_id=f"evt-{i}"))


def a_closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when the block ends: nothing listens there


@pytest.fixture
def notifier(tmp_path):
    made = []

    def make(url: str):
        store = SqliteOutbox(tmp_path / f"outbox-{len(made)}.db")
        client = httpx.Client(timeout=httpx.Timeout(2.0, connect=1.0))
        outbox = build_notifier(dataclasses.replace(Settings(), teams_webhook_url=url), store=store, client=client)
        made.append((outbox, client))
        return outbox, store

    yield make
    for outbox, client in made:
        outbox.close()
        client.close()


def test_every_card_delivered_in_time_is_a_green_summary(notifier):
    hook = Hook()
    try:
        outbox, store = notifier(hook.url("ok"))
        cards(outbox)
        summary = delivery.drain(outbox, store, budget_seconds=10)
        assert len(hook.hits_for("ok")) == 3 and all(h.path == path_of("ok") for h in hook.hits)
        assert (summary.sent, summary.delivered, summary.late, summary.failed, summary.waiting) == (3, 3, 0, 0, 0)
        assert summary.ok and summary.oldest_waiting_seconds is None
        assert "3 card(s) sent, 3 delivered within 10 s" in summary.lines()[0]
    finally:
        hook.close()


def test_a_receiver_that_is_down_fails_the_summary_with_the_oldest_undelivered_age(notifier):
    outbox, store = notifier(url_for(a_closed_port(), "down"))
    cards(outbox)
    summary = delivery.drain(outbox, store, budget_seconds=1.0)
    assert (summary.sent, summary.delivered, summary.failed, summary.waiting) == (3, 0, 0, 3)
    assert not summary.ok and summary.oldest_waiting_seconds > 1.0
    text = "\n".join(summary.lines())
    assert "3 not delivered" in text and "oldest undelivered card:" in text and "DELIVERY FAILED" in text
    assert "down" not in text and "sig=" not in text, "the webhook URL (a secret) is never printed"


def test_a_card_refused_for_good_counts_as_failed(notifier):
    hook = Hook()
    try:
        hook.always[path_of("refuses")] = Reply(status=400, body="bad card")
        outbox, store = notifier(hook.url("refuses"))
        cards(outbox, 1)
        summary = delivery.drain(outbox, store, budget_seconds=5)
        assert (summary.sent, summary.failed, summary.waiting) == (1, 1, 0) and not summary.ok
    finally:
        hook.close()


def test_a_card_delivered_after_its_budget_is_late(tmp_path):
    from tests.helpers import EpochClock

    hook = Hook()
    clock = EpochClock()
    store = SqliteOutbox(tmp_path / "late.db", clock=clock)
    client = httpx.Client(timeout=2.0)
    outbox = build_notifier(dataclasses.replace(Settings(), teams_webhook_url=hook.url("slow")), store=store,
                            client=client, clock=clock)
    try:
        cards(outbox, 1)
        clock.advance(30)  # Teams was unreachable for 30 s; the card goes out now
        summary = delivery.drain(outbox, store, budget_seconds=10, now=clock)
        assert len(hook.hits_for("slow")) == 1
        assert (summary.sent, summary.delivered, summary.late) == (1, 0, 1) and not summary.ok
        assert delivery.summarize(outbox, store, budget_seconds=60, now=clock).ok
    finally:
        outbox.close()
        client.close()
        hook.close()


@pytest.mark.parametrize("up", [True, False], ids=["receiver-up", "receiver-down"])
def test_the_demo_ends_with_the_summary_and_fails_when_a_card_is_not_delivered(tmp_path, monkeypatch, capsys, up):
    from shared.local import demo

    hook = Hook()
    url = hook.url("demo") if up else url_for(a_closed_port(), "demo")
    monkeypatch.setenv("MLOPS_TEAMS_WEBHOOK_URL", url)
    run = demo.Demo(tmp_path / "demo", verbose_alerts=False)
    try:
        cards(run.rt.notifier, 2)
        assert run.delivery(budget_seconds=1.0) is up
    finally:
        run.close()
        hook.close()
    out = capsys.readouterr().out
    assert "=== Delivery" in out and "2 card(s) sent" in out
    assert ("every card reached Teams in time" in out) is up and ("DELIVERY FAILED" in out) is (not up)
    assert url not in out


def test_without_teams_the_demo_has_no_delivery_summary(tmp_path, monkeypatch, capsys):
    from shared.local import demo

    monkeypatch.delenv("MLOPS_TEAMS_WEBHOOK_URL", raising=False)
    monkeypatch.delenv("MLOPS_TEAMS_ROUTES", raising=False)
    run = demo.Demo(tmp_path / "demo", verbose_alerts=False)
    try:
        assert run.delivery(budget_seconds=1.0) is True
    finally:
        run.close()
    assert "=== Delivery" not in capsys.readouterr().out

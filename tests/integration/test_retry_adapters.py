"""Each migrated adapter respects the invocation's deadline (shared/retry.py): the Teams webhook (a real local HTTP
server), the Event Grid publisher (the real SDK client on a canned transport) and the alert outbox's flush."""
from __future__ import annotations

import time

import httpx
import pytest

from shared import retry
from shared.adapters.events import EventGridPublisher
from shared.adapters.teams import TeamsWebhook
from shared.domain import Alert
from shared.errors import TransientError
from shared.local.outbox import SqliteOutbox
from shared.notify import Outbox, Router
from tests.helpers import Recorder
from tests.integration.test_eventgrid_publisher import SETTINGS, CannedTransport, FakeCredential, publisher
from tests.integration.test_teams_delivery import Hook, Reply, path_of


def test_the_teams_webhook_stops_retrying_at_the_deadline():
    hook = Hook()
    hook.always[path_of("ops")] = Reply(503, "busy")
    try:
        with httpx.Client() as client:
            webhook = TeamsWebhook(client, max_attempts=10, time_budget=20.0, backoff_base=0.2, backoff_max=0.4)
            started = time.monotonic()
            with retry.deadline(0.6), pytest.raises(TransientError):
                webhook.post(hook.url("ops"), {"text": "x"})
            # Its own budget (20 s, 10 tries 0.1-0.4 s apart) would have taken about 3 s.
            assert time.monotonic() - started < 0.9
            posts = len(hook.hits)
            assert 1 <= posts < 10
            with retry.deadline(0.01):
                time.sleep(0.02)
                with pytest.raises(retry.DeadlineExceeded):
                    webhook.post(hook.url("ops"), {"text": "x"})
            assert len(hook.hits) == posts  # not even tried
    finally:
        hook.close()


def test_the_publisher_starts_nothing_once_the_deadline_is_spent_and_waits_no_longer_than_it():
    pub, transport, _, _ = publisher(*[(503, {}, b"")] * 5, retries=4, backoff_seconds=0.3)
    with retry.deadline(0.01):
        time.sleep(0.02)
        with pytest.raises(retry.DeadlineExceeded):
            pub.publish("MLOps.DriftDetected", "s", {"endpoint": "e"})
    assert transport.requests == []
    # Real sleeps this time: the deadline is wall-clock time, so a clock that only pretends to sleep cannot use it up.
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(seconds)

    transport = CannedTransport(*[(503, {}, b"")] * 5)
    pub = EventGridPublisher.from_settings(SETTINGS, FakeCredential(), transport=transport, sleep=sleep,
                                           retries=4, backoff_seconds=0.3)
    started = time.monotonic()
    with retry.deadline(0.5), pytest.raises(TransientError):
        pub.publish("MLOps.DriftDetected", "s", {"endpoint": "e"})
    assert time.monotonic() - started < 0.5 + 0.3  # one in-flight request may finish past it
    assert sum(slept) < 0.5 and len(transport.requests) < 5  # 4 retries 0.15-2.4 s apart do not fit


def test_the_outbox_flush_defers_what_the_deadline_leaves_no_time_for(tmp_path):
    channel = Recorder("rec")
    outbox = Outbox(SqliteOutbox(tmp_path / "outbox.db"), Router(always=[channel]))
    outbox.notify(Alert(kind="training_failed", severity="error", title="t", summary="s", incident_key="i"))
    with retry.deadline(0.01):
        time.sleep(0.02)
        assert outbox.flush(max_seconds=60) == 0  # no time left in this invocation: kept for the next one
    assert channel.sent == []
    assert outbox.flush(max_seconds=60) == 1 and len(channel.sent) == 1

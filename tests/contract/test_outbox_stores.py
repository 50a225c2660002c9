"""One behaviour for every alert outbox store: SqliteOutbox (embedded) and TableOutbox (Table Storage on Azurite).

Each test runs against both stores, through the real Outbox notifier where the behaviour is the notifier's
(dedupe, retries, leases) and against the store directly where it is the store's (ids, claims, incidents).
Channels are small local recorders, as in tests/unit/test_notify.py; nothing leaves the machine.
"""
from __future__ import annotations

import dataclasses
import io
import json
import threading

import pytest

from shared.adapters.tables import TableOutbox
from shared.config import Settings
from shared.domain import Alert
from shared.errors import ServiceRejected, TransientError
from shared.local.outbox import SqliteOutbox
from shared.notify import Outbox, Router, build_notifier, incident_step
from tests.helpers import EpochClock, Recorder


@pytest.fixture
def clock():
    return EpochClock()


@pytest.fixture(params=["sqlite", "tables"])
def opener(request, tmp_path, clock):
    """``opener()`` opens a store on the same backing storage each time (a restart, or a second worker)."""
    opened = []
    if request.param == "sqlite":
        def opener():
            opened.append(SqliteOutbox(tmp_path / "outbox.db", clock=clock))
            return opened[-1]
    else:
        table = request.getfixturevalue("azurite").fresh_table()

        def opener():
            opened.append(TableOutbox(table, clock=clock))
            return opened[-1]
    yield opener
    for store in opened:
        store.close()


@pytest.fixture
def store(opener):
    return opener()


def alert(kind: str = "training_failed", severity: str = "error", key: str = "", **changes) -> Alert:
    return Alert(kind=kind, severity=severity, title=f"{kind} {key}".strip(), summary="what, why, what was done",
                 facts=(("Job", "train-churn-v3-a1"),), incident_key=key, **changes)


def outbox_with(store, clock, *channels, **options) -> Outbox:
    return Outbox(store, Router(always=channels), clock=clock, **options)


# --- the store itself --------------------------------------------------------------------------------------

def test_ids_count_up_and_pending_is_oldest_first_with_the_alert_intact(store):
    sent = [alert(key=f"k{i}", detail="é𝄞 long log " * 50, links=(("Open", "https://ml.azure.com/x"),))
            for i in range(3)]
    ids = [store.add(a) for a in sent]
    assert ids == [1, 2, 3]
    assert store.pending() == [(i, a, 0) for i, a in zip(ids, sent, strict=True)]
    assert store.pending(limit=2) == [(1, sent[0], 0), (2, sent[1], 0)]


def test_mark_records_delivered_failed_and_retry_later(store, clock):
    a, b, c = (store.add(alert(key=k)) for k in "abc")
    store.mark(a, delivered=True)
    store.mark(b, delivered=False, error="HTTP 400: bad card")
    store.mark(c, delivered=False, error="HTTP 503", retry_in_seconds=30)
    assert store.status(a)["status"] == "delivered" and store.status(a)["attempts"] == 1
    assert store.status(b) == {"status": "failed", "attempts": 1, "next_try": clock.now, "error": "HTTP 400: bad card",
                               "kind": "training_failed", "delivered_to": []}
    assert store.status(c)["status"] == "pending" and store.status(c)["next_try"] == clock.now + 30
    assert store.pending() == [], "nothing due before its retry time"
    clock.advance(30)
    assert [i for i, _, _ in store.pending()] == [c]
    assert store.status(99) is None
    assert {k: store.stats()[k] for k in ("pending", "delivered", "failed")} == \
        {"pending": 1, "delivered": 1, "failed": 1}


def test_claim_due_leases_alerts_so_a_second_claim_gets_none_until_the_lease_runs_out(store, clock):
    for k in "abc":
        store.add(alert(key=k))
    assert [i for i, _, _ in store.claim_due(limit=2, lease_seconds=60)] == [1, 2]
    assert [i for i, _, _ in store.claim_due(lease_seconds=60)] == [3]
    assert store.claim_due() == []
    clock.advance(61)
    assert [i for i, _, _ in store.claim_due()] == [1, 2, 3]


def test_defer_moves_the_next_try_without_counting_an_attempt(store, clock):
    a = store.add(alert())
    store.claim_due(lease_seconds=600)
    store.defer([a], clock.now)
    assert store.pending() == [(a, alert(), 0)]
    store.mark(a, delivered=True)
    store.defer([a], clock.now + 999)  # no effect on a finished alert
    assert store.status(a)["status"] == "delivered"


def test_delivery_records_are_per_alert_and_the_first_record_wins(store):
    a, b = store.add(alert()), store.add(alert())
    for target in ("teams:abc", "console", "rejected:teams:def", "teams:abc"):
        store.record_delivery(a, target)
    store.record_delivery(b, "log")
    assert store.delivered_to(a) == {"teams:abc", "console", "rejected:teams:def"}
    assert store.delivered_to(b) == {"log"} and store.delivered_to(999) == set()
    assert store.stats()["deliveries"] == 3, "rejections are not deliveries"


def test_update_incident_runs_the_step_on_the_stored_state_and_deletes_on_none(store):
    assert store.update_incident("rollback:ep/1", lambda s: ({"n": 1}, s)) is None
    assert store.update_incident("rollback:ep/1", lambda s: ({"n": s["n"] + 1}, s)) == {"n": 1}
    assert store.update_incident("rollback:ep/1", lambda s: (None, s["n"])) == 2
    assert store.update_incident("rollback:ep/1", lambda s: (None, s)) is None


def test_concurrent_incident_updates_lose_no_increment(opener):
    stores = [opener() for _ in range(4)]
    barrier = threading.Barrier(4)

    def work(s) -> None:
        barrier.wait()
        for _ in range(5):
            s.update_incident("hot", lambda st: ({"n": (st or {"n": 0})["n"] + 1}, None))

    threads = [threading.Thread(target=work, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert stores[0].update_incident("hot", lambda st: (st, st["n"])) == 20


def test_concurrent_adds_get_distinct_ids(opener):
    stores = [opener() for _ in range(4)]
    ids: list[int] = []
    lock = threading.Lock()

    def work(s) -> None:
        for i in range(5):
            got = s.add(alert(key=f"k{i}"))
            with lock:
                ids.append(got)

    threads = [threading.Thread(target=work, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(ids) == list(range(1, 21))


# --- the notifier on each store ----------------------------------------------------------------------------

def test_outbox_dedupes_by_incident_and_lets_resolved_through_once(store, clock):
    rec = Recorder()
    outbox = outbox_with(store, clock, rec, dedupe_window_minutes=10)
    drift = alert("drift_detected", "warning", key="drift:ep")
    for _ in range(3):
        outbox.notify(drift)
    outbox.notify(dataclasses.replace(drift, resolved=True, severity="info"))
    outbox.notify(dataclasses.replace(drift, resolved=True, severity="info"))
    outbox.notify(alert("drift_detected", "warning"))  # no incident key: never deduped
    outbox.notify(alert("drift_detected", "warning"))
    assert outbox.flush() == 4
    assert [a.resolved for a in rec.sent] == [False, True, False, False]
    assert store.stats()["suppressed"] == 3 and store.stats()["open_incidents"] == 0


def test_a_reminder_after_the_window_says_how_many_repeats_were_held_back(store, clock):
    rec = Recorder()
    outbox = outbox_with(store, clock, rec, dedupe_window_minutes=10)
    failure = alert(key="fail:churn")
    for _ in range(4):
        outbox.notify(failure)
    clock.advance(601)
    outbox.notify(failure)
    outbox.flush()
    assert len(rec.sent) == 2
    assert ("Repeats held back", "3 since the previous card (reminder)") in rec.sent[1].facts


def test_dedupe_and_delivery_progress_survive_a_restart(opener, clock):
    first = outbox_with(opener(), clock, Recorder())
    first.notify(alert(key="k"))
    again = outbox_with(opener(), clock, Recorder())
    again.notify(alert(key="k"))
    assert again.counters["suppressed"] == 1, "a new process remembers the open incident"
    assert again.flush() == 1


def test_a_transient_failure_leaves_the_alert_pending_with_a_next_try(store, clock):
    rec = Recorder(fail=[TransientError("teams down"), TransientError("teams down")])
    outbox = outbox_with(store, clock, rec, retry_base_seconds=10)
    outbox.notify(alert())
    assert outbox.flush() == 0
    status = store.status(1)
    assert status["status"] == "pending" and status["attempts"] == 1 and "teams down" in status["error"]
    assert clock.now + 5 <= status["next_try"] <= clock.now + 10
    assert outbox.flush() == 0 and store.status(1)["attempts"] == 1, "not retried before its time"
    clock.advance(10)
    assert outbox.flush() == 0 and store.status(1)["attempts"] == 2
    clock.advance(20)
    assert outbox.flush() == 1 and store.status(1)["status"] == "delivered" and len(rec.sent) == 1


def test_a_permanent_rejection_fails_the_alert_for_good(store, clock):
    outbox = outbox_with(store, clock, Recorder(fail=[ServiceRejected("HTTP 400: bad card", status=400)]))
    outbox.notify(alert())
    assert outbox.flush() == 0
    clock.advance(86_400)
    assert outbox.flush() == 0
    assert store.status(1)["status"] == "failed" and store.status(1)["attempts"] == 1
    assert store.status(1)["delivered_to"] == ["rejected:rec"]


def test_retries_stop_after_give_up_after_attempts(store, clock):
    outbox = outbox_with(store, clock, Recorder(fail=[TransientError("down")] * 10), give_up_after=3,
                         retry_base_seconds=1)
    outbox.notify(alert())
    for _ in range(5):
        outbox.flush()
        clock.advance(3600)
    assert store.status(1)["status"] == "failed" and store.status(1)["attempts"] == 3


def test_a_retry_does_not_resend_to_a_target_that_already_has_the_alert(store, clock):
    up, flaky = Recorder("up"), Recorder("flaky", fail=[TransientError("503")])
    outbox = outbox_with(store, clock, up, flaky)
    outbox.notify(alert())
    assert outbox.flush() == 0
    clock.advance(3600)
    assert outbox.flush() == 1
    assert len(up.sent) == 1 and len(flaky.sent) == 1
    assert store.status(1)["delivered_to"] == ["flaky", "up"]


def test_flush_stops_near_its_budget_and_leaves_the_rest_due(store, clock):
    rec = Recorder(pause=0.1)
    outbox = outbox_with(store, clock, rec)
    for i in range(10):
        outbox.notify(alert(key=f"k{i}"))
    delivered = outbox.flush(max_seconds=0.35)
    assert 1 <= delivered <= 5
    assert len(store.pending()) == 10 - delivered, "the rest is due at once, not leased away"
    assert all(attempts == 0 for _, _, attempts in store.pending()), "running out of time is not an attempt"


def test_two_outboxes_on_one_store_never_send_an_alert_twice(opener, clock):
    stores = [opener(), opener()]
    recorders = [Recorder(pause=0.005), Recorder(pause=0.005)]
    outboxes = [outbox_with(s, clock, r) for s, r in zip(stores, recorders, strict=True)]
    for i in range(20):
        outboxes[i % 2].notify(alert(key=f"k{i}"))
    threads = [threading.Thread(target=o.flush, kwargs={"max_seconds": 20}) for o in outboxes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    titles = [a.title for r in recorders for a in r.sent]
    assert len(titles) == 20 and len(set(titles)) == 20


def test_build_notifier_takes_the_store_and_renders_on_the_stream(store, clock):
    stream = io.StringIO()
    outbox = build_notifier(Settings(), store=store, stream=stream, clock=clock)
    outbox.notify(alert("rollback", "critical", key="rb", links=(("Open", "https://ml.azure.com/x"),)))
    assert outbox.flush() == 1
    assert "rollback" in stream.getvalue() and store.stats()["delivered"] == 1


def test_incident_step_stays_pure_so_a_store_may_run_it_twice():
    state, first = incident_step(None, alert(key="k"), 0.0, 600)
    again_state, again = incident_step(None, alert(key="k"), 0.0, 600)
    assert (state, first) == (again_state, again)
    held, _ = incident_step(state, dataclasses.replace(alert(key="k"), event_id="evt-2"), 1.0, 600)
    snapshot = json.loads(json.dumps(held))
    repeat = dataclasses.replace(alert(key="k"), event_id="evt-3")
    after, verdict = incident_step(held, repeat, 2.0, 600)
    assert held == snapshot, "a held-back repeat changed the state it was given (its samples)"
    assert incident_step(held, repeat, 2.0, 600) == (after, verdict) and after["samples"] == ["evt-2", "evt-3"]


class Died(BaseException):
    """The worker dies here: nothing in the app catches it."""


def test_a_card_stored_by_a_worker_that_died_before_marking_it_is_not_sent_again(opener, clock):
    """Stored, then the worker died before marking the incident: the redelivery's repeat (past the 2-minute grace)
    finds the card in the store and is held back, instead of going out as a second card."""
    rec = Recorder()
    outbox = outbox_with(opener(), clock, rec)

    def dies(key, admitted_at):
        raise Died("after storing the card")

    outbox._queued = dies
    with pytest.raises(Died):
        outbox.notify(alert(key="job:x:failed"))
    clock.advance(400)  # Event Grid's redelivery after the dead worker's lease
    again = outbox_with(opener(), clock, rec)
    again.notify(alert(key="job:x:failed"))
    again.flush()
    assert len(rec.sent) == 1 and again.counters["suppressed"] == 1


# --- Table Storage only: a flusher that loses an ETag race ---------------------------------------------------

def test_table_outbox_finishing_an_alert_a_rival_changed_meanwhile_rereads_and_keeps_the_rivals_change(azurite):
    from azure.data.tables import TableClient

    plain = azurite.fresh_table()

    class Rivalled(TableClient):
        rival = None

        def submit_transaction(self, *args, **kwargs):
            rival, self.rival = self.rival, None
            if rival is not None:
                rival()
            return super().submit_transaction(*args, **kwargs)

    client = Rivalled(azurite.endpoint, plain.table_name, credential=plain.credential)
    store, now = TableOutbox(client, clock=lambda: 1_750_000_000), 1_750_000_000
    alert_id = store.add(alert())

    def rival_records_a_failed_try() -> None:
        row = plain.get_entity("alert", f"q{alert_id:012d}")
        row["attempts"] += 1
        row["last_error"] = "rival: 503"
        plain.update_entity(row)

    client.rival = rival_records_a_failed_try
    store.mark(alert_id, delivered=True)
    status = store.status(alert_id)
    assert status["status"] == "delivered" and status["attempts"] == 2, "the rival's attempt was not overwritten"
    assert store.pending() == [] and store.stats()["delivered"] == 1
    assert store.status(alert_id)["next_try"] == now


def test_table_outbox_stores_times_as_doubles_even_from_a_whole_second_clock(azurite):
    # Table Storage compares a filter constant only with a property of the same type ("Querying tables and
    # entities"); Azurite is lenient about it, so the stored type is checked directly.
    table = azurite.fresh_table()
    store = TableOutbox(table, clock=lambda: 1_750_000_000)
    alert_id = store.add(alert())
    store.mark(alert_id, delivered=False, error="503", retry_in_seconds=0)
    row = table.get_entity("alert", f"q{alert_id:012d}")
    assert all(isinstance(row[name], float) for name in ("next_try", "created_at", "updated_at"))
    assert [i for i, _, _ in store.claim_due()] == [alert_id]


def test_table_outbox_an_add_retried_after_its_write_committed_keeps_the_card(azurite, monkeypatch):
    """A 503 after the insert committed: azure-core retries a POST on 503, the retry meets EXISTS, and the card
    is in the store. Before, add() raised "already taken", so the card was queued but reported lost."""
    from shared.adapters.tables import with_app_retries
    from tests.reliability.faults import FaultyTransport, _response, route_table_waits

    route_table_waits(monkeypatch)

    class CommitsThenAnswers503(FaultyTransport):
        left = 1

        def send(self, request, **kwargs):
            response = super().send(request, **kwargs)
            body = getattr(request, "content", None) or getattr(request, "body", None) or b"{}"
            if self.left and request.method == "POST" and json.loads(body).get("PartitionKey") == "alert":
                self.left -= 1
                return _response(request, 503, {"Content-Type": "application/json"},
                                 b'{"odata.error":{"code":"ServerBusy","message":{"value":"after the write"}}}',
                                 **kwargs)
            return response

    transport = CommitsThenAnswers503(fault_rate=0.0)
    service = with_app_retries(azurite.service(transport=transport))
    table = azurite.fresh_table()
    store = TableOutbox(service.get_table_client(table.table_name), clock=lambda: 1_750_000_000.0)
    alert_id = store.add(alert(key="k"))
    assert transport.left == 0, "the 503 after the write was not injected"
    assert [(i, a.incident_key) for i, a, _ in store.pending()] == [(alert_id, "k")]

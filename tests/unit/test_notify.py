"""The Outbox notifier without a network: routing table, failures-only, dedupe, console/log output, and flush
never raising. The store is the real SqliteOutbox; channels are small local stand-ins (not ports)."""
from __future__ import annotations

import dataclasses
import io
import logging
import threading
import time

import httpx
import pytest

from shared.adapters.teams import RateLimiter
from shared.config import Settings
from shared.domain import ALERT_KINDS, SEVERITIES, Alert
from shared.errors import InvalidPayload, ServiceRejected, Throttled, TransientError
from shared.local.outbox import SqliteOutbox
from shared.notify import (
    UNQUEUED_GRACE,
    ConsoleChannel,
    Outbox,
    Router,
    RoutingTable,
    build_notifier,
    incident_queued,
    incident_step,
    is_failure,
)
from shared.retry import retry_after_seconds
from tests.helpers import EpochClock, Recorder

A = "https://example.invalid/workflows/a/triggers/manual/paths/invoke?sig=SECRET-A"
B = "https://example.invalid/workflows/b/triggers/manual/paths/invoke?sig=SECRET-B"
C = "https://example.invalid/workflows/c/triggers/manual/paths/invoke?sig=SECRET-C"


class PortOnlyStore:
    """The SqliteOutbox seen through the OutboxStore port only (add, pending, mark), like a store that keeps
    neither per-target deliveries nor incidents: the Outbox must keep those in memory."""

    def __init__(self, store: SqliteOutbox) -> None:
        self._store = store
        self.add, self.pending, self.mark = store.add, store.pending, store.mark


@pytest.fixture
def clock():
    return EpochClock()


@pytest.fixture
def store(tmp_path, clock):
    s = SqliteOutbox(tmp_path / "outbox.db", clock=clock)
    yield s
    s.close()


def alert(kind: str = "training_failed", severity: str = "error", key: str = "", **changes) -> Alert:
    return Alert(kind=kind, severity=severity, title=f"{kind} {key}".strip(), summary="what, why, what was done",
                 facts=(("Job", "train-churn-v3-a1"),), incident_key=key, **changes)


def outbox_with(store, clock, *channels, **options) -> Outbox:
    return Outbox(store, Router(always=channels), clock=clock, **options)


# --- routing table ---------------------------------------------------------------------------------------

def sub(raw: str) -> str:
    """A JSON text with @A, @B, @C standing for the test webhook URLs."""
    return raw.replace("@A", A).replace("@B", B).replace("@C", C)


TABLE = sub("""{
  "channels": {"oncall": "@A", "models": "@B"},
  "default": ["@C"],
  "routes": [
    {"kinds": ["rollback", "training_failed"], "min_severity": "warning", "urls": ["oncall"], "also_default": true},
    {"kinds": "model_rejected", "urls": ["models", "oncall"]},
    {"min_severity": "critical", "urls": ["oncall"]}
  ]
}""")


def test_routes_parse_channel_names_defaults_and_also_default():
    table = RoutingTable.parse(TABLE)
    assert table.default == (C,)
    assert table.urls == (C, A, B)
    assert table.urls_for(alert("rollback", "critical")) == [A, C]  # two routes match, one says also_default
    assert table.urls_for(alert("training_failed", "error")) == [A, C]
    assert table.urls_for(alert("training_failed", "info")) == [C], "below min_severity: only the default"
    assert table.urls_for(alert("model_rejected", "warning")) == [B, A], "no also_default: the default is skipped"
    assert table.urls_for(alert("drift_detected", "critical")) == [A]
    assert table.urls_for(alert("training_started", "info")) == [C], "no route matches: the default"


def test_the_single_webhook_setting_is_the_first_default_and_not_repeated():
    table = RoutingTable.parse(sub('{"default": ["@A", "@B"]}'), default_url=A)
    assert table.default == (A, B)
    assert RoutingTable.parse("", default_url=A).urls_for(alert()) == [A]
    assert RoutingTable.parse("  ").urls_for(alert()) == [], "no URL anywhere: Teams is off"


def test_failures_only_can_come_from_the_setting_or_the_table():
    assert RoutingTable.parse("", default_url=A, failures_only=True).failures_only
    assert RoutingTable.parse('{"failures_only": true}', default_url=A).failures_only


def test_reprs_of_the_routing_never_show_a_url():
    table = RoutingTable.parse(TABLE)
    router = Router(table, webhook=object())  # type: ignore[arg-type] - no request is made here
    shown = repr(table) + repr(router) + repr(list(router.targets(alert("rollback", "critical"))))
    assert "SECRET" not in shown and "example.invalid/workflows" not in shown
    assert "teams:example.invalid#" in shown


def test_router_refuses_urls_without_a_webhook_adapter():
    with pytest.raises(ValueError):
        Router(RoutingTable(default=(A,)))


@pytest.mark.parametrize("raw,needle", [
    ("{not json", "not valid JSON (line 1, column 2)"),
    ('["@A"]', "must be a JSON object"),
    ('{"route": []}', "unknown keys ['route']"),
    ('{"channels": {"oncall": "mailto:x@example.invalid/SECRET"}}', "channels must map names to http(s) URLs"),
    ('{"channels": ["@A"]}', "channels must map names to http(s) URLs"),
    ('{"default": ["htp://example.invalid/x/SECRET"]}', "default[0] is neither a channel name nor an http(s) URL"),
    ('{"default": {"x": "@A"}}', "default must be a list"),
    ('{"routes": {"urls": ["@A"]}}', "routes must be a list"),
    ('{"routes": ["@A"]}', "routes[0] must be an object"),
    ('{"routes": [{"urls": ["oncall"]}]}', "routes[0].urls[0] is neither a channel name nor an http(s) URL"),
    ('{"routes": [{"kinds": ["rolback"], "urls": ["@A"]}]}', "routes[0].kinds has unknown kinds ['rolback']"),
    ('{"routes": [{"min_severity": "loud", "urls": ["@A"]}]}', "routes[0].min_severity must be one of"),
    ('{"routes": [{"kinds": ["rollback"]}]}', "routes[0] needs urls"),
    ('{"routes": [{"url": "@A"}]}', "routes[0] has unknown keys ['url']"),
])
def test_routing_errors_name_the_entry_and_never_echo_a_value(raw, needle):
    with pytest.raises(InvalidPayload) as caught:
        RoutingTable.parse(sub(raw))
    assert needle in str(caught.value), str(caught.value)
    assert caught.value.field == "MLOPS_TEAMS_ROUTES"
    assert "SECRET" not in str(caught.value)


def test_a_bad_routing_table_fails_at_startup_not_at_the_first_alert(store):
    with pytest.raises(InvalidPayload):
        build_notifier(Settings(teams_routes=sub('{"routes": [{"kinds": ["nope"], "urls": ["@A"]}]}')), store=store)


# --- failures-only -----------------------------------------------------------------------------------------

def test_failures_are_errors_criticals_and_every_rollback():
    for kind in ALERT_KINDS:
        for severity in SEVERITIES:
            assert is_failure(alert(kind, severity)) == (severity in ("error", "critical") or kind == "rollback")


def test_failures_only_mode_queues_nothing_else_for_teams(store, clock):
    with httpx.Client() as client:  # never used: nothing is flushed here
        outbox = build_notifier(Settings(teams_webhook_url=A, teams_failures_only=True), store=store,
                                client=client, clock=clock)
        for kind in ALERT_KINDS:
            outbox.notify(alert(kind, "info"))
            outbox.notify(alert(kind, "warning"))
        outbox.notify(alert("drift_detected", "critical"))
        outbox.notify(alert("training_failed", "error"))
    queued = sorted((a.kind, a.severity) for _, a, _ in store.pending())
    assert queued == [("drift_detected", "critical"), ("rollback", "info"), ("rollback", "warning"),
                      ("training_failed", "error")]
    assert outbox.counters["unrouted"] == 2 * len(ALERT_KINDS) - 2


def test_a_card_no_route_takes_still_settles_its_incident(store, clock):
    """An unrouted card counts as handled: its repeats are held back as usual. Left unmarked, every repeat past
    the 2-minute grace was admitted again (and reset the incident's window) as if the first had been lost."""
    with httpx.Client() as client:  # never used: nothing is flushed here
        outbox = build_notifier(Settings(teams_webhook_url=A, teams_failures_only=True), store=store,
                                client=client, clock=clock)
        outbox.notify(alert("training_started", "info", key="job:x:started"))
        clock.advance(UNQUEUED_GRACE + 60)
        outbox.notify(alert("training_started", "info", key="job:x:started"))
    assert (outbox.counters["unrouted"], outbox.counters["suppressed"]) == (1, 1)


def test_failures_only_still_shows_everything_on_the_console(store, clock):
    stream = io.StringIO()
    with httpx.Client() as client:
        outbox = build_notifier(Settings(teams_webhook_url=A, teams_failures_only=True), store=store,
                                client=client, stream=stream, clock=clock)
        outbox.notify(alert("training_started", "info"))
    assert [a.kind for _, a, _ in store.pending()] == ["training_started"]
    targets = outbox.router.targets(alert("training_started", "info"))
    assert [t.key for t in targets] == ["console"]


# --- dedupe ------------------------------------------------------------------------------------------------

def test_incident_step_one_card_per_window_then_a_reminder_counting_repeats():
    a = alert(key="k", severity="warning")
    state, first = incident_step(None, a, now=0, window=600)
    assert (first.send, first.reason) == (True, "new")
    state, _ = incident_queued(state, 0)  # the outbox stored the card
    state, second = incident_step(state, a, now=10, window=600)
    state, third = incident_step(state, a, now=599, window=600)
    assert (second.send, third.send) == (False, False) and third.suppressed == 2
    state, reminder = incident_step(state, a, now=600, window=600)
    assert (reminder.send, reminder.reason, reminder.suppressed) == (True, "reminder", 2)
    assert state["suppressed_total"] == 2 and state["suppressed"] == 0


def test_a_card_admitted_but_never_marked_queued_does_not_hold_back_its_repeats():
    """The worker died (or the store failed) between admitting a card and queueing it: before, every repeat for
    the rest of the window was held back behind a card nobody would see."""
    a = alert(key="k", severity="warning")
    state, _ = incident_step(None, a, now=0, window=3600)
    state, soon = incident_step(state, a, now=UNQUEUED_GRACE - 1, window=3600)
    assert not soon.send, "inside the grace the first card may still be on its way into the store"
    state, later = incident_step(state, a, now=UNQUEUED_GRACE, window=3600)
    assert (later.send, later.reason, later.suppressed) == (True, "not queued before", 1)
    state, marked = incident_queued(state, UNQUEUED_GRACE)
    assert marked and state["queued"] is True
    state, repeat = incident_step(state, a, now=3 * UNQUEUED_GRACE, window=3600)
    assert (repeat.send, repeat.reason) == (False, "duplicate")
    assert incident_queued(state, 0.0) == (state, False), "a later card owns the incident: not marked for it"


def test_incident_step_escalation_goes_out_inside_the_window():
    state, _ = incident_step(None, alert(key="k", severity="warning"), now=0, window=600)
    state, up = incident_step(state, alert(key="k", severity="critical"), now=5, window=600)
    assert (up.send, up.reason, up.severity) == (True, "escalated", "critical")
    state, down = incident_step(state, alert(key="k", severity="warning"), now=6, window=600)
    assert not down.send, "a lower severity of an open incident is a repeat"


def test_incident_step_resolved_goes_out_once_with_the_incident_severity_and_can_reopen():
    state, _ = incident_step(None, alert(key="k", severity="critical"), now=0, window=600)
    resolved = alert(key="k", severity="info", resolved=True)
    state, closed = incident_step(state, resolved, now=1, window=600)
    assert (closed.send, closed.reason, closed.severity) == (True, "resolved", "critical")
    state, again = incident_step(state, resolved, now=2, window=600)
    assert (again.send, again.reason) == (False, "already resolved")
    state, reopened = incident_step(state, alert(key="k", severity="warning"), now=3, window=600)
    assert (reopened.send, reopened.reason) == (True, "reopened") and state["state"] == "open"


def test_outbox_dedupes_by_incident_and_lets_resolved_through_once(store, clock):
    rec = Recorder()
    outbox = outbox_with(store, clock, rec, dedupe_window_minutes=10)
    drift = alert("drift_detected", "warning", key="drift:churn:psi")
    for _ in range(4):
        outbox.notify(drift)
        clock.advance(60)
    outbox.notify(dataclasses.replace(drift, resolved=True, severity="info"))
    outbox.notify(dataclasses.replace(drift, resolved=True, severity="info"))
    outbox.notify(alert("drift_detected", "warning"))  # no incident key: never deduped
    outbox.notify(alert("drift_detected", "warning"))
    assert outbox.flush() == 4
    assert [(a.resolved, a.severity) for a in rec.sent] == [(False, "warning"), (True, "warning"),
                                                            (False, "warning"), (False, "warning")]
    assert store.stats()["suppressed"] == 4 and store.stats()["open_incidents"] == 0


def test_a_reminder_after_the_window_says_how_many_repeats_were_held_back(store, clock):
    rec = Recorder()
    outbox = outbox_with(store, clock, rec, dedupe_window_minutes=10)
    failure = alert(key="job:x:failed")
    for _ in range(3):
        outbox.notify(failure)
    clock.advance(10 * 60)
    outbox.notify(failure)
    outbox.flush()
    assert len(rec.sent) == 2
    assert dict(rec.sent[1].facts)["Repeats held back"] == "2 since the previous card (reminder)"


def test_a_card_the_store_refused_does_not_hold_back_its_repeat(store, clock, monkeypatch):
    """Dedupe admitted the card, then storing it failed: before, the incident counted it as sent and the repeat
    (the next delivery, a retry) was held back for the whole window, so no card at all went out."""
    rec = Recorder()
    outbox = outbox_with(store, clock, rec)
    add = store.add

    def refused(_alert):
        monkeypatch.setattr(store, "add", add)
        raise TransientError("injected: the outbox table is busy")

    monkeypatch.setattr(store, "add", refused)
    outbox.notify(alert(key="job:x:failed"))
    assert outbox.counters["queued"] == 0
    outbox.notify(alert(key="job:x:failed"))
    outbox.notify(alert(key="job:x:failed"))  # this one is a repeat of a stored card: held back
    outbox.flush()
    assert [a.incident_key for a in rec.sent] == ["job:x:failed"]
    assert outbox.counters == {**outbox.counters, "queued": 1, "suppressed": 1}


def test_dedupe_survives_a_restart_with_the_sqlite_store(tmp_path, clock):
    first = SqliteOutbox(tmp_path / "o.db", clock=clock)
    outbox_with(first, clock, Recorder()).notify(alert(key="k"))
    first.close()
    second = SqliteOutbox(tmp_path / "o.db", clock=clock)
    again = outbox_with(second, clock, Recorder())
    again.notify(alert(key="k"))  # the same event redelivered after a restart
    assert len(second.pending()) == 1 and again.counters["suppressed"] == 1
    second.close()


def test_a_port_only_store_still_dedupes_and_tracks_targets_in_memory(store, clock):
    ok, flaky = Recorder("ok"), Recorder("flaky", fail=[TransientError("down")])
    outbox = outbox_with(PortOnlyStore(store), clock, ok, flaky)
    outbox.notify(alert(key="k"))
    outbox.notify(alert(key="k"))
    assert outbox.flush() == 0
    clock.advance(3600)
    assert outbox.flush() == 1
    assert (len(ok.sent), len(flaky.sent)) == (1, 1), "the retry went only to the target that missed it"
    assert outbox._memory._delivered == {}, "finished alerts leave no in-memory records behind"


# --- console and log output -----------------------------------------------------------------------------

def test_without_webhooks_alerts_render_on_the_given_stream_after_flush(store, clock):
    stream = io.StringIO()
    outbox = build_notifier(Settings(), store=store, stream=stream, clock=clock)
    outbox.notify(alert("rollback", "critical", key="rb", links=(("Open", "https://ml.azure.com/x"),)))
    assert stream.getvalue() == "", "notify never sends inline"
    assert outbox.flush() == 1
    text = stream.getvalue()
    assert text.startswith("[CRITICAL] rollback rb\n") and text.endswith("\n\n")
    assert "Job:" in text and "→ Open: https://ml.azure.com/x" in text


def test_without_webhooks_or_stream_alerts_go_to_the_log_at_a_level_by_severity(store, clock, caplog):
    caplog.set_level(logging.INFO, logger="shared.notify")
    outbox = build_notifier(Settings(), store=store, clock=clock)
    outbox.notify(alert("drift_detected", "warning", key="d"))
    outbox.notify(alert("training_started", "info"))
    outbox.notify(alert("drift_detected", "warning", key="d", resolved=True))
    assert outbox.flush() == 3
    rendered = [(r.levelno, r.getMessage().splitlines()[1]) for r in caplog.records
                if r.getMessage().startswith("alert\n")]
    assert rendered == [(logging.WARNING, "[WARNING] drift_detected d"), (logging.INFO, "[INFO] training_started"),
                        (logging.INFO, "[RESOLVED] drift_detected d")]


def test_an_unresolved_key_vault_reference_sends_alerts_to_the_log_and_says_why(store, clock, caplog):
    caplog.set_level(logging.INFO, logger="shared.notify")
    unresolved = "@Microsoft.KeyVault(SecretUri=https://kv-mlops.vault.azure.net/secrets/teams-webhook/)"
    outbox = build_notifier(Settings(teams_webhook_url=unresolved), store=store, clock=clock)
    outbox.notify(alert("rollback", "critical", key="rb"))
    assert outbox.flush() == 1 and store.status(1)["status"] == "delivered"
    assert any(r.getMessage().startswith("alert\n[CRITICAL] rollback rb") for r in caplog.records)
    assert any(r.levelno == logging.ERROR and "unresolved Key Vault reference" in r.getMessage()
               for r in caplog.records)
    assert not any("kv-mlops" in r.getMessage() for r in caplog.records), "the setting's value is never logged"


def test_an_unresolved_routes_reference_falls_back_to_the_default_instead_of_stopping_the_app(store, clock, caplog):
    caplog.set_level(logging.INFO, logger="shared.notify")
    unresolved = "@Microsoft.KeyVault(SecretUri=https://kv-mlops.vault.azure.net/secrets/teams-routes/)"
    outbox = build_notifier(Settings(teams_routes=unresolved), store=store, clock=clock)
    outbox.notify(alert("rollback", "critical", key="rb"))
    assert outbox.flush() == 1 and store.status(1)["status"] == "delivered"
    assert any(r.levelno == logging.ERROR and "MLOPS_TEAMS_ROUTES is an unresolved Key Vault reference"
               in r.getMessage() for r in caplog.records)
    assert not any("kv-mlops" in r.getMessage() for r in caplog.records)


def test_a_closed_console_stream_fails_the_alert_without_raising(store, clock):
    stream = io.StringIO()
    outbox = outbox_with(store, clock, ConsoleChannel(stream))
    stream.close()
    outbox.notify(alert())
    assert outbox.flush() == 0
    assert store.status(1)["status"] == "failed" and "console stream unusable" in store.status(1)["error"]


# --- flush never raises, is quick when idle, and respects its time budget ------------------------------------

def test_notify_and_flush_never_raise_when_the_store_is_broken(store, clock, caplog):
    outbox = build_notifier(Settings(), store=store, clock=clock)
    store._conn().execute("DROP TABLE alerts")  # a real failure of the real store, not a mock
    outbox.notify(alert(key="x"))
    assert outbox.flush() == 0
    assert any("unqueued alert" in r.getMessage() and "training_failed x" in r.getMessage()
               for r in caplog.records), "an alert the store could not take is still rendered in the log"


def test_a_permanent_rejection_fails_the_alert_for_good(store, clock, caplog):
    rec = Recorder(fail=[ServiceRejected("HTTP 400: bad card", status=400)])
    outbox = outbox_with(store, clock, rec)
    outbox.notify(alert())
    assert outbox.flush() == 0
    clock.advance(86_400)
    assert outbox.flush() == 0
    assert store.status(1)["status"] == "failed" and store.status(1)["attempts"] == 1
    assert any(r.levelno == logging.ERROR and "failed for good" in r.getMessage() for r in caplog.records)


def test_an_unexpected_channel_bug_is_logged_and_retried_not_raised(store, clock, caplog):
    outbox = outbox_with(store, clock, Recorder(fail=[RuntimeError("bug")]))
    outbox.notify(alert())
    assert outbox.flush() == 0
    assert store.status(1)["status"] == "pending"
    assert any("failed unexpectedly" in r.getMessage() for r in caplog.records)


def test_an_idle_flush_is_quick(store, clock):
    outbox = outbox_with(store, clock, Recorder())
    outbox.notify(alert())
    outbox.flush()
    started = time.perf_counter()
    for _ in range(200):
        assert outbox.flush() == 0
    per_flush = (time.perf_counter() - started) / 200
    assert per_flush < 0.005, f"{per_flush * 1000:.2f} ms per idle flush"


def test_flush_stops_near_its_budget_and_leaves_the_rest_due(store, clock):
    rec = Recorder(pause=0.1)
    outbox = outbox_with(store, clock, rec)
    for i in range(20):
        outbox.notify(alert(key=f"k{i}"))
    started = time.perf_counter()
    delivered = outbox.flush(max_seconds=0.35)
    assert time.perf_counter() - started < 0.6
    assert 2 <= delivered <= 5
    assert len(store.pending()) == 20 - delivered, "the rest is due at once, not leased away"
    assert all(attempts == 0 for _, _, attempts in store.pending()), "running out of time is not an attempt"


def test_a_second_concurrent_flush_returns_at_once(store, clock):
    gate = threading.Event()
    outbox = outbox_with(store, clock, Recorder(gate=gate))
    outbox.notify(alert())
    worker = threading.Thread(target=outbox.flush)
    worker.start()
    time.sleep(0.05)
    started = time.perf_counter()
    assert outbox.flush() == 0
    assert time.perf_counter() - started < 0.05
    gate.set()
    worker.join(5)
    assert store.status(1)["status"] == "delivered"


def test_two_outboxes_on_one_database_never_send_an_alert_twice(tmp_path, clock):
    stores = [SqliteOutbox(tmp_path / "shared.db", clock=clock) for _ in range(2)]
    recorders = [Recorder(pause=0.005), Recorder(pause=0.005)]
    outboxes = [outbox_with(s, clock, r) for s, r in zip(stores, recorders, strict=True)]
    for i in range(30):
        outboxes[i % 2].notify(alert(key=f"k{i}"))
    threads = [threading.Thread(target=o.flush) for o in outboxes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    titles = [a.title for r in recorders for a in r.sent]
    assert len(titles) == 30 and len(set(titles)) == 30
    for s in stores:
        s.close()


# --- the Teams adapter's pure pieces: limiter and Retry-After ------------------------------------------------

def test_limiter_spaces_requests_and_never_puts_five_in_one_second():
    now = [0.0]
    limiter = RateLimiter(4.0, ((60, 30.0),), clock=lambda: now[0])
    starts = [limiter.reserve("k") for _ in range(80)]
    assert all(b - a >= 0.25 - 1e-9 for a, b in zip(starts, starts[1:], strict=False))
    assert all(starts[i + 4] - starts[i] >= 1.0 for i in range(len(starts) - 4))
    assert all(starts[i + 60] - starts[i] >= 30.0 for i in range(len(starts) - 60)), "60 per 30 s holds too"
    assert limiter.reserve("other") == 0.0, "limits are per URL"
    assert limiter.reserve("k", deadline=1.0) is None, "no slot within the deadline: nothing is reserved"


def test_limiter_holds_a_url_after_retry_after():
    limiter = RateLimiter(4.0, clock=lambda: 10.0)
    limiter.hold("k", 25.0)
    assert limiter.reserve("k") == 25.0


@pytest.mark.parametrize("raw,seconds", [("3", 3.0), ("0.5", 0.5), ("-4", 0.0), ("99999", 3600.0),
                                         ("inf", None), ("nan", None), ("soon", None), ("", None), (None, None),
                                         ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)])
def test_retry_after_is_read_bounded_and_never_forever(raw, seconds):
    assert retry_after_seconds(raw) == seconds


class SlotOnlyLater(Recorder):
    """Has no free slot before the flush deadline for the incident "held" (rate limit or Retry-After)."""

    def send(self, alert: Alert, *, time_left: float | None = None) -> None:
        if alert.incident_key == "held":
            error = Throttled("no slot within the time budget", retry_after=30)
            error.deadline_reached = True  # type: ignore[attr-defined] - as TeamsWebhook marks it
            raise error
        super().send(alert, time_left=time_left)


def test_an_alert_whose_target_has_no_slot_does_not_hold_up_the_others(store, clock):
    rec = SlotOnlyLater()
    outbox = outbox_with(store, clock, rec)
    outbox.notify(alert("rollback", "critical", key="held"))
    outbox.notify(alert("training_failed", "error", key="next"))
    assert outbox.flush() == 1
    assert [a.title for a in rec.sent] == ["training_failed next"]
    held = store.status(1)
    assert held["status"] == "pending" and held["attempts"] == 0 and held["next_try"] <= clock.now


def test_queued_alerts_carry_the_time_they_were_raised_and_the_chain_they_belong_to(store, clock):
    from shared import logs

    outbox = outbox_with(store, clock, ConsoleChannel(io.StringIO()))
    with logs.scope(event_id="evt-run-2", correlation_id="evt-blob-1"):
        outbox.notify(alert(key="a"))
    outbox.notify(alert(key="b", at="2026-01-01T00:00:00+00:00", correlation_id="given"))
    clock.advance(3600)  # delivered an hour later: the card still says when it happened
    (_, first, _), (_, second, _) = store.pending()
    assert first.at == "2025-06-15T15:06:40+00:00" and first.correlation_id == "evt-blob-1"
    assert second.at == "2026-01-01T00:00:00+00:00" and second.correlation_id == "given"


class FlakyRecordStore:
    """The SqliteOutbox, except that recording a delivery fails transiently ``failures`` times first (a Table
    Storage fault after the webhook already accepted the card)."""

    def __init__(self, store: SqliteOutbox, failures: int) -> None:
        self._store, self.failures = store, failures

    def __getattr__(self, name):
        return getattr(self._store, name)

    def record_delivery(self, alert_id, key):
        if self.failures:
            self.failures -= 1
            raise TransientError("injected: the delivery record did not reach the table")
        return self._store.record_delivery(alert_id, key)


def test_a_delivery_record_lost_to_a_transient_fault_does_not_send_the_card_again(store, clock):
    channel = Recorder("teams")
    outbox = outbox_with(FlakyRecordStore(store, failures=2), clock, channel)
    outbox.notify(alert(key="i-1"))
    for _ in range(3):
        outbox.flush(max_seconds=5)
        clock.advance(3600)  # past any lease and retry time: a card not recorded as delivered would go again
    assert len(channel.sent) == 1

"""Alert delivery to Teams Workflows webhooks, against a real local HTTP server that records and can misbehave."""
from __future__ import annotations

import dataclasses
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import httpx
import pytest

from shared.adapters.teams import TeamsWebhook, fingerprint
from shared.config import Settings
from shared.domain import ALERT_KINDS, Alert
from shared.errors import ServiceRejected, TransientError
from shared.local.outbox import SqliteOutbox
from shared.notify import build_notifier
from tests.helpers import EpochClock


@dataclass
class Hit:
    path: str  # without the query: the query holds the signature
    at: float  # server-side arrival, time.monotonic()
    card: dict


@dataclass
class Reply:
    status: int = 202
    body: str = ""
    headers: dict = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering (a slow Teams: the client times out)


class Hook:
    """A stdlib HTTP server standing in for Teams Workflows: records every POST, answers from a per-path script."""

    def __init__(self, port: int = 0) -> None:
        self.hits: list[Hit] = []
        self.script: dict[str, list[Reply]] = {}
        self.always: dict[str, Reply] = {}
        self.lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - stdlib naming
                length = int(self.headers.get("Content-Length", "0"))
                payload = json.loads(self.rfile.read(length) or b"{}")
                path = urlsplit(self.path).path
                with hook.lock:
                    attachments = payload.get("attachments") or [{"content": {}}]
                    hook.hits.append(Hit(path, time.monotonic(), attachments[0]["content"]))
                    queue = hook.script.get(path) or []
                    reply = queue.pop(0) if queue else hook.always.get(path, Reply())
                if reply.delay:
                    time.sleep(reply.delay)
                body = reply.body.encode()
                try:
                    self.send_response(reply.status)
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the client gave up (timed out) and closed the connection
                    self.close_connection = True

            def log_message(self, *args) -> None:  # keep the test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return url_for(self.port, name)

    def paths(self) -> list[str]:
        with self.lock:
            return [h.path for h in self.hits]

    def hits_for(self, name: str) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if h.path == path_of(name)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def path_of(name: str) -> str:
    return f"/workflows/{name}/triggers/manual/paths/invoke"


def url_for(port: int, name: str) -> str:
    # Shaped like a real Workflows URL: the sig query parameter is the secret.
    return f"http://127.0.0.1:{port}{path_of(name)}?api-version=2016-06-01&sp=%2Ftriggers&sv=1.0&sig=SIG{name}x9Qz"


@pytest.fixture
def hook():
    server = Hook()
    yield server
    server.close()


@pytest.fixture
def http():
    with httpx.Client() as client:
        yield client


@pytest.fixture
def clock():
    return EpochClock()


@pytest.fixture
def make(tmp_path, http, clock):
    """An Outbox wired like production (build_notifier) with fast inline retries."""
    stores = []

    def _make(settings: Settings, **webhook_options):
        store = SqliteOutbox(tmp_path / f"outbox{len(stores)}.db", clock=clock)
        stores.append(store)
        options = dict(backoff_base=0.05, backoff_max=0.2, time_budget=5.0, max_attempts=4)
        options.update(webhook_options)
        webhook = TeamsWebhook(http, **options)
        return build_notifier(settings, store=store, webhook=webhook, clock=clock), store

    yield _make
    for s in stores:
        s.close()


def alert(kind: str = "training_failed", key: str = "", severity: str = "error", **changes) -> Alert:
    return Alert(kind=kind, severity=severity, title=f"{kind} {key}", summary="what, why, what was done",
                 facts=(("Job", "train-churn-v3-a1"),), incident_key=key or f"{kind}:{time.monotonic_ns()}",
                 **changes)


def header(card: dict) -> str:
    return card["body"][0]["items"][0]["text"]


# --- routing ---------------------------------------------------------------------------------------------

def test_routes_each_kind_to_the_urls_its_route_names(hook, make):
    routes = {"channels": {"oncall": hook.url("oncall"), "models": hook.url("models")},
              "routes": [{"kinds": ["rollback", "training_failed"], "min_severity": "warning", "urls": ["oncall"],
                          "also_default": True},
                         {"kinds": ["model_registered", "model_rejected"], "urls": ["models"]}]}
    outbox, store = make(Settings(teams_webhook_url=hook.url("feed"), teams_routes=json.dumps(routes)))
    outbox.notify(alert("rollback", severity="critical"))
    outbox.notify(alert("training_failed", severity="error"))
    outbox.notify(alert("model_rejected", severity="warning"))
    outbox.notify(alert("model_registered", severity="info"))
    outbox.notify(alert("training_started", severity="info"))
    outbox.notify(alert("training_failed", severity="info"))  # below the on-call route's min_severity

    assert outbox.flush(max_seconds=10) == 6

    def kinds(name):
        return sorted(h.card["body"][0]["items"][1]["text"].split()[0] for h in hook.hits_for(name))

    assert kinds("oncall") == ["rollback", "training_failed"]
    assert kinds("models") == ["model_registered", "model_rejected"]
    assert kinds("feed") == ["rollback", "training_failed", "training_failed", "training_started"]
    assert store.stats()["delivered"] == 6


def test_failures_only_mode_sends_only_errors_critical_and_rollbacks(hook, make):
    outbox, _ = make(Settings(teams_webhook_url=hook.url("feed"), teams_failures_only=True))
    for kind in ALERT_KINDS:
        outbox.notify(alert(kind, severity="info"))
    outbox.notify(alert("drift_detected", severity="critical"))
    outbox.notify(alert("event_rejected", severity="error"))
    outbox.flush(max_seconds=10)
    sent = sorted(h.card["body"][0]["items"][1]["text"].split()[0] for h in hook.hits)
    assert sent == ["drift_detected", "event_rejected", "rollback"]


# --- dedupe ----------------------------------------------------------------------------------------------

def test_redelivered_incident_is_suppressed_and_resolved_goes_out_once(hook, make, clock):
    outbox, store = make(Settings(teams_webhook_url=hook.url("feed")))
    drift = alert("drift_detected", key="drift:churn-endpoint:psi", severity="warning")
    for _ in range(3):
        outbox.notify(drift)  # the same alert re-fired / the same event redelivered
        clock.advance(60)
    outbox.notify(Alert(**{**drift.__dict__, "resolved": True, "severity": "info"}))
    outbox.notify(Alert(**{**drift.__dict__, "resolved": True, "severity": "info"}))
    assert outbox.flush(max_seconds=10) == 2

    cards = [h.card for h in hook.hits]
    assert len(cards) == 2
    assert header(cards[0]).startswith("WARNING")
    assert header(cards[1]).startswith("RESOLVED") and "was warning" in header(cards[1])
    stats = store.stats()
    assert stats["suppressed"] == 3 and stats["open_incidents"] == 0


def test_a_repeat_after_the_window_is_a_reminder_counting_what_was_held_back(hook, make, clock):
    outbox, _ = make(Settings(teams_webhook_url=hook.url("feed")))
    failure = alert("training_failed", key="job:train-churn-v3-a1:failed")
    outbox.notify(failure)
    outbox.notify(failure)
    clock.advance(61 * 60)
    outbox.notify(failure)
    outbox.flush(max_seconds=10)
    assert len(hook.hits) == 2
    facts = {f["title"]: f["value"] for b in hook.hits[1].card["body"] if b["type"] == "FactSet" for f in b["facts"]}
    assert facts["Repeats held back"].startswith("1 ")


# --- rate limit ------------------------------------------------------------------------------------------

def test_send_rate_to_one_webhook_stays_at_or_below_four_per_second(hook, make):
    outbox, _ = make(Settings(teams_webhook_url=hook.url("feed")))
    for i in range(12):
        outbox.notify(alert("training_started", severity="info", key=f"k{i}"))
    assert outbox.flush(max_seconds=10) == 12

    arrivals = sorted(h.at for h in hook.hits)
    busiest = max(sum(1 for t in arrivals if start <= t < start + 1.0) for start in arrivals)
    assert busiest <= 4, f"{busiest} requests arrived within one second"
    assert (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) <= 4.0


# --- retries ---------------------------------------------------------------------------------------------

def test_429_status_is_retried_after_retry_after_then_delivered(hook, make):
    hook.script[path_of("feed")] = [Reply(429, "slow down", {"Retry-After": "1"})]
    outbox, store = make(Settings(teams_webhook_url=hook.url("feed")))
    outbox.notify(alert())
    assert outbox.flush(max_seconds=10) == 1
    first, second = hook.hits
    assert second.at - first.at >= 0.95, "Retry-After: 1 must be honoured"
    assert store.stats()["delivered"] == 1


def test_429_reported_in_a_200_body_is_retried_then_delivered(hook, make):
    hook.script[path_of("feed")] = [Reply(200, "Microsoft Teams endpoint returned HTTP error 429 with ContextId x")]
    outbox, _ = make(Settings(teams_webhook_url=hook.url("feed")))
    outbox.notify(alert())
    assert outbox.flush(max_seconds=10) == 1
    assert len(hook.hits) == 2


def test_5xx_is_retried_then_delivered(hook, make):
    hook.script[path_of("feed")] = [Reply(500, "boom"), Reply(503, "busy")]
    outbox, _ = make(Settings(teams_webhook_url=hook.url("feed")))
    outbox.notify(alert())
    assert outbox.flush(max_seconds=10) == 1
    assert len(hook.hits) == 3


def test_a_timeout_is_retried_on_a_new_request_then_delivered(hook, make):
    hook.script[path_of("feed")] = [Reply(202, delay=1.5)]
    outbox, store = make(Settings(teams_webhook_url=hook.url("feed")), timeout=0.5)
    outbox.notify(alert())
    started = time.monotonic()
    assert outbox.flush(max_seconds=10) == 1
    assert 0.5 <= time.monotonic() - started < 1.5, "the slow answer was not waited for"
    assert len(hook.hits) == 2 and store.stats()["delivered"] == 1


def test_adapter_errors_say_what_happened_by_fingerprint(hook, http):
    webhook = TeamsWebhook(http, max_attempts=2, backoff_base=0.01)
    hook.always[path_of("bad")] = Reply(403, "Forbidden: flow disabled")
    with pytest.raises(ServiceRejected) as rejected:
        webhook.post(hook.url("bad"), {"type": "message", "attachments": []})
    assert rejected.value.status == 403 and "flow disabled" in str(rejected.value)
    hook.always[path_of("busy")] = Reply(200, "Microsoft Teams endpoint returned HTTP error 429 with ContextId x")
    with pytest.raises(TransientError) as throttled:
        webhook.post(hook.url("busy"), {"type": "message", "attachments": []})
    assert "2 attempt(s)" in str(throttled.value) and "HTTP error 429" in str(throttled.value)
    assert len(hook.hits_for("bad")) == 1 and len(hook.hits_for("busy")) == 2
    for error in (rejected.value, throttled.value):
        assert "SIG" not in str(error) and "/workflows/" not in str(error)


def test_permanent_400_is_recorded_as_failed_and_not_retried(hook, make, clock):
    hook.always[path_of("feed")] = Reply(400, "Bad card")
    outbox, store = make(Settings(teams_webhook_url=hook.url("feed")))
    outbox.notify(alert())
    assert outbox.flush(max_seconds=10) == 0
    clock.advance(3600)
    assert outbox.flush(max_seconds=10) == 0
    assert len(hook.hits) == 1
    status = store.status(1)
    assert status["status"] == "failed" and "HTTP 400" in status["error"] and "Bad card" in status["error"]


def test_outage_keeps_alerts_queued_and_a_later_flush_delivers_each_once(tmp_path, make, clock):
    with socket.socket() as s:  # a port nobody listens on: the "server down" case
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outbox, store = make(Settings(teams_webhook_url=url_for(port, "feed")))
    for i in range(3):
        outbox.notify(alert(key=f"outage:{i}"))
    assert outbox.flush(max_seconds=5) == 0
    stats = store.stats()
    assert stats["pending"] == 3 and stats["delivered"] == 0
    assert store.status(1)["next_try"] > clock.now, "a failed try leaves a next-retry time"

    server = Hook(port)  # Teams comes back
    try:
        assert outbox.flush() == 0, "nothing is due before its retry time"
        clock.advance(3600)
        assert outbox.flush(max_seconds=10) == 3
        assert len(server.hits) == 3
        assert store.stats()["pending"] == 0 and store.stats()["delivered"] == 3
        clock.advance(3600)
        assert outbox.flush() == 0 and len(server.hits) == 3, "nothing is sent twice"
    finally:
        server.close()


def test_retry_does_not_resend_to_a_url_that_already_got_the_alert(hook, make, clock):
    hook.script[path_of("down")] = [Reply(500)] * 10
    routes = {"routes": [{"kinds": ["training_failed"], "urls": [hook.url("down"), hook.url("up")]}]}
    outbox, store = make(Settings(teams_routes=json.dumps(routes)), max_attempts=2)
    outbox.notify(alert())
    assert outbox.flush(max_seconds=10) == 0
    assert len(hook.hits_for("up")) == 1 and store.status(1)["status"] == "pending"
    hook.script[path_of("down")] = []
    clock.advance(3600)
    assert outbox.flush(max_seconds=10) == 1
    assert len(hook.hits_for("up")) == 1, "the healthy URL is not sent the alert a second time"
    assert len(hook.hits_for("down")) == 3


def test_a_target_that_rejected_the_alert_is_not_retried_while_another_recovers(hook, make, clock):
    hook.always[path_of("bad")] = Reply(400, "Bad card")
    hook.script[path_of("down")] = [Reply(503)] * 4
    routes = {"routes": [{"kinds": ["rollback"], "urls": [hook.url("bad"), hook.url("down")]}]}
    outbox, store = make(Settings(teams_routes=json.dumps(routes)))
    outbox.notify(alert("rollback", severity="critical"))
    assert outbox.flush(max_seconds=10) == 0
    assert store.status(1)["status"] == "pending"
    clock.advance(3600)
    assert outbox.flush(max_seconds=10) == 0
    assert len(hook.hits_for("bad")) == 1, "a 400 is never retried"
    assert len(hook.hits_for("down")) == 5
    status = store.status(1)
    assert status["status"] == "failed", "one target refused it for good: operators must see that"


# --- secrets ---------------------------------------------------------------------------------------------

def test_no_webhook_url_path_or_signature_in_logs_errors_or_the_store(hook, make, http, caplog, clock):
    # Other code may quiet httpx (WARNING) for production; here every logger is opened up to DEBUG.
    for name in (None, "httpx", "httpcore", "shared"):
        caplog.set_level(logging.DEBUG, logger=name)
    secrets = []
    for name in ("feed", "bad", "slow"):
        url = hook.url(name)
        parts = urlsplit(url)
        secrets += [url, parts.path, parts.query, f"SIG{name}x9Qz"]
    hook.always[path_of("bad")] = Reply(400, "Bad card")
    hook.script[path_of("slow")] = [Reply(429, "", {"Retry-After": "0.1"}), Reply(500)]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        down = url_for(s.getsockname()[1], "down")
    secrets += [down, "SIGdownx9Qz"]
    routes = {"default": [hook.url("feed")],
              "routes": [{"kinds": ["rollback"], "urls": [hook.url("bad"), hook.url("slow"), down]}]}
    outbox, store = make(Settings(teams_routes=json.dumps(routes)))
    outbox.notify(alert("rollback", severity="critical"))
    outbox.notify(alert("training_failed"))
    outbox.flush(max_seconds=10)
    clock.advance(3600)
    outbox.flush(max_seconds=10)

    webhook = TeamsWebhook(http, max_attempts=2, backoff_base=0.01)
    errors = []
    for url in (hook.url("bad"), down):
        with pytest.raises((ServiceRejected, TransientError)) as caught:
            webhook.post(url, {"type": "message", "attachments": []})
        errors += [str(caught.value), repr(caught.value)]

    assert any("httpx" == r.name for r in caplog.records), "httpx request logs were captured (and redacted)"
    leaked = [r.getMessage() for r in caplog.records if any(s in r.getMessage() for s in secrets)]
    assert not leaked, leaked[:3]
    assert not [e for e in errors if any(s in e for s in secrets)]
    assert fingerprint(hook.url("bad")) in errors[0]
    stored = json.dumps([store.status(i) for i in (1, 2)])
    assert not [s for s in secrets if s in stored]
    assert not [s for s in secrets if s in repr(outbox) + repr(webhook)]


# --- the endpoint page link ------------------------------------------------------------------------------

def _open_urls(card: dict) -> dict[str, str]:
    return {a["title"]: a["url"] for a in card.get("actions", []) if a.get("type") == "Action.OpenUrl"}


def test_production_wiring_links_the_endpoint_page_at_the_public_url_and_never_a_key(hook, make):
    settings = Settings(teams_webhook_url=hook.url("feed"), public_url="https://mlops.example.net")
    outbox, _ = make(settings)
    outbox.notify(dataclasses.replace(alert("rollback", severity="critical"), facts=(("Endpoint", "churn endpoint"),)))
    assert outbox.flush(max_seconds=10) == 1
    urls = _open_urls(hook.hits_for("feed")[0].card)
    assert urls["Open page"] == "https://mlops.example.net/api/endpoints/churn%20endpoint/page"
    assert not any("code=" in u or "/api/status" in u for u in urls.values())


def test_no_public_url_means_no_page_link_rather_than_a_wrong_one(hook, make):
    outbox, _ = make(Settings(teams_webhook_url=hook.url("feed")))
    outbox.notify(dataclasses.replace(alert("rollback", severity="critical"), facts=(("Endpoint", "churn-endpoint"),)))
    assert outbox.flush(max_seconds=10) == 1
    assert "Open page" not in _open_urls(hook.hits_for("feed")[0].card)

"""At-least-once delivery by the local Event Grid: retries, dead letters, replay, duplicates and drain, over real HTTP."""
from __future__ import annotations

import json
import socket
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import azure.functions as func
import pytest

from shared.local import subscriptions as subs
from shared.local import wire
from shared.local.eventgrid import (
    MAX_DELIVERY_ATTEMPTS,
    NON_RETRIABLE_STATUS,
    TIME_TO_LIVE_EXCEEDED,
    LocalEventGrid,
)
from shared.local.host import LocalHost

PROBE = "MLOps.Probe"


def subscription_list(*pairs: tuple[str, str]):
    """Subscriptions on the custom topic for MLOps.Probe: (subscription name, function name) pairs."""
    return subs.parse({"subscriptions": [{"name": n, "function": f, "source": "custom", "includedEventTypes": [PROBE]}
                                         for n, f in pairs]})


def probe(subject: str = "probe", **data) -> dict:
    return wire.custom(PROBE, subject, data)


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class Scripted:
    """A real HTTP endpoint answering a script of statuses (the last one repeats); "slow" sleeps past the timeout."""

    def __init__(self, *script):
        self.script, self.requests = list(script), []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                owner.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                       "body": json.loads(body)})
                step = owner.script[min(len(owner.requests), len(owner.script)) - 1]
                if step == "slow":
                    time.sleep(0.6)
                    step = 200
                self.send_response(step)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted():
    made = []

    def make(*script):
        made.append(Scripted(*script))
        return made[-1]

    yield make
    for s in made:
        s.close()


@pytest.fixture
def grids():
    made = []

    def make(subscriptions, url, dead_letter_dir, **options):
        options.setdefault("backoff", 0.01)
        options.setdefault("function_key", "k")
        made.append(LocalEventGrid(subscriptions, endpoint_url=url, dead_letter_dir=dead_letter_dir, **options))
        return made[-1]

    yield make
    for g in made:
        g.close()


def dead_letter(tmp_path, subscription: str) -> dict:
    files = sorted((tmp_path / subscription).glob("*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


# --- a small app whose functions fail on demand ------------------------------------------------------------------

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
state: dict = {"calls": [], "broken": True, "grid": None}


@app.function_name("always_fails")
@app.event_grid_trigger(arg_name="event")
def always_fails(event: func.EventGridEvent) -> None:
    state["calls"].append(("always_fails", event.id))
    raise RuntimeError("the model store is down")


@app.function_name("flaky")
@app.event_grid_trigger(arg_name="event")
def flaky(event: func.EventGridEvent) -> None:
    state["calls"].append(("flaky", event.id))
    if state["broken"]:
        raise RuntimeError("not yet")


@app.function_name("recorder")
@app.event_grid_trigger(arg_name="event")
def recorder(event: func.EventGridEvent) -> None:
    state["calls"].append(("recorder", event.id))


@app.function_name("chain")
@app.event_grid_trigger(arg_name="event")
def chain(event: func.EventGridEvent) -> None:
    """Raises a follow-up event while it is being delivered, as handlers do through the workspace's emit."""
    state["calls"].append(("chain", event.get_json().get("step")))
    if event.get_json().get("step") == 1:
        time.sleep(0.2)  # still in flight when the follow-up is queued and for a while after
        state["grid"].publish(probe("follow-up", step=2))


@pytest.fixture
def host():
    state.update(calls=[], broken=True, grid=None)
    with LocalHost(app, port=0, master_key="k") as running:
        yield running


# --- retries and dead letters --------------------------------------------------------------------------------

def test_a_delivery_answered_500_is_retried_then_dead_lettered_with_event_grids_fields(host, grids, tmp_path):
    grid = grids(subscription_list(("always-fails", "always_fails")), host.url, tmp_path, max_attempts=3)
    event = probe(n=1)
    assert grid.publish(event) == ["always-fails"]
    assert grid.drain(timeout=10)
    assert state["calls"] == [("always_fails", event["id"])] * 3
    letter = dead_letter(tmp_path, "always-fails")
    assert {k: letter[k] for k in ("deadLetterReason", "deliveryAttempts", "lastDeliveryOutcome",
                                   "lastHttpStatusCode")} == {
        "deadLetterReason": MAX_DELIVERY_ATTEMPTS, "deliveryAttempts": 3, "lastDeliveryOutcome": "InternalServerError",
        "lastHttpStatusCode": 500}
    assert parse_time(letter["publishTime"]) <= parse_time(letter["lastDeliveryAttemptTime"])
    assert {k: letter[k] for k in event} == event  # the event itself, untouched
    stats = grid.stats()
    assert (stats["retried"], stats["dead_lettered"], stats["delivered"], stats["pending"]) == (2, 1, 0, 0)


@pytest.mark.parametrize("status, outcome", [(400, "BadRequest"), (401, "Unauthorized"), (403, "Forbidden"),
                                             (413, "RequestEntityTooLarge")])
def test_a_status_event_grid_never_retries_is_dead_lettered_after_one_attempt(scripted, grids, tmp_path, status,
                                                                               outcome):
    endpoint = scripted(status)
    grid = grids(subscription_list(("probe-sub", "recorder")), endpoint.url, tmp_path, max_attempts=5)
    grid.publish(probe())
    assert grid.drain(timeout=10)
    assert len(endpoint.requests) == 1
    letter = dead_letter(tmp_path, "probe-sub")
    assert (letter["deadLetterReason"], letter["deliveryAttempts"], letter["lastDeliveryOutcome"],
            letter["lastHttpStatusCode"]) == (NON_RETRIABLE_STATUS, 1, outcome, status)
    assert grid.stats()["retried"] == 0


@pytest.mark.parametrize("status", [404, 408, 429, 500, 503])
def test_other_failures_are_retried_until_the_endpoint_answers(scripted, grids, tmp_path, status):
    endpoint = scripted(status, status, 202)
    grid = grids(subscription_list(("probe-sub", "recorder")), endpoint.url, tmp_path, max_attempts=5)
    grid.publish(probe())
    assert grid.drain(timeout=10)
    assert [r["headers"]["aeg-delivery-count"] for r in endpoint.requests] == ["0", "1", "2"]
    assert grid.stats()["delivered"] == 1 and grid.stats()["retried"] == 2
    assert not (tmp_path / "probe-sub").exists()


def test_an_unknown_function_is_404_from_the_host_and_ends_as_a_dead_letter(host, grids, tmp_path):
    grid = grids(subscription_list(("orphan", "no_such_function")), host.url, tmp_path, max_attempts=2)
    grid.publish(probe())
    assert grid.drain(timeout=10)
    letter = dead_letter(tmp_path, "orphan")
    assert (letter["deadLetterReason"], letter["lastDeliveryOutcome"], letter["lastHttpStatusCode"]) == (
        MAX_DELIVERY_ATTEMPTS, "NotFound", 404)


def test_each_delivery_is_one_event_in_an_array_with_event_grid_headers(scripted, grids, tmp_path):
    endpoint = scripted(200)
    grid = grids(subscription_list(("probe-sub", "recorder")), endpoint.url, tmp_path)
    event = probe(n=2)
    grid.publish(event)
    assert grid.drain(timeout=10)
    (request,) = endpoint.requests
    parts = urlsplit(request["path"])
    assert parts.path == "/runtime/webhooks/eventgrid" and parse_qs(parts.query) == {"functionName": ["recorder"]}
    h = request["headers"]
    assert (h["aeg-event-type"], h["aeg-subscription-name"], h["aeg-delivery-count"], h["aeg-data-version"],
            h["aeg-metadata-version"], h["x-functions-key"]) == ("Notification", "probe-sub", "0", "1.0", "1", "k")
    assert h["content-type"].startswith("application/json")
    assert request["body"] == [event]


def test_a_timeout_is_retried_like_a_failure(scripted, grids, tmp_path):
    endpoint = scripted("slow", 200)
    grid = grids(subscription_list(("probe-sub", "recorder")), endpoint.url, tmp_path, timeout=0.2, max_attempts=3)
    grid.publish(probe())
    assert grid.drain(timeout=10)
    stats = grid.stats()
    assert len(endpoint.requests) >= 2 and stats["retried"] >= 1 and stats["delivered"] == 1


def test_an_unreachable_endpoint_ends_as_a_dead_letter_without_a_status(grids, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the grid calls it: connection refused
    grid = grids(subscription_list(("probe-sub", "recorder")), f"http://127.0.0.1:{port}", tmp_path, max_attempts=2)
    grid.publish(probe())
    assert grid.drain(timeout=10)
    letter = dead_letter(tmp_path, "probe-sub")
    assert (letter["deadLetterReason"], letter["deliveryAttempts"], letter["lastDeliveryOutcome"]) == (
        MAX_DELIVERY_ATTEMPTS, 2, "ConnectionFailed")
    assert "lastHttpStatusCode" not in letter


def test_an_event_past_its_time_to_live_is_dead_lettered_when_the_next_attempt_is_due(scripted, grids, tmp_path):
    endpoint = scripted(503)
    grid = grids(subscription_list(("probe-sub", "recorder")), endpoint.url, tmp_path, max_attempts=30,
                 time_to_live=0.05, backoff=0.1)
    grid.publish(probe())
    assert grid.drain(timeout=10)
    letter = dead_letter(tmp_path, "probe-sub")
    assert (letter["deadLetterReason"], letter["deliveryAttempts"], letter["lastHttpStatusCode"]) == (
        TIME_TO_LIVE_EXCEEDED, 1, 503)


def test_the_subscription_retry_policy_applies_when_no_override_is_given(scripted, grids, tmp_path):
    endpoint = scripted(500)
    policy = subs.parse({"subscriptions": [{"name": "two-tries", "function": "recorder", "source": "custom",
                                            "includedEventTypes": [PROBE], "retryPolicy": {"maxDeliveryAttempts": 2}}]})
    grid = grids(policy, endpoint.url, tmp_path)
    grid.publish(probe())
    assert grid.drain(timeout=10)
    assert len(endpoint.requests) == 2 and dead_letter(tmp_path, "two-tries")["deliveryAttempts"] == 2


# --- replay ----------------------------------------------------------------------------------------------------

def test_replay_delivers_a_dead_letter_once_the_cause_is_fixed_and_removes_the_file(host, grids, tmp_path):
    grid = grids(subscription_list(("flaky-sub", "flaky")), host.url, tmp_path, max_attempts=2)
    event = probe(n=3)
    grid.publish(event)
    assert grid.drain(timeout=10)
    assert len(grid.dead_letters()) == 1

    assert grid.replay() == 0  # still broken: the file stays
    assert len(grid.dead_letters()) == 1

    state["broken"] = False
    assert grid.replay("flaky-sub") == 1
    assert grid.dead_letters() == []
    assert state["calls"] == [("flaky", event["id"])] * 4  # two attempts, one failed replay, one good one
    assert grid.replay() == 0 and grid.stats()["replayed"] == 1


def test_replay_sends_the_event_without_the_dead_letter_fields(scripted, grids, tmp_path):
    endpoint = scripted(400, 200)
    grid = grids(subscription_list(("probe-sub", "recorder")), endpoint.url, tmp_path)
    event = probe(n=4)
    grid.publish(event)
    assert grid.drain(timeout=10)
    assert grid.replay(tmp_path / "probe-sub") == 1
    assert endpoint.requests[-1]["body"] == [event]


# --- duplicates and drain --------------------------------------------------------------------------------------

def test_duplicate_every_sends_every_nth_event_a_second_time(host, grids, tmp_path):
    grid = grids(subscription_list(("rec", "recorder")), host.url, tmp_path, duplicate_every=2)
    events = [probe(n=i) for i in range(4)]
    for e in events:
        grid.publish(e)
    assert grid.drain(timeout=10)
    ids = [event_id for _, event_id in state["calls"]]
    assert sorted(ids) == sorted([events[0]["id"], events[1]["id"], events[1]["id"], events[2]["id"],
                                  events[3]["id"], events[3]["id"]])
    assert grid.stats()["duplicates"] == 2 and grid.stats()["delivered"] == 6


def test_a_duplicate_through_the_real_app_takes_effect_once(grids, tmp_path):
    import function_app
    from tests.integration.test_local_host import build_runtime

    runtime = build_runtime(tmp_path / "mlops")
    function_app.use_runtime(runtime)
    try:
        with LocalHost(function_app.app, port=0) as real:
            grid = grids(subs.load(), real.url, tmp_path / "dead", duplicate_every=1, function_key=real.key)
            event = wire.model_registered("churn-model", "7", {"mlops_owner": "mlops-automation"})
            grid.publish(event)
            assert grid.drain(timeout=10)
        assert grid.stats()["duplicates"] == 1
        assert [r.event_id for r in runtime.audit.recent(limit=10)] == [event["id"]]
        assert runtime.ledger.stats()["duplicates"] == 1
    finally:
        function_app.use_runtime(None)
        runtime.close()


def test_drain_waits_for_events_published_while_a_delivery_is_in_flight(host, grids, tmp_path):
    grid = grids(subscription_list(("chain-sub", "chain")), host.url, tmp_path)
    state["grid"] = grid
    grid.publish(probe("first", step=1))
    assert grid.drain(timeout=10)
    assert state["calls"] == [("chain", 1), ("chain", 2)]
    assert grid.stats()["pending"] == 0


def test_drain_gives_up_after_its_timeout_while_retries_are_pending(scripted, grids, tmp_path):
    endpoint = scripted(503)
    grid = grids(subscription_list(("probe-sub", "recorder")), endpoint.url, tmp_path, backoff=5.0, max_attempts=3)
    grid.publish(probe())
    started = time.monotonic()
    assert grid.drain(timeout=0.3) is False
    assert time.monotonic() - started < 2
    assert grid.stats()["pending"] == 1


# --- publishing ------------------------------------------------------------------------------------------------

def test_an_event_whose_topic_names_no_source_needs_one_given(scripted, grids, tmp_path):
    endpoint = scripted(200)
    grid = grids(subscription_list(("probe-sub", "recorder")), endpoint.url, tmp_path)
    stray = {**probe(), "topic": "/somewhere/else"}
    with pytest.raises(ValueError, match="pass source="):
        grid.publish(stray)
    assert grid.publish(stray, source="custom") == ["probe-sub"]
    assert grid.publish(stray, source="ml") == []
    assert grid.drain(timeout=10) and grid.stats()["unmatched"] == 1


def test_publishing_after_close_is_refused(scripted, tmp_path):
    grid = LocalEventGrid(subscription_list(("probe-sub", "recorder")), endpoint_url=scripted(200).url,
                          function_key="k", dead_letter_dir=tmp_path)
    grid.close()
    with pytest.raises(RuntimeError, match="closed"):
        grid.publish(probe())

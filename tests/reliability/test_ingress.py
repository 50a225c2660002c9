"""Junk at the front door, through the real app on the local host: a bad event is answered as permanent (never
a 5xx that Event Grid or an action group would retry for a day), is recorded, and never harms what follows."""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import azure.functions as func
import httpx
import pytest

from shared.errors import Throttled
from shared.local.host import LocalHost
from tests.integration.test_local_host import EmptyWorkspace, IdleMonitor

WEBHOOK = "/runtime/webhooks/eventgrid"
NOTIFY = {"aeg-event-type": "Notification"}


def model_event(event_id: str) -> dict:
    return {"id": event_id, "topic": "t", "subject": "models/churn-model:7",
            "eventType": "Microsoft.MachineLearningServices.ModelRegistered", "eventTime": "2026-03-02T09:42:30Z",
            "data": {"modelName": "churn-model", "modelVersion": "7", "modelTags": {}}, "dataVersion": "2"}


@pytest.fixture
def served(tmp_path):
    """The real function_app with the real SQLite ledger, audit trail and alert outbox (no Teams: alerts go to
    the log channel), an empty workspace."""
    import function_app
    from shared.bootstrap import build
    from shared.config import Settings

    settings = Settings.from_env({"MLOPS_BACKEND": "local", "MLOPS_HOME": str(tmp_path / "mlops")})
    runtime = build(settings, workspace=EmptyWorkspace(), monitor=IdleMonitor())
    function_app.use_runtime(runtime)
    try:
        with LocalHost(function_app.app, port=0) as host:
            yield host, runtime
    finally:
        function_app.use_runtime(None)
        runtime.close()


def post_events(host, body: bytes, *, client: httpx.Client | None = None, function: str = "on_model_event"):
    send = client.post if client is not None else httpx.post
    return send(host.url + WEBHOOK, params={"functionName": function, "code": host.key}, headers=NOTIFY,
                content=body, timeout=5)


# --- item 10: one event must not lock the ledger ---------------------------------------------------------------

@pytest.mark.parametrize("junk", [
    b'[{"eventType": 9223372036854775808, "data": {}}]',  # no id, an integer too big for SQLite
    b'[{"id": "\\ud800", "eventType": "MLOps.X", "data": {}}]',  # a lone surrogate: not UTF-8
    b'[{"id": "\\ud800", "eventType": 9223372036854775808, "data": {}}]',
], ids=["bigint-type", "surrogate-id", "both"])
def test_an_unstorable_event_is_rejected_and_the_ledger_keeps_working(served, junk):
    host, runtime = served
    with httpx.Client(timeout=5) as client:  # one keep-alive connection: the same server thread throughout
        first = post_events(host, junk, client=client)
        assert first.status_code == 202, first.text
        started = time.monotonic()
        after = post_events(host, json.dumps([model_event("evt-after-junk")]).encode(), client=client)
        other = post_events(host, json.dumps([model_event("evt-other-connection")]).encode())
        manual = client.post(host.url + "/api/rollbacks", params={"code": host.key},
                             json={"endpoint": "no-such-endpoint", "reason": "after junk"})
    assert (after.status_code, other.status_code) == (202, 202)
    assert manual.status_code < 500, manual.text
    assert time.monotonic() - started < 5
    decisions = {(r.event_id, r.decision) for r in runtime.audit.recent(limit=20)}
    assert {"evt-after-junk", "evt-other-connection"} <= {e for e, _ in decisions}
    assert any(d == "rejected" for _, d in decisions)  # the junk itself is on record


# --- item 12: permanent junk is answered as permanent ------------------------------------------------------------

JUNK_EVENTS = {
    "integer eventType": b'[{"id": "j1", "eventType": 5, "data": {}}]',
    "list eventType": b'[{"id": "j2", "eventType": ["Microsoft.Storage.BlobCreated"], "data": {}}]',
    "NaN id": b'[{"id": NaN, "eventType": "MLOps.DriftDetected", "data": {}}]',
    "object id": b'[{"id": {"a": 1}, "eventType": "MLOps.DriftDetected", "data": {}}]',
    "deep nesting": b'[{"id": "j5", "eventType": "MLOps.X", "data": ' + b"[" * 5000 + b"]" * 5000 + b"}]",
    "data not an object": b'[{"id": "j6", "eventType": "MLOps.DriftDetected", "data": 7}]',
    "control characters in id": b'[{"id": "a\\u0000b", "eventType": "MLOps.X", "data": {}}]',
}


@pytest.mark.parametrize("body", JUNK_EVENTS.values(), ids=JUNK_EVENTS.keys())
def test_junk_events_are_answered_as_permanent_never_5xx_or_a_dropped_connection(served, body):
    host, runtime = served
    r = post_events(host, body, function="on_custom_event")
    # 202: acknowledged and recorded as rejected; 400: the host could not read the body (Event Grid does not
    # retry a 400). Never a 5xx, which Event Grid retries for 24 hours.
    assert r.status_code in (202, 400), (r.status_code, r.text)
    if r.status_code == 202:
        assert [rec.decision for rec in runtime.audit.recent(limit=5)] == ["rejected"]


JUNK_ALERTS = {
    "alertTargetIDs a number": {"data": {"essentials": {"alertId": "a1", "alertTargetIDs": 5}}},
    "configurationItems a number": {"data": {"essentials": {"alertId": "a2", "configurationItems": 5}}},
    "allOf an object": {"data": {"essentials": {"alertId": "a3", "alertTargetIDs": ["/onlineEndpoints/e"]},
                                 "alertContext": {"condition": {"allOf": {"x": 1}}}}},
    "dimensions a number": {"data": {"essentials": {"alertId": "a4", "alertTargetIDs": ["/onlineEndpoints/e"]},
                                     "alertContext": {"condition": {"allOf": [{"dimensions": 5}]}}}},
    "alertId a list": {"data": {"essentials": {"alertId": ["x"], "alertTargetIDs": ["/onlineEndpoints/e"]}}},
}


@pytest.mark.parametrize("body", JUNK_ALERTS.values(), ids=JUNK_ALERTS.keys())
def test_a_monitor_alert_with_wrong_field_types_is_400_not_500(served, body):
    host, runtime = served
    r = httpx.post(host.url + "/api/alerts", params={"code": host.key}, json=body, timeout=5)
    assert r.status_code == 400, r.text  # an action group retries 5xx/429/408 only: a 400 ends it, as it should
    assert r.json()["field"]
    assert [rec.decision for rec in runtime.audit.recent(limit=5)] == ["rejected"]


def test_a_deeply_nested_http_body_is_400(served):
    host, _ = served
    body = b'{"endpoint": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    for route in ("alerts", "rollbacks", "reruns"):
        r = httpx.post(f"{host.url}/api/{route}", params={"code": host.key}, content=body, timeout=5)
        assert r.status_code == 400, (route, r.status_code, r.text)


# --- item 11: no connection leak per client connection ------------------------------------------------------------

def _open_files(name: str) -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(name)
        except OSError:
            pass
    return count


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="counts file descriptors through /proc")
def test_each_client_connection_does_not_leave_an_outbox_connection_open(served):
    host, _ = served
    for i in range(40):  # a fresh connection each time: the host serves each on a new thread
        assert post_events(host, json.dumps([model_event(f"evt-conn-{i}")]).encode()).status_code == 202
    deadline = time.monotonic() + 5
    while _open_files("outbox.db") > 12 and time.monotonic() < deadline:
        time.sleep(0.05)  # server threads finish just after they answer
    assert _open_files("outbox.db") <= 12  # a few live threads' handles, not one per request (~120 before)


# --- item 16: body limit, quiet transient failures, the CloudEvents handshake ------------------------------------

def test_an_event_over_one_megabyte_is_rejected_not_stored(served):
    host, runtime = served
    big = {**model_event("evt-huge"), "data": {"modelName": "m", "modelVersion": "1", "blob": "x" * 2_000_000}}
    r = post_events(host, json.dumps([big]).encode())
    assert r.status_code == 202
    [record] = runtime.audit.recent(limit=5)
    assert record.decision == "rejected" and "larger than" in record.reason
    assert len(json.dumps(record.facts)) + len(record.reason) < 2000  # the 2 MB went nowhere


def test_an_http_body_over_one_megabyte_is_413(served):
    host, _ = served
    r = httpx.post(host.url + "/api/alerts", params={"code": host.key},
                   content=b'{"x": "' + b"y" * 1_100_000 + b'"}', timeout=5)
    assert r.status_code == 413  # neither an action group nor Event Grid retries a 413


def test_the_host_refuses_a_body_over_its_limit_without_reading_it(tmp_path):
    import function_app

    with LocalHost(function_app.app, port=0, max_body_bytes=1000) as host:
        r = httpx.post(host.url + "/api/alerts", params={"code": host.key}, content=b"x" * 5000, timeout=5)
    assert r.status_code == 413


def test_the_cloudevents_abuse_protection_handshake_answers_200_with_the_allowed_origin(served):
    host, _ = served
    r = httpx.options(host.url + WEBHOOK, params={"functionName": "on_custom_event", "code": host.key},
                      headers={"WebHook-Request-Origin": "eventgrid.azure.net"}, timeout=5)
    assert r.status_code == 200 and r.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
    assert httpx.options(host.url + WEBHOOK, params={"functionName": "on_custom_event"}).status_code == 401


quiet = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@quiet.function_name("slow_down")
@quiet.event_grid_trigger(arg_name="event")
def slow_down(event: func.EventGridEvent) -> None:
    raise Throttled("the service said 429", retry_after=30)


@quiet.function_name("broken")
@quiet.event_grid_trigger(arg_name="event")
def broken(event: func.EventGridEvent) -> None:
    raise KeyError("a bug")


def test_a_designed_transient_failure_is_one_log_line_without_a_traceback(caplog):
    caplog.set_level(logging.INFO, logger="shared.local.host")
    with LocalHost(quiet, port=0) as host:
        transient = post_events(host, json.dumps([model_event("t-1")]).encode(), function="slow_down")
        bug = post_events(host, json.dumps([model_event("t-2")]).encode(), function="broken")
    assert transient.status_code == bug.status_code == 500  # what the Event Grid extension answers: retry
    transient_logs = [r for r in caplog.records if "slow_down" in r.getMessage()]
    bug_logs = [r for r in caplog.records if "broken" in r.getMessage()]
    assert transient_logs and all(r.exc_info is None and r.levelno == logging.WARNING for r in transient_logs)
    assert any(r.exc_info is not None for r in bug_logs)  # an unexpected error keeps its traceback

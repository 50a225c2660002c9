"""Fuzzing every route of the real app through the local host's dispatch (the code path of a served request,
without sockets): generated Event Grid payloads and HTTP bodies of every shape. Nothing may answer a 5xx other
than a deliberate transient 503 with Retry-After, no answer may carry a traceback or a secret, and each answer
comes within 10 s (issue 11, reliability suite)."""
from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.local.host import LocalHost
from tests.integration.test_local_host import EmptyWorkspace, IdleMonitor
from tests.reliability.storm import size, write_figures

SECRET = "c2VjcmV0LXNpZ25hdHVyZS12YWx1ZQ"  # a SAS signature value that must never come back
EVENT_FUNCTIONS = ("on_blob_created", "on_run_event", "on_model_event", "on_dataset_drift", "on_custom_event")
EXAMPLES = size(60, 3400)  # per test below; full size is over 10,000 cases in all
seen = {"cases": 0, "5xx": 0, "transient": 0, "slowest": 0.0}

text = st.one_of(st.text(max_size=40), st.sampled_from([
    "", " ", "../../etc/passwd", "churn/1/data.csv?sv=2024&sig=" + SECRET, "\ud800", "\u0000", "null", "NaN",
    "Microsoft.Storage.BlobCreated", "Microsoft.MachineLearningServices.RunCompleted",
    "MLOps.DriftDetected", "MLOps.DataRegistered", "x" * 5000]))
scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=2 ** 63, max_value=2 ** 70),
                   st.floats(allow_nan=True, allow_infinity=True), text)
json_value = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(text, inner, max_size=5)), max_leaves=20)
blob_subject = st.builds(lambda c, a, v, f, q: f"/blobServices/default/containers/{c}/blobs/{a}/{v}/{f}{q}",
                         st.sampled_from(["landing", "raw", "../landing"]), st.sampled_from(["churn", "ch urn", ".."]),
                         st.sampled_from(["1", "2026-11-01", "..", "v 1"]),
                         st.sampled_from(["data.csv", "_temporary/0/part.csv", "_SUCCESS", "a/../../b.csv"]),
                         st.sampled_from(["", "?sig=" + SECRET, "%3Fsig%3D" + SECRET]))
event = st.fixed_dictionaries(
    {}, optional={"id": scalar, "eventType": st.one_of(scalar, st.sampled_from([
        "Microsoft.Storage.BlobCreated", "Microsoft.MachineLearningServices.RunCompleted",
        "Microsoft.MachineLearningServices.RunStatusChanged", "Microsoft.MachineLearningServices.ModelRegistered",
        "Microsoft.MachineLearningServices.ModelDeployed", "Microsoft.MachineLearningServices.DatasetDriftDetected",
        "MLOps.DriftDetected", "MLOps.DataRegistered"])),
        "subject": st.one_of(scalar, blob_subject), "type": scalar, "topic": scalar, "eventTime": scalar,
        "data": st.one_of(json_value, st.fixed_dictionaries({}, optional={
            "api": st.sampled_from(["PutBlob", "FlushWithClose", "CreateFile", 5]),
            "url": st.one_of(scalar, st.sampled_from([
                "https://acct.blob.core.windows.net/landing/churn/1/data.csv?sig=" + SECRET, "/etc/passwd",
                "https://acct.dfs.core.windows.net/landing/churn/1/data.csv"])),
            "runId": scalar, "runStatus": scalar, "modelName": scalar, "modelVersion": scalar, "endpoint": scalar,
            "asset": scalar, "version": scalar, "path": scalar, "modelTags": json_value}))})
body = st.one_of(st.binary(max_size=200), json_value.map(lambda v: json.dumps(v, allow_nan=True).encode()),
                 st.just(b"[" * 5000 + b"]" * 5000))


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    import function_app
    from shared.bootstrap import build
    from shared.config import Settings

    home = tmp_path_factory.mktemp("fuzz")
    runtime = build(Settings.from_env({"MLOPS_BACKEND": "local", "MLOPS_HOME": str(home)}),
                    workspace=EmptyWorkspace(), monitor=IdleMonitor())
    function_app.use_runtime(runtime)
    served = LocalHost(function_app.app, port=0)
    yield served
    function_app.use_runtime(None)
    runtime.close()
    write_figures("fuzz", {"cases": seen["cases"], "server_errors": seen["5xx"],
                           "transient_answers": seen["transient"], "slowest_seconds": round(seen["slowest"], 3)})


def check(reply) -> None:
    seen["cases"] += 1
    text = reply.body.decode("utf-8", "replace")
    assert "Traceback" not in text and SECRET not in text, text[:300]
    if reply.status >= 500:
        seen["5xx"] += 1
        headers = {k.lower(): v for k, v in (reply.headers or {}).items()}
        assert reply.status == 503 and "retry-after" in headers, (reply.status, text[:300])
        seen["transient"] += 1


def timed(call):
    started = time.monotonic()
    reply = call()
    spent = time.monotonic() - started
    seen["slowest"] = max(seen["slowest"], spent)
    assert spent < 10
    return reply


FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(function=st.sampled_from(EVENT_FUNCTIONS), events=st.one_of(event, st.lists(event, max_size=3)),
       kind=st.sampled_from(["Notification", "notification", "SubscriptionValidation", "Unsubscribe", "Bogus"]))
def test_any_event_grid_delivery_is_answered_without_a_5xx(host, function, events, kind):
    raw = json.dumps(events, allow_nan=True).encode()
    check(timed(lambda: host.dispatch("POST", f"/runtime/webhooks/eventgrid?functionName={function}&code={host.key}",
                                      {"aeg-event-type": kind, "Content-Type": "application/json"}, raw)))


@FUZZ
@given(route=st.sampled_from(["alerts", "rollbacks", "reruns", "status"]), payload=body,
       method=st.sampled_from(["POST", "GET", "PUT", "OPTIONS"]),
       content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", ""]),
       query=st.sampled_from(["", "&sig=" + SECRET, "&x=../../etc/passwd"]))
def test_any_http_request_is_answered_without_a_5xx(host, route, payload, method, content_type, query):
    check(timed(lambda: host.dispatch(method, f"/api/{route}?code={host.key}{query}",
                                      {"Content-Type": content_type}, payload)))


@FUZZ
@given(payload=st.fixed_dictionaries({}, optional={
    "schemaId": scalar, "data": st.one_of(json_value, st.fixed_dictionaries({}, optional={
        "essentials": st.one_of(json_value, st.fixed_dictionaries({}, optional={
            "alertId": scalar, "monitorCondition": scalar, "severity": scalar, "alertRule": scalar,
            "alertTargetIDs": json_value, "configurationItems": json_value})),
        "alertContext": json_value, "customProperties": json_value}))}))
def test_any_monitor_alert_is_answered_without_a_5xx(host, payload):
    raw = json.dumps(payload, allow_nan=True).encode()
    check(timed(lambda: host.dispatch("POST", f"/api/alerts?code={host.key}", {}, raw)))


def test_bodies_over_one_megabyte_are_refused_on_every_route(host):
    big = b'{"x": "' + b"y" * (1024 * 1024 + 10) + b'"}'
    for route in ("alerts", "rollbacks", "reruns"):
        reply = host.dispatch("POST", f"/api/{route}?code={host.key}", {}, big)
        check(reply)
        assert reply.status == 413
    event = json.dumps([{"id": "big", "eventType": "MLOps.DriftDetected", "data": {"x": "y" * (1024 * 1024)}}])
    check(host.dispatch("POST", f"/runtime/webhooks/eventgrid?functionName=on_custom_event&code={host.key}",
                        {"aeg-event-type": "Notification"}, event.encode()))

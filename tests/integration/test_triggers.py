"""Every trigger called as the host calls it: real func.EventGridEvent / func.HttpRequest into function_app."""
from __future__ import annotations

import json

import azure.functions as func
import pytest

import function_app
from shared.local import wire
from shared.local.host import index
from tests.helpers import Harness

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def functions():
    return {f.name: f.call for f in index(function_app.app)}


@pytest.fixture
def app(tmp_path, functions):
    h = Harness(tmp_path, min_primary=0.6)
    function_app.use_runtime(h.rt)
    yield h, functions
    function_app.use_runtime(None)
    h.close()


def grid_event(event: dict) -> func.EventGridEvent:
    return func.EventGridEvent(id=event["id"], data=event["data"], topic=event["topic"], subject=event["subject"],
                               event_type=event["eventType"], event_time=None, data_version=event["dataVersion"])


def post(route: str, body, headers: dict | None = None) -> func.HttpRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return func.HttpRequest(method="POST", url=f"http://localhost/api/{route}", body=raw, headers=headers or {})


def pump_through_functions(h: Harness, functions) -> None:
    """Deliver what the workspace emits to the function its subscription names, as Event Grid would."""
    from shared.local import subscriptions as subs

    table = subs.load()
    while True:
        h.ws.wait_for_jobs(120)
        with h._lock:
            batch, h.events = h.events, []
        if not batch:
            return
        for event in batch:
            for sub in subs.route(table, subs.source_of(event), event):
                functions[sub.function](grid_event(event))


def test_event_grid_triggers_run_the_whole_arc(app):
    h, functions = app
    event = h.land("1", rows=900, seed=201, label_noise=0.15)
    functions["on_blob_created"](grid_event(event))
    pump_through_functions(h, functions)
    assert h.traffic() == {"churn-model-v1": 100}
    observed = h.decisions("observe")
    assert any(r.facts.get("model") == "churn-model" for r in observed)  # ModelRegistered via on_model_event
    assert any(r.facts.get("endpoint") == "churn-endpoint" for r in observed)  # ModelDeployed


def test_an_unreadable_event_is_acknowledged_and_recorded_as_rejected(app):
    h, functions = app
    bad = wire.blob_created("landing", "churn/x.csv", content_length=1)
    functions["on_blob_created"](grid_event(bad))  # does not raise: Event Grid must not retry it
    assert h.rt.ledger.stats().get("rejected") == 1


def test_a_blob_from_another_storage_account_is_refused_with_its_reason_and_starts_nothing(tmp_path, functions):
    # In Azure the app knows the landing datastore's account (MLOPS_DATASTORE_ACCOUNT, set by main.bicep).
    h = Harness(tmp_path, env={"MLOPS_DATASTORE_ACCOUNT": "stmlopsdataprod"})
    function_app.use_runtime(h.rt)
    try:
        event = h.land("1", rows=200, seed=5)
        event["topic"] = ("/subscriptions/0/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/"
                          "stsomeoneelse")
        event["data"]["url"] = "https://stsomeoneelse.blob.core.windows.net/landing/churn/1/data.csv"
        functions["on_blob_created"](grid_event(event))
        assert h.rt.ledger.stats().get("ignored") == 1
        outcome, reason = h.rt.ledger.outcome(f"{event['id']}/EventIgnored")
        assert outcome == "ignored"
        assert reason.startswith("BlobCreated from 'stsomeoneelse', not from the landing datastore's storage account "
                                 "'stmlopsdataprod'")
        assert h.ws.list_jobs() == []
    finally:
        function_app.use_runtime(None)
        h.close()


def test_custom_and_dataset_drift_triggers_reach_the_drift_policy(app):
    h, functions = app
    functions["on_custom_event"](grid_event(wire.custom("MLOps.DriftDetected", "endpoints/none",
                                                        {"endpoint": "none", "metric": "psi", "value": 0.5})))
    drift = wire.event(wire.ML_TOPIC, "Microsoft.MachineLearningServices.DatasetDriftDetected", "datadrift/a/run/b",
                       {"dataDriftId": "a", "dataDriftName": "none", "runId": "b", "driftCoefficient": 0.7})
    functions["on_dataset_drift"](grid_event(drift))
    decisions = [r for r in h.decisions() if r.message == "DriftDetected"]
    assert len(decisions) == 2 and all(r.decision == "record" for r in decisions)


@pytest.mark.parametrize("body, field", [
    (b"not json", "body"),
    ([1, 2], "body"),
    ({"version": "1"}, "asset"),
    ({"asset": "churn"}, "version"),
    ({"asset": "bad name", "version": "1"}, "asset"),
    ({"asset": "churn", "version": "1", "force": "yes"}, "force"),
    ({"asset": {"x": 1}, "version": "1"}, "asset"),
])
def test_reruns_rejects_bad_bodies_with_400_naming_the_field(app, body, field):
    _, functions = app
    r = functions["reruns"](post("reruns", body))
    assert r.status_code == 400 and json.loads(r.get_body())["field"] == field


def test_reruns_answers_202_with_the_job_and_the_same_request_twice_starts_one_job(app):
    h, functions = app
    path = h.home / "v1.csv"
    from shared.local.churn import write_csv

    h.ws.register_data("churn", "1", str(write_csv(path, rows=600, seed=1)))
    body = {"asset": "churn", "version": 1, "reason": "by hand"}
    first = functions["reruns"](post("reruns", body, {"x-ms-client-principal-name": "alice"}))
    second = functions["reruns"](post("reruns", body))
    a, b = json.loads(first.get_body()), json.loads(second.get_body())
    assert first.status_code == second.status_code == 202
    assert a["job"] == b["job"] == "train-churn-v1-a1" and a["created"] and not b["created"]
    assert h.ws.get_job("train-churn-v1-a1").tags["mlops_actor"] == "http:alice"
    forced = json.loads(functions["reruns"](post("reruns", {**body, "force": True})).get_body())
    assert forced["job"] == "train-churn-v1-a2" and forced["created"]
    by_job = json.loads(functions["reruns"](post("reruns", {"job": "train-churn-v1-a1"})).get_body())
    assert by_job["job"] == "train-churn-v1-a2" and not by_job["created"]  # next attempt of a1 already exists


def test_reruns_of_unknown_data_answers_404(app):
    _, functions = app
    r = functions["reruns"](post("reruns", {"asset": "churn", "version": "404"}))
    assert r.status_code == 404 and "404" in json.loads(r.get_body())["error"]


def test_rollbacks_validate_and_map_errors(app):
    _, functions = app
    assert functions["rollbacks"](post("rollbacks", {"endpoint": "churn-endpoint"})).status_code == 400
    missing = functions["rollbacks"](post("rollbacks", {"endpoint": "nope", "reason": "test"}))
    assert missing.status_code == 404


def test_status_shows_endpoints_decisions_running_jobs_and_the_ledger(app):
    h, functions = app
    h.deliver(wire.model_registered("fraud-model", "3", {}))
    r = functions["status"](func.HttpRequest(method="GET", url="http://localhost/api/status", body=b""))
    body = json.loads(r.get_body())
    assert r.status_code == 200 and set(body) == {"endpoints", "running_jobs", "recent_decisions", "ledger"}
    assert body["recent_decisions"][0]["decision"] == "observe" and body["ledger"]["done"] == 1


def test_monitor_alert_takes_the_common_alert_schema(app):
    h, functions = app
    from shared.local.demo import common_alert

    alert = common_alert("churn-endpoint")
    r = functions["monitor_alert"](post("alerts", alert))
    assert r.status_code == 202 and json.loads(r.get_body())["event_id"].endswith(":fired")
    again = functions["monitor_alert"](post("alerts", alert))
    assert json.loads(again.get_body())["decisions"][0]["outcome"] == "duplicate"
    bad = functions["monitor_alert"](post("alerts", {"schemaId": "other", "data": {}}))
    assert bad.status_code == 400


def test_outbox_sweep_flushes_pending_alerts(tmp_path, functions):
    h = Harness(tmp_path)
    h.rt.deps["notifier"] = flushing = _Flushing()
    function_app.use_runtime(h.rt)
    try:
        functions["outbox_sweep"](None)  # the timer argument is not read
    finally:
        function_app.use_runtime(None)
        h.close()
    assert flushing.calls == [60.0]


class _Flushing:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def notify(self, alert) -> None:
        pass

    def flush(self, max_seconds: float = 5.0) -> int:
        self.calls.append(max_seconds)
        return 0


def test_a_failed_manual_rollback_is_audited_as_its_requester_and_pages_no_one(app):
    h, functions = app
    r = functions["rollbacks"](post("rollbacks", {"endpoint": "nope", "reason": "test", "actor": "carol"}))
    assert r.status_code == 404
    failed = [d for d in h.decisions() if d.message == "RollBack"]
    assert [(d.decision, d.actor) for d in failed] == [("failed", "http:carol")]
    assert h.notifier.kinds() == [], "the caller got the 404; Teams is not paged for it"


def test_a_failed_manual_rerun_is_audited_as_the_signed_in_person(tmp_path, functions):
    import base64

    h = Harness(tmp_path, env={"MLOPS_APPROVAL_AUTH": "easyauth"})
    function_app.use_runtime(h.rt)
    try:
        principal = base64.b64encode(json.dumps({"claims": [{"typ": "name", "val": "dana@contoso.example"}]})
                                     .encode()).decode()
        r = functions["reruns"](post("reruns", {"job": "train-nothing-v1-a1", "actor": "someone-else"},
                                     {"x-ms-client-principal": principal}))
        assert r.status_code == 404
        assert [(d.decision, d.actor) for d in h.decisions() if d.message == "RerunJob"] == \
            [("failed", "user:dana@contoso.example")]
        assert h.notifier.kinds() == []
    finally:
        function_app.use_runtime(None)
        h.close()


def test_an_automated_failure_still_pages(app):
    h, _ = app
    from shared.messages import StartTraining

    h.rt.bus.handle(StartTraining(event_id="drift-1", asset="churn", version="404", reason="drift"))
    assert [d.actor for d in h.decisions() if d.message == "StartTraining"] == ["automation"]
    assert h.notifier.kinds() == ["event_rejected"]

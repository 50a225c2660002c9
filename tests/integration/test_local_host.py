"""The local Functions host over real HTTP: routes, methods, keys, and the Event Grid webhook contract.

Most tests run a small FunctionApp defined here with the real azure.functions decorators, so they pin the host's
contract rather than our handlers; the last ones serve the real ``function_app.app`` against a runtime built on
a temporary MLOPS_HOME.
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import azure.functions as func
import httpx
import pytest

from shared.errors import NotFound
from shared.local.host import LocalHost, index

KEY = "local-test-key"
app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
seen: dict[str, list] = {"http": [], "events": [], "ticks": []}


@app.function_name("open_echo")
@app.route(route="open/{name}", methods=["GET", "POST"], auth_level=func.AuthLevel.ANONYMOUS)
def open_echo(req: func.HttpRequest) -> func.HttpResponse:
    seen["http"].append(req)
    body = {"method": req.method, "route": dict(req.route_params), "params": dict(req.params),
            "header": req.headers.get("x-probe"), "body": req.get_body().decode(), "url": req.url}
    return func.HttpResponse(json.dumps(body), mimetype="application/json")


@app.function_name("guarded")
@app.route(route="guarded", methods=["POST"])
def guarded(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(req.get_body(), status_code=201, headers={"X-Made-By": "guarded"},
                             mimetype="application/json")


@app.function_name("boom")
@app.route(route="boom", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def boom(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("the function failed")


@app.function_name("recorder")
@app.event_grid_trigger(arg_name="event")
def recorder(event: func.EventGridEvent) -> None:
    seen["events"].append(event)


@app.function_name("picky")
@app.event_grid_trigger(arg_name="event")
def picky(event: func.EventGridEvent) -> None:
    if event.subject == "bad":
        raise ValueError("cannot handle this one")
    seen["events"].append(event)


@app.function_name("ticker")
@app.timer_trigger(schedule="0 */5 * * * *", arg_name="timer", run_on_startup=False)
def ticker(timer: func.TimerRequest) -> None:
    seen["ticks"].append(timer)


def grid_event(event_id: str = "e-1", subject: str = "models/m:1") -> dict:
    return {"id": event_id, "topic": "/subscriptions/x/resourceGroups/rg/providers/Microsoft.EventGrid/topics/t",
            "subject": subject, "eventType": "MLOps.Probe", "eventTime": "2026-03-02T09:41:07.5538742Z",
            "data": {"n": 1, "nested": {"ok": True}}, "dataVersion": "1.0", "metadataVersion": "1"}


@pytest.fixture(scope="module")
def host():
    with LocalHost(app, port=0, master_key=KEY) as running:
        yield running


@pytest.fixture(scope="module")
def client(host):
    with httpx.Client(base_url=host.url, timeout=10) as c:
        yield c


@pytest.fixture(autouse=True)
def clear_seen():
    for calls in seen.values():
        calls.clear()


def webhook(client, function: str, body, kind: str | None = "Notification", key: str | None = KEY, **params):
    headers = {"aeg-event-type": kind} if kind is not None else {}
    if key is not None:
        headers["x-functions-key"] = key
    return client.post("/runtime/webhooks/eventgrid", params={"functionName": function, **params}, headers=headers,
                       content=json.dumps(body))


# --- HTTP triggers -----------------------------------------------------------------------------------------

def test_an_anonymous_route_needs_no_key_and_gets_a_real_http_request(client):
    r = client.get("/api/open/alice", params={"q": "1"}, headers={"x-probe": "yes"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert r.json() == {"method": "GET", "route": {"name": "alice"}, "params": {"q": "1"}, "header": "yes",
                        "body": "", "url": f"{client.base_url}/api/open/alice?q=1"}
    assert isinstance(seen["http"][0], func.HttpRequest)


def test_the_request_body_reaches_the_function(client):
    r = client.post("/api/open/bob", content=b'{"x": 1}')
    assert r.json()["body"] == '{"x": 1}'


def test_a_function_route_without_a_key_is_401(client):
    assert client.post("/api/guarded", content=b"{}").status_code == 401
    assert client.post("/api/guarded", content=b"{}", headers={"x-functions-key": "wrong"}).status_code == 401


def test_a_function_route_accepts_the_key_in_the_header_or_the_code_parameter(client):
    by_header = client.post("/api/guarded", content=b'{"a": 1}', headers={"x-functions-key": KEY})
    by_param = client.post("/api/guarded", params={"code": KEY}, content=b'{"a": 1}')
    for r in (by_header, by_param):
        assert r.status_code == 201
        assert r.headers["x-made-by"] == "guarded"
        assert r.headers["content-type"].startswith("application/json")
        assert r.json() == {"a": 1}


def test_a_method_the_route_does_not_declare_is_405_with_allow(client):
    r = client.get("/api/guarded", headers={"x-functions-key": KEY})
    assert r.status_code == 405 and r.headers["allow"] == "POST"


def test_an_unknown_route_or_a_path_outside_the_prefix_is_404(client):
    assert client.get("/api/nothing-here").status_code == 404
    assert client.get("/open/alice").status_code == 404


def test_a_function_that_raises_answers_500(client):
    assert client.get("/api/boom").status_code == 500


# --- Event Grid webhook ------------------------------------------------------------------------------------

def test_the_subscription_validation_handshake_echoes_the_validation_code(client):
    validation = [{"id": "v-1", "topic": "t", "subject": "", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
                   "eventTime": "2026-03-02T00:00:00Z", "dataVersion": "2", "metadataVersion": "1",
                   "data": {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6",
                            "validationUrl": "https://rp-eastus2.eventgrid.azure.net/..."}}]
    r = webhook(client, "recorder", validation, kind="SubscriptionValidation")
    assert r.status_code == 200
    assert r.json() == {"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}
    assert seen["events"] == []  # a handshake is not an event for the function


def test_a_notification_array_reaches_the_function_as_real_event_grid_events_and_answers_202(client):
    r = webhook(client, "recorder", [grid_event("e-1"), grid_event("e-2")])
    assert r.status_code == 202
    first, second = seen["events"]
    assert isinstance(first, func.EventGridEvent)
    assert (first.id, second.id) == ("e-1", "e-2")
    assert first.event_type == "MLOps.Probe" and first.subject == "models/m:1"
    assert first.topic.endswith("/topics/t") and first.data_version == "1.0"
    assert first.get_json() == {"n": 1, "nested": {"ok": True}}
    assert isinstance(first.event_time, datetime) and first.event_time.year == 2026


def test_a_notification_with_a_single_object_is_one_event(client):
    assert webhook(client, "recorder", grid_event("solo")).status_code == 202
    assert [e.id for e in seen["events"]] == ["solo"]


def test_the_event_type_header_is_read_without_regard_to_case(client):
    assert webhook(client, "recorder", [grid_event()], kind="notification").status_code == 202


def test_a_failing_event_makes_the_answer_500_after_the_others_ran(client):
    r = webhook(client, "picky", [grid_event("ok-1"), grid_event("bad-1", subject="bad"), grid_event("ok-2")])
    assert r.status_code == 500
    assert "bad-1" in r.text and "cannot handle this one" in r.text
    assert [e.id for e in seen["events"]] == ["ok-1", "ok-2"]


def test_unsubscribe_is_acknowledged_with_202(client):
    assert webhook(client, "recorder", [grid_event()], kind="Unsubscribe").status_code == 202
    assert seen["events"] == []


@pytest.mark.parametrize("kind", [None, "", "Notifications", "Validation"])
def test_a_missing_or_unknown_event_type_header_is_400(client, kind):
    assert webhook(client, "recorder", [grid_event()], kind=kind).status_code == 400
    assert seen["events"] == []


@pytest.mark.parametrize("name", ["nobody", "", "guarded", "ticker"])
def test_an_unknown_or_non_event_grid_function_is_404(client, name):
    r = webhook(client, name, [grid_event()])
    assert r.status_code == 404 and f"cannot find function: '{name}'" in r.text


def test_the_webhook_needs_the_key_in_the_header_or_the_code_parameter(client):
    assert webhook(client, "recorder", [grid_event()], key=None).status_code == 401
    assert webhook(client, "recorder", [grid_event()], key="wrong").status_code == 401
    assert webhook(client, "recorder", [grid_event()], key=None, code=KEY).status_code == 202


def test_a_notification_body_that_is_not_json_is_400(client):
    r = client.post("/runtime/webhooks/eventgrid", params={"functionName": "recorder"}, content=b"{not json",
                    headers={"aeg-event-type": "Notification", "x-functions-key": KEY})
    assert r.status_code == 400


def test_the_webhook_only_takes_post(client):
    r = client.get("/runtime/webhooks/eventgrid", params={"functionName": "recorder", "code": KEY})
    assert r.status_code == 405


# --- admin -------------------------------------------------------------------------------------------------

def test_host_status_reports_running(client):
    r = client.get("/admin/host/status")
    assert r.status_code == 200 and r.json() == {"state": "Running"}


def test_a_timer_function_can_be_run_by_hand_with_the_key(client):
    assert client.post("/admin/functions/ticker", json={"input": ""}).status_code == 401
    r = client.post("/admin/functions/ticker", json={"input": ""}, headers={"x-functions-key": KEY})
    assert r.status_code == 202 and len(seen["ticks"]) == 1
    assert isinstance(seen["ticks"][0], func.TimerRequest) and seen["ticks"][0].past_due is False


# --- lifecycle and indexing --------------------------------------------------------------------------------

def test_port_zero_picks_a_free_port_and_each_host_gets_its_own_random_key():
    with LocalHost(app, port=0) as a, LocalHost(app, port=0) as b:
        assert a.url != b.url and a.key != b.key and len(a.key) >= 24
        assert httpx.get(a.url + "/admin/host/status").status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(a.url + "/admin/host/status", timeout=2)


def test_indexing_is_cached_and_leaves_the_app_indexable_by_the_real_host():
    fresh = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

    @fresh.route(route="x", methods=["GET"])
    def x(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse("x")

    first = index(fresh)
    assert index(fresh) is first
    assert [(f.name, f.trigger_type, f.route, f.methods, f.auth_level) for f in first] == [
        ("x", "httpTrigger", "x", ("GET",), "function")]
    assert [f.get_function_name() for f in fresh.get_functions()] == ["x"]  # still indexable once more


def test_the_host_reads_triggers_routes_methods_and_auth_levels_from_the_bindings(host):
    described = {name: (f.trigger_type, f.route, f.methods, f.auth_level) for name, f in host.functions.items()}
    assert described["open_echo"] == ("httpTrigger", "open/{name}", ("GET", "POST"), "anonymous")
    assert described["guarded"] == ("httpTrigger", "guarded", ("POST",), "function")
    assert described["recorder"][0] == "eventGridTrigger" and described["ticker"][0] == "timerTrigger"


# --- the real app ------------------------------------------------------------------------------------------

class EmptyWorkspace:
    """A workspace with nothing in it: enough for status and the audit-only handlers."""

    def list_endpoints(self):
        return []

    def list_jobs(self, *, status=None, tags=None):
        return []

    def get_endpoint(self, name):
        return None

    def get_job(self, name):
        raise NotFound(f"job {name} not found")


class RecordingNotifier:
    def __init__(self):
        self.alerts = []

    def notify(self, alert):
        self.alerts.append(alert)


class IdleMonitor:
    def health(self, endpoint, deployment, window_minutes):
        raise AssertionError("no test here asks for endpoint health")


def build_runtime(home, emit=None):
    """The app's runtime on a temporary MLOPS_HOME: real SQLite ledger and audit trail, an empty workspace."""
    from shared.bootstrap import build
    from shared.config import Settings

    settings = Settings.from_env({"MLOPS_BACKEND": "local", "MLOPS_HOME": str(home)})
    return build(settings, workspace=EmptyWorkspace(), notifier=RecordingNotifier(), monitor=IdleMonitor(),
                 emit=emit)


@pytest.fixture
def real_app(tmp_path):
    import function_app

    runtime = build_runtime(tmp_path / "mlops")
    function_app.use_runtime(runtime)
    try:
        with LocalHost(function_app.app, port=0) as running, httpx.Client(base_url=running.url, timeout=10) as c:
            c.headers["x-functions-key"] = running.key
            yield running, c, runtime
    finally:
        function_app.use_runtime(None)
        runtime.close()


def test_the_real_app_serves_its_eight_routes_and_five_event_grid_functions(real_app):
    running, _, _ = real_app
    kinds = {name: f.trigger_type for name, f in running.functions.items()}
    assert {n for n, k in kinds.items() if k == "httpTrigger"} == {"reruns", "rollbacks", "status", "monitor_alert",
                                                                   "approval_page", "approval_decision",
                                                                   "monitor_alert_secure", "endpoint_page"}
    assert running.functions["approval_decision"].auth_level == "anonymous", "Easy Auth, not a key, guards it"
    assert {n for n, k in kinds.items() if k == "eventGridTrigger"} == {
        "on_blob_created", "on_run_event", "on_model_event", "on_dataset_drift", "on_custom_event"}


def test_a_rerun_without_a_key_is_401(real_app):
    running, _, _ = real_app
    assert httpx.post(running.url + "/api/reruns", json={"asset": "churn", "version": "1"}).status_code == 401


@pytest.mark.parametrize("body, field", [
    (b"not json", "body"),
    (b"[1, 2]", "body"),
    (b"{}", "asset"),
    (b'{"asset": "churn"}', "version"),
    (b'{"asset": "no spaces allowed", "version": "1"}', "asset"),
    (b'{"asset": "churn", "version": "1", "force": "yes"}', "force"),
])
def test_a_rerun_with_a_bad_body_is_400_naming_the_field(real_app, body, field):
    _, client, _ = real_app
    r = client.post("/api/reruns", content=body)
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/json")
    assert r.json()["field"] == field and r.json()["error"]


def test_status_answers_200_with_endpoints_jobs_decisions_and_ledger(real_app):
    _, client, _ = real_app
    r = client.get("/api/status")
    assert r.status_code == 200
    assert set(r.json()) == {"endpoints", "running_jobs", "recent_decisions", "ledger"}
    assert client.post("/api/status").status_code == 405


def test_a_model_event_through_the_webhook_lands_in_the_real_audit_trail(real_app):
    _, client, runtime = real_app
    event = {"id": "evt-model-1", "topic": "t", "subject": "models/churn-model:7",
             "eventType": "Microsoft.MachineLearningServices.ModelRegistered", "eventTime": "2026-03-02T09:42:30Z",
             "data": {"modelName": "churn-model", "modelVersion": "7", "modelTags": {}}, "dataVersion": "2"}
    r = client.post("/runtime/webhooks/eventgrid", params={"functionName": "on_model_event"},
                    headers={"aeg-event-type": "Notification"}, json=[event])
    assert r.status_code == 202
    assert [rec.event_id for rec in runtime.audit.recent(limit=5)] == ["evt-model-1"]


# --- `python -m shared.local`: the served stack, post-event and replay ----------------------------------------

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "events"


@pytest.fixture
def stack(tmp_path, monkeypatch):
    from shared.config import Settings
    from shared.local.cli import local_stack

    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "mlops"))  # what the CLI commands read through Settings
    settings = Settings.from_env({"MLOPS_BACKEND": "local", "MLOPS_HOME": str(tmp_path / "mlops")})
    with local_stack(settings, port=0, dead_letter_dir=tmp_path / "dead", max_attempts=2, backoff=0.01,
                     workspace=EmptyWorkspace(), notifier=RecordingNotifier(), monitor=IdleMonitor()) as running:
        yield running


def test_the_served_stack_routes_a_posted_payload_through_the_real_app(stack, tmp_path, capsys):
    from shared.local import cli

    code = cli.main(["post-event", str(FIXTURES / "batch_model_events.json"), "--url", stack.host.url,
                     "--key", stack.host.key, "--dead-letter-dir", str(tmp_path / "dead")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "-> model-lifecycle" in out and "delivered 2, retried 0, dead-lettered 0" in out
    decisions = {r.event_id for r in stack.runtime.audit.recent(limit=10)}
    assert decisions == {"0c4b8f3e-2b1d-4a5c-9e7f-1a2b3c4d5e05", "0c4b8f3e-2b1d-4a5c-9e7f-1a2b3c4d5e06"}


def test_a_payload_posted_with_a_wrong_key_is_dead_lettered_and_replay_with_the_right_key_delivers_it(
        stack, tmp_path, capsys):
    from shared.local import cli

    dead = str(tmp_path / "dead")
    event_file = str(FIXTURES / "ml_model_registered.json")
    assert cli.main(["post-event", event_file, "--url", stack.host.url, "--key", "wrong", "--dead-letter-dir", dead]) == 1
    letter = json.loads(next((tmp_path / "dead" / "model-lifecycle").glob("*.json")).read_text())
    assert (letter["lastHttpStatusCode"], letter["deliveryAttempts"]) == (401, 1)  # 401 is never retried
    assert stack.runtime.audit.recent(limit=5) == []

    assert cli.main(["replay", "--url", stack.host.url, "--key", stack.host.key, "--dead-letter-dir", dead]) == 0
    assert "replayed 1 of 1" in capsys.readouterr().out
    assert list((tmp_path / "dead").rglob("*.json")) == []
    assert [r.event_id for r in stack.runtime.audit.recent(limit=5)] == ["0c4b8f3e-2b1d-4a5c-9e7f-1a2b3c4d5e05"]


def test_post_event_without_a_key_or_a_running_serve_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    from shared.local import cli

    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    assert cli.main(["post-event", str(FIXTURES / "ml_model_registered.json")]) == 2
    assert "no function key" in capsys.readouterr().err


def test_the_example_settings_for_func_start_carry_every_setting_with_its_default():
    from shared.config import SETTING_NAMES, Settings

    doc = json.loads((Path(__file__).resolve().parents[2] / "local.settings.json.example").read_text())
    values = doc["Values"]
    assert doc["IsEncrypted"] is False
    assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"
    assert values["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"
    assert set(SETTING_NAMES) <= set(values)
    assert (values["MLOPS_BACKEND"], values["MLOPS_HOME"]) == ("local", ".mlops")
    assert Settings.from_env(values) == Settings(backend="local")  # the placeholders are the defaults
    assert not any(v for k, v in values.items() if "WEBHOOK" in k or "KEY" in k.upper())  # no secrets

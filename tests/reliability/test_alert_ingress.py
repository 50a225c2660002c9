"""Alert ingress never loses an alert, and manual routes answer a throttle as a retry (issue 11, items 1 and 5).

Inline design (docs/reliability.md): a transient failure answers 503 with Retry-After, which an Azure Monitor
action group retries (408/429/503/504 only; a 500 is final); the alert is also parked on its ledger claim, and
the outbox sweep runs it again on its own once the action group has stopped retrying."""
from __future__ import annotations

import httpx
import pytest

from shared.errors import Throttled
from shared.local.host import LocalHost
from tests.integration.test_local_host import EmptyWorkspace, IdleMonitor

ALERT = {"schemaId": "azureMonitorCommonAlertSchema", "data": {
    "essentials": {"alertId": "/subscriptions/s/providers/Microsoft.AlertsManagement/alerts/a-1",
                   "alertRule": "latency", "severity": "Sev1", "monitorCondition": "Fired",
                   "alertTargetIDs": ["/subscriptions/s/resourceGroups/rg/providers/Microsoft.MachineLearningServices/"
                                      "workspaces/w/onlineEndpoints/churn-endpoint"]},
    "alertContext": {}}}


class ThrottledWorkspace(EmptyWorkspace):
    """The endpoint PUT/GET is throttled for the first ``throttled`` calls (a 30 s Retry-After), then answers."""

    def __init__(self, throttled: int) -> None:
        self.throttled = throttled
        self.calls = 0

    def _gate(self):
        self.calls += 1
        if self.calls <= self.throttled:
            raise Throttled("429 Too Many Requests on the endpoint", retry_after=30)

    def get_endpoint(self, name):
        self._gate()
        return None

    def get_job(self, name):
        self._gate()
        return super().get_job(name)

    def latest_data(self, name):
        return None


@pytest.fixture
def served(tmp_path):
    import function_app
    from shared.bootstrap import build
    from shared.config import Settings

    def start(throttled: int):
        settings = Settings.from_env({"MLOPS_BACKEND": "local", "MLOPS_HOME": str(tmp_path / "mlops")})
        workspace = ThrottledWorkspace(throttled)
        runtime = build(settings, workspace=workspace, monitor=IdleMonitor())
        function_app.use_runtime(runtime)
        host = LocalHost(function_app.app, port=0).start()
        started.append((host, runtime))
        return host, runtime, workspace

    started: list = []
    yield start
    for host, runtime in started:
        host.stop()
        runtime.close()
    function_app.use_runtime(None)


def alert_key() -> str:
    return f"{ALERT['data']['essentials']['alertId']}:fired/DriftDetected"


def test_a_throttled_alert_answers_503_with_retry_after_and_the_action_groups_retry_finishes_it(served):
    host, runtime, _ = served(throttled=1)
    first = httpx.post(host.url + "/api/alerts", params={"code": host.key}, json=ALERT, timeout=10)
    assert first.status_code == 503 and first.headers["Retry-After"] == "30"  # retried by an action group
    assert runtime.ledger.outcome(alert_key())[0] == "processing"
    again = httpx.post(host.url + "/api/alerts", params={"code": host.key}, json=ALERT, timeout=10)
    assert again.status_code == 202
    assert runtime.ledger.outcome(alert_key())[0] in ("done", "ignored")  # settled, acted on
    assert [r.event_id for r in runtime.audit.recent(limit=5) if r.message == "DriftDetected"] == \
        [ALERT["data"]["essentials"]["alertId"] + ":fired"]


def test_when_the_action_group_gives_up_the_sweep_finishes_the_alert_on_its_own(served):
    import function_app

    host, runtime, workspace = served(throttled=6)  # the first call and all 5 action-group retries are throttled
    for _ in range(6):
        r = httpx.post(host.url + "/api/alerts", params={"code": host.key}, json=ALERT, timeout=10)
        assert r.status_code == 503
    assert function_app.replay_parked(runtime) == {"done": 1, "waiting": 0, "failed": 0}  # nobody re-posted
    assert runtime.ledger.outcome(alert_key())[0] in ("done", "ignored")  # settled, acted on
    assert function_app.replay_parked(runtime) == {"done": 0, "waiting": 0, "failed": 0}  # and only once
    assert len([r for r in runtime.audit.recent(limit=20) if r.message == "DriftDetected"]) == 1


def test_an_alert_that_never_gets_through_ends_on_the_poison_path_with_one_alert(served):
    import function_app

    host, runtime, workspace = served(throttled=10_000)
    assert httpx.post(host.url + "/api/alerts", params={"code": host.key}, json=ALERT, timeout=10).status_code == 503
    assert function_app.replay_parked(runtime, max_attempts=2) == {"done": 0, "waiting": 1, "failed": 0}
    assert function_app.replay_parked(runtime, max_attempts=2) == {"done": 0, "waiting": 0, "failed": 1}
    outcome, reason = runtime.ledger.outcome(alert_key())
    assert outcome == "failed" and "abandoned" in reason
    assert [r.decision for r in runtime.audit.recent(limit=5)] == ["failed"]
    assert runtime.notifier.stats()["pending"] + runtime.notifier.stats()["delivered"] >= 1
    assert function_app.replay_parked(runtime) == {"done": 0, "waiting": 0, "failed": 0}


@pytest.mark.parametrize("route, body", [
    ("rollbacks", {"endpoint": "churn-endpoint", "reason": "bad canary"}),
    ("reruns", {"job": "train-churn-v3-a1"}),
])
def test_a_throttle_on_a_manual_route_is_503_with_retry_after_not_500(served, route, body):
    host, _, _ = served(throttled=1)
    r = httpx.post(f"{host.url}/api/{route}", params={"code": host.key}, json=body, timeout=10)
    assert r.status_code == 503, r.text
    assert r.headers["Retry-After"] == "30" and r.json()["retry_after"] == 30
    assert "Traceback" not in r.text


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::marshmallow.warnings.RemovedInMarshmallow4Warning")
def test_black_box_a_30_s_throttle_on_the_endpoint_still_rolls_back_without_a_manual_re_post(azurite):
    """The done-when of issue 11 on the azure backend: a canary at 10 %, an alert arrives while every endpoint PUT
    is throttled (429, Retry-After 30); the first answer is a 503 with a Retry-After, the action group's retry
    rolls back to exactly the intended split."""
    import function_app
    from tests.integration.test_azure_backend import ENDPOINT, AzureArc

    arc = AzureArc(azurite)
    arc.fake.sleep = lambda seconds: arc.fake.slept.append(seconds)  # the SDK's waits are recorded, not slept
    try:
        arc.deliver(arc.land("1"))
        arc.deliver(arc.finish("train-churn-v1-a1", auc=0.80, logloss=0.45))
        arc.clock.advance(minutes=30)
        arc.deliver(arc.land("2"))
        arc.deliver(arc.finish("train-churn-v2-a1", auc=0.86, logloss=0.40))
        assert arc.traffic() == {"churn-model-v1": 90, "churn-model-v2": 10}
        arc.clock.advance(minutes=10)
        function_app.use_runtime(arc.rt)
        with LocalHost(function_app.app, port=0) as host:
            alert = {**ALERT, "data": {**ALERT["data"], "essentials": {
                **ALERT["data"]["essentials"], "alertTargetIDs": [
                    f"/subscriptions/s/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/w/"
                    f"onlineEndpoints/{ENDPOINT}"]}}}
            throttle = arc.fake.fail_next(429, method="PUT", path_contains=f"/onlineEndpoints/{ENDPOINT}",
                                          retry_after=30, times=10)
            first = httpx.post(host.url + "/api/alerts", params={"code": host.key}, json=alert, timeout=30)
            assert first.status_code == 503 and int(first.headers["Retry-After"]) >= 1  # capped by the deadline
            assert arc.traffic() == {"churn-model-v1": 90, "churn-model-v2": 10}  # nothing half-done
            throttle.path_contains = "/throttle-over"  # the throttle is over by the action group's next retry
            retry = httpx.post(host.url + "/api/alerts", params={"code": host.key}, json=alert, timeout=30)
        assert retry.status_code == 202, retry.text
        assert arc.traffic() == {"churn-model-v1": 100, "churn-model-v2": 0}
        assert len(arc.rt.audit.recent(subject=ENDPOINT, decisions=["rollback"])) == 1
    finally:
        function_app.use_runtime(None)
        arc.close()

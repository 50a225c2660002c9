"""MlflowRunMetrics against a real azure-core PipelineClient over an injected transport answering canned MLflow REST
responses (runs/get, metrics/get-history) in the documented shapes; every request is recorded."""
from __future__ import annotations

import math

import pytest

from shared.adapters.runmetrics import MlflowRunMetrics, final_value, scope_for, tracking_base_url
from shared.errors import InvalidPayload, NotFound, ServiceRejected, Throttled, TransientError
from tests.integration.test_azure_monitor import CannedTransport, FakeCredential

TRACKING = ("azureml://westeurope.api.azureml.ms/mlflow/v1.0/subscriptions/00000000-1111-2222-3333-444444444444/"
            "resourceGroups/rg-mlops/providers/Microsoft.MachineLearningServices/workspaces/mlw-prod")
BASE = "https://" + TRACKING.removeprefix("azureml://")
JOB = "train-churn-v2024-05-01-a1"


def run_body(*metrics: tuple[str, float | str, int, int]) -> dict:
    """runs/get: {"run": {"info": {...}, "data": {"metrics": [{key, value, timestamp, step}], "params", "tags"}}}."""
    return {"run": {"info": {"run_id": JOB, "run_uuid": JOB, "experiment_id": "3f2e", "status": "FINISHED",
                             "start_time": 1714550400000, "end_time": 1714550460000, "lifecycle_stage": "active"},
                    "data": {"metrics": [{"key": k, "value": v, "timestamp": t, "step": s} for k, v, t, s in metrics],
                             "params": [{"key": "max_depth", "value": "4"}],
                             "tags": [{"key": "mlops_owner", "value": "mlops-automation"}]}}}


def history_body(key: str, *points: tuple[float | str, int, int], next_page_token: str | None = None) -> dict:
    """metrics/get-history: {"metrics": [{key, value, timestamp, step}], "next_page_token"}."""
    body: dict = {"metrics": [{"key": key, "value": v, "timestamp": t, "step": s} for v, t, s in points]}
    if next_page_token:
        body["next_page_token"] = next_page_token
    return body


def reader(transport: CannedTransport, credential: FakeCredential | None = None, **kwargs) -> MlflowRunMetrics:
    return MlflowRunMetrics(TRACKING, credential or FakeCredential(), transport=transport, **kwargs)


def test_final_values_come_from_each_metric_history_at_its_last_step():
    transport = CannedTransport(
        (200, run_body(("auc", 0.81, 1714550459000, 9), ("logloss", 0.41, 1714550459000, 9))),
        (200, history_body("auc", (0.70, 1714550450000, 0), (0.84, 1714550458000, 9), (0.79, 1714550455000, 5))),
        (200, history_body("logloss", (0.60, 1714550450000, 0), (0.39, 1714550459000, 9))))
    credential = FakeCredential()
    metrics = reader(transport, credential).get_run_metrics(JOB)

    assert metrics == {"auc": 0.84, "logloss": 0.39}
    run, auc, logloss = transport.requests
    assert run.method == "GET" and run.url.startswith(f"{BASE}/api/2.0/mlflow/runs/get?")
    assert run.query == {"run_id": [JOB]}
    assert auc.path.endswith("/api/2.0/mlflow/metrics/get-history")
    assert auc.query["run_id"] == [JOB] and auc.query["metric_key"] == ["auc"] and "page_token" not in auc.query
    assert logloss.query["metric_key"] == ["logloss"]
    assert all(r.headers["Authorization"] == "Bearer fake-token" for r in transport.requests)
    assert credential.scopes and set(credential.scopes) == {("https://ml.azure.com/.default",)}


def test_history_pages_are_followed_to_the_last_one():
    transport = CannedTransport(
        (200, run_body(("loss", 0.2, 3000, 2))),
        (200, history_body("loss", (0.9, 1000, 0), (0.5, 2000, 1), next_page_token="page-2")),
        (200, history_body("loss", (0.25, 3000, 2), (0.22, 3500, 3), next_page_token="page-3")),
        (200, history_body("loss")))
    assert reader(transport, page_size=2).get_run_metrics(JOB) == {"loss": 0.22}
    pages = transport.requests[1:]
    assert [r.query.get("page_token") for r in pages] == [None, ["page-2"], ["page-3"]]
    assert all(r.query["max_results"] == ["2"] for r in pages)


def test_a_history_that_never_ends_falls_back_to_the_runs_last_value(caplog):
    transport = CannedTransport((200, run_body(("auc", 0.8, 1, 1))),
                                (200, history_body("auc", (0.1, 1, 0), next_page_token="same")),
                                (200, history_body("auc", (0.2, 2, 0), next_page_token="same")))
    with caplog.at_level("WARNING", logger="shared.adapters.runmetrics"):
        assert reader(transport).get_run_metrics(JOB) == {"auc": 0.8}
    assert any("repeats page token" in r.getMessage() for r in caplog.records)


def test_an_empty_history_uses_the_value_the_run_reports():
    transport = CannedTransport((200, run_body(("auc", 0.77, 1714550459000, 0))), (200, {}))
    assert reader(transport).get_run_metrics(JOB) == {"auc": 0.77}


def test_a_run_without_metrics_has_an_empty_dict():
    transport = CannedTransport((200, {"run": {"info": {"run_id": JOB}, "data": {"params": []}}}))
    assert reader(transport).get_run_metrics(JOB) == {}
    assert len(transport.requests) == 1


def test_an_unknown_run_is_not_found_with_mlflows_message():
    transport = CannedTransport((404, {"error_code": "RESOURCE_DOES_NOT_EXIST",
                                       "message": f"Run '{JOB}' not found"}))
    with pytest.raises(NotFound) as caught:
        reader(transport).get_run_metrics(JOB)
    assert f"HTTP 404: Run '{JOB}' not found" in str(caught.value)
    assert len(transport.requests) == 1


def test_forbidden_is_rejected_with_the_service_message():
    transport = CannedTransport((403, {"error": {"code": "AuthorizationFailed", "message": "The client does not have "
                                                 "authorization to perform action read on the workspace"}}))
    with pytest.raises(ServiceRejected) as caught:
        reader(transport).get_run_metrics(JOB)
    assert caught.value.status == 403 and "AuthorizationFailed: The client does not have" in str(caught.value)


def test_throttling_with_a_long_retry_after_is_throttled_and_a_short_one_is_waited_out():
    slow = CannedTransport((429, {"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "slow down"},
                            {"Retry-After": "30"}))
    with pytest.raises(Throttled) as caught:
        reader(slow).get_run_metrics(JOB)
    assert caught.value.retry_after == pytest.approx(30, abs=0.5) and slow.slept == []

    quick = CannedTransport((429, {"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "slow down"},
                             {"Retry-After": "1"}), (200, run_body()))
    assert reader(quick).get_run_metrics(JOB) == {} and quick.slept == [1.0]


def test_server_errors_are_retried_then_transient():
    failure = (503, b"<html>upstream unavailable</html>", {"Content-Type": "text/html"})
    transport = CannedTransport(failure, failure)
    with pytest.raises(TransientError) as caught:
        reader(transport, retry_total=1).get_run_metrics(JOB)
    assert "HTTP 503" in str(caught.value) and len(transport.requests) == 2


def test_a_200_that_is_not_json_is_transient():
    transport = CannedTransport((200, b"<html>sign in</html>", {"Content-Type": "text/html"}))
    with pytest.raises(TransientError, match="not JSON"):
        reader(transport).get_run_metrics(JOB)


def test_non_finite_final_values_are_left_out_so_no_gate_compares_with_them(caplog):
    transport = CannedTransport((200, run_body(("auc", "NaN", 2, 1), ("logloss", 0.3, 2, 1))),
                                (200, history_body("auc", (0.7, 1, 0), ("NaN", 2, 1))),
                                (200, history_body("logloss", (0.3, 2, 1))))
    with caplog.at_level("WARNING", logger="shared.adapters.runmetrics"):
        assert reader(transport).get_run_metrics(JOB) == {"logloss": 0.3}
    assert any("'auc' has no finite final value" in r.getMessage() for r in caplog.records)


def test_the_tracking_uri_can_be_a_callable_read_once_on_first_use():
    calls = []

    def tracking_uri() -> str:
        calls.append(1)
        return TRACKING

    metrics = MlflowRunMetrics(tracking_uri, FakeCredential(), transport=CannedTransport(
        (200, run_body()), (200, run_body())))
    assert calls == []
    metrics.get_run_metrics(JOB)
    metrics.get_run_metrics(JOB)
    assert calls == [1] and metrics.base_url == BASE


def test_a_workspace_without_a_tracking_uri_is_a_configuration_error():
    with pytest.raises(InvalidPayload) as caught:
        MlflowRunMetrics(lambda: None, FakeCredential(), transport=CannedTransport()).get_run_metrics(JOB)
    assert caught.value.field == "mlflow_tracking_uri"


@pytest.mark.parametrize("uri, expected", [
    (TRACKING, BASE),
    (TRACKING + "/", BASE),
    (BASE, BASE),
    ("azureml://eastus.api.azureml.ms/mlflow/v2.0/subscriptions/s/resourceGroups/r/providers/"
     "Microsoft.MachineLearningServices/workspaces/w",
     "https://eastus.api.azureml.ms/mlflow/v2.0/subscriptions/s/resourceGroups/r/providers/"
     "Microsoft.MachineLearningServices/workspaces/w"),
])
def test_tracking_uris_become_https_base_urls(uri, expected):
    assert tracking_base_url(uri) == expected


@pytest.mark.parametrize("uri", ["", "http://westeurope.api.azureml.ms/mlflow/v1.0", "file:///tmp/mlruns",
                                 "databricks", "azureml://", "https://user:secret@host/mlflow",
                                 "https://host/mlflow?x=1"])
def test_unusable_tracking_uris_are_rejected(uri):
    with pytest.raises(InvalidPayload) as caught:
        MlflowRunMetrics(uri, FakeCredential())
    assert caught.value.field == "mlflow_tracking_uri"


def test_sovereign_tracking_hosts_get_their_clouds_scope():
    assert scope_for(BASE) == "https://ml.azure.com/.default"
    assert scope_for("https://chinaeast2.api.ml.azure.cn/mlflow/v1.0/x") == "https://ml.azure.cn/.default"
    assert scope_for("https://usgovvirginia.api.ml.azure.us/mlflow/v1.0/x") == "https://ml.azure.us/.default"
    credential = FakeCredential()
    reader(CannedTransport((200, run_body())), credential, scope="https://management.azure.com/.default") \
        .get_run_metrics(JOB)
    assert credential.scopes == [("https://management.azure.com/.default",)]


@pytest.mark.parametrize("name", ["", "   ", "two words", "tab\tname", "x" * 256])
def test_a_job_name_that_cannot_be_a_run_id_is_rejected_before_any_request(name):
    transport = CannedTransport()
    with pytest.raises(InvalidPayload):
        reader(transport).get_run_metrics(name)
    assert transport.requests == []


def test_final_value_orders_by_step_then_timestamp_then_value():
    assert final_value([{"value": 1, "step": 2, "timestamp": 5}, {"value": 2, "step": 1, "timestamp": 9}]) == 1
    assert final_value([{"value": 1, "step": "3", "timestamp": "5"}, {"value": 2, "step": 3, "timestamp": 6}]) == 2
    assert final_value([{"value": 0.4, "step": 3, "timestamp": 6}, {"value": 0.5, "step": 3, "timestamp": 6}]) == 0.5
    assert final_value([{"value": "NaN", "step": 3, "timestamp": 6}, {"value": 0.5, "step": 3, "timestamp": 6}]) == 0.5
    assert math.isnan(final_value([{"value": "NaN", "step": 4}, {"value": 0.5, "step": 3}]))
    assert final_value([]) is None and final_value([{"value": "oops"}]) is None


def test_threads_racing_to_the_first_read_share_one_pipeline(monkeypatch):
    # The Functions worker runs invocations on a thread pool; a pipeline made twice leaves one unclosed.
    import threading
    import time

    import azure.core

    made = []

    class SlowPipelineClient:
        def __init__(self, *args, **kwargs) -> None:
            time.sleep(0.05)  # every thread arrives while the first is still building
            made.append(self)

        def close(self) -> None:
            pass

    monkeypatch.setattr(azure.core, "PipelineClient", SlowPipelineClient)
    metrics = reader(CannedTransport())
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(metrics._pipeline())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1 and seen == made * 8

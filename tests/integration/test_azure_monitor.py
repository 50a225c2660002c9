"""AzureMonitor against the real LogsQueryClient and MetricsClient, over an injected azure-core transport that answers
canned responses in the documented shapes (Log Analytics query API, metrics batch API) and records every request."""
from __future__ import annotations

import json
import time
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from azure.core.credentials import AccessToken
from azure.core.pipeline.transport import HttpTransport
from azure.core.rest import HttpResponse
from azure.core.utils import case_insensitive_dict

from shared.adapters.monitor import AzureMonitor, kql_string, metrics_audience, traffic_query
from shared.domain import Health
from shared.errors import InvalidPayload, ServiceRejected, Throttled, TransientError

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
WORKSPACE_ID = "6f1c0b3e-2a4d-4e5f-9a8b-7c6d5e4f3a2b"
SUB = "00000000-1111-2222-3333-444444444444"
METRICS = "https://westeurope.metrics.monitor.azure.com"


# --- fakes at the SDK seam: a credential and an HTTP transport ----------------------------------------------

class FakeCredential:
    """A TokenCredential that hands out one fixed token and remembers which scopes were asked for."""

    def __init__(self, token: str = "fake-token") -> None:
        self.token = token
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)


class CannedResponse(HttpResponse):
    """A complete azure.core.rest.HttpResponse whose body is already in memory."""

    def __init__(self, request: Any, status: int, body: bytes, headers: dict[str, str]) -> None:
        self._request, self._status, self._content = request, status, body
        self._headers = case_insensitive_dict(headers)
        self._closed = False

    request = property(lambda self: self._request)
    status_code = property(lambda self: self._status)
    headers = property(lambda self: self._headers)
    reason = property(lambda self: {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
                                    429: "Too Many Requests", 500: "Internal Server Error",
                                    503: "Service Unavailable"}.get(self._status, "Status"))
    content_type = property(lambda self: self._headers.get("Content-Type"))
    is_closed = property(lambda self: self._closed)
    is_stream_consumed = property(lambda self: True)
    encoding = property(lambda self: "utf-8")
    url = property(lambda self: self._request.url)
    content = property(lambda self: self._content)

    def text(self, encoding: str | None = None) -> str:
        return self._content.decode(encoding or "utf-8")

    def json(self) -> Any:
        return json.loads(self._content)

    def raise_for_status(self) -> None:
        if self._status >= 400:
            from azure.core.exceptions import HttpResponseError

            raise HttpResponseError(response=self)

    def read(self) -> bytes:
        return self._content

    def iter_raw(self, **kwargs: Any):
        yield self._content

    def iter_bytes(self, **kwargs: Any):
        yield self._content

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> CannedResponse:
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()


class Recorded:
    def __init__(self, request: Any) -> None:
        self.method = request.method
        self.url = request.url
        self.headers = dict(request.headers)
        body = request.content
        self.body = body.decode() if isinstance(body, bytes) else body

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.url).query)

    def json(self) -> Any:
        return json.loads(self.body)


class CannedTransport(HttpTransport):
    """Answers each request with the next canned (status, body, headers); records requests and retry sleeps."""

    def __init__(self, *responses: tuple[int, Any] | tuple[int, Any, dict[str, str]]) -> None:
        self.responses = list(responses)
        self.requests: list[Recorded] = []
        self.slept: list[float] = []

    def send(self, request: Any, **kwargs: Any) -> CannedResponse:
        self.requests.append(Recorded(request))
        assert self.responses, f"no canned response left for {request.method} {request.url}"
        status, body, *rest = self.responses.pop(0)
        headers = {"Content-Type": "application/json; charset=utf-8", **(rest[0] if rest else {})}
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return CannedResponse(request, status, raw, headers)

    def sleep(self, duration: float) -> None:  # the retry policy waits through the transport: record, don't wait
        self.slept.append(duration)

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __exit__(self, *args: Any) -> None:
        pass


# --- response bodies in the documented shapes ---------------------------------------------------------------

TRAFFIC_COLUMNS = [{"name": "code", "type": "int"}, {"name": "requests", "type": "long"},
                   {"name": "p50_ms", "type": "real"}, {"name": "p95_ms", "type": "real"}]


def logs_body(rows: Iterable[list[Any]], *, error: dict | None = None) -> dict:
    """Log Analytics query API: {"tables": [{"name", "columns": [{name, type}], "rows": [[...]]}]} (+ "error")."""
    body: dict[str, Any] = {"tables": [{"name": "PrimaryResult", "columns": TRAFFIC_COLUMNS, "rows": list(rows)}]}
    if error is not None:
        body["error"] = error
    return body


def one_error(code: str, message: str, innererror: dict | None = None) -> dict:
    """The OneAPI error object Azure Monitor answers failures with."""
    return {"error": {"code": code, "message": message, **({"innererror": innererror} if innererror else {})}}


def series(dimension: dict[str, str], values: list[float | None], *, start: datetime = NOW - timedelta(minutes=3)):
    return {"metadatavalues": [{"name": {"value": k, "localizedValue": k}, "value": v} for k, v in dimension.items()],
            "data": [{"timeStamp": (start + timedelta(minutes=i)).isoformat().replace("+00:00", "Z"),
                      **({"average": v} if v is not None else {})} for i, v in enumerate(values)]}


def metrics_body(metrics: dict[str, list[dict]], resource_id: str) -> dict:
    """Metrics batch API: {"values": [{starttime, endtime, interval, namespace, resourceregion, resourceid,
    "value": [{id, type, name: {value, localizedValue}, unit, timeseries: [{metadatavalues, data}]}]}]}."""
    return {"values": [{
        "starttime": "2024-05-01T11:45:00Z", "endtime": "2024-05-01T12:00:00Z", "interval": "PT1M",
        "namespace": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints", "resourceregion": "westeurope",
        "resourceid": resource_id,
        "value": [{"id": f"{resource_id}/providers/Microsoft.Insights/metrics/{name}", "type": "Microsoft.Insights/metrics",
                   "name": {"value": name, "localizedValue": name}, "displayDescription": "", "unit": "Count",
                   "errorCode": "Success", "timeseries": ts} for name, ts in metrics.items()]}]}


def resource_id(endpoint: str) -> str:
    return (f"/subscriptions/{SUB}/resourceGroups/rg-mlops/providers/Microsoft.MachineLearningServices/"
            f"workspaces/mlw-prod/onlineEndpoints/{endpoint}")


def logs_monitor(transport: CannedTransport, credential: FakeCredential | None = None, **kwargs: Any) -> AzureMonitor:
    return AzureMonitor(credential or FakeCredential(), workspace_id=WORKSPACE_ID,
                        logs_endpoint="https://api.loganalytics.io/v1", workspace="mlw-prod", transport=transport,
                        clock=lambda: NOW, **kwargs)


def metrics_monitor(transport: CannedTransport, credential: FakeCredential | None = None, **kwargs: Any):
    return AzureMonitor(credential or FakeCredential(), metrics_endpoint=METRICS, subscription_id=SUB,
                        resource_group="rg-mlops", workspace="mlw-prod", transport=transport, clock=lambda: NOW,
                        **kwargs)


# --- Log Analytics (primary) --------------------------------------------------------------------------------

def test_health_from_traffic_logs_counts_non_2xx_as_errors_and_reads_the_window_percentiles():
    transport = CannedTransport((200, logs_body([[200, 170, 41.0, 180.5], [201, 10, 41.0, 180.5],
                                                 [404, 8, 41.0, 180.5], [429, 2, 41.0, 180.5],
                                                 [500, 6, 41.0, 180.5], [503, 4, 41.0, 180.5]])))
    credential = FakeCredential()
    health = logs_monitor(transport, credential).health("churn-endpoint", "v3-1", 60)

    assert health == Health(endpoint="churn-endpoint", deployment="v3-1", window_minutes=60, requests=200,
                            error_share=pytest.approx(20 / 200), latency_p50_ms=41.0, latency_p95_ms=180.5,
                            partial=False)
    [request] = transport.requests
    assert request.method == "POST"
    assert request.url == f"https://api.loganalytics.io/v1/workspaces/{WORKSPACE_ID}/query"
    assert request.headers["Authorization"] == "Bearer fake-token"
    assert credential.scopes == [("https://api.loganalytics.io/.default",)]
    body = request.json()
    assert body["timespan"] == "2024-05-01T11:00:00.000Z/2024-05-01T12:00:00.000Z"
    query = body["query"]
    assert query.startswith("let traffic = AmlOnlineEndpointTrafficLog\n")
    assert "| where EndpointName =~ \"churn-endpoint\"" in query
    assert "| where DeploymentName =~ \"v3-1\"" in query
    assert "| where AzureMLWorkspaceName =~ \"mlw-prod\"" in query
    assert ("| where TimeGenerated between (datetime(2024-05-01T11:00:00.000000Z) .. "
            "datetime(2024-05-01T12:00:00.000000Z))") in query
    assert "summarize requests = count() by code = toint(ResponseCode)" in query
    assert "percentiles_array(TotalDurationMs, 50, 95)" in query


def test_a_whole_endpoint_is_queried_without_a_deployment_filter():
    transport = CannedTransport((200, logs_body([[200, 5, 10.0, 20.0]])))
    health = logs_monitor(transport).health("churn-endpoint", None, 15)
    assert (health.requests, health.error_share, health.deployment) == (5, 0.0, None)
    query = transport.requests[0].json()["query"]
    assert "DeploymentName" not in query and "EndpointName =~ \"churn-endpoint\"" in query
    assert transport.requests[0].json()["timespan"] == "2024-05-01T11:45:00.000Z/2024-05-01T12:00:00.000Z"


def test_no_traffic_in_the_window_is_zero_requests_not_an_error():
    transport = CannedTransport((200, logs_body([])))
    health = logs_monitor(transport).health("churn-endpoint", "v3-1", 30)
    assert health == Health(endpoint="churn-endpoint", deployment="v3-1", window_minutes=30, requests=0,
                            error_share=0.0, latency_p50_ms=None, latency_p95_ms=None, partial=False)


def test_requests_without_a_final_code_count_as_errors():
    transport = CannedTransport((200, logs_body([[200, 9, 5.0, 9.0], [None, 1, 5.0, 9.0]])))
    assert logs_monitor(transport).health("churn-endpoint", None, 10).error_share == pytest.approx(0.1)


def test_a_partial_result_is_used_marked_partial_and_logged(caplog):
    error = {"code": "PartialError", "message": "There were some errors when processing your query.",
             "details": [{"code": "EngineError", "message": "Query exceeded a resource limit"}]}
    transport = CannedTransport((200, logs_body([[200, 90, 30.0, 95.0], [500, 10, 30.0, 95.0]], error=error)))
    with caplog.at_level("WARNING", logger="shared.adapters.monitor"):
        health = logs_monitor(transport).health("churn-endpoint", "v3-1", 60)
    assert (health.requests, health.error_share, health.latency_p95_ms, health.partial) == (100, 0.1, 95.0, True)
    assert any("partial result" in r.getMessage() and "PartialError" in r.getMessage() for r in caplog.records)


def test_a_partial_result_without_any_rows_is_zero_requests_marked_partial():
    error = {"code": "PartialError", "message": "There were some errors when processing your query."}
    transport = CannedTransport((200, {"tables": [], "error": error}))
    health = logs_monitor(transport).health("churn-endpoint", None, 60)
    assert (health.requests, health.partial) == (0, True)


def test_throttling_with_a_long_retry_after_is_raised_as_throttled_without_waiting():
    transport = CannedTransport((429, one_error("ThrottledError", "Too many requests, retry later"),
                                 {"Retry-After": "17"}))
    with pytest.raises(Throttled) as caught:
        logs_monitor(transport).health("churn-endpoint", "v3-1", 60)
    assert caught.value.retry_after == pytest.approx(17, abs=0.5)
    assert "HTTP 429" in str(caught.value) and "ThrottledError" in str(caught.value)
    assert len(transport.requests) == 1 and transport.slept == []


def test_throttling_with_a_short_retry_after_is_retried_once_then_answers():
    transport = CannedTransport((429, one_error("ThrottledError", "slow down"), {"Retry-After": "2"}),
                                (200, logs_body([[200, 3, 1.0, 2.0]])))
    assert logs_monitor(transport).health("churn-endpoint", None, 5).requests == 3
    assert len(transport.requests) == 2 and transport.slept == [2.0]
    assert all(r.headers["Authorization"] == "Bearer fake-token" for r in transport.requests)


def test_server_errors_are_retried_then_raised_as_transient():
    failure = (500, one_error("InternalServerError", "boom"))
    transport = CannedTransport(failure, failure, failure)
    with pytest.raises(TransientError) as caught:
        logs_monitor(transport, retry_total=2).health("churn-endpoint", None, 5)
    assert not isinstance(caught.value, Throttled) and "HTTP 500" in str(caught.value)
    assert len(transport.requests) == 3 and sum(transport.slept) <= 4  # backoff stays within the budget


def test_forbidden_is_rejected_with_the_service_message_and_never_retried():
    transport = CannedTransport((403, one_error("InsufficientAccessError", "The provided credentials have "
                                                "insufficient access to perform the requested operation"),
                                 {"Retry-After": "1"}))
    with pytest.raises(ServiceRejected) as caught:
        logs_monitor(transport).health("churn-endpoint", "v3-1", 60)
    assert caught.value.status == 403
    assert "InsufficientAccessError: The provided credentials have insufficient access" in str(caught.value)
    assert len(transport.requests) == 1


@pytest.mark.parametrize("name", ['churn"endpoint', "churn'endpoint", 'x" | take 1 //', "ab", "9lives",
                                  "trailing-", "a" * 33])
def test_a_name_that_is_not_an_azure_ml_name_is_rejected_before_any_request(name):
    transport = CannedTransport()
    monitor = logs_monitor(transport)
    with pytest.raises(InvalidPayload) as caught:
        monitor.health(name, None, 60)
    assert caught.value.field == "endpoint"
    with pytest.raises(InvalidPayload) as caught:
        monitor.health("churn-endpoint", name, 60)
    assert caught.value.field == "deployment"
    assert transport.requests == []


@pytest.mark.parametrize("window", [0, -5, 2.5, True, 10**9])
def test_a_window_that_is_not_a_positive_whole_number_of_minutes_is_rejected(window):
    with pytest.raises(InvalidPayload) as caught:
        logs_monitor(CannedTransport()).health("churn-endpoint", None, window)
    assert caught.value.field == "window_minutes"


def test_kql_string_literals_escape_quotes_and_backslashes():
    assert kql_string('a"b\\c') == '"a\\"b\\\\c"'
    with pytest.raises(InvalidPayload):
        kql_string("line\nbreak")
    query = traffic_query("churn-endpoint", None, NOW - timedelta(minutes=5), NOW, workspace='we"ird')
    assert 'AzureMLWorkspaceName =~ "we\\"ird"' in query


def test_a_sovereign_logs_endpoint_is_used_for_the_request_and_the_token_audience():
    transport = CannedTransport((200, logs_body([])))
    credential = FakeCredential()
    AzureMonitor(credential, workspace_id=WORKSPACE_ID, logs_endpoint="https://api.loganalytics.azure.cn/v1",
                 transport=transport, clock=lambda: NOW).health("churn-endpoint", None, 5)
    assert transport.requests[0].url == f"https://api.loganalytics.azure.cn/v1/workspaces/{WORKSPACE_ID}/query"
    assert credential.scopes == [("https://api.loganalytics.azure.cn/.default",)]


# --- platform metrics (fallback) ----------------------------------------------------------------------------

def test_without_a_log_analytics_workspace_health_comes_from_platform_metrics():
    rid = resource_id("churn-endpoint")
    requests = metrics_body({"RequestsPerMinute": [
        series({"statuscodeclass": "2xx"}, [40.0, 50.0, None]),
        series({"statuscodeclass": "4xx"}, [2.0, 0.0, None]),
        series({"statuscodeclass": "5xx"}, [0.0, 8.0, None])]}, rid)
    latency = metrics_body({"RequestLatency_P50": [series({}, [10.0, 20.0, None])],
                            "RequestLatency_P95": [series({}, [100.0, 200.0, None])]}, rid)
    transport = CannedTransport((200, requests), (200, latency))
    credential = FakeCredential()
    health = metrics_monitor(transport, credential).health("churn-endpoint", "v3-1", 15)

    assert health.requests == 100 and health.error_share == pytest.approx(10 / 100)
    # per-minute percentiles weighted by that minute's requests: minute 1 had 42, minute 2 had 58
    assert health.latency_p50_ms == pytest.approx((10 * 42 + 20 * 58) / 100)
    assert health.latency_p95_ms == pytest.approx((100 * 42 + 200 * 58) / 100)
    assert health.partial is False
    first, second = transport.requests
    assert first.method == second.method == "POST"
    assert first.path == f"/subscriptions/{SUB}/metrics:getBatch" and first.url.startswith(METRICS + "/")
    assert first.json() == {"resourceids": [rid]}
    q = first.query
    assert q["metricnamespace"] == ["Microsoft.MachineLearningServices/workspaces/onlineEndpoints"]
    assert q["metricnames"] == ["RequestsPerMinute"] and q["aggregation"] == ["Average"]
    assert q["interval"] == ["PT1M"] and q["api-version"] == ["2024-02-01"]
    assert q["filter"] == ["deployment eq 'v3-1' and statusCodeClass eq '*'"]
    assert q["starttime"][0].startswith("2024-05-01T11:45:00") and q["endtime"][0].startswith("2024-05-01T12:00:00")
    assert second.query["metricnames"] == ["RequestLatency_P50,RequestLatency_P95"]
    assert second.query["filter"] == ["deployment eq 'v3-1'"]
    assert first.headers["Authorization"] == "Bearer fake-token"
    assert set(credential.scopes) == {("https://metrics.monitor.azure.com/.default",)}


def test_platform_metrics_without_traffic_are_zero_requests_and_skip_the_latency_query():
    transport = CannedTransport((200, metrics_body({"RequestsPerMinute": []}, resource_id("churn-endpoint"))))
    health = metrics_monitor(transport).health("churn-endpoint", None, 15)
    assert (health.requests, health.error_share, health.latency_p95_ms, health.partial) == (0, 0.0, None, False)
    assert len(transport.requests) == 1
    assert transport.requests[0].query["filter"] == ["statusCodeClass eq '*'"]


def test_a_metric_the_service_left_out_marks_the_health_partial():
    rid = resource_id("churn-endpoint")
    transport = CannedTransport(
        (200, metrics_body({"RequestsPerMinute": [series({"statusCodeClass": "2xx"}, [5.0])]}, rid)),
        (200, metrics_body({"RequestLatency_P50": [series({}, [7.0])]}, rid)))
    health = metrics_monitor(transport).health("churn-endpoint", None, 15)
    assert (health.requests, health.latency_p50_ms, health.latency_p95_ms, health.partial) == (5, 7.0, None, True)


def test_platform_metrics_throttling_is_throttled():
    transport = CannedTransport((429, one_error("TooManyRequests", "throttled"), {"Retry-After": "60"}))
    with pytest.raises(Throttled) as caught:
        metrics_monitor(transport).health("churn-endpoint", None, 15)
    assert caught.value.retry_after == pytest.approx(60, abs=0.5) and transport.slept == []


def test_a_workspace_without_the_traffic_table_falls_back_to_platform_metrics(caplog):
    missing = one_error("BadArgumentError", "The request had some invalid properties", innererror={
        "code": "SemanticError", "message": "A semantic error occurred.",
        "innererror": {"code": "SEM0100", "message": "'where' operator: Failed to resolve table or column "
                                                     "expression named 'AmlOnlineEndpointTrafficLog'"}})
    rid = resource_id("churn-endpoint")
    transport = CannedTransport((400, missing),
                                (200, metrics_body({"RequestsPerMinute": [series({"statusCodeClass": "2xx"},
                                                                                  [4.0])]}, rid)),
                                (200, metrics_body({"RequestLatency_P50": [series({}, [3.0])],
                                                    "RequestLatency_P95": [series({}, [9.0])]}, rid)))
    monitor = AzureMonitor(FakeCredential(), workspace_id=WORKSPACE_ID, metrics_endpoint=METRICS,
                           subscription_id=SUB, resource_group="rg-mlops", workspace="mlw-prod",
                           transport=transport, clock=lambda: NOW)
    with caplog.at_level("WARNING", logger="shared.adapters.monitor"):
        health = monitor.health("churn-endpoint", None, 15)
    assert (health.requests, health.latency_p95_ms) == (4, 9.0)
    assert [urlsplit(r.url).hostname for r in transport.requests] == [
        "api.loganalytics.io", "westeurope.metrics.monitor.azure.com", "westeurope.metrics.monitor.azure.com"]
    assert any("using platform metrics instead" in r.getMessage() for r in caplog.records)


def test_a_missing_traffic_table_without_metrics_configured_is_rejected_with_what_to_fix():
    missing = one_error("BadArgumentError", "Failed to resolve table or column expression named "
                        "'AmlOnlineEndpointTrafficLog'")
    with pytest.raises(ServiceRejected) as caught:
        logs_monitor(CannedTransport((400, missing))).health("churn-endpoint", None, 15)
    assert "diagnostic setting" in str(caught.value)


def test_any_other_bad_request_is_not_mistaken_for_a_missing_table():
    transport = CannedTransport((400, one_error("BadArgumentError", "Syntax error near 'summarize'")))
    with pytest.raises(ServiceRejected) as caught:
        AzureMonitor(FakeCredential(), workspace_id=WORKSPACE_ID, metrics_endpoint=METRICS, subscription_id=SUB,
                     resource_group="rg-mlops", workspace="mlw-prod", transport=transport,
                     clock=lambda: NOW).health("churn-endpoint", None, 15)
    assert caught.value.status == 400 and len(transport.requests) == 1


# --- configuration -------------------------------------------------------------------------------------------

def test_metrics_audience_follows_the_cloud_of_the_regional_endpoint():
    assert metrics_audience("https://westeurope.metrics.monitor.azure.com") == "https://metrics.monitor.azure.com"
    assert metrics_audience("https://usgovvirginia.metrics.monitor.azure.us/") == "https://metrics.monitor.azure.us"
    with pytest.raises(InvalidPayload):
        metrics_audience("https://management.azure.com")


def test_a_sovereign_metrics_endpoint_asks_for_a_token_of_that_cloud():
    transport = CannedTransport((200, metrics_body({"RequestsPerMinute": []}, resource_id("churn-endpoint"))))
    credential = FakeCredential()
    AzureMonitor(credential, metrics_endpoint="https://chinaeast2.metrics.monitor.azure.cn", subscription_id=SUB,
                 resource_group="rg-mlops", workspace="mlw-prod", transport=transport,
                 clock=lambda: NOW).health("churn-endpoint", None, 5)
    assert credential.scopes == [("https://metrics.monitor.azure.cn/.default",)]
    assert transport.requests[0].url.startswith("https://chinaeast2.metrics.monitor.azure.cn/subscriptions/")


@pytest.mark.parametrize("kwargs, field", [
    ({}, "MLOPS_LOG_ANALYTICS_WORKSPACE_ID"),
    ({"metrics_endpoint": METRICS}, "MLOPS_LOG_ANALYTICS_WORKSPACE_ID"),
    ({"workspace_id": "not-a-guid"}, "MLOPS_LOG_ANALYTICS_WORKSPACE_ID"),
    ({"workspace_id": WORKSPACE_ID, "metrics_endpoint": "https://example.com"}, "MLOPS_METRICS_ENDPOINT"),
])
def test_unusable_configuration_is_rejected_at_construction_naming_the_setting(kwargs, field):
    with pytest.raises(InvalidPayload) as caught:
        AzureMonitor(FakeCredential(), **kwargs)
    assert caught.value.field == field


def test_from_settings_reads_the_monitor_settings():
    from shared.config import Settings

    settings = Settings.from_env({"MLOPS_WORKSPACE": "mlw-prod", "MLOPS_SUBSCRIPTION_ID": SUB,
                                  "MLOPS_RESOURCE_GROUP": "rg-mlops", "MLOPS_LOG_ANALYTICS_WORKSPACE_ID": WORKSPACE_ID,
                                  "MLOPS_METRICS_ENDPOINT": METRICS})
    monitor = AzureMonitor.from_settings(settings, FakeCredential())
    assert (monitor.workspace_id, monitor.logs_endpoint, monitor.metrics_configured) == (
        WORKSPACE_ID, "https://api.loganalytics.io/v1", True)


def test_threads_racing_to_the_first_query_share_one_client_of_each_kind(monkeypatch):
    # The Functions worker runs invocations on a thread pool; a client made twice leaves one unclosed.
    import threading

    import azure.monitor.query
    import azure.monitor.querymetrics

    made: list[str] = []

    def slow(kind: str):
        class Client:
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                time.sleep(0.05)  # every thread arrives while the first is still building
                made.append(kind)

            def close(self) -> None:
                pass
        return Client

    monkeypatch.setattr(azure.monitor.query, "LogsQueryClient", slow("logs"))
    monkeypatch.setattr(azure.monitor.querymetrics, "MetricsClient", slow("metrics"))
    monitor = AzureMonitor(FakeCredential(), workspace_id=WORKSPACE_ID, metrics_endpoint=METRICS,
                           subscription_id=SUB, resource_group="rg-mlops", workspace="mlw-prod")
    seen: list[Any] = []
    threads = [threading.Thread(target=lambda: seen.append((monitor._logs_client(), monitor._metrics_client())))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(made) == ["logs", "metrics"]
    assert len({id(pair[0]) for pair in seen}) == 1 and len({id(pair[1]) for pair in seen}) == 1

"""The Event Grid publisher through the real azure-eventgrid client and azure-core pipeline, offline: an injected
HttpTransport answers with canned responses and records each request; a tiny TokenCredential hands out a token."""
from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from azure.core.credentials import AccessToken, AzureKeyCredential
from azure.core.exceptions import ServiceRequestError
from azure.core.pipeline.transport import HttpResponse, HttpTransport

from shared import eventgrid
from shared.adapters.events import DATA_VERSION, EventGridPublisher
from shared.config import Settings
from shared.errors import InvalidPayload, ServiceRejected, Throttled, TransientError
from shared.messages import DataRegistered, DriftDetected, EventIgnored

ENDPOINT = "https://mlops-events.westeurope-1.eventgrid.azure.net/api/events"
SETTINGS = Settings(topic_endpoint=ENDPOINT)


class FakeCredential:
    """A TokenCredential: get_token returns an AccessToken and remembers the scopes asked for."""

    def __init__(self) -> None:
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken("fake-entra-token", 4_102_444_800)


class Canned(HttpResponse):
    def __init__(self, request, status: int, headers: dict[str, str], body: bytes) -> None:
        super().__init__(request, None)
        self.status_code = status
        self.headers = headers
        self.reason = {200: "OK", 400: "Bad Request", 429: "Too Many Requests", 503: "Service Unavailable"}.get(
            status, "Status")
        self.content_type = headers.get("Content-Type")
        self._body = body

    def body(self) -> bytes:
        return self._body


class CannedTransport(HttpTransport):
    """Answers each request with the next scripted reply: (status, headers, body) or an exception to raise."""

    def __init__(self, *replies: Any) -> None:
        self.replies = list(replies)
        self.requests: list[dict[str, Any]] = []

    def send(self, request, **kwargs: Any):
        raw = getattr(request, "body", None) or getattr(request, "content", None) or b""
        self.requests.append({"method": request.method, "url": request.url, "headers": dict(request.headers),
                              "body": json.loads(raw)})
        reply = self.replies.pop(0) if self.replies else (200, {}, b"")
        if isinstance(reply, BaseException):
            raise reply
        status, headers, body = reply
        return Canned(request, status, {"Content-Type": "application/json", **headers}, body)

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *args: Any) -> None:
        pass

    def sleep(self, duration: float) -> None:
        raise AssertionError(f"azure-core's retry slept {duration}s: the SDK's own retries should be off")


class FakeTime:
    """monotonic() and sleep() for the publisher: sleeping advances the clock, nothing waits."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def publisher(*replies: Any, **options: Any) -> tuple[EventGridPublisher, CannedTransport, FakeCredential, FakeTime]:
    transport, credential, clock = CannedTransport(*replies), FakeCredential(), FakeTime()
    pub = EventGridPublisher.from_settings(SETTINGS, credential, transport=transport, sleep=clock.sleep,
                                           monotonic=clock.monotonic, **options)
    return pub, transport, credential, clock


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def test_publishes_one_event_grid_schema_event_with_a_bearer_token():
    pub, transport, credential, _ = publisher()
    event_id = pub.publish("MLOps.DataRegistered", "data/churn/7", {"asset": "churn", "version": "7"})
    [request] = transport.requests
    url = urlsplit(request["url"])
    assert request["method"] == "POST"
    assert f"{url.scheme}://{url.netloc}{url.path}" == ENDPOINT
    assert parse_qs(url.query) == {"api-version": ["2018-01-01"]}
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert headers["authorization"] == "Bearer fake-entra-token"
    assert "aeg-sas-key" not in headers and "aeg-sas-token" not in headers
    assert headers["content-type"].startswith("application/json")
    assert credential.scopes == [("https://eventgrid.azure.net/.default",)]
    [event] = request["body"]
    assert set(event) >= {"id", "subject", "eventType", "eventTime", "dataVersion", "data"}
    assert "specversion" not in event, "the topic takes the Event Grid schema, not CloudEvents"
    assert (event["id"], event["subject"], event["eventType"], event["dataVersion"]) == \
        (event_id, "data/churn/7", "MLOps.DataRegistered", DATA_VERSION)
    assert event["data"] == {"asset": "churn", "version": "7"}


@pytest.mark.parametrize("event_type,data,expected", [
    ("MLOps.DataRegistered", {"asset": "churn", "version": "7", "path": "azureml://datastores/d/paths/churn/7/"},
     DataRegistered),
    ("MLOps.DriftDetected", {"endpoint": "churn-endpoint", "deployment": "v3-1", "metric": "psi", "value": 0.31,
                             "threshold": 0.2, "severity": "warning", "monitor": "psi-monitor"}, DriftDetected),
    ("MLOps.RollbackCompleted", {"endpoint": "churn-endpoint", "to": "v2-1"}, EventIgnored),
])
def test_what_is_published_parses_back_into_the_message_it_stands_for(event_type, data, expected):
    pub, transport, _, _ = publisher()
    event_id = pub.publish(event_type, "endpoints/churn-endpoint", data)
    message = eventgrid.to_message(transport.requests[0]["body"][0])
    assert isinstance(message, expected) and message.event_id == event_id
    if expected is DataRegistered:
        assert (message.asset, message.version, message.register) == ("churn", "7", True)
    if expected is DriftDetected:
        assert (message.endpoint, message.deployment, message.value, message.threshold) == \
            ("churn-endpoint", "v3-1", 0.31, 0.2)


def test_data_is_reduced_to_json_primitives():
    from datetime import datetime, timezone

    pub, transport, _, _ = publisher()
    pub.publish("MLOps.DataRegistered", "s", {"asset": "churn", "version": 7, "at": datetime(2025, 1, 2, tzinfo=timezone.utc)})
    assert transport.requests[0]["body"][0]["data"] == {"asset": "churn", "version": 7, "at": "2025-01-02 00:00:00+00:00"}


def test_429_with_a_long_retry_after_raises_throttled_at_once():
    pub, transport, _, clock = publisher((429, {"Retry-After": "7"}, error_body("TooManyRequests", "slow down")))
    with pytest.raises(Throttled) as caught:
        pub.publish("MLOps.DriftDetected", "s", {"endpoint": "e"})
    assert caught.value.retry_after == 7.0
    assert len(transport.requests) == 1 and clock.slept == [], "no in-process wait longer than max_wait"


def test_429_with_a_short_retry_after_is_waited_out_and_sent_again_with_the_same_id():
    pub, transport, _, clock = publisher((429, {"Retry-After": "1"}, b""), (200, {}, b""))
    event_id = pub.publish("MLOps.DriftDetected", "s", {"endpoint": "e"})
    assert clock.slept == [1.0] and len(transport.requests) == 2
    assert [r["body"][0]["id"] for r in transport.requests] == [event_id, event_id]


def test_a_retry_after_beyond_the_budget_is_not_waited_and_is_passed_on():
    pub, transport, _, clock = publisher((429, {"Retry-After": "120"}, b""), budget_seconds=15)
    with pytest.raises(Throttled) as caught:
        pub.publish("MLOps.DriftDetected", "s", {"endpoint": "e"})
    assert caught.value.retry_after == 120 and clock.slept == [] and len(transport.requests) == 1


def test_a_long_retry_after_is_not_waited_out_when_little_budget_is_left():
    # 60 s asked for, 1.5 s of budget left: sending again after 1.5 s would be sooner than the service allows.
    pub, transport, _, clock = publisher((429, {"Retry-After": "60"}, b""), (200, {}, b""), budget_seconds=1.5)
    with pytest.raises(Throttled) as caught:
        pub.publish("MLOps.DriftDetected", "s", {"endpoint": "e"})
    assert len(transport.requests) == 1 and clock.slept == []
    assert caught.value.retry_after == 60


def test_400_is_a_permanent_rejection_with_the_services_message():
    pub, transport, _, clock = publisher((400, {}, error_body("BadRequest", "Event data field 'data' too large")))
    with pytest.raises(ServiceRejected) as caught:
        pub.publish("MLOps.DriftDetected", "s", {"endpoint": "e"})
    assert "Event data field 'data' too large" in str(caught.value) and caught.value.status == 400
    assert len(transport.requests) == 1 and clock.slept == []


def test_503_is_transient_retried_twice_with_backoff_then_raised():
    pub, transport, _, clock = publisher(*[(503, {}, error_body("ServiceUnavailable", "busy"))] * 5)
    with pytest.raises(TransientError) as caught:
        pub.publish("MLOps.DriftDetected", "s", {"endpoint": "e"})
    assert "503" in str(caught.value)
    assert len(transport.requests) == 3, "one try plus two retries, none by azure-core itself"
    # Jittered exponential backoff (shared/retry.py): half fixed, half random, 0.25 s then 0.5 s at most.
    assert len(clock.slept) == 2 and 0.125 <= clock.slept[0] <= 0.25 and 0.25 <= clock.slept[1] <= 0.5


def test_503_then_success_publishes():
    pub, transport, _, _ = publisher((503, {}, b""), (200, {}, b""))
    pub.publish("MLOps.DriftDetected", "s", {"endpoint": "e"})
    assert len(transport.requests) == 2


def test_a_connection_failure_is_transient():
    pub, transport, _, _ = publisher(*[ServiceRequestError("connection refused")] * 3)
    with pytest.raises(TransientError):
        pub.publish("MLOps.DriftDetected", "s", {"endpoint": "e"})
    assert len(transport.requests) == 3


def test_retries_stop_when_the_budget_is_spent():
    pub, transport, _, clock = publisher(*[(503, {}, b"")] * 10, retries=8, budget_seconds=1.0)
    with pytest.raises(TransientError):
        pub.publish("MLOps.DriftDetected", "s", {"endpoint": "e"})
    assert sum(clock.slept) < 1.0 and len(transport.requests) == len(clock.slept) + 1 < 9


def test_the_topic_endpoint_must_be_set_and_https():
    for endpoint in ("", "http://mlops-events.westeurope-1.eventgrid.azure.net/api/events"):
        with pytest.raises(InvalidPayload) as caught:
            EventGridPublisher.from_settings(Settings(topic_endpoint=endpoint), FakeCredential())
        assert caught.value.field == "MLOPS_EVENTS__topicEndpointUri"


def test_a_key_credential_is_refused_the_topic_has_local_auth_off():
    with pytest.raises(TypeError):
        EventGridPublisher.from_settings(SETTINGS, AzureKeyCredential("not-a-real-key"))

"""Error translation: azure-core exceptions, built from real HTTP responses, become the app's error tree."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    IncompleteReadError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseTimeoutError,
)
from azure.core.rest import HttpRequest
from azure.core.rest._http_response_impl import HttpResponseImpl

from shared.adapters.errors import translate, translated
from shared.errors import (
    Conflict,
    InvalidPayload,
    NotFound,
    PermanentError,
    ServiceRejected,
    Throttled,
    TransientError,
)
from shared.retry import retry_after_seconds


def response(status: int, body: dict | None = None, headers: dict | None = None) -> HttpResponseImpl:
    """A real azure-core HTTP response with an ARM-shaped error body, as a transport would produce it."""
    raw = json.dumps(body if body is not None else {"error": {"code": "Oops", "message": f"status {status}"}}).encode()
    resp = HttpResponseImpl(
        request=HttpRequest("GET", "https://management.azure.com/x"), internal_response=None, status_code=status,
        reason="reason", content_type="application/json", headers={"Content-Type": "application/json", **(headers or {})},
        stream_download_generator=None,
    )
    resp._content = raw
    return resp


def http_error(status: int, **kw) -> HttpResponseError:
    return HttpResponseError(response=response(status, **kw))


@pytest.mark.parametrize(("status", "kind"), [
    (429, Throttled), (503, Throttled), (500, TransientError), (502, TransientError), (504, TransientError),
    (408, TransientError), (400, ServiceRejected), (401, ServiceRejected), (403, ServiceRejected),
    (404, NotFound), (409, Conflict), (412, Conflict), (422, ServiceRejected),
])
def test_status_codes_map_to_the_error_tree(status, kind):
    err = translate(http_error(status))
    assert type(err) is kind
    assert f"HTTP {status}" in str(err)


def test_transient_and_permanent_never_overlap():
    assert isinstance(translate(http_error(429)), TransientError)
    assert not isinstance(translate(http_error(429)), PermanentError)
    assert isinstance(translate(http_error(400)), PermanentError)
    assert not isinstance(translate(http_error(400)), TransientError)


def test_the_service_message_is_carried_with_the_call_name():
    err = translate(http_error(400, body={"error": {"code": "UserError", "message": "Compute 'gpu' not found"}}),
                    what="create job train-x")
    assert isinstance(err, ServiceRejected) and err.status == 400
    assert "create job train-x" in str(err)
    assert "UserError: Compute 'gpu' not found" in str(err)


def test_retry_after_seconds_is_kept_on_throttling():
    err = translate(http_error(429, headers={"Retry-After": "7"}))
    assert isinstance(err, Throttled) and err.retry_after == 7


def test_retry_after_ms_headers_win_over_seconds():
    assert retry_after_seconds({"retry-after-ms": "1500", "Retry-After": "9"}) == 1.5
    assert retry_after_seconds({"x-ms-retry-after-ms": "250"}) == 0.25


def test_retry_after_as_http_date():
    now = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)
    header = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert retry_after_seconds({"Retry-After": header}, now=now) == pytest.approx(30)


@pytest.mark.parametrize("raw", ["soon", "nan", "inf", ""])
def test_unreadable_retry_after_is_ignored(raw):
    assert retry_after_seconds({"Retry-After": raw}) is None


def test_retry_after_is_capped_at_an_hour_and_never_negative():
    assert retry_after_seconds({"Retry-After": "86400"}) == 3600
    assert retry_after_seconds({"Retry-After": "-5"}) == 0


def test_throttled_carries_the_services_own_wait():
    # Whether it is waited out in-process is the retry policy's business (shared/retry.py), not the translation's.
    err = translate(http_error(503, headers={"Retry-After": "120"}))
    assert isinstance(err, Throttled) and err.retry_after == 120


@pytest.mark.parametrize("exc", [
    ServiceRequestError("connection refused"), ServiceResponseTimeoutError("read timed out"),
    TimeoutError("slow"), ConnectionError("reset"),
    IncompleteReadError("Connection broken: IncompleteRead(512 bytes read, 1024 more expected)"),
])
def test_network_failures_and_timeouts_are_transient(exc):
    assert type(translate(exc)) is TransientError


def test_status_less_sdk_errors_keep_their_meaning():
    assert isinstance(translate(ResourceNotFoundError("no such job")), NotFound)
    assert isinstance(translate(ResourceExistsError("exists")), Conflict)


def test_a_token_that_could_not_be_had_is_transient_and_a_refused_one_permanent():
    # What DefaultAzureCredential raises when its chain fails (e.g. the managed identity endpoint is unreachable on
    # a cold start): no status, nothing the service refused. Permanent would drop the event for good.
    chain = ClientAuthenticationError(message="DefaultAzureCredential failed to retrieve a token from the included "
                                              "credentials.\nManagedIdentityCredential: connection refused")
    err = translate(chain, what="get job train-x")
    assert type(err) is TransientError and "get job train-x" in str(err)
    refused = translate(ClientAuthenticationError(response=response(401)))
    assert isinstance(refused, ServiceRejected) and refused.status == 401


def test_app_errors_pass_through_unchanged():
    original = InvalidPayload("bad", field="x")
    assert translate(original) is original


def test_translated_context_reraises_with_the_cause_kept():
    cause = http_error(404)
    with pytest.raises(NotFound) as info, translated("get model m:1"):
        raise cause
    assert info.value.__cause__ is cause
    assert "get model m:1" in str(info.value)


def test_translated_leaves_programming_errors_alone():
    with pytest.raises(KeyError), translated("anything"):
        raise KeyError("a bug, not a service answer")

"""The app's one retry policy and its per-invocation deadline (shared/retry.py)."""
from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import retry
from shared.errors import TransientError
from shared.retry import MAX_RETRY_AFTER_SECONDS, DeadlineExceeded, Policy, retry_after_seconds

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12))
def test_a_number_of_seconds_is_read_clamped_to_zero_and_an_hour(value):
    got = retry_after_seconds(repr(value))
    assert got == pytest.approx(min(max(value, 0.0), MAX_RETRY_AFTER_SECONDS))


@given(st.integers(min_value=-86_400, max_value=86_400))
def test_an_http_date_is_read_as_seconds_from_now(offset):
    header = format_datetime(NOW + timedelta(seconds=offset), usegmt=True)
    assert retry_after_seconds({"Retry-After": header}, now=NOW) == min(max(offset, 0), MAX_RETRY_AFTER_SECONDS)


@settings(max_examples=500)
@given(st.one_of(st.text(), st.binary().map(lambda b: b.decode("latin-1"))))
def test_any_text_is_read_or_ignored_never_raises(raw):
    got = retry_after_seconds({"Retry-After": raw}, now=NOW)
    assert got is None or 0.0 <= got <= MAX_RETRY_AFTER_SECONDS


@given(st.integers(min_value=0, max_value=10**7), st.integers(min_value=0, max_value=3600))
def test_azure_millisecond_headers_win_over_retry_after(ms, seconds):
    got = retry_after_seconds({"x-ms-retry-after-ms": str(ms), "Retry-After": str(seconds)})
    assert got == pytest.approx(min(ms / 1000, MAX_RETRY_AFTER_SECONDS))


@pytest.mark.parametrize("raw", ["", "soon", "nan", "inf", "-inf", "1e999", "Wed, 99 Foo 2015 07:28:00 GMT"])
def test_unreadable_values_are_ignored(raw):
    assert retry_after_seconds(raw) is None
    assert retry_after_seconds(None) is None and retry_after_seconds({}) is None


@given(st.integers(min_value=1, max_value=200), st.floats(min_value=0.001, max_value=10),
       st.floats(min_value=0.001, max_value=100), st.floats(min_value=0, max_value=1, exclude_max=True))
def test_backoff_is_equal_jitter_under_the_cap(n, base, cap, r):
    policy = Policy(base=base, cap=cap)
    ceiling = min(cap, base * 2 ** min(n - 1, 60))
    wait = policy.backoff(n, rand=lambda: r)
    assert ceiling / 2 <= wait <= ceiling <= cap


@given(st.integers(min_value=1, max_value=10), st.integers(min_value=0, max_value=12),
       st.one_of(st.none(), st.floats(min_value=0, max_value=100)), st.floats(min_value=0, max_value=100))
def test_a_wait_is_granted_only_with_tries_left_and_time_for_it(attempts, n, after, left):
    policy = Policy(attempts=attempts, max_retry_after=10.0)
    wait = policy.wait(n, after, left=left)
    if n >= attempts or (after is not None and after > 10.0):
        assert wait is None
    elif wait is not None:
        assert wait < left
        assert wait == after if after is not None else wait <= policy.cap
    else:
        needed = after if after is not None else policy.backoff(n, rand=lambda: 0.0)
        assert needed >= left or after is None  # the jittered backoff may not fit although its floor does


def test_no_deadline_outside_an_invocation():
    assert retry.remaining() is None and retry.deadline_at() is None
    retry.check("anything")  # nothing to enforce


def test_a_nested_deadline_never_extends_the_outer_one():
    with retry.deadline(0.5) as outer:
        with retry.deadline(60) as inner:
            assert inner == outer
            assert retry.remaining() <= 0.5
        with retry.deadline(0.1) as shorter:
            assert shorter < outer
    assert retry.remaining() is None


def test_a_spent_deadline_raises_a_transient_error_and_settling_gets_a_grace():
    with retry.deadline(0.05):
        time.sleep(0.06)
        assert retry.remaining() == 0
        with pytest.raises(DeadlineExceeded) as caught:
            retry.check("get job x")
        assert isinstance(caught.value, TransientError) and "get job x" in str(caught.value)
        with pytest.raises(DeadlineExceeded):
            retry.timeout(10)
        assert Policy().wait(1) is None, "no retry sleeps past the deadline"
        with retry.settling():
            retry.check("release the claim")  # bookkeeping may still run
            assert 0 < retry.remaining() <= retry.SETTLE_SECONDS
        with pytest.raises(DeadlineExceeded):
            retry.check()


def test_timeouts_are_cut_to_what_is_left():
    assert retry.timeout(10) == 10
    with retry.deadline(2):
        assert 1.5 < retry.timeout(10) <= 2
        assert retry.timeout(1) == 1


def test_each_thread_has_its_own_deadline():
    seen = {}

    def other():
        seen["other"] = retry.remaining()

    with retry.deadline(5):
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert seen["other"] is None


def test_within_sets_the_deadline_for_the_call_and_keeps_the_signature():
    import inspect

    @retry.within(3)
    def entry(event: str) -> float | None:
        return retry.remaining()

    assert 2.5 < entry("e") <= 3 and retry.remaining() is None
    assert list(inspect.signature(entry).parameters) == ["event"]
    entry.deadline_seconds = 1
    assert entry("e") <= 1


def test_pause_never_sleeps_past_the_deadline():
    with retry.deadline(0.01):
        time.sleep(0.011)
        with pytest.raises(DeadlineExceeded):
            retry.pause(3)


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "5"])
def test_a_deadline_needs_a_positive_finite_number(bad):
    with pytest.raises(ValueError):
        with retry.deadline(bad):
            pass


def test_every_trigger_and_route_runs_under_a_deadline():
    import function_app
    from shared.local.host import index

    functions = index(function_app.app)  # cached: get_functions() runs once per FunctionApp
    budgets = {}
    for f in functions:
        assert hasattr(f.call, "__wrapped__"), f"{f.name} sets no deadline"
        budgets[f.trigger_type] = budgets.get(f.trigger_type, set()) | {f.call.deadline_seconds}
    assert budgets["eventGridTrigger"] == {retry.EVENT_GRID_SECONDS} and retry.EVENT_GRID_SECONDS < 30
    assert budgets["httpTrigger"] == {retry.HTTP_SECONDS}
    assert budgets["timerTrigger"] == {retry.ROLLOUT_TICK_SECONDS, retry.SWEEP_SECONDS, retry.DRIFT_MONITOR_SECONDS}
    assert retry.EVENT_GRID_SECONDS + retry.SETTLE_SECONDS < 30


def test_the_local_hosts_rollout_tick_runs_under_the_timers_deadline():
    from shared.local.cli import tick

    seen = []

    class Bus:
        def handle(self, message):
            seen.append(retry.remaining())
            return []

    class Runtime:
        bus = Bus()

    tick(Runtime())
    assert seen and retry.ROLLOUT_TICK_SECONDS - 1 < seen[0] <= retry.ROLLOUT_TICK_SECONDS


# --- which answers a POST is sent again after -------------------------------------------------------------

class _Scripted:
    """A transport answering each request with the next status of a script (no network)."""

    def __new__(cls, statuses):
        from azure.core.pipeline.transport import RequestsTransport

        from tests.reliability.faults import _response

        class Scripted(RequestsTransport):
            def __init__(self) -> None:
                super().__init__()
                self.script, self.sent = list(statuses), []

            def send(self, request, **kwargs):
                self.sent.append(request.method)
                return _response(request, self.script.pop(0), {}, b"{}", **kwargs)

            def sleep(self, duration: float) -> None:
                pass

        return Scripted()


def _run(method: str, statuses: list[int]):
    from azure.core.pipeline import Pipeline
    from azure.core.rest import HttpRequest

    transport = _Scripted(statuses)
    pipeline = Pipeline(transport, policies=[retry.sdk_policy()])
    response = pipeline.run(HttpRequest(method, "https://svc.example.invalid/items"))
    return response.http_response.status_code, transport.sent


@pytest.mark.parametrize("status", [500, 504])
def test_a_post_is_not_sent_again_after_an_answer_that_may_follow_its_commit(status):
    """A 500 or 504 may come after the service applied the POST (an insert): sending it again could apply it
    twice, or meet our own row as a conflict. Only a refusal (429, 503) is safe to repeat."""
    assert _run("POST", [status, 201]) == (status, ["POST"])


@pytest.mark.parametrize("status", [429, 503])
def test_a_post_refused_by_the_service_is_sent_again(status):
    assert _run("POST", [status, 201]) == (201, ["POST", "POST"])


@pytest.mark.parametrize("status", [500, 504])
def test_an_idempotent_request_is_sent_again_after_a_server_error(status):
    assert _run("GET", [status, 200]) == (200, ["GET", "GET"])

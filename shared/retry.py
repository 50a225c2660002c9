"""The app's one retry policy and its per-invocation deadline.

* **What is transient**: HTTP 408, 429, 500, 502, 503, 504 (and any other 5xx), connection failures and timeouts
  (``TRANSIENT_STATUSES``; shared/adapters/errors.py maps SDK exceptions onto the error tree with it).
* **How long the service asked us to wait**: ``retry_after_seconds`` reads ``retry-after-ms`` /
  ``x-ms-retry-after-ms`` (Azure) and ``Retry-After`` as seconds or as an HTTP date; capped at an hour.
* **How long to wait between tries**: ``Policy.backoff`` is exponential with "equal jitter" (half fixed, half
  random) under a cap. A Retry-After is honoured in-process only up to ``Policy.max_retry_after``; a longer one is
  the sender's business (Event Grid redelivers, an action group retries a 503), so the error is raised with it.
* **The deadline**: one instant per invocation, held in a contextvar (``with deadline(25): ...``). Every adapter
  call checks it before it starts (``check``), SDK calls get timeouts no longer than what is left
  (``DeadlineRetryPolicy``, ``timeout``), and no retry sleeps past it (``Policy.wait`` answers None instead). Once
  it is spent, ``DeadlineExceeded`` (a TransientError) is raised, so the host answers "retry later". Outside any
  invocation (a CLI, a test) there is no deadline and every call is bounded by ``CALL_SECONDS`` instead.
"""
from __future__ import annotations

import contextlib
import contextvars
import email.utils
import functools
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from shared.errors import TransientError

logger = logging.getLogger(__name__)

TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_SECONDS = 3600.0
# Event Grid waits about 30 s for an answer before it counts the delivery as failed and schedules a redelivery: an
# invocation that outlives it overlaps with its own redelivery. 25 s leaves room to answer.
EVENT_GRID_SECONDS = 25.0
# HTTP routes: the Azure load balancer drops an HTTP-triggered call after 230 s, but a person or an action group is
# waiting: the same 25 s, and a transient answer (503 + Retry-After) beyond it.
HTTP_SECONDS = 25.0
# Timers: under their own period (rollout_tick runs every minute, outbox_sweep every five).
ROLLOUT_TICK_SECONDS = 50.0
SWEEP_SECONDS = 240.0
DRIFT_MONITOR_SECONDS = 540.0  # drift_monitor runs every ten minutes and may read a large window
# Bookkeeping after the work (releasing or completing a claim, the audit record of a failure) may run this much
# past the deadline, so a spent deadline never leaves a claim "processing"; 25 + 4 s is still under Event Grid's 30.
SETTLE_SECONDS = 4.0
# A call made outside any invocation (CLI, tests without a deadline) is bounded by this on its own.
CALL_SECONDS = 20.0
# Shortest timeout handed to an SDK call that still has time left (below it a request cannot complete anyway).
MIN_TIMEOUT = 0.05

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("mlops_deadline", default=None)


class DeadlineExceeded(TransientError):
    """The invocation's deadline is spent: stop here and let the sender deliver again (Azure carries on with
    anything already started; the next delivery or timer tick picks its result up)."""

    deadline_reached = True  # the outbox gives such an alert back without counting a failed attempt


# --- the deadline ------------------------------------------------------------------------------------------

@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[float]:
    """Run the block under a deadline ``seconds`` from now (monotonic). Nested deadlines never extend an outer one."""
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"a deadline needs a positive number of seconds, not {seconds!r}")
    outer = _deadline.get()
    at = time.monotonic() + float(seconds)
    if outer is not None:
        at = min(at, outer)
    token = _deadline.set(at)
    try:
        yield at
    finally:
        _deadline.reset(token)


def within(seconds: float) -> Callable:
    """Decorator form of ``deadline`` for a function entry point (a trigger or a route). The wrapper keeps the
    function's signature (the Functions worker indexes it) and its ``deadline_seconds`` can be changed."""
    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            with deadline(run.deadline_seconds):
                return fn(*args, **kwargs)
        run.deadline_seconds = seconds
        return run
    return wrap


@contextlib.contextmanager
def settling() -> Iterator[None]:
    """Bookkeeping that must happen even when the work used the whole deadline: up to SETTLE_SECONDS more."""
    at = _deadline.get()
    if at is None:
        yield
        return
    token = _deadline.set(at + SETTLE_SECONDS)
    try:
        yield
    finally:
        _deadline.reset(token)


def settles(fn: Callable) -> Callable:
    """Decorator form of ``settling``."""
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with settling():
            return fn(*args, **kwargs)
    return run


def deadline_at() -> float | None:
    """The current invocation's deadline as a ``time.monotonic()`` instant; None outside any invocation."""
    return _deadline.get()


def remaining() -> float | None:
    """Seconds left before the invocation's deadline (never negative); None when there is no deadline."""
    at = _deadline.get()
    return None if at is None else max(0.0, at - time.monotonic())


def call_deadline(seconds: float = CALL_SECONDS) -> float:
    """The instant one adapter call must be done by: the invocation's deadline, or ``seconds`` from now when no
    invocation set one (and never later than that either)."""
    own = time.monotonic() + seconds
    at = _deadline.get()
    return own if at is None else min(own, at)


def check(what: str = "") -> None:
    """Raise DeadlineExceeded when the invocation has no time left for ``what``."""
    left = remaining()
    if left is not None and left <= 0:
        raise DeadlineExceeded(f"{what + ': ' if what else ''}the invocation's deadline is spent; a later delivery "
                               "carries on")


def timeout(preferred: float) -> float:
    """An SDK/HTTP timeout no longer than ``preferred`` nor than what is left of the deadline. Raises
    DeadlineExceeded when nothing is left."""
    check()
    left = remaining()
    return preferred if left is None else max(MIN_TIMEOUT, min(preferred, left))


# --- Retry-After -------------------------------------------------------------------------------------------

def retry_after_seconds(headers: Mapping[str, str] | str | None, *, now: datetime | None = None) -> float | None:
    """Seconds the service asked us to wait. ``headers`` is a header mapping (``retry-after-ms`` and
    ``x-ms-retry-after-ms`` first, then ``Retry-After``) or one ``Retry-After`` value. A value is a number of
    seconds or an HTTP date. None when absent or unreadable; never negative, capped at an hour."""
    if headers is None:
        return None
    if isinstance(headers, str):
        headers = {"Retry-After": headers}
    if not headers:
        return None
    lower = {str(k).lower(): str(v).strip() for k, v in headers.items()}
    for name, scale in (("retry-after-ms", 1000.0), ("x-ms-retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = lower.get(name)
        if not raw:
            continue
        value = _seconds(raw, scale, now)
        if value is not None:
            return min(max(value, 0.0), MAX_RETRY_AFTER_SECONDS)
    return None


def _seconds(raw: str, scale: float, now: datetime | None) -> float | None:
    try:
        value = float(raw) / scale
    except (ValueError, OverflowError):
        if scale != 1.0:
            return None
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        try:
            value = (when - (now or datetime.now(timezone.utc))).total_seconds()
        except OverflowError:
            return None
    return value if math.isfinite(value) else None


# --- the policy --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Policy:
    """How many tries, how long between them. ``attempts`` counts every try (the first included)."""

    attempts: int = 4
    base: float = 0.5  # first backoff ceiling in seconds, doubling per retry
    cap: float = 4.0  # largest backoff
    max_retry_after: float = 10.0  # longest Retry-After waited out in-process

    def backoff(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        """The wait before retry number ``retry`` (1 = the first retry): equal jitter under the cap."""
        ceiling = min(self.cap, self.base * 2 ** max(0, min(retry - 1, 60)))
        return ceiling / 2 + rand() * ceiling / 2

    def wait(self, retry: int, retry_after: float | None = None, *, left: float | None = None,
             rand: Callable[[], float] = random.random) -> float | None:
        """Seconds to wait before retry number ``retry``, or None to stop: the tries are spent, the service asked
        for longer than ``max_retry_after``, or the wait would not end before the time ``left`` (seconds; what is
        left of the invocation's deadline when not given, and both bound it)."""
        if retry >= self.attempts:
            return None
        if retry_after is not None:
            if retry_after > self.max_retry_after:
                return None
            pause = max(retry_after, 0.0)
        else:
            pause = self.backoff(retry, rand)
        ambient = remaining()
        bounds = [b for b in (left, ambient) if b is not None]
        if bounds and pause >= min(bounds):
            return None
        return pause


DEFAULT = Policy()


def pause(retry: int, *, base: float = 0.005, cap: float = 0.2, what: str = "") -> None:
    """A short jittered sleep before re-reading after a lost race, never past the deadline (DeadlineExceeded)."""
    wait = Policy(attempts=retry + 1, base=base, cap=cap).backoff(retry)
    left = remaining()
    if left is not None and wait >= left:
        raise DeadlineExceeded(f"{what + ': ' if what else ''}no time left to try again before the deadline")
    time.sleep(wait)


def call(fn: Callable[[], Any], *, what: str = "", policy: Policy = DEFAULT) -> Any:
    """``fn()``, tried again by ``policy`` when it raises a TransientError, within the deadline. For app-level steps
    that must not be left half-done by one transient answer (settling a claim)."""
    retries = 0
    while True:
        try:
            return fn()
        except DeadlineExceeded:
            raise
        except TransientError as error:
            retries += 1
            wait = policy.wait(retries, getattr(error, "retry_after", None))
            if wait is None:
                raise
            logger.info("%s: %s; trying again in %.2fs", what or "call", error, wait)
            time.sleep(wait)


# --- azure-core --------------------------------------------------------------------------------------------

def sdk_policy(policy: Policy = DEFAULT, *, retry_posts: bool = False, call_seconds: float = CALL_SECONDS,
               base: type | None = None):
    """An azure-core RetryPolicy that follows ``policy`` and the deadline (see DeadlineRetryPolicy). ``base`` is
    the SDK's own RetryPolicy subclass when it has one (azure-data-tables: TablesRetryPolicy)."""
    return _sdk_policy_class(base)(policy=policy, retry_posts=retry_posts, call_seconds=call_seconds)


@functools.cache
def _sdk_policy_class(base: type | None = None) -> type:
    from azure.core.pipeline.policies import RetryPolicy

    class DeadlineRetryPolicy(base or RetryPolicy):
        """azure-core's RetryPolicy on the app's terms.

        azure-core's own sleeps any Retry-After in full (an hour, if the service says so, even on a 403 that
        carries one), retries ten times, and each call's clock starts afresh. Here: only TRANSIENT_STATUSES and
        network errors are retried, ``policy.attempts`` tries at most, a Retry-After longer than
        ``policy.max_retry_after`` or than what is left is not waited out (the service's answer reaches the
        adapter and becomes Throttled, with the service's wait), and the whole call, its tries and sleeps
        included, ends by the invocation's deadline (or ``call_seconds`` outside an invocation): each request's
        connection and read timeouts are cut to what is left. POSTs are retried on 408/429 too only with
        ``retry_posts`` (the queries of the monitor and the tracking server are safe to repeat).
        """

        def __init__(self, *, policy: Policy, retry_posts: bool, call_seconds: float, **kw: Any) -> None:
            kw.setdefault("retry_total", max(0, policy.attempts - 1))
            kw.setdefault("retry_backoff_factor", policy.base)
            kw.setdefault("retry_backoff_max", policy.cap)
            super().__init__(**kw)
            self.policy = policy
            self.retry_posts = retry_posts
            self.call_seconds = call_seconds

        def configure_retries(self, options: dict[str, Any]) -> dict[str, Any]:
            check("an SDK call")
            settings = super().configure_retries(options)
            settings["until"] = call_deadline(self.call_seconds)
            settings["timeout"] = max(MIN_TIMEOUT, min(settings["timeout"], settings["until"] - time.monotonic()))
            settings["wait"] = 0.0
            return settings

        def _configure_timeout(self, request, absolute_timeout, is_response_error) -> None:
            super()._configure_timeout(request, absolute_timeout, is_response_error)
            options = request.context.options
            read = options.get("read_timeout")
            options["read_timeout"] = absolute_timeout if not read else min(read, absolute_timeout)

        def is_retry(self, settings: dict[str, Any], response: Any) -> bool:
            status = response.http_response.status_code
            if status not in TRANSIENT_STATUSES or not settings["total"]:
                return False
            method = response.http_request.method.upper()
            # A 429 or 503 is the service refusing the request, so even a POST can be sent again.
            return self.retry_posts or method in settings["methods"] or status in (429, 503)

        def _is_method_retryable(self, settings: dict[str, Any], request: Any, response: Any = None) -> bool:
            return True  # decided in increment(), which sees the error

        def increment(self, settings: dict[str, Any], response: Any = None, error: Any = None) -> bool:
            from azure.core.exceptions import ServiceRequestError

            method = str(getattr(getattr(response, "http_request", None), "method", "") or "").upper()
            if error is not None and not self.retry_posts and method not in settings["methods"] \
                    and not isinstance(error, ServiceRequestError):
                return False  # a POST that may have reached the service is not sent twice
            if not super().increment(settings, response=response, error=error):
                return False
            http = getattr(response, "http_response", None)
            after = retry_after_seconds(http.headers) if http is not None else None
            retries = len(settings["history"])
            wait = self.policy.wait(retries, after, left=settings["until"] - time.monotonic())
            if wait is None:
                logger.debug("no retry %d: Retry-After %s, %.2fs left", retries, after,
                             settings["until"] - time.monotonic())
                return False
            settings["wait"] = wait
            return True

        def sleep(self, settings: dict[str, Any], transport: Any, response: Any = None) -> None:
            if settings["wait"] > 0:
                transport.sleep(settings["wait"])

    return DeadlineRetryPolicy


def storage_policy(policy: Policy = DEFAULT, *, call_seconds: float = CALL_SECONDS):
    """The same terms for azure-storage-blob, whose pipeline needs its own StorageRetryPolicy (it steers retries
    to a secondary host): ``policy`` decides whether and how long to wait, Retry-After included, within the
    invocation's deadline (or ``call_seconds``), instead of ExponentialRetry's 15 s and longer."""
    return _storage_policy_class()(policy=policy, call_seconds=call_seconds)


@functools.cache
def _storage_policy_class() -> type:
    from azure.storage.blob import ExponentialRetry

    class DeadlineStorageRetry(ExponentialRetry):
        def __init__(self, *, policy: Policy, call_seconds: float) -> None:
            super().__init__(retry_total=max(0, policy.attempts - 1))
            self.policy = policy
            self.call_seconds = call_seconds

        def configure_retries(self, request: Any) -> dict[str, Any]:
            check("a blob call")
            settings = super().configure_retries(request)
            settings["until"] = call_deadline(self.call_seconds)
            settings["wait"] = 0.0
            return settings

        def increment(self, settings: dict[str, Any], request: Any, response: Any = None, error: Any = None) -> bool:
            if not super().increment(settings, request, response=response, error=error):
                return False
            after = retry_after_seconds(response.headers) if response is not None else None
            wait = self.policy.wait(settings["count"], after, left=settings["until"] - time.monotonic())
            if wait is None:
                return False
            settings["wait"] = wait
            return True

        def sleep(self, settings: dict[str, Any], transport: Any) -> None:
            if settings["wait"] > 0:
                transport.sleep(settings["wait"])

    return DeadlineStorageRetry


__all__ = ["CALL_SECONDS", "DEFAULT", "DRIFT_MONITOR_SECONDS", "EVENT_GRID_SECONDS", "HTTP_SECONDS", "MAX_RETRY_AFTER_SECONDS",
           "ROLLOUT_TICK_SECONDS", "SETTLE_SECONDS", "SWEEP_SECONDS", "TRANSIENT_STATUSES", "DeadlineExceeded", "Policy",
           "call", "call_deadline", "check", "deadline", "deadline_at", "pause", "remaining", "retry_after_seconds",
           "sdk_policy", "settles", "storage_policy", "settling", "timeout", "within"]

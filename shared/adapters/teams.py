"""Teams Workflows webhook adapter: rate-limited, retrying POSTs that never reveal the (secret) webhook URL."""
from __future__ import annotations

import collections
import hashlib
import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from shared import retry
from shared.errors import ServiceRejected, Throttled, TransientError

logger = logging.getLogger(__name__)

# Legacy connectors (and some Workflows paths) answer 200 with the real status in the body, e.g.
# "Microsoft Teams endpoint returned HTTP error 429 with ContextId ...".
_BODY_STATUS = re.compile(r"HTTP error (\d{3})")
# Limits Teams documents for webhooks: 4 requests per second and 60 per 30 seconds per webhook.
DEFAULT_WINDOWS: tuple[tuple[int, float], ...] = ((60, 30.0),)
# Windows are measured a little longer than nominal so that network jitter between our clock and Teams' clock
# cannot squeeze one request too many into a window on their side.
_WINDOW_SAFETY = 1.05


def fingerprint(url: str) -> str:
    """A short, stable, non-secret name for a webhook URL: host plus a sha256 prefix of the whole URL."""
    host = urlsplit(url).hostname or "?"
    return f"{host}#{hashlib.sha256(url.encode('utf-8')).hexdigest()[:10]}"


@dataclass(frozen=True)
class Delivery:
    """What one successful post took: for logs and measurements."""

    status: int
    attempts: int
    seconds: float


class _Redactor(logging.Filter):
    """Rewrites records of the httpx/httpcore loggers that would print a registered webhook URL.

    httpx logs every request line at INFO with the full URL, query string included; for a Workflows webhook that
    query holds the signature (``sig=``) that is the whole secret.
    """

    def __init__(self) -> None:
        super().__init__()
        self._secrets: dict[str, str] = {}
        self._lock = threading.Lock()

    def register(self, url: str) -> None:
        fp = f"<webhook {fingerprint(url)}>"
        parts = urlsplit(url)
        candidates = {url, str(httpx.URL(url)), parts.path, parts.query,
                      f"{parts.path}?{parts.query}" if parts.query else parts.path}
        with self._lock:
            for secret in candidates:
                if secret and len(secret) >= 8:  # a short path such as "/" would redact half of every log line
                    self._secrets[secret] = fp

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        redacted = message
        for secret, fp in sorted(self._secrets.items(), key=lambda kv: -len(kv[0])):
            if secret in redacted:
                redacted = redacted.replace(secret, fp)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


_REDACTOR = _Redactor()
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).addFilter(_REDACTOR)


def scrub(text: str, url: str) -> str:
    """``text`` with the URL and its path and query replaced by the URL's fingerprint."""
    parts = urlsplit(url)
    fp = f"<webhook {fingerprint(url)}>"
    for secret in sorted({url, str(httpx.URL(url)), parts.path, parts.query}, key=len, reverse=True):
        if secret and len(secret) >= 8:
            text = text.replace(secret, fp)
    return text


class RateLimiter:
    """Per-key spacing plus sliding windows, thread-safe. Callers reserve a start time, then sleep until it.

    Spacing (1 / max_per_second) keeps requests smooth instead of bursty; the windows (count per seconds, with a
    small safety margin) make sure no window on the receiver's side ever sees one request too many.
    """

    def __init__(self, max_per_second: float, windows: tuple[tuple[int, float], ...] = (),
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        if max_per_second <= 0:
            raise ValueError("max_per_second must be positive")
        self.interval = 1.0 / max_per_second
        self.windows = tuple(sorted({(max(1, int(max_per_second)), 1.0), *windows}, key=lambda w: w[1]))
        self.clock = clock
        self._lock = threading.Lock()
        self._history: dict[str, collections.deque[float]] = {}
        self._hold: dict[str, float] = {}

    def reserve(self, key: str, *, deadline: float | None = None) -> float | None:
        """The time the caller may start its request (recorded as taken); None if that is after ``deadline``."""
        keep = max(count for count, _ in self.windows)
        with self._lock:
            history = self._history.setdefault(key, collections.deque(maxlen=keep))
            start = max(self.clock(), self._hold.get(key, 0.0))
            if history:
                start = max(start, history[-1] + self.interval)
            for count, window in self.windows:
                if len(history) >= count:
                    # The request `count` back must have left the window before this one starts.
                    start = max(start, history[-count] + window * _WINDOW_SAFETY)
            if deadline is not None and start > deadline:
                return None
            history.append(start)
            return start

    def hold(self, key: str, until: float) -> None:
        """No request to ``key`` before ``until`` (the receiver said Retry-After)."""
        with self._lock:
            self._hold[key] = max(self._hold.get(key, 0.0), until)

    def next_free(self, key: str) -> float:
        with self._lock:
            return self._hold.get(key, 0.0)


class TeamsWebhook:
    """Posts JSON payloads to Teams Workflows webhook URLs through an injected ``httpx.Client``.

    Per URL: at most ``max_per_second`` requests (and 60 per 30 s). Retries 429 (honouring Retry-After), 5xx,
    timeouts and connection errors, and 2xx answers whose body reports "HTTP error 429", with exponential backoff
    and jitter, bounded by ``max_attempts`` and ``time_budget`` seconds. Other 4xx raise ServiceRejected at once;
    exhausted retries raise TransientError (Throttled when the service gave a Retry-After). No URL ever appears in
    a log line, an exception or a repr: only its fingerprint.
    """

    def __init__(self, client: httpx.Client, *, max_per_second: float = 4.0,
                 windows: tuple[tuple[int, float], ...] = DEFAULT_WINDOWS, max_attempts: int = 5,
                 time_budget: float = 20.0, backoff_base: float = 0.5, backoff_max: float = 8.0,
                 timeout: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, jitter: Callable[[], float] = random.random) -> None:
        self.client = client
        self.limiter = RateLimiter(max_per_second, windows, clock=clock)
        self.max_attempts = max(1, max_attempts)
        self.time_budget = time_budget
        # The app's one retry policy (shared/retry.py); any Retry-After is honoured when it fits the time left.
        self.policy = retry.Policy(attempts=self.max_attempts, base=backoff_base, cap=backoff_max,
                                   max_retry_after=retry.MAX_RETRY_AFTER_SECONDS)
        self.timeout = timeout
        self.clock = clock
        self.sleep = sleep
        self.jitter = jitter

    def __repr__(self) -> str:
        return f"TeamsWebhook(max_per_second={1 / self.limiter.interval:g}, max_attempts={self.max_attempts})"

    def post(self, url: str, payload: dict, *, time_budget: float | None = None) -> Delivery:
        """Deliver ``payload`` to ``url`` within ``time_budget`` seconds (default: the instance's), waits included."""
        _REDACTOR.register(url)
        fp = fingerprint(url)
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        # The explicit charset matters: without it the connector counts the body as UTF-16, halving the size limit.
        headers = {"Content-Type": "application/json; charset=utf-8"}
        started = self.clock()
        retry.check(f"Teams webhook {fp}")
        # Within the caller's budget, the instance's, and the invocation's deadline, whichever ends first.
        budgets = [b for b in (time_budget, self.time_budget, retry.remaining()) if b is not None]
        end = started + min(budgets)
        last = "no attempt made"
        retry_after: float | None = None
        for attempt in range(1, self.max_attempts + 1):
            slot = self.limiter.reserve(fp, deadline=end)
            if slot is None:
                wait = max(0.0, self.limiter.next_free(fp) - self.clock())
                error = Throttled(f"Teams webhook {fp}: rate limit leaves no slot within the time budget "
                                  f"(attempt {attempt}, last: {last})", retry_after=wait or self.limiter.interval)
                # Nothing went wrong on attempt 1: the caller simply ran out of time and may try again at once.
                error.deadline_reached = attempt == 1  # type: ignore[attr-defined]
                raise error
            pause = slot - self.clock()
            if pause > 0:
                self.sleep(pause)
            retry_after = None
            try:
                # A request never runs past the budget either (Workflows can be slow to answer under load).
                timeout = max(0.5, min(self.timeout, end - self.clock()))
                response = self.client.post(url, content=body, headers=headers, timeout=timeout)
            except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
                # The URL itself is unusable: retrying cannot help, and its text must not reach the message.
                raise ServiceRejected(f"Teams webhook {fp}: unusable URL ({type(exc).__name__})") from None
            except httpx.TimeoutException as exc:
                last = f"timeout ({type(exc).__name__})"
            except httpx.TransportError as exc:
                last = f"connection error ({type(exc).__name__}: {scrub(str(exc), url)[:200]})"
            else:
                status = response.status_code
                text = scrub(response.text[:1000], url) if response.content else ""
                if 200 <= status < 300:
                    reported = _BODY_STATUS.search(text)
                    inner = int(reported.group(1)) if reported else None
                    if inner is None or inner < 400:
                        delivery = Delivery(status, attempt, self.clock() - started)
                        logger.debug("posted card to %s: HTTP %d after %d attempt(s) in %.2fs", fp, status, attempt,
                                     delivery.seconds)
                        return delivery
                    if inner != 429 and inner < 500:
                        raise ServiceRejected(f"Teams webhook {fp} rejected the card: HTTP {status} reporting "
                                              f"HTTP error {inner}: {text[:300]}", status=inner)
                    last = f"HTTP {status} reporting HTTP error {inner}"
                elif status == 429 or status == 408 or status >= 500:
                    retry_after = retry.retry_after_seconds(dict(response.headers))
                    last = f"HTTP {status}" + (f" (Retry-After {retry_after:g}s)" if retry_after is not None else "")
                    if retry_after is not None:
                        self.limiter.hold(fp, self.clock() + retry_after)
                else:
                    raise ServiceRejected(f"Teams webhook {fp} rejected the card: HTTP {status}: {text[:300]}",
                                          status=status)
            if attempt == self.max_attempts:
                break
            delay = self.policy.wait(attempt, retry_after, left=end - self.clock(), rand=self.jitter)
            if delay is None:
                logger.info("Teams webhook %s: %s; no time for another try within the time budget", fp, last)
                break
            logger.info("Teams webhook %s: %s; retry %d in %.2fs", fp, last, attempt + 1, delay)
            self.sleep(delay)
        message = f"Teams webhook {fp} not reached after {attempt} attempt(s): {last}"
        if retry_after is not None or "429" in last:
            raise Throttled(message, retry_after=retry_after)
        raise TransientError(message)

"""A local Event Grid: routes events by infra/subscriptions.json and delivers them at least once over real HTTP.

Delivery follows Event Grid's documented behaviour ("Event Grid message delivery and retry"), scaled down in time:

* one event per request, as a JSON array, POSTed to the Functions webhook
  ``/runtime/webhooks/eventgrid?functionName=NAME`` (key in ``x-functions-key``) with ``aeg-event-type: Notification`` and the
  ``aeg-subscription-name`` / ``aeg-delivery-count`` / ``aeg-data-version`` / ``aeg-metadata-version`` headers;
* only 200-204 count as delivered; 400, 401, 403 and 413 are never retried (dead-lettered at once); every
  other status, a timeout or a refused connection is retried with exponential backoff (Azure waits 10 s,
  30 s, 1 min, 5 min ... up to 24 h; here ``backoff`` seconds, doubling, capped at ``max_backoff``);
* an event is dead-lettered after ``maxDeliveryAttempts`` or once its time to live has passed (checked, as in
  Azure, only when the next attempt is due), as a JSON file per event in ``dead_letter_dir/<subscription>/``:
  the event plus deadLetterReason, deliveryAttempts, lastDeliveryOutcome, lastHttpStatusCode, publishTime and
  lastDeliveryAttemptTime.

``duplicate_every=N`` sends every Nth delivered event once more, on purpose: at-least-once means duplicates, and
the app must shrug them off. ``drain()`` waits until nothing is queued or in flight, including events the
handlers raise while being delivered to.
"""
from __future__ import annotations

import heapq
import itertools
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx

from shared.local import subscriptions as subs
from shared.local.subscriptions import Subscription

logger = logging.getLogger(__name__)

SUCCESS = frozenset({200, 201, 202, 203, 204})
NOT_RETRIED = frozenset({400, 401, 403, 413})  # documented for webhook endpoints
DEAD_LETTER_FIELDS = ("deadLetterReason", "deliveryAttempts", "lastDeliveryOutcome", "lastHttpStatusCode",
                      "publishTime", "lastDeliveryAttemptTime")
MAX_DELIVERY_ATTEMPTS = "MaxDeliveryAttemptsExceeded"
TIME_TO_LIVE_EXCEEDED = "TimeToLiveExceeded"
# Event Grid's docs show no reason string for a status it never retries; this local name says what happened,
# and lastHttpStatusCode carries the status itself.
NON_RETRIABLE_STATUS = "NonRetriableStatusCode"
TIMED_OUT = "TimedOut"
CONNECTION_FAILED = "ConnectionFailed"


def _utc() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def outcome_name(status: int) -> str:
    """Event Grid reports the last outcome by status name without spaces: BadRequest, InternalServerError."""
    try:
        return HTTPStatus(status).phrase.replace(" ", "").replace("-", "")
    except ValueError:
        return f"Http{status}"


@dataclass
class _Delivery:
    """One event on its way to one subscription."""

    event: dict[str, Any]
    subscription: Subscription
    publish_time: str
    published_at: float  # monotonic, for the time to live
    duplicate: bool = False
    attempts: int = 0
    last_status: int | None = None
    last_outcome: str = ""
    last_attempt_time: str = ""
    seq: int = field(default=0)


class LocalEventGrid:
    """Route and deliver events to a local Functions host; usable directly as the workspace's ``emit``."""

    def __init__(self, subscriptions: Iterable[Subscription], *, endpoint_url: str, function_key: str,
                 dead_letter_dir: str | Path, max_attempts: int | None = None,
                 backoff: float | Callable[[int], float] = 0.05, max_backoff: float = 2.0,
                 duplicate_every: int = 0, timeout: float = 30.0, time_to_live: float | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        """``max_attempts`` / ``time_to_live`` (seconds) override every subscription's retry policy when given;
        ``backoff`` is the first retry delay in seconds (doubling per attempt, capped at ``max_backoff``) or a
        function of the attempt number; ``timeout`` is how long one delivery may take (Azure: 30 s)."""
        self.subscriptions = list(subscriptions)
        self.endpoint_url = endpoint_url.rstrip("/")
        self.function_key = function_key
        self.dead_letter_dir = Path(dead_letter_dir)
        if max_attempts is not None and max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if duplicate_every < 0:
            raise ValueError("duplicate_every must be 0 (off) or a positive number")
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.duplicate_every = duplicate_every
        self.timeout = timeout
        self.time_to_live = time_to_live
        self._transport = transport
        self._client = self._new_client()
        self._queue: list[tuple[float, int, _Delivery]] = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._in_flight = 0
        self._closed = False
        self._counts = {"published": 0, "unmatched": 0, "routed": 0, "delivered": 0, "retried": 0,
                        "dead_lettered": 0, "duplicates": 0, "replayed": 0}
        self._worker = threading.Thread(target=self._run, name="local-event-grid", daemon=True)
        self._worker.start()

    def _new_client(self) -> httpx.Client:
        return httpx.Client(timeout=self.timeout, transport=self._transport)

    # --- publishing ----------------------------------------------------------------------------------------

    def publish(self, event: Mapping[str, Any], source: str | None = None) -> list[str]:
        """Queue ``event`` for every matching subscription; returns their names (empty when none matched).

        ``source`` (ml | storage | custom) defaults to the one the event's topic names. Returns at once:
        delivery happens on the worker thread.
        """
        if not isinstance(event, Mapping):
            raise TypeError("publish takes one event (a JSON object); publish_many takes a list")
        copy = json.loads(json.dumps(event))  # detach from the caller's dict, and prove it is JSON
        source = source or subs.source_of(copy)
        if source is None:
            raise ValueError(f"cannot tell the source of event {copy.get('id')!r} from topic {copy.get('topic')!r};"
                             f" pass source= (one of {', '.join(subs.SOURCES)})")
        matched = subs.route(self.subscriptions, source, copy)
        now, stamp = time.monotonic(), _utc()
        with self._cv:
            if self._closed:
                raise RuntimeError("this LocalEventGrid is closed")
            self._counts["published"] += 1
            if not matched:
                self._counts["unmatched"] += 1
            for sub in matched:
                self._counts["routed"] += 1
                self._push(_Delivery(event=copy, subscription=sub, publish_time=stamp, published_at=now), now)
        if matched:
            logger.info("event %s (%s) routed to %s", copy.get("id"), copy.get("eventType"),
                        ", ".join(s.name for s in matched))
        else:
            logger.info("event %s (%s) from %s matched no subscription", copy.get("id"), copy.get("eventType"),
                        source)
        return [s.name for s in matched]

    __call__ = publish  # so the grid itself can be passed as an emit callback

    def publish_many(self, events: Iterable[Mapping[str, Any]], source: str | None = None) -> list[list[str]]:
        return [self.publish(e, source) for e in events]

    def _push(self, delivery: _Delivery, due: float) -> None:
        delivery.seq = next(self._seq)
        heapq.heappush(self._queue, (due, delivery.seq, delivery))
        self._cv.notify_all()

    # --- the worker ----------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._closed:
                    now = time.monotonic()
                    if self._queue and self._queue[0][0] <= now:
                        break
                    self._cv.wait(timeout=(self._queue[0][0] - now) if self._queue else None)
                if self._closed:
                    return
                _, _, delivery = heapq.heappop(self._queue)
                self._in_flight += 1
            try:
                self._attempt(delivery)
            except Exception:  # a bug here must not kill the worker and strand every later event
                logger.exception("delivery of %s to %s crashed", delivery.event.get("id"), delivery.subscription.name)
            finally:
                with self._cv:
                    self._in_flight -= 1
                    self._cv.notify_all()

    def _limits(self, sub: Subscription) -> tuple[int, float]:
        attempts = self.max_attempts if self.max_attempts is not None else sub.max_delivery_attempts
        ttl = self.time_to_live if self.time_to_live is not None else sub.event_ttl_minutes * 60.0
        return attempts, ttl

    def _delay(self, attempt: int) -> float:
        if callable(self.backoff):
            return max(0.0, float(self.backoff(attempt)))
        return min(self.backoff * (2 ** (attempt - 1)), self.max_backoff)

    def _attempt(self, d: _Delivery) -> None:
        max_attempts, ttl = self._limits(d.subscription)
        if d.attempts and time.monotonic() - d.published_at > ttl:
            self._dead_letter(d, TIME_TO_LIVE_EXCEEDED)
            return
        d.attempts += 1
        status, outcome = self._post(self._client, d.subscription, d.event, d.attempts - 1)
        d.last_status, d.last_outcome, d.last_attempt_time = status, outcome, _utc()
        if status in SUCCESS:
            self._delivered(d)
            return
        if status in NOT_RETRIED:
            self._dead_letter(d, NON_RETRIABLE_STATUS)
            return
        if d.attempts >= max_attempts:
            self._dead_letter(d, MAX_DELIVERY_ATTEMPTS)
            return
        delay = self._delay(d.attempts)
        logger.info("delivery of %s to %s failed (%s), retry %d in %.2fs", d.event.get("id"), d.subscription.name,
                    outcome, d.attempts, delay)
        with self._cv:
            self._counts["retried"] += 1
            self._push(d, time.monotonic() + delay)

    def _post(self, client: httpx.Client, sub: Subscription, event: Mapping[str, Any],
              delivery_count: int) -> tuple[int | None, str]:
        headers = {
            "aeg-event-type": "Notification",
            "aeg-subscription-name": sub.name,
            "aeg-delivery-count": str(delivery_count),  # attempts made before this one
            "aeg-data-version": str(event.get("dataVersion") or ""),
            "aeg-metadata-version": str(event.get("metadataVersion") or "1"),
            "Content-Type": "application/json; charset=utf-8",
            # Azure puts the system key in the URL (?code=); a header keeps it out of httpx's request log.
            "x-functions-key": self.function_key,
        }
        url = f"{self.endpoint_url}/runtime/webhooks/eventgrid"
        params = {"functionName": sub.function}
        try:
            response = client.post(url, params=params, headers=headers, content=json.dumps([event]).encode())
        except httpx.TimeoutException:
            return None, TIMED_OUT
        except httpx.TransportError as error:
            logger.debug("delivery to %s failed: %s", sub.name, error)
            return None, CONNECTION_FAILED
        return response.status_code, outcome_name(response.status_code)

    def _delivered(self, d: _Delivery) -> None:
        with self._cv:
            self._counts["delivered"] += 1
            if d.duplicate:
                self._counts["duplicates"] += 1
                return
            originals = self._counts["delivered"] - self._counts["duplicates"]
            if self.duplicate_every and originals % self.duplicate_every == 0:
                # Event Grid may deliver an event again after a success; do it on purpose here.
                again = _Delivery(event=d.event, subscription=d.subscription, publish_time=d.publish_time,
                                  published_at=d.published_at, duplicate=True, attempts=d.attempts)
                self._push(again, time.monotonic())
        logger.debug("delivered %s to %s after %d attempt(s)", d.event.get("id"), d.subscription.name, d.attempts)

    def _dead_letter(self, d: _Delivery, reason: str) -> None:
        record = dict(d.event)
        record.update({"deadLetterReason": reason, "deliveryAttempts": d.attempts,
                       "lastDeliveryOutcome": d.last_outcome, "publishTime": d.publish_time,
                       "lastDeliveryAttemptTime": d.last_attempt_time or _utc()})
        if d.last_status is not None:
            record["lastHttpStatusCode"] = d.last_status
        folder = self.dead_letter_dir / d.subscription.name
        folder.mkdir(parents=True, exist_ok=True)
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", str(d.event.get("id") or "event"))[:100]
        path = folder / f"{d.publish_time[:19].replace(':', '').replace('-', '')}-{stem}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
        tmp.replace(path)  # whole files only: replay never reads half a dead letter
        with self._cv:
            self._counts["dead_lettered"] += 1
        logger.warning("dead-lettered %s for %s: %s after %d attempt(s), last %s -> %s", d.event.get("id"),
                       d.subscription.name, reason, d.attempts, d.last_outcome, path)

    # --- control -------------------------------------------------------------------------------------------

    def drain(self, timeout: float = 30.0) -> bool:
        """Block until every queued delivery is delivered or dead-lettered (events published meanwhile
        included); False when ``timeout`` seconds passed first."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._queue or self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    logger.warning("drain timed out with %d queued, %d in flight", len(self._queue), self._in_flight)
                    return False
                self._cv.wait(timeout=left)
        return True

    def replay(self, target: str | Path | None = None) -> int:
        """Deliver dead-lettered events again, once each; a file is removed only after its delivery succeeded.

        ``target`` is a subscription name, a dead-letter folder (``dead_letter_dir`` or one subscription's
        folder) or a single file; by default everything under ``dead_letter_dir``. Returns how many were
        delivered; the rest stay where they are.
        """
        files = self._dead_letter_files(target)
        by_name = {s.name: s for s in self.subscriptions}
        delivered = 0
        with self._new_client() as client:
            for path in files:
                sub = by_name.get(path.parent.name)
                if sub is None:
                    logger.warning("skipping %s: no subscription named %r", path, path.parent.name)
                    continue
                try:
                    record = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError) as error:
                    logger.warning("skipping unreadable dead letter %s: %s", path, error)
                    continue
                event = {k: v for k, v in record.items() if k not in DEAD_LETTER_FIELDS}
                status, outcome = self._post(client, sub, event, int(record.get("deliveryAttempts") or 0))
                if status in SUCCESS:
                    path.unlink(missing_ok=True)
                    delivered += 1
                    logger.info("replayed %s to %s", event.get("id"), sub.name)
                else:
                    logger.warning("replay of %s to %s failed (%s); kept %s", event.get("id"), sub.name, outcome,
                                   path)
        with self._cv:
            self._counts["replayed"] += delivered
        return delivered

    def _dead_letter_files(self, target: str | Path | None) -> list[Path]:
        if target is None:
            root = self.dead_letter_dir
        elif isinstance(target, str) and target in {s.name for s in self.subscriptions}:
            root = self.dead_letter_dir / target
        else:
            root = Path(target)
        if root.is_file():
            return [root]
        if not root.is_dir():
            return []
        direct = sorted(root.glob("*.json"))
        return direct if direct else sorted(root.glob("*/*.json"))

    def dead_letters(self, subscription: str | None = None) -> list[Path]:
        """The dead-letter files now on disk (one subscription's, or all)."""
        return self._dead_letter_files(subscription)

    def stats(self) -> dict[str, int]:
        """Counters since start: published, unmatched, routed, delivered, retried, dead_lettered, duplicates
        (sent on purpose), replayed, and pending (queued or in flight now)."""
        with self._cv:
            return {**self._counts, "pending": len(self._queue) + self._in_flight}

    def close(self) -> None:
        """Stop the worker; deliveries still queued are dropped (and logged)."""
        with self._cv:
            if self._closed:
                return
            self._closed = True
            left = len(self._queue)
            self._cv.notify_all()
        self._worker.join(timeout=self.timeout + 5)
        self._client.close()
        if left:
            logger.warning("closed with %d deliveries still queued", left)

    def __enter__(self) -> LocalEventGrid:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

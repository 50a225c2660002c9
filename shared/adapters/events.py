"""Our own events (MLOps.*) to the custom Event Grid topic, in the Event Grid schema the topic is declared with.

infra/app/eventgrid-topic.bicep declares ``inputSchema: 'EventGridSchema'`` and ``disableLocalAuth: true``, so
the publisher sends EventGridEvent objects (id, subject, eventType, eventTime, dataVersion, data) with a
Microsoft Entra token (EventGrid Data Sender role), never a key. shared/eventgrid.py parses what arrives.

Retries: azure-core's RetryPolicy would sleep whatever Retry-After a 429 names (uncapped) and retries POST on
500/503/504, which can outlast an Event Grid delivery (30 s). So the SDK's retries are off (``retry_total=0``)
and ``publish`` retries itself: at most ``retries`` more tries, short exponential backoff, a Retry-After honoured
only when it is at most ``max_wait`` seconds and fits the time budget; otherwise the error is raised (Throttled
keeps the Retry-After, capped to the budget) and the caller's event is redelivered. A retried publish reuses the
event id, so subscribers (the ledger) see a duplicate, never a second event.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from shared.adapters.errors import DEFAULT_BUDGET_SECONDS, translated
from shared.errors import InvalidPayload, Throttled, TransientError

logger = logging.getLogger(__name__)

INPUT_SCHEMA = "EventGridSchema"  # the custom topic's inputSchema in infra/app/eventgrid-topic.bicep
DATA_VERSION = "1.0"  # as shared/local/wire.custom writes our events
TOPIC_SETTING = "MLOPS_EVENTS__topicEndpointUri"
# Constructor options of the SDK client: no SDK retries (see above), and timeouts well inside the budget.
CLIENT_OPTIONS: dict[str, Any] = {"retry_total": 0, "connection_timeout": 5, "read_timeout": 10}


def client_class() -> type:
    """The EventGridPublisherClient that talks to Event Grid Basic topics.

    From azure-eventgrid 4.20 the public ``azure.eventgrid.EventGridPublisherClient`` covers Basic and Namespaces
    and, for a Basic topic, builds its inner client without passing on constructor keywords (checked in 4.22.1,
    ``_patch.py``): ``transport=`` and retry settings would be silently dropped. The inner client it delegates to
    keeps them, so it is used when present; older releases exported that very class publicly.
    """
    try:
        from azure.eventgrid._legacy import EventGridPublisherClient
    except ImportError:  # azure-eventgrid < 4.20: the public class is the Basic one
        from azure.eventgrid import EventGridPublisherClient
    return EventGridPublisherClient


class EventGridPublisher:
    """The Publisher port on an EventGridPublisherClient (made with a TokenCredential).

    ``budget_seconds`` bounds a publish including its retries; ``sleep`` and ``monotonic`` are injectable so
    tests need not wait.
    """

    def __init__(self, client: Any, *, budget_seconds: float = DEFAULT_BUDGET_SECONDS, retries: int = 2,
                 backoff_seconds: float = 0.25, max_wait_seconds: float = 2.0,
                 sleep: Callable[[float], None] = time.sleep, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self.budget = budget_seconds
        self.retries = retries
        self.backoff = backoff_seconds
        self.max_wait = max_wait_seconds
        self._sleep = sleep
        self._monotonic = monotonic

    def __repr__(self) -> str:
        return f"EventGridPublisher(retries={self.retries}, budget={self.budget}s)"

    @classmethod
    def from_settings(cls, settings: Any, credential: Any, **options: Any) -> EventGridPublisher:
        """A publisher for settings.topic_endpoint with a TokenCredential. ``options`` go to the SDK client
        (e.g. ``transport=`` in tests), except the publisher's own (budget_seconds, retries, sleep, ...)."""
        endpoint = str(getattr(settings, "topic_endpoint", "") or "").strip()
        if not endpoint.startswith("https://"):
            raise InvalidPayload(f"{TOPIC_SETTING} must be the custom topic's https endpoint", field=TOPIC_SETTING)
        if not hasattr(credential, "get_token"):
            raise TypeError("the publisher takes a TokenCredential (managed identity): the topic has local auth off")
        own = {k: options.pop(k) for k in ("budget_seconds", "retries", "backoff_seconds", "max_wait_seconds",
                                           "sleep", "monotonic") if k in options}
        client = client_class()(endpoint, credential, **{**CLIENT_OPTIONS, **options})
        return cls(client, **own)

    @staticmethod
    def event(event_type: str, subject: str, data: Mapping[str, object], *, event_id: str | None = None) -> Any:
        """The EventGridEvent for one of our events; ``data`` is reduced to JSON primitives."""
        from azure.eventgrid import EventGridEvent

        plain = json.loads(json.dumps(dict(data), default=str))
        return EventGridEvent(subject=subject, event_type=event_type, data=plain, data_version=DATA_VERSION,
                              id=event_id or str(uuid.uuid4()),
                              event_time=datetime.now(timezone.utc).isoformat())

    def publish(self, event_type: str, subject: str, data: Mapping[str, object], *,
                event_id: str | None = None) -> str:
        """Send one event; ``event_id`` fixes its id (a retried check then repeats the same event, which the
        subscribers' ledger skips as a duplicate), otherwise a new UUID."""
        event = self.event(event_type, subject, data, event_id=event_id)
        deadline = self._monotonic() + self.budget
        attempt = 0
        while True:
            try:
                # No deadline here: _wait must compare the Retry-After the service sent, not one already cut down
                # to the budget (which would "fit" and be waited out, retrying before the service said to).
                with translated(f"publish {event_type} {event.id}"):
                    self._client.send(event, retry_total=0)
            except TransientError as error:
                wait = self._wait(error, attempt, deadline)
                if wait is None:
                    if isinstance(error, Throttled) and error.retry_after is not None:
                        error.retry_after = max(0.0, min(error.retry_after, deadline - self._monotonic()))
                    raise
                logger.info("publish %s %s: %s; trying again in %.2fs", event_type, event.id, error, wait)
                self._sleep(wait)
                attempt += 1
                continue
            logger.info("published %s %s (%s)", event_type, event.id, subject)
            return str(event.id)

    def _wait(self, error: TransientError, attempt: int, deadline: float) -> float | None:
        """Seconds to wait before the next try, or None to give up and raise."""
        left = deadline - self._monotonic()
        if attempt >= self.retries:
            return None
        if isinstance(error, Throttled) and error.retry_after is not None:
            wait = error.retry_after
            return wait if wait <= min(self.max_wait, left) else None
        wait = self.backoff * 2 ** attempt
        return wait if wait < left else None

    def close(self) -> None:
        self._client.close()

"""Our own events (MLOps.*) to the custom Event Grid topic, in the Event Grid schema the topic is declared with.

infra/app/eventgrid-topic.bicep declares ``inputSchema: 'EventGridSchema'`` and ``disableLocalAuth: true``, so
the publisher sends EventGridEvent objects (id, subject, eventType, eventTime, dataVersion, data) with a
Microsoft Entra token (EventGrid Data Sender role), never a key. shared/eventgrid.py parses what arrives.

Retries: the SDK's own are off (``retry_total=0``) and ``publish`` retries by the app's one policy
(shared/retry.py): at most ``retries`` more tries, short jittered exponential backoff, a Retry-After honoured only
when it is at most ``max_wait`` seconds and fits the time budget and the invocation's deadline; otherwise the error
is raised (Throttled keeps the service's Retry-After) and the caller's event is redelivered. A retried publish
reuses the event id, so subscribers (the ledger) see a duplicate, never a second event.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from shared import retry
from shared.adapters.errors import translated
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

    def __init__(self, client: Any, *, budget_seconds: float = retry.CALL_SECONDS, retries: int = 2,
                 backoff_seconds: float = 0.25, max_wait_seconds: float = 2.0,
                 sleep: Callable[[float], None] = time.sleep, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self.budget = budget_seconds
        self.retries = retries
        self.policy = retry.Policy(attempts=retries + 1, base=backoff_seconds, cap=max(backoff_seconds, 4.0),
                                   max_retry_after=max_wait_seconds)
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
        started = self._monotonic()
        attempt = 0
        while True:
            try:
                with translated(f"publish {event_type} {event.id}"):
                    self._client.send(event, retry_total=0, timeout=retry.timeout(self.budget))
            except TransientError as error:
                attempt += 1
                after = error.retry_after if isinstance(error, Throttled) else None
                wait = self.policy.wait(attempt, after, left=self.budget - (self._monotonic() - started))
                if wait is None:
                    raise
                logger.info("publish %s %s: %s; trying again in %.2fs", event_type, event.id, error, wait)
                self._sleep(wait)
                continue
            logger.info("published %s %s (%s)", event_type, event.id, subject)
            return str(event.id)

    def close(self) -> None:
        self._client.close()

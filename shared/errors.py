"""One error tree for the whole app: what is worth retrying and what is not.

    MLOpsError
    ├── PermanentError          record, alert, acknowledge: retrying cannot help
    │   ├── InvalidPayload      an event or request body we cannot read (names the bad field)
    │   ├── NotFound            a job, model, data asset or endpoint that does not exist
    │   ├── Conflict            the request contradicts current state (e.g. nothing to roll back to)
    │   │   └── TrafficChanged  the live split is not the one the controller set (changed by someone else)
    │   └── ServiceRejected     a 4xx from a service, carrying the service's own message
    └── TransientError          raise, so Event Grid redelivers (throttling, 5xx, timeouts, busy lease)
        ├── Throttled           429 / 503 with an optional Retry-After in seconds
        ├── Busy                another worker holds this event's lease right now
        └── StaleState          an endpoint's state record changed since it was read (ETag mismatch)

Adapters translate SDK exceptions into this tree; nothing else catches ``Exception``.
"""
from __future__ import annotations


class MLOpsError(Exception):
    """Base of every error the automation raises on purpose."""


class PermanentError(MLOpsError):
    """Retrying will not help: record the outcome, alert, acknowledge the event."""

    outcome = "failed"


class InvalidPayload(PermanentError):
    """An event or request body that cannot be read; ``field`` names the offending key."""

    outcome = "rejected"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFound(PermanentError):
    """A resource that does not exist (job, model, data asset, endpoint)."""


class Conflict(PermanentError):
    """The request contradicts current state, e.g. there is nothing to roll back to."""


class TrafficChanged(Conflict):
    """An endpoint's live traffic split is not the one the controller last set: changed outside the automation."""

    def __init__(self, message: str, *, actual: dict[str, int] | None = None) -> None:
        super().__init__(message)
        self.actual = dict(actual or {})


class ServiceRejected(PermanentError):
    """A service answered 4xx; ``status`` and the service's own message are kept."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TransientError(MLOpsError):
    """Worth retrying: raise it so Event Grid (or the caller) delivers again."""


class Throttled(TransientError):
    """The service asked us to slow down; ``retry_after`` is in seconds when it said so."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Busy(TransientError):
    """Another worker is processing the same event right now."""


class StaleState(TransientError):
    """An endpoint's state record changed since it was read: another worker acted first. Redelivery re-reads it and
    decides again, so the work is retried, never done twice."""

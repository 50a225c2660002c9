"""The message bus: ledger check → handler → follow-up messages → ledger record. Exactly-once effect per event."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.domain import Alert, AuditRecord
from shared.errors import PermanentError, TransientError
from shared.messages import Message
from shared.ports import AuditLog, Ledger, Notifier
from shared.redact import redact

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Handled:
    """What handling one message came to. Handlers return it; the bus records ``outcome`` in the ledger."""

    outcome: str = "done"  # done | ignored | rejected | failed | duplicate
    reason: str = ""
    resources: tuple[str, ...] = ()  # ids created or changed (job, model, deployment)
    follow_ups: tuple[Message, ...] = ()
    message: str = ""  # filled in by the bus
    event_id: str = ""
    data: dict[str, object] = field(default_factory=dict)  # extra answer for HTTP callers (e.g. created: false)


Handler = Callable[[Message], Handled]
LABEL_CHARS = 200


def _label(value: object) -> str:
    """A printable, UTF-8-safe, bounded rendering of an identifier taken from an unreadable payload."""
    if isinstance(value, str):
        text = value
    elif value is None or isinstance(value, (bool, int, float)):
        try:
            text = repr(value)
        except ValueError:  # an int beyond the interpreter's digit limit
            text = f"<{type(value).__name__}>"
    else:  # a list or object: its repr could be huge or nested past the recursion limit
        text = f"<{type(value).__name__}>"
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = "".join(c if c.isprintable() else "?" for c in text[:LABEL_CHARS])
    return text or "unknown"


class Bus:
    """Dispatches messages to handlers with the ledger's exactly-once check.

    A follow-up message is handled inside its parent's claim: if it fails transiently, the parent's claim is
    released too, so the redelivered event runs the chain again (every step is idempotent at its source and
    steps already recorded are skipped).
    """

    def __init__(self, handlers: dict[type, Handler], *, ledger: Ledger, audit: AuditLog, notifier: Notifier,
                 after_commit: Callable[[], object] | None = None, lease_seconds: float = 300.0) -> None:
        self.handlers = handlers
        self.ledger = ledger
        self.audit = audit
        self.notifier = notifier
        self.after_commit = after_commit
        self.lease_seconds = lease_seconds

    def handle(self, message: Message) -> list[Handled]:
        """Handle a message and its follow-ups. Raises TransientError for the trigger to surface (redelivery)."""
        try:
            return self._run(message)
        finally:
            self._flush()

    def reject(self, event_id: str, event_type: str, error: PermanentError) -> Handled:
        """Record an event that could not even be parsed: acknowledged, recorded, alerted, never retried.

        ``event_id`` and ``event_type`` come straight from the junk (any JSON value): they are made into short,
        storable text first so recording the rejection cannot itself fail."""
        event_id, event_type = _label(event_id), _label(event_type)
        key = f"{event_id}/{event_type}"
        try:
            state = self.ledger.claim(key, event_type=event_type, lease_seconds=self.lease_seconds)
            if state != "new":
                return Handled("duplicate", f"already recorded as {state}", message=event_type, event_id=event_id)
            self._record_failure(key, event_id, event_type, error)
        finally:
            self._flush()
        return Handled(error.outcome, redact(str(error)), message=event_type, event_id=event_id)

    def _run(self, message: Message) -> list[Handled]:
        key = f"{message.event_id}/{message.type}"
        handler = self.handlers.get(type(message))
        if handler is None:
            raise TypeError(f"no handler for {message.type}")  # a programming error, not a payload problem
        state = self.ledger.claim(key, event_type=message.type, lease_seconds=self.lease_seconds)
        if state != "new":
            logger.info("duplicate %s %s skipped (recorded as %s)", message.type, message.event_id, state)
            return [Handled("duplicate", f"already handled: {state}", message=message.type,
                            event_id=message.event_id)]
        try:
            result = handler(message)
            children: list[Handled] = []
            for follow_up in result.follow_ups:
                children.extend(self._run(follow_up))
        except TransientError:
            logger.warning("transient failure on %s %s: released for redelivery", message.type, message.event_id)
            self.ledger.release(key)
            raise
        except PermanentError as error:
            self._record_failure(key, message.event_id, message.type, error)
            return [Handled(error.outcome, redact(str(error)), message=message.type, event_id=message.event_id,
                            data={"error": type(error).__name__})]
        self.ledger.complete(key, result.outcome, result.reason)
        logger.info("%s %s: %s %s", message.type, message.event_id, result.outcome, result.reason)
        done = Handled(result.outcome, result.reason, result.resources, result.follow_ups, message.type,
                       message.event_id, result.data)
        return [done, *children]

    def _record_failure(self, key: str, event_id: str, event_type: str, error: PermanentError) -> None:
        reason = redact(str(error))
        logger.error("%s %s %s: %s", event_type, event_id, error.outcome, reason)
        self.ledger.complete(key, error.outcome, reason)
        self.audit.append(AuditRecord(event_id=event_id, message=event_type, decision=error.outcome,
                                      reason=reason, actor="automation",
                                      facts={"error": type(error).__name__,
                                             "field": getattr(error, "field", None) or ""}))
        self.notifier.notify(Alert(
            kind="event_rejected", severity="error",
            title=f"{event_type} {error.outcome}: {type(error).__name__}",
            summary=f"The automation could not act on event {event_id}: {reason}. It was acknowledged and will "
                    "not be retried; fix the cause and replay or rerun by hand.",
            facts=(("Event", event_id), ("Type", event_type), ("Outcome", error.outcome)),
            incident_key=f"rejected:{event_id}", event_id=event_id))

    def _flush(self) -> None:
        # Alerts leave only after the action they report is recorded; delivery never fails the action.
        if self.after_commit is not None:
            self.after_commit()

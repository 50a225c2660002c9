"""The message bus: ledger check → handler → follow-up messages → ledger record. Exactly-once effect per event."""
from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

from shared import logs, retry
from shared.domain import Alert, AuditRecord
from shared.errors import Conflict, InvalidPayload, NotFound, PermanentError, TransientError
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
# What a person's request can get wrong (answered 400/404/409 by the HTTP triggers): audited, not paged.
CLIENT_ERRORS = (InvalidPayload, NotFound, Conflict)
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
    return redact(text) or "unknown"  # a junk id may quote a SAS URL: its signature is never stored or shown


class UnexpectedError(TransientError):
    """An exception outside the app's error tree (a bug, a malformed tag the code did not foresee), raised again
    under this name while it still has retries left, so triggers treat it as transient (one log line; Event Grid
    redelivers; HTTP answers 503 with Retry-After). The original is its ``__cause__``."""


class Unrecoverable(PermanentError):
    """An unexpected exception that kept failing for ``max_unexpected_attempts`` attempts: recorded as failed."""


_HELD: ContextVar[list[tuple[str, str | None]] | None] = ContextVar("mlops_held_claims", default=None)


class HeldClaims:
    """The ledger as handlers see it: a claim a handler takes while the bus runs a message (a sub-claim, such as
    run_finished's per-job claim) is held on behalf of that message until the handler settles it. When the
    handler fails instead, the bus settles what is still held the way it settles the message's own claim:
    released for a retry, or completed with the failure. Everything else passes through to the ledger."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def claim(self, key: str, *, event_type: str, lease_seconds: float = 300.0) -> str:
        state = self._ledger.claim(key, event_type=event_type, lease_seconds=lease_seconds)
        held = _HELD.get()
        if state == "new" and held is not None:
            held.append((key, getattr(state, "token", None)))
        return state

    def complete(self, key: str, outcome: str, reason: str = "", *, token: str | None = None) -> bool:
        with retry.settling():  # settled even when the deadline is spent; still held by the bus if it fails
            done = self._ledger.complete(key, outcome, reason, token=token)
        _forget(key)
        return done

    def release(self, key: str, *, token: str | None = None) -> bool:
        with retry.settling():
            done = self._ledger.release(key, token=token)
        _forget(key)
        return done

    def __getattr__(self, name: str) -> object:
        return getattr(self._ledger, name)


def _forget(key: str) -> None:
    held = _HELD.get()
    if held is not None:
        held[:] = [(k, t) for k, t in held if k != key]


class Bus:
    """Dispatches messages to handlers with the ledger's exactly-once check.

    A follow-up message is handled inside its parent's claim: if it fails transiently, the parent's claim is
    released too, so the redelivered event runs the chain again (every step is idempotent at its source and
    steps already recorded are skipped).

    Every failure ends in a decision (docs/reliability.md, "Error contract"):

    * ``TransientError``: the claim and every sub-claim still held are released; the error propagates, so the
      trigger asks for a retry (Event Grid redelivers, HTTP answers 503/429 with Retry-After);
    * ``PermanentError``: the claim and every sub-claim still held are completed with the failure; recorded,
      audited and alerted once; never retried;
    * any other exception: treated as transient (raised again as ``UnexpectedError``) until the claim has been
      attempted ``max_unexpected_attempts`` times, then as permanent (``Unrecoverable``).

    Claims are settled with their fencing token: a worker that lost its claim (its lease ran out and another
    worker took over) cannot release or overwrite the new holder's claim.
    """

    def __init__(self, handlers: dict[type, Handler], *, ledger: Ledger, audit: AuditLog, notifier: Notifier,
                 after_commit: Callable[[], object] | None = None, lease_seconds: float = 300.0,
                 max_unexpected_attempts: int = 5) -> None:
        self.handlers = handlers
        self.ledger = ledger
        self.audit = audit
        self.notifier = notifier
        self.after_commit = after_commit
        self.lease_seconds = lease_seconds
        self.max_unexpected_attempts = max(1, int(max_unexpected_attempts))

    def handle(self, message: Message) -> list[Handled]:
        """Handle a message and its follow-ups. Raises TransientError for the trigger to surface (redelivery).

        Logs name the message's event and its chain: the event starts a chain of its own until a handler joins
        the chain of the resource it acts on (shared/logs.py)."""
        with logs.scope(event_id=message.event_id, correlation_id=message.event_id):
            try:
                return self._run(message)
            finally:
                self._flush()

    def reject(self, event_id: str, event_type: str, error: PermanentError, *, source: str = "") -> Handled:
        """Record an event that could not even be parsed: acknowledged, recorded, alerted, never retried.

        ``event_id`` and ``event_type`` come straight from the junk (any JSON value): they are made into short,
        storable text first so recording the rejection cannot itself fail. ``source`` (the ingress: "eventgrid",
        "azure-monitor") groups rejections into one alert incident, counted per dedupe window."""
        event_id, event_type = _label(event_id), _label(event_type)
        key = f"{event_id}/{event_type}"
        with logs.scope(event_id=event_id, correlation_id=event_id):
            return self._reject(key, event_id, event_type, error, source)

    def _reject(self, key: str, event_id: str, event_type: str, error: PermanentError, source: str) -> Handled:
        try:
            state = self.ledger.claim(key, event_type=event_type, lease_seconds=self.lease_seconds)
            if state != "new":
                return Handled("duplicate", f"already recorded as {state}", message=event_type, event_id=event_id)
            self._record_failure(key, event_id, event_type, error, token=getattr(state, "token", None),
                                 source=source)
        finally:
            self._flush()
        return Handled(error.outcome, redact(str(error)), message=event_type, event_id=event_id)

    def abandon(self, message: Message, why: str) -> list[Handled]:
        """The poison path of a message retried for too long: fail its claim for good (recorded, audited, one
        alert). A claim someone holds right now raises Busy; one already settled is left as it is."""
        key = f"{message.event_id}/{message.type}"
        try:
            state = self.ledger.claim(key, event_type=message.type, lease_seconds=self.lease_seconds)
            if state != "new":
                return [Handled("duplicate", f"already handled: {state}", message=message.type,
                                event_id=message.event_id)]
            return self._fail(key, getattr(state, "token", None), [], message,
                              Unrecoverable(f"{message.type} abandoned: {why}"))
        finally:
            self._flush()

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
        token, attempt = getattr(state, "token", None), int(getattr(state, "attempt", 1) or 1)
        held: list[tuple[str, str | None]] = []
        scope = _HELD.set(held)
        try:
            result = handler(message)
            children: list[Handled] = []
            for follow_up in result.follow_ups:
                children.extend(self._run(follow_up))
        except TransientError as error:
            logger.warning("transient failure on %s %s (attempt %d): released for redelivery: %s", message.type,
                           message.event_id, attempt, redact(str(error)))
            self._release(key, token, held)
            raise
        except PermanentError as error:
            return self._fail(key, token, held, message, error)
        except Exception as error:
            if attempt < self.max_unexpected_attempts:
                logger.error("unexpected %s on %s %s (attempt %d of %d): released for a retry", type(error).__name__,
                             message.type, message.event_id, attempt, self.max_unexpected_attempts, exc_info=error)
                self._release(key, token, held)
                raise UnexpectedError(f"unexpected {type(error).__name__} on {message.type} (attempt {attempt} of "
                                      f"{self.max_unexpected_attempts}): {error}") from error
            logger.error("unexpected %s on %s %s, attempt %d of %d: failing it for good", type(error).__name__,
                         message.type, message.event_id, attempt, self.max_unexpected_attempts, exc_info=error)
            return self._fail(key, token, held, message, Unrecoverable(
                f"unexpected {type(error).__name__} in {attempt} attempts, the last: {error}"))
        finally:
            _HELD.reset(scope)
        with retry.settling():  # the work is done: record it even if it used the whole deadline
            retry.call(lambda: self.ledger.complete(key, result.outcome, result.reason, token=token),
                       what=f"complete {key}")
        logger.info("%s %s: %s %s", message.type, message.event_id, result.outcome, result.reason)
        done = Handled(result.outcome, result.reason, result.resources, result.follow_ups, message.type,
                       message.event_id, result.data)
        return [done, *children]

    @retry.settles  # settled even when the deadline is spent (shared/retry.py)
    def _release(self, key: str, token: str | None, held: list[tuple[str, str | None]]) -> None:
        # Each claim is tried on its own, a few times: one that still cannot be released must not keep the others
        # held. It is then taken over when its lease runs out (the error being raised asks for a redelivery).
        for sub_key, sub_token in [*reversed(held), (key, token)]:
            try:
                retry.call(lambda k=sub_key, t=sub_token: self.ledger.release(k, token=t), what=f"release {sub_key}")
            except TransientError as error:
                logger.warning("could not release %s (taken over when its lease runs out): %s", sub_key,
                               redact(str(error)))
        held.clear()

    @retry.settles  # settled even when the deadline is spent (shared/retry.py)
    def _fail(self, key: str, token: str | None, held: list[tuple[str, str | None]], message: Message,
              error: PermanentError) -> list[Handled]:
        reason = redact(str(error))
        for sub_key, sub_token in reversed(held):
            # A sub-claim (e.g. job:<name>:Completed) shares its message's fate: left "processing", its twin event
            # would meet Busy, and after the lease the whole step would run (and alert) again.
            retry.call(lambda k=sub_key, t=sub_token: self.ledger.complete(
                k, error.outcome, f"{message.type} {message.event_id}: {reason}"[:2000], token=t),
                what=f"complete {sub_key}")
        held.clear()
        actor = str(getattr(message, "actor", "") or "automation")
        self._record_failure(key, message.event_id, message.type, error, token=token, actor=actor,
                             page=not (actor != "automation" and isinstance(error, CLIENT_ERRORS)))
        return [Handled(error.outcome, reason, message=message.type, event_id=message.event_id,
                        data={"error": type(error).__name__})]

    @retry.settles  # settled even when the deadline is spent (shared/retry.py)
    def _record_failure(self, key: str, event_id: str, event_type: str, error: PermanentError, *,
                        token: str | None = None, source: str = "", actor: str = "automation",
                        page: bool = True) -> None:
        """Complete the claim with the failure, audit it in the name of whoever asked (a person's failed request
        is theirs, not the automation's) and, when ``page``, alert. A person's request the caller got wrong (a
        client error, answered to them over HTTP with a 4xx) is audited but pages no one."""
        reason = redact(str(error))
        if page:
            logger.error("%s %s %s: %s", event_type, event_id, error.outcome, reason)
        else:
            logger.info("%s %s %s (answered to %s, not alerted): %s", event_type, event_id, error.outcome, actor,
                        reason)
        if retry.call(lambda: self.ledger.complete(key, error.outcome, reason, token=token),
                      what=f"complete {key}") is False:
            return  # no longer ours (a worker that took over settles it): no second audit record or alert
        self.audit.append(AuditRecord(event_id=event_id, message=event_type, decision=error.outcome,
                                      reason=reason, actor=actor,
                                      facts={"error": type(error).__name__,
                                             "field": getattr(error, "field", None) or ""}))
        if not page:
            return
        self.notifier.notify(Alert(
            kind="event_rejected", severity="error",
            title=f"{event_type} {error.outcome}: {type(error).__name__}",
            summary=f"The automation could not act on event {event_id}: {reason}. It was acknowledged and will "
                    "not be retried; fix the cause and replay or rerun by hand.",
            facts=(("Event", event_id), ("Type", event_type), ("Outcome", error.outcome)),
            # Junk (an unreadable event) is one incident per event type: the first card says so, repeats within the
            # dedupe window are counted and named on the next card (a digest), so a flood of junk cannot bury
            # real alerts in the outbox. A message that failed is its own incident.
            incident_key=f"rejected:{_label(source) if source else event_type}" if error.outcome == "rejected"
            else f"failed:{event_id}",
            actor=actor, event_id=event_id))

    def _flush(self) -> None:
        # Alerts leave only after the action they report is recorded; delivery never fails the action.
        if self.after_commit is not None:
            self.after_commit()

"""The Notifier: an outbox that queues alerts, dedupes incidents, routes them to Teams/console and delivers later.

    handler ──notify(alert)──▶ dedupe by incident key ──▶ route (kind, severity, failures-only) ──▶ store.add
                                                                                                     │
    bus after commit / timer ──flush()──▶ due alerts ──▶ each target not yet reached ──▶ TeamsWebhook / console
                                                       ◀── delivered | retry later (backoff) | failed for good

``notify`` never sends and never raises; ``flush`` never raises. Webhook URLs are secrets: only their
fingerprints reach logs, errors and the store.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Protocol, TypeVar

from shared import logs, retry
from shared.cards import build_card, message_payload, render_text
from shared.domain import ALERT_KINDS, SEVERITIES, Alert
from shared.errors import InvalidPayload, PermanentError, ServiceRejected, TransientError
from shared.links import PageLink
from shared.ports import OutboxStore

if TYPE_CHECKING:  # httpx only when Teams is configured: importing this module stays light
    import httpx

    from shared.adapters.teams import TeamsWebhook

logger = logging.getLogger(__name__)
T = TypeVar("T")

_RANK = {s: i for i, s in enumerate(SEVERITIES)}
REJECTED = "rejected:"  # prefix of a delivery record meaning "this target refused the alert for good"
ROUTES_SETTING = "MLOPS_TEAMS_ROUTES"


def is_failure(alert: Alert) -> bool:
    """What failures-only mode lets through: error and critical alerts, and every rollback."""
    return _RANK.get(alert.severity, 0) >= _RANK["error"] or alert.kind == "rollback"


# --- channels ------------------------------------------------------------------------------------------

class Channel(Protocol):
    key: str  # stable, non-secret id recorded per delivered alert (a URL fingerprint, "console", "log")
    label: str  # safe to log

    def send(self, alert: Alert, *, time_left: float | None = None) -> None:
        """Deliver within ``time_left`` seconds or raise TransientError (retry later) / PermanentError (this target will never take it)."""


class TeamsChannel:
    """One Workflows webhook URL. The URL is kept out of repr and logs; ``key`` is its fingerprint."""

    def __init__(self, url: str, webhook: TeamsWebhook, *, studio_url: str = "",
                 page_url: PageLink | None = None) -> None:
        from shared.adapters.teams import fingerprint

        self._url = url
        self.webhook = webhook
        self.key = "teams:" + fingerprint(url)
        self.label = self.key
        self.studio_url = studio_url
        self.page_url = page_url

    def __repr__(self) -> str:
        return f"TeamsChannel({self.key})"

    def send(self, alert: Alert, *, time_left: float | None = None) -> None:
        card = build_card(alert, studio_url=self.studio_url, page_url=self.page_url)
        self.webhook.post(self._url, message_payload(card), time_budget=time_left)


class ConsoleChannel:
    """Writes ``render_text`` to a stream (the CLI and the local demo)."""

    key = "console"
    label = "console"

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def send(self, alert: Alert, *, time_left: float | None = None) -> None:
        try:
            self.stream.write(render_text(alert) + "\n\n")
            self.stream.flush()
        except (OSError, ValueError) as exc:  # a closed or broken stream will not heal by retrying
            raise ServiceRejected(f"console stream unusable: {type(exc).__name__}") from None


class LogChannel:
    """Renders alerts through logging when no webhook is configured, so nothing is silently dropped."""

    key = "log"
    label = "log"

    def send(self, alert: Alert, *, time_left: float | None = None) -> None:
        level = logging.WARNING if _RANK.get(alert.severity, 0) >= _RANK["warning"] and not alert.resolved \
            else logging.INFO
        logger.log(level, "alert\n%s", render_text(alert))


# --- routing -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Route:
    """Alerts of ``kinds`` (all when None) at ``min_severity`` or above go to ``urls``."""

    urls: tuple[str, ...]
    kinds: frozenset[str] | None = None
    min_severity: str = "info"
    also_default: bool = False  # also send matching alerts to the default URLs

    def matches(self, alert: Alert) -> bool:
        return ((self.kinds is None or alert.kind in self.kinds)
                and _RANK.get(alert.severity, 0) >= _RANK[self.min_severity])

    def __repr__(self) -> str:  # URLs are secrets
        return (f"Route(kinds={sorted(self.kinds) if self.kinds else 'all'}, min_severity={self.min_severity}, "
                f"urls={len(self.urls)}, also_default={self.also_default})")


@dataclass(frozen=True)
class RoutingTable:
    """Which webhook URLs an alert goes to. Matching routes' URLs, plus the defaults when no route matched
    (or a matching route says ``also_default``); nothing but failures in failures-only mode."""

    default: tuple[str, ...] = ()
    routes: tuple[Route, ...] = ()
    failures_only: bool = False

    def __repr__(self) -> str:
        return f"RoutingTable(default={len(self.default)} url(s), routes={list(self.routes)}, " \
               f"failures_only={self.failures_only})"

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([*self.default, *(u for r in self.routes for u in r.urls)]))

    def urls_for(self, alert: Alert) -> list[str]:
        if self.failures_only and not is_failure(alert):
            return []
        matched = [r for r in self.routes if r.matches(alert)]
        urls = [u for r in matched for u in r.urls]
        if not matched or any(r.also_default for r in matched):
            urls += self.default
        return list(dict.fromkeys(urls))

    @classmethod
    def parse(cls, raw: str, *, default_url: str = "", failures_only: bool = False) -> RoutingTable:
        """Read MLOPS_TEAMS_ROUTES (see docs/teams.md). Errors name the bad entry, never echo a value: URLs are secrets.

        ``{"default": [url|name], "channels": {name: url}, "routes": [{"kinds": [...], "min_severity": "warning",
        "urls": [url|name], "also_default": false}], "failures_only": false}``
        """
        spec: Any = {}
        if raw and raw.strip():
            try:
                spec = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise InvalidPayload(f"{ROUTES_SETTING} is not valid JSON (line {exc.lineno}, column {exc.colno})",
                                     field=ROUTES_SETTING) from None
        if not isinstance(spec, dict):
            raise InvalidPayload(f"{ROUTES_SETTING} must be a JSON object", field=ROUTES_SETTING)
        unknown = set(spec) - {"default", "channels", "routes", "failures_only"}
        if unknown:
            raise InvalidPayload(f"{ROUTES_SETTING} has unknown keys {sorted(unknown)}", field=ROUTES_SETTING)
        channels = spec.get("channels") or {}
        if not isinstance(channels, dict) or not all(isinstance(v, str) and _is_url(v) for v in channels.values()):
            raise InvalidPayload(f"{ROUTES_SETTING}: channels must map names to http(s) URLs", field=ROUTES_SETTING)

        def resolve(values: object, where: str) -> tuple[str, ...]:
            items = [values] if isinstance(values, str) else values
            if not isinstance(items, list):
                raise InvalidPayload(f"{ROUTES_SETTING}: {where} must be a list", field=ROUTES_SETTING)
            out = []
            for i, item in enumerate(items):
                url = channels.get(item, item) if isinstance(item, str) else None
                if not url or not _is_url(url):
                    raise InvalidPayload(f"{ROUTES_SETTING}: {where}[{i}] is neither a channel name nor an "
                                         "http(s) URL", field=ROUTES_SETTING)
                out.append(url)
            return tuple(out)

        default = resolve(spec.get("default") or [], "default")
        if default_url:
            default = tuple(dict.fromkeys([default_url, *default]))
        routes = []
        raw_routes = spec.get("routes") or []
        if not isinstance(raw_routes, list):
            raise InvalidPayload(f"{ROUTES_SETTING}: routes must be a list", field=ROUTES_SETTING)
        for i, r in enumerate(raw_routes):
            where = f"routes[{i}]"
            if not isinstance(r, dict):
                raise InvalidPayload(f"{ROUTES_SETTING}: {where} must be an object", field=ROUTES_SETTING)
            extra = set(r) - {"kinds", "min_severity", "urls", "also_default"}
            if extra:
                raise InvalidPayload(f"{ROUTES_SETTING}: {where} has unknown keys {sorted(extra)}",
                                     field=ROUTES_SETTING)
            kinds = r.get("kinds")
            if kinds is not None:
                if isinstance(kinds, str):
                    kinds = [kinds]
                bad = [k for k in kinds if k not in ALERT_KINDS]
                if bad:
                    raise InvalidPayload(f"{ROUTES_SETTING}: {where}.kinds has unknown kinds {bad}; known: "
                                         f"{list(ALERT_KINDS)}", field=ROUTES_SETTING)
            severity = r.get("min_severity", "info")
            if severity not in SEVERITIES:
                raise InvalidPayload(f"{ROUTES_SETTING}: {where}.min_severity must be one of {list(SEVERITIES)}",
                                     field=ROUTES_SETTING)
            if "urls" not in r:
                raise InvalidPayload(f"{ROUTES_SETTING}: {where} needs urls", field=ROUTES_SETTING)
            routes.append(Route(urls=resolve(r["urls"], f"{where}.urls"),
                                kinds=frozenset(kinds) if kinds is not None else None, min_severity=severity,
                                also_default=bool(r.get("also_default", False))))
        return cls(default=default, routes=tuple(routes),
                   failures_only=failures_only or bool(spec.get("failures_only", False)))


def _is_url(value: str) -> bool:
    return isinstance(value, str) and value.startswith(("https://", "http://")) and len(value) > 10


class Router:
    """Turns an alert into the channels it goes to: routed Teams webhooks plus the always-on local channels."""

    def __init__(self, table: RoutingTable | None = None, *, webhook: TeamsWebhook | None = None,
                 always: Sequence[Channel] = (), studio_url: str = "", page_url: PageLink | None = None) -> None:
        self.table = table or RoutingTable()
        self.always = tuple(always)
        if self.table.urls and webhook is None:
            raise ValueError("webhook URLs are configured but no TeamsWebhook was given")
        self._teams = {url: TeamsChannel(url, webhook, studio_url=studio_url, page_url=page_url)
                       for url in self.table.urls}

    def __repr__(self) -> str:
        return f"Router({self.table!r}, always={[c.key for c in self.always]})"

    def targets(self, alert: Alert) -> list[Channel]:
        return [*self.always, *(self._teams[u] for u in self.table.urls_for(alert))]


# --- dedupe --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Admission:
    """What dedupe decided for one alert."""

    send: bool
    reason: str  # new | reminder | escalated | reopened | resolved | not queued before | duplicate | already resolved
    severity: str  # the severity to route by (a resolved update inherits its incident's)
    suppressed: int = 0  # repeats held back since the previous card of this incident
    samples: tuple[str, ...] = ()  # event ids of some of those repeats, for the digest


SAMPLES = 5  # event ids of held-back repeats a digest card names


def _held(state: dict, alert: Alert) -> None:
    state["suppressed"] += 1
    state["suppressed_total"] += 1
    if alert.event_id and len(state.setdefault("samples", [])) < SAMPLES:
        state["samples"].append(alert.event_id)


UNQUEUED_GRACE = 120.0  # seconds after which an admitted card still not confirmed queued never was


def incident_step(state: dict | None, alert: Alert, now: float, window: float,
                  stored: Callable[[float], bool] | None = None) -> tuple[dict, Admission]:
    """Pure dedupe rule: one card per incident key within ``window`` seconds; a repeat after the window is a
    reminder, a higher severity is an escalation, a resolved alert closes an open incident once. A card sent
    after repeats were held back carries their count and a few of their event ids (a digest).

    An admitted card is marked queued by ``incident_queued`` once the store has it. One still unmarked
    ``UNQUEUED_GRACE`` seconds later was lost between admission and queueing (the worker died, or the store
    failed): the next repeat is admitted instead of held back behind a card nobody will see. ``stored(since)``,
    when given, says whether the store holds a card of this incident queued since then: a worker that died after
    storing the card and before marking it did send it, and the repeat is then judged as usual."""
    if state is not None and state.get("queued") is False and now - state["last_sent"] >= UNQUEUED_GRACE:
        if stored is not None and stored(state["last_sent"]):
            state = {**state, "queued": True}  # it was stored: judge this repeat as usual
        else:
            sev = max(alert.severity, state["severity"], key=lambda s: _RANK.get(s, 0)) if alert.resolved \
                else alert.severity
            held, samples = state["suppressed"], tuple(state.get("samples", ()))
            state = {**state, "state": "resolved" if alert.resolved else "open", "severity": sev,
                     "kind": alert.kind, "last_sent": now, "suppressed": 0, "samples": [], "queued": False}
            return state, Admission(True, "not queued before", sev, held, samples)
    new, verdict = _step(state, alert, now, window)
    if verdict.send:
        new["queued"] = False
    return new, verdict


def incident_queued(state: dict | None, admitted_at: float) -> tuple[dict | None, bool]:
    """Pure: mark the card admitted at ``admitted_at`` as queued; False when a later card owns the incident."""
    if state is None or state.get("last_sent") != admitted_at:
        return state, False
    return {**state, "queued": True}, True


def _step(state: dict | None, alert: Alert, now: float, window: float) -> tuple[dict, Admission]:
    sev = alert.severity
    if state is None:
        fresh = {"state": "resolved" if alert.resolved else "open", "severity": sev, "kind": alert.kind,
                 "last_sent": now, "suppressed": 0, "suppressed_total": 0}
        return fresh, Admission(True, "resolved" if alert.resolved else "new", sev)
    state = dict(state)
    state["samples"] = list(state.get("samples", ()))  # _held appends: the caller's state stays as it was
    if alert.resolved:
        if state["state"] == "open":
            severity = max(sev, state["severity"], key=lambda s: _RANK.get(s, 0))
            state.update(state="resolved", last_sent=now, suppressed=0)
            return state, Admission(True, "resolved", severity)
        _held(state, alert)
        return state, Admission(False, "already resolved", sev)
    if state["state"] != "open":
        state.update(state="open", severity=sev, kind=alert.kind, last_sent=now, suppressed=0)
        return state, Admission(True, "reopened", sev)
    if _RANK.get(sev, 0) > _RANK.get(state["severity"], 0):
        held, samples = state["suppressed"], tuple(state.get("samples", ()))
        state.update(severity=sev, last_sent=now, suppressed=0, samples=[])
        return state, Admission(True, "escalated", sev, held, samples)
    if now - state["last_sent"] >= window:
        held, samples = state["suppressed"], tuple(state.get("samples", ()))
        state.update(last_sent=now, suppressed=0, samples=[])
        return state, Admission(True, "reminder", sev, held, samples)
    _held(state, alert)
    return state, Admission(False, "duplicate", sev, state["suppressed"])


class _MemoryTracking:
    """Per-target deliveries and the incident index for stores that only implement the OutboxStore port.
    In-process only: a restart forgets them (the README says which stores keep them durably)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._delivered: dict[int, set[str]] = {}
        self._incidents: dict[str, dict] = {}

    def delivered_to(self, alert_id: int) -> set[str]:
        with self._lock:
            return set(self._delivered.get(alert_id, ()))

    def record_delivery(self, alert_id: int, target: str) -> None:
        with self._lock:
            self._delivered.setdefault(alert_id, set()).add(target)

    def forget(self, alert_id: int) -> None:
        with self._lock:
            self._delivered.pop(alert_id, None)

    def update_incident(self, key: str, step: Callable[[dict | None], tuple[dict | None, T]]) -> T:
        with self._lock:
            new, result = step(self._incidents.get(key))
            if new is None:
                self._incidents.pop(key, None)
            else:
                self._incidents[key] = new
            return result


# --- the outbox ----------------------------------------------------------------------------------------

class Outbox:
    """The Notifier port. ``notify`` queues (fast, never raises); ``flush`` delivers what is due (never raises).

    ``clock`` is wall time in epoch seconds (dedupe windows, retry times; share it with the store in tests);
    ``monotonic`` bounds a flush. Stores that offer ``claim_due``, ``defer``, ``delivered_to``,
    ``record_delivery`` and ``update_incident`` (SqliteOutbox does) keep dedupe and per-target progress durable;
    for others they live in this process.
    """

    def __init__(self, store: OutboxStore, router: Router | None = None, *, dedupe_window_minutes: float = 60,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 retry_base_seconds: float = 15.0, retry_max_seconds: float = 900.0, give_up_after: int = 48,
                 batch: int = 50, closers: Iterable[Callable[[], object]] = ()) -> None:
        self.store = store
        self.router = router or Router(always=[LogChannel()])
        self.window = dedupe_window_minutes * 60.0
        self.clock = clock
        self.monotonic = monotonic
        self._policy = retry.Policy(base=retry_base_seconds, cap=retry_max_seconds)
        self.give_up_after = give_up_after
        self.batch = batch
        self._closers = list(closers)
        self._memory = memory = _MemoryTracking()
        self._tracking = {name: getattr(store, name, None) or getattr(memory, name)
                          for name in ("delivered_to", "record_delivery", "update_incident")}
        self._memory_deliveries = getattr(store, "delivered_to", None) is None
        self._flush_lock = threading.Lock()
        self._paused: dict[str, float] = {}  # channel key → epoch seconds before which it is not tried again
        self.counters = {"queued": 0, "suppressed": 0, "unrouted": 0, "delivered": 0, "failed": 0, "retries": 0}

    def __repr__(self) -> str:
        return f"Outbox({self.store!r}, {self.router!r})"

    # --- Notifier ---

    def notify(self, alert: Alert) -> None:
        """Dedupe, route and queue the alert. Never sends inline and never raises into the reported action."""
        try:
            if not alert.at:  # the time it was raised, not the time it is finally delivered
                from datetime import datetime, timezone

                alert = dataclasses.replace(alert, at=datetime.fromtimestamp(self.clock(), timezone.utc).isoformat())
            if not alert.correlation_id and logs.correlation():  # the chain the reported action belongs to
                alert = dataclasses.replace(alert, correlation_id=logs.correlation())
            now, before = self.clock(), {}
            admitted = self._admit(alert, now, before)
            if admitted is None:
                return
            if not self.router.targets(admitted):
                self.counters["unrouted"] += 1
                logger.info("alert %s not sent: no route takes it (failures-only: %s)", alert.kind,
                            self.router.table.failures_only)
                if alert.incident_key:  # settled: its repeats are judged against it, not let through after the grace
                    self._queued(alert.incident_key, now)
                return
            try:
                alert_id = self.store.add(admitted)
            except Exception:
                if "state" in before:  # so a repeat is let through, not held back behind a card never stored
                    self._withdraw(alert.incident_key, now, before["state"])
                raise
            self.counters["queued"] += 1
            logger.info("queued alert #%s %s (%s): %s", alert_id, alert.kind, admitted.severity, alert.title)
            if alert.incident_key:
                self._queued(alert.incident_key, now)
        except Exception:  # noqa: BLE001 - the port promises never to fail the action an alert reports
            logger.exception("could not queue a %s alert; it follows here so it is not lost", alert.kind)
            logger.error("unqueued alert\n%s", render_text(alert))

    def _queued(self, key: str, admitted_at: float) -> None:
        try:
            self._tracking["update_incident"](key, lambda state: incident_queued(state, admitted_at))
        except Exception:  # noqa: BLE001 - the card is queued; unmarked, a repeat after the grace finds it stored
            logger.warning("incident %s: its card is queued but could not be marked so", key, exc_info=True)

    def _withdraw(self, key: str, admitted_at: float, previous: dict | None) -> None:
        """Undo the admission of a card the store refused: the incident as it was before, unless a later card
        has been admitted since."""
        def step(state: dict | None) -> tuple[dict | None, bool]:
            if state is None or state.get("last_sent") != admitted_at or state.get("queued") is not False:
                return state, False
            return previous, True
        try:
            self._tracking["update_incident"](key, step)
        except Exception:  # noqa: BLE001 - left admitted and unmarked, a repeat after the grace is let through
            logger.warning("incident %s: the admission of a card never stored could not be undone", key,
                           exc_info=True)

    def _admit(self, alert: Alert, now: float, before: dict) -> Alert | None:
        """Dedupe. ``before`` receives the incident's state as the admission found it (for ``_withdraw``)."""
        if not alert.incident_key:
            return alert

        holds, found = getattr(self.store, "holds_incident", None), {}

        def stored(since: float) -> bool:  # asked at most once per admission, however often the step runs
            if since not in found:
                found[since] = bool(holds(alert.incident_key, since))
            return found[since]

        def step(state: dict | None) -> tuple[dict, Admission]:
            before["state"] = copy.deepcopy(state)
            return incident_step(state, alert, now, self.window, stored if holds is not None else None)
        verdict: Admission = self._tracking["update_incident"](alert.incident_key, step)
        if not verdict.send:
            self.counters["suppressed"] += 1
            logger.info("suppressed repeat of incident %s (%s, %d held back so far)", alert.incident_key,
                        verdict.reason, verdict.suppressed)
            return None
        if verdict.severity != alert.severity:
            alert = dataclasses.replace(alert, severity=verdict.severity)
        if verdict.suppressed:
            held = [("Repeats held back", f"{verdict.suppressed} since the previous card ({verdict.reason})")]
            if verdict.samples:
                held.append(("Some of them", ", ".join(verdict.samples)))
            alert = dataclasses.replace(alert, facts=(*alert.facts, *held))
        return alert

    # --- delivery ---

    def flush(self, max_seconds: float = 5.0) -> int:
        """Deliver due alerts for at most about ``max_seconds``; returns how many were fully delivered.

        Never raises: an unreachable target leaves the alert pending with a next-try time, a target that rejects
        it for good (4xx) marks it failed and logs why. Only one flush runs at a time per Outbox.
        """
        if not self._flush_lock.acquire(blocking=False):
            return 0  # another thread is flushing; it will pick these alerts up too
        try:
            return self._flush(max_seconds)
        except Exception:  # noqa: BLE001 - delivery problems must never surface in the action that alerted
            logger.exception("alert flush stopped early; undelivered alerts stay queued")
            return 0
        finally:
            self._flush_lock.release()

    def _flush(self, max_seconds: float) -> int:
        left = retry.remaining()  # never past the invocation's deadline
        deadline = self.monotonic() + (max_seconds if left is None else min(max_seconds, left))
        claim = getattr(self.store, "claim_due", None)
        due = claim(limit=self.batch, lease_seconds=max(60.0, 2 * max_seconds)) if claim \
            else self.store.pending(limit=self.batch)
        delivered = 0
        for index, (alert_id, alert, attempts) in enumerate(due):
            if self.monotonic() >= deadline:
                self._defer([a for a, _, _ in due[index:]], self.clock())
                break
            outcome = self._deliver(alert_id, alert, attempts, deadline)
            if outcome == "out of time":
                # Its target has no free slot before the deadline (rate limit or Retry-After): give the claim
                # back without spending an attempt, and go on, so alerts for other targets are not held up.
                self._defer([alert_id], self.clock())
                continue
            delivered += outcome == "delivered"
            if outcome in ("delivered", "failed"):
                self._forget(alert_id)
        return delivered

    def _deliver(self, alert_id: int, alert: Alert, attempts: int, deadline: float) -> str:
        done = self._tracking["delivered_to"](alert_id)
        # A target that rejected this alert for good is recorded as "rejected:<key>": a retry for the other
        # targets must neither resend to it nor forget that the alert failed somewhere.
        rejected_before = any(k.startswith(REJECTED) for k in done)
        todo = [c for c in self.router.targets(alert) if c.key not in done and REJECTED + c.key not in done]
        now = self.clock()
        waiting = [c for c in todo if self._paused.get(c.key, 0.0) > now]
        if waiting and len(waiting) == len(todo):
            # Every remaining target failed moments ago: do not spend an attempt, just wait for it to recover.
            self._defer([alert_id], min(self._paused[c.key] for c in waiting))
            return "waiting"
        transient: list[str] = []
        permanent: list[str] = []
        failed_keys: list[str] = []
        retry_after = 0.0
        for channel in todo:
            if channel in waiting:
                transient.append(f"{channel.label}: waiting after a recent failure")
                continue
            try:
                channel.send(alert, time_left=max(0.0, deadline - self.monotonic()))
            except TransientError as exc:
                if getattr(exc, "deadline_reached", False) and not transient and not permanent:
                    return "out of time"
                transient.append(f"{channel.label}: {exc}")
                failed_keys.append(channel.key)
                retry_after = max(retry_after, getattr(exc, "retry_after", None) or 0.0)
            except PermanentError as exc:
                permanent.append(f"{channel.label}: {exc}")
                self._tracking["record_delivery"](alert_id, REJECTED + channel.key)
            except Exception as exc:  # noqa: BLE001 - a bug in one channel must not lose the alert
                logger.exception("channel %s failed unexpectedly on alert #%s", channel.label, alert_id)
                transient.append(f"{channel.label}: unexpected {type(exc).__name__}")
                failed_keys.append(channel.key)
            else:
                # Teams has it: if this record were lost to a transient fault, the alert would be sent again after
                # its lease. Settle it like a claim: retried by the policy, even past the invocation's deadline.
                with retry.settling():
                    retry.call(lambda key=channel.key: self._tracking["record_delivery"](alert_id, key),
                               what=f"record delivery of alert #{alert_id}")
        error = "; ".join([*permanent, *transient])
        if transient and attempts + 1 < self.give_up_after:
            delay = self._retry_delay(attempts, retry_after)
            for key in failed_keys:
                self._paused[key] = self.clock() + delay
            self.store.mark(alert_id, delivered=False, error=error, retry_in_seconds=delay)
            self.counters["retries"] += 1
            logger.warning("alert #%s %s not delivered yet, next try in %.0fs: %s", alert_id, alert.kind, delay,
                           error)
            return "retry"
        if transient or permanent or rejected_before:
            self.store.mark(alert_id, delivered=False, error=error or "rejected by a target earlier",
                            retry_in_seconds=None)
            self.counters["failed"] += 1
            logger.error("alert #%s %s failed for good after %d attempt(s): %s", alert_id, alert.kind,
                         attempts + 1, error)
            return "failed"
        self.store.mark(alert_id, delivered=True)
        self.counters["delivered"] += 1
        logger.info("delivered alert #%s %s to %s", alert_id, alert.kind,
                    ", ".join(c.label for c in todo) or "its targets (earlier)")
        return "delivered"

    def _retry_delay(self, attempts: int, retry_after: float) -> float:
        """The app's one backoff (shared/retry.py) on the outbox's scale, never sooner than the target asked."""
        return max(retry_after, self._policy.backoff(attempts + 1))

    def _forget(self, alert_id: int) -> None:
        """Drop in-process delivery records of an alert that is finished (durable stores keep their own)."""
        if self._memory_deliveries:
            self._memory.forget(alert_id)

    def _defer(self, alert_ids: list[int], until: float) -> None:
        defer = getattr(self.store, "defer", None)
        if defer is not None and alert_ids:
            defer(alert_ids, until)

    # --- views and lifecycle ---

    def stats(self) -> dict[str, int]:
        """The store's counts (when it keeps them) plus this process's counters."""
        store_stats = getattr(self.store, "stats", None)
        out = dict(store_stats()) if callable(store_stats) else {}
        out.update({f"process_{k}": v for k, v in self.counters.items()})
        return out

    def close(self) -> None:
        """Close what build_notifier created (the HTTP client) and the store; safe to call twice."""
        for closer in [*self._closers, getattr(self.store, "close", None)]:
            if callable(closer):
                closer()
        self._closers = []


def build_notifier(settings: Any, *, store: OutboxStore, client: httpx.Client | None = None,
                   stream: IO[str] | None = None, webhook: TeamsWebhook | None = None,
                   clock: Callable[[], float] = time.time, **options: Any) -> Outbox:
    """The Outbox for ``settings``: Teams webhooks from MLOPS_TEAMS_WEBHOOK_URL / MLOPS_TEAMS_ROUTES (an
    ``httpx.Client`` is made when none is given), console output on ``stream``, and logging when neither exists.
    Raises InvalidPayload for a malformed routing table (at startup, not at the first alert)."""
    default_url = settings.teams_webhook_url
    if default_url and not _is_url(default_url):
        # Typically an unresolved Key Vault reference (the app cannot read the secret). Posting to it would fail
        # every alert for good; the log keeps them instead, and this line says why (never the value itself).
        hint = " (an unresolved Key Vault reference?)" if default_url.startswith("@Microsoft.KeyVault") else ""
        logger.error("MLOPS_TEAMS_WEBHOOK_URL is not an http(s) URL%s: alerts go to the log until it is fixed", hint)
        default_url = ""
    routes = settings.teams_routes
    if routes.startswith("@Microsoft.KeyVault"):
        # The app could not read the secret: the reference arrives as text. Refusing to start would stop the whole
        # automation over its alerts; the default webhook (or the log) takes every alert instead.
        logger.error("MLOPS_TEAMS_ROUTES is an unresolved Key Vault reference: routing falls back to the default")
        routes = ""
    table = RoutingTable.parse(routes, default_url=default_url, failures_only=settings.teams_failures_only)
    always: list[Channel] = []
    if stream is not None:
        always.append(ConsoleChannel(stream))
    elif not table.urls:
        always.append(LogChannel())
    closers: list[Callable[[], object]] = []
    if table.urls and webhook is None:
        from shared.adapters.teams import TeamsWebhook

        if client is None:
            import httpx

            client = httpx.Client(timeout=httpx.Timeout(10.0, connect=5.0), follow_redirects=False)
            closers.append(client.close)
        webhook = TeamsWebhook(client)
    # The endpoint page link (shared/links.py explains): the page lives at the app's public URL and needs a signed-in
    # person, never a key; GET /api/status is key-protected and is never linked from a card.
    from shared.pages import page_url

    router = Router(table, webhook=webhook, always=always, studio_url=settings.studio_url,
                    page_url=lambda endpoint: page_url(settings, endpoint))
    logger.info("notifier: %d Teams webhook(s), %d route(s), failures-only %s, local channels %s",
                len(table.urls), len(table.routes), table.failures_only, [c.key for c in always] or "none")
    return Outbox(store, router, clock=clock, closers=closers, **options)

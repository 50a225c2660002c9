"""The rollout controller's loop: load the endpoint's state record → decide → commit → carry out → project.

Intent first: a decision with effects is committed to the state record (with its ETag) *before* anything in the
workspace changes, as a ``pending`` transition. Only the worker whose commit won carries the effects out; every
effect is idempotent (create-if-missing, set-this-split, merge-tags, delete-if-present), so a worker that crashed
half-way is finished by the next one that loads the record (a redelivery or the next timer tick), and a second
worker that decided from the same read loses the commit (StaleState, transient: redelivered, decided again on the
new record). The audit record and the alert are written once, by whoever clears the pending transition: so every
traffic change has exactly one audit record, naming its actor.
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import datetime, timedelta, timezone

from shared import logs, retry, rollout
from shared.config import Settings
from shared.domain import OWNER_TAG, OWNER_VALUE, Alert, AuditRecord, Endpoint
from shared.errors import (
    Busy,
    Conflict,
    MLOpsError,
    NotFound,
    PermanentError,
    StaleState,
    TrafficChanged,
)
from shared.ports import AuditLog, Monitor, Notifier, StateStore, Workspace
from shared.redact import redact
from shared.rollout import Decision, EndpointState

logger = logging.getLogger(__name__)
MAX_RELOADS = 3  # another worker's pending transition finished, then ours decided again
LEASE = timedelta(minutes=5)  # how long a worker carrying out a transition keeps others off it
PENDING_GIVE_UP = timedelta(hours=24)  # a transition still not carried out after this is dropped and alerted
_EFFECTS = {cls.__name__: cls for cls in (rollout.CreateDeployment, rollout.SetTraffic, rollout.TagDeployment,
                                          rollout.TagModel, rollout.DeleteDeployment, rollout.Retrain)}


def _effect_json(effect: rollout.Effect) -> dict:
    return {"kind": type(effect).__name__, **asdict(effect)}


def _effect_from(raw: dict) -> rollout.Effect:
    body = dict(raw)
    return _EFFECTS[body.pop("kind")](**body)


class Context:
    """What one controller run needs: the ports, the settings, the clock and the message that caused it."""

    def __init__(self, *, workspace: Workspace, states: StateStore, audit: AuditLog, notifier: Notifier,
                 settings: Settings, clock: Callable[[], datetime], event_id: str, message: str,
                 actor: str = "automation", retrain: Callable[[str, str, str, str], object] | None = None,
                 links: Callable[..., tuple] | None = None, extra_facts: dict | None = None,
                 incident: str = "") -> None:
        self.workspace = workspace
        self.states = states
        self.audit = audit
        self.notifier = notifier
        self.settings = settings
        self.clock = clock
        self.event_id = event_id
        self.message = message
        self.actor = actor
        self.retrain = retrain
        self.links = links or (lambda **_: ())
        self.extra_facts = extra_facts or {}
        self.incident = incident  # incident key of the signal that caused this run (drift: open, then resolve)
        self.worker = uuid.uuid4().hex  # who holds a pending transition's lease


def load(ctx: Context, endpoint: str) -> tuple[EndpointState, Endpoint | None]:
    """The endpoint's record (a first one derived from the workspace when none is stored) and the workspace's view,
    after finishing any transition a previous worker committed but did not complete. A transition another worker
    is carrying out right now (its lease is live) raises Busy: transient, so the event comes back later."""
    for _ in range(MAX_RELOADS + 1):
        state = ctx.states.load(endpoint)
        view = ctx.workspace.get_endpoint(endpoint)
        if state is None:
            state = rollout.bootstrap(endpoint, view)
        if state.pending is None:
            return state, view
        p = state.pending
        now = ctx.clock()
        if p.get("owner") != ctx.worker and _time(p.get("lease_until")) > now:
            raise Busy(f"{p.get('action')} on {endpoint} is being carried out by another worker")
        try:
            # Take the transition over with the ETag: from here on, this worker alone carries it out.
            mine = ctx.states.save(replace(state, pending={**p, "owner": ctx.worker,
                                                           "lease_until": (now + LEASE).isoformat()}))
            _finish(ctx, mine, view)
        except StaleState:
            continue  # another worker got there first: read again
    raise StaleState(f"state of {endpoint} kept changing while it was read")


def apply(ctx: Context, endpoint: str, event: object | Callable[[EndpointState, Endpoint | None], object]) -> Decision:
    """Run one event through the endpoint's controller and return the decision carried out. ``event`` may be a
    function of (state, view), for events whose content depends on the state (a tick's analysis window)."""
    state, view = load(ctx, endpoint)
    now = ctx.clock()
    ev = event(state, view) if callable(event) else event
    decision = rollout.decide(state, ev, view, ctx.settings.policy, now)
    if decision.action == "refuse":
        raise Conflict(decision.reason)
    if decision.state is None:
        if decision.action not in ("noop",):
            _project(ctx, decision, state, before=dict(state.traffic))
        return decision
    if not decision.effects and decision.action == "noop":
        ctx.states.save(replace(decision.state, version=state.version))  # bookkeeping: nothing to record or alert
        return decision
    # A decision that changes the record without touching Azure (awaiting approval, say) is committed as a
    # transition too: saved first and projected after, a worker dying in between left the record changed and
    # its card (the approval request) never sent, and the redelivery found nothing left to decide.
    pending = {"id": uuid.uuid4().hex, "action": decision.action, "reason": decision.reason, "actor": ctx.actor,
               "event_id": ctx.event_id, "message": ctx.message, "alert": decision.alert,
               "severity": decision.severity, "facts": {**_jsonable(decision.facts), **_jsonable(ctx.extra_facts)},
               "effects": [_effect_json(e) for e in decision.effects], "before": dict(state.traffic),
               "prior": state.to_json(), "at": now.isoformat(), "owner": ctx.worker,
               "lease_until": (now + LEASE).isoformat(), "incident": ctx.incident}
    committed = ctx.states.save(replace(decision.state, pending=pending, version=state.version))
    logger.info("endpoint %s: %s committed (%s effects)", endpoint, decision.action, len(decision.effects))
    _finish(ctx, committed, view)
    return decision


def _finish(ctx: Context, state: EndpointState, view: Endpoint | None) -> EndpointState:
    """Carry out a committed transition's effects, write its audit record and alert once, then clear it with the
    ETag. A transition that cannot be carried out (someone changed the split, a permanent error, or it kept failing
    for PENDING_GIVE_UP) is dropped: the record goes back to what it was before the decision."""
    try:
        return _carry_out(ctx, state, view)
    except Exception:  # transient, or unforeseen (the bus retries those a bounded number of times)
        # Let the next delivery or tick go at it at once instead of waiting out this worker's lease.
        try:
            with retry.settling():  # even when the work used the whole deadline (shared/retry.py)
                ctx.states.save(replace(state, pending={**(state.pending or {}), "lease_until": ""}))
        except MLOpsError as error:
            logger.warning("could not release %s on %s: %s", (state.pending or {}).get("action"), state.endpoint,
                           error)
        raise


def _carry_out(ctx: Context, state: EndpointState, view: Endpoint | None) -> EndpointState:
    p = state.pending or {}
    done = Decision(p.get("action", "?"), p.get("reason", ""), alert=p.get("alert", ""),
                    severity=p.get("severity", "info"), facts=p.get("facts", {}))
    try:
        if ctx.clock() - _time(p.get("at")) > PENDING_GIVE_UP:
            raise PermanentError(f"it was still not carried out after {PENDING_GIVE_UP}")
        for raw in p.get("effects", ()):
            _execute(ctx, state, _effect_from(raw), p)
    except TrafficChanged as error:
        # Someone changed the split outside the automation after we decided: our decision rests on a split that
        # no longer exists. Adopt the live split, and tell people.
        return _drop(ctx, state, p, f"{p.get('action')} not carried out: {error}", "warning",
                     traffic={k: v for k, v in error.actual.items() if v})
    except PermanentError as error:
        # A quota, a refused deployment, a model gone: retrying cannot help, and a transition left pending would
        # block every later change on this endpoint (a manual rollback included).
        return _drop(ctx, state, p, f"{p.get('action')} failed: {type(error).__name__}: {error}", "error")
    _project(ctx, done, state, before=p.get("before", {}), actor=p.get("actor"), event_id=p.get("event_id"),
             message=p.get("message"), transition=p.get("id", ""), pending=p)
    return ctx.states.save(replace(state, pending=None))


def _drop(ctx: Context, state: EndpointState, p: dict, why: str, severity: str, *,
          traffic: dict[str, int] | None = None) -> EndpointState:
    """Back to the record as it was before the decision (deployments its effects created stay at 0 % and are
    retired later), with the live split when it is known; recorded and alerted once."""
    prior = EndpointState.from_json(p["prior"], state.version) if p.get("prior") else replace(state, pending=None)
    created = [e["deployment"] for e in p.get("effects", ()) if e.get("kind") == "CreateDeployment"]
    live = traffic if traffic is not None else dict(prior.traffic)
    restored = replace(prior, pending=None, version=state.version, traffic=live,
                       surplus=tuple(sorted({**dict(prior.surplus), **{n: ctx.clock().isoformat() for n in created
                                                                      if n not in prior.live()}}.items())))
    dropped = Decision("abandon", why, alert="deployment_changed", severity=severity,
                       facts={"abandoned": p.get("action")})
    _project(ctx, dropped, restored, before=p.get("before", {}), actor=p.get("actor"), event_id=p.get("event_id"),
             message=p.get("message"), transition=p.get("id", ""), pending=p)
    logger.warning("endpoint %s: %s", state.endpoint, why)
    return ctx.states.save(restored)


def _time(raw: object) -> datetime:
    return datetime.fromisoformat(raw) if isinstance(raw, str) and raw else datetime.min.replace(tzinfo=timezone.utc)


def _execute(ctx: Context, state: EndpointState, effect: rollout.Effect, pending: dict) -> None:
    ws, name = ctx.workspace, state.endpoint
    if isinstance(effect, rollout.CreateDeployment):
        model = ws.get_model(effect.model, effect.version)
        tags = {OWNER_TAG: OWNER_VALUE, "mlops_model": f"{model.name}:{model.version}",
                "mlops_data_asset": model.tags.get("mlops_data_asset", ""),
                "mlops_data_version": model.tags.get("mlops_data_version", ""),
                "mlops_trigger_event": pending.get("event_id", "")}
        logs.tag(tags, model.tags)  # the deployment joins its model's chain
        ws.create_deployment(name, effect.deployment, model, tags)
    elif isinstance(effect, rollout.SetTraffic):
        tags = {}
        for other in pending.get("effects", ()):
            if other["kind"] == "TagDeployment":
                tags.setdefault(other["deployment"], {}).update(other["tags"])
        ws.set_traffic(name, effect.split, tags={"mlops_traffic_changed_at": ctx.clock().isoformat()},
                       deployment_tags=tags, expect=effect.expect)
    elif isinstance(effect, rollout.TagDeployment):
        pass  # written together with the traffic change it belongs to (SetTraffic above)
    elif isinstance(effect, rollout.TagModel):
        model, _, version = effect.model.rpartition(":")
        try:
            ws.tag_model(model, version, effect.tags)
        except NotFound:
            logger.warning("model %s is gone: its tags %s were not written", effect.model, effect.tags)
    elif isinstance(effect, rollout.DeleteDeployment):
        ws.delete_deployment(name, effect.deployment)
    elif isinstance(effect, rollout.Retrain):
        if ctx.retrain is None:
            raise MLOpsError("no retraining function wired")  # a wiring bug, not a payload problem
        ctx.retrain(effect.asset, effect.version, pending.get("event_id", ctx.event_id), state.endpoint)


def _jsonable(facts: dict) -> dict:
    out = {}
    for k, v in facts.items():
        out[k] = v.isoformat() if isinstance(v, datetime) else v
    return out


TITLES = {
    "deploy": "Canary started on {endpoint}",
    "approve_deploy": "Approved and deployed on {endpoint}",
    "advance": "Canary advanced on {endpoint}",
    "promote": "Promoted on {endpoint}",
    "abort": "Rollout aborted on {endpoint}",
    "rollback": "Rolled back {endpoint}",
    "retire": "Retired deployments on {endpoint}",
    "await_approval": "Approval needed on {endpoint}",
    "reject_model": "Model rejected by a person on {endpoint}",
    "expire_approval": "Approval expired on {endpoint}",
    "hold": "Held on {endpoint}",
    "retrain": "Retraining after drift on {endpoint}",
    "abandon": "Traffic changed outside the automation on {endpoint}",
    "record": "Alert resolved on {endpoint}",
}


def approval_url(settings: Settings, approval_id: str) -> str:
    base = settings.public_url or "http://localhost:7071"
    return f"{base}/api/approvals/{approval_id}"


def _project(ctx: Context, decision: Decision, after: EndpointState, *, before: dict, actor: str | None = None,
             event_id: str | None = None, message: str | None = None, transition: str = "",
             pending: dict | None = None) -> None:
    """The one place a decision becomes an audit record and an alert. A transition's record carries its id, and is
    written only if no record of that transition exists yet (a worker that crashed after writing it and before
    clearing the transition must not make a second one; one an append left part-way is completed). Its alert is
    queued either way: that worker may have died before queueing it, and if it did not, the outbox drops the
    repeat (same incident key). A transition is projected as its committing event saw it, whoever carries it out
    (a redelivery, another event, a tick): that event's incident and facts (``pending``), not the finisher's."""
    own = pending is None  # the decision of the event this context runs
    incident = ctx.incident if own else str(pending.get("incident") or "")
    actor = actor or ctx.actor
    event_id = event_id or ctx.event_id
    name = after.endpoint
    split_after = {k: v for k, v in after.traffic.items() if v}
    facts = {"endpoint": name, "phase": after.phase.value, "stable": after.stable, "canary": after.canary,
             "weight": after.weight, "traffic_before": {k: v for k, v in before.items() if v},
             "traffic_after": split_after, **(_jsonable(ctx.extra_facts) if own else {}),
             **_jsonable(decision.facts)}
    resources = tuple(f"deployment:{name}/{n}" for n in sorted({*before, *split_after}) if n)
    if transition:
        facts["transition"] = transition
    record = AuditRecord(event_id=event_id, message=message or ctx.message, decision=decision.action,
                         reason=redact(decision.reason), actor=actor, facts=facts, resources=resources, at=ctx.clock())
    if not transition:
        ctx.audit.append(record)
    elif not ctx.audit.append_once(record, subject=name, same=lambda r: r.facts.get("transition") == transition):
        logger.info("endpoint %s: transition %s was recorded by an earlier worker; its alert is queued again",
                    name, transition)
    if not decision.alert:
        return
    fmt = lambda split: ", ".join(f"{k} {v}%" for k, v in sorted(split.items(), key=lambda kv: -kv[1])) or "none"  # noqa: E731
    rows: list[tuple[str, str]] = [("Endpoint", name), ("Phase", after.phase.value)]
    if decision.changes_traffic or facts["traffic_before"] != split_after:
        rows += [("From", fmt(facts["traffic_before"])), ("To", fmt(split_after))]
    else:
        rows.append(("Traffic", fmt(split_after)))
    if decision.facts.get("analysis"):
        rows.append(("Analysis", str(decision.facts["analysis"])))
    if decision.facts.get("approver"):
        rows.append(("Approved by", str(decision.facts["approver"])))
    signal = facts.get("signal") or {}
    if signal.get("metric"):
        value = signal.get("value")
        threshold = signal.get("threshold")
        rows.append(("Signal", (f"{signal['metric']} {value:.3f}" if isinstance(value, (int, float)) else
                                str(signal["metric"]))
                     + (f" (threshold {threshold:.3f})" if isinstance(threshold, (int, float)) else "")
                     + (f" on {signal['feature']}" if signal.get("feature") else "")
                     + (f", from {signal['source']}" if signal.get("source") else "")))
    if signal.get("details"):  # our monitor's top features, window and chart (the drift card draws the chart)
        from shared.drift.chart import facts as drift_facts

        rows += drift_facts(signal["details"])
    if facts.get("health"):
        rows.append((f"Health, last {facts.get('health_window_minutes')} min", health_line(facts["health"])))
    rows.append(("By", actor))
    # The endpoint, and the model the card is about: the canary under test, else the one serving now.
    links = ctx.links(endpoint=name, model=after.canary_model or after.stable_model)
    if decision.action == "await_approval" and decision.facts.get("approval_id"):
        links = (("Review and approve", approval_url(ctx.settings, str(decision.facts["approval_id"]))), *links)
        rows.append(("Expires", str(decision.facts.get("expires_at", ""))))
    kind = decision.alert
    title = TITLES.get(decision.action, "{endpoint}").format(endpoint=name)
    if decision.action in ("deploy", "approve_deploy") and len(split_after) == 1 and not after.canary:
        title = f"{'Approved and deployed' if decision.action == 'approve_deploy' else 'Deployed'} to {name} at 100 %"
    signal_kind = kind == "drift_detected" and incident
    ctx.notifier.notify(Alert(
        kind=kind, severity=decision.severity, title=title,
        summary=f"{decision.reason}.", facts=tuple(rows), links=links,
        incident_key=incident if signal_kind else f"{kind}:{name}:{event_id}:{decision.action}",
        resolved=decision.action == "record", actor=actor, event_id=event_id))


def health_line(evidence: dict[str, dict]) -> str:
    """One line per reading: "v2: 120 req, 0.8% errors, p95 31 ms", or "unavailable" for a gap."""
    parts = []
    for name, h in evidence.items():
        if "error" in h:
            parts.append(f"{name}: unavailable")
            continue
        p95 = f", p95 {h['latency_p95_ms']:.0f} ms" if h.get("latency_p95_ms") is not None else ""
        parts.append(f"{name}: {h['requests']} req, {h['error_share']:.1%} errors{p95}"
                     + (" (partial)" if h.get("partial") else ""))
    return "; ".join(parts)


def recent_window(state: EndpointState, now: datetime, minimum: int = 5) -> int:
    """Minutes of evidence a tick's analysis reads: since the current step started (at least ``minimum``)."""
    started = state.step_started_at or now
    return max(minimum, int((now - started) / timedelta(minutes=1)) + 1)


def health_or_none(monitor: Monitor | None, endpoint: str, deployment: str, minutes: int):
    """A health reading, or None when there is no monitor or it cannot answer now (analysis: inconclusive)."""
    if monitor is None or not deployment:
        return None
    try:
        return monitor.health(endpoint, deployment, minutes)
    except MLOpsError as error:
        logger.warning("no health reading of %s/%s: %s", endpoint, deployment, error)
        return None

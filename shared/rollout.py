"""The rollout controller's pure core: one state record per endpoint and ``decide(state, event, view, policy, now)``.

Everything that changes an endpoint (a new model, an approval, a timer tick, a drift alert, a manual rollback) is
decided here from the endpoint's state record and what the workspace shows now; nothing here does I/O. The
controller (shared/controller.py) loads the record, calls ``decide``, commits the new record with its ETag and
only then carries out the effects, so two workers acting on one endpoint produce one change, never two.

Roles, not guesses: **stable** is what the endpoint returns to; **canary** is what is being judged. The stable is
never the suspect of a rollback. Phases::

    idle ──new model (auto)──▶ progressing ──analysis passes at 100 %──▶ promoted
      │                          │  ▲                                      │
      │ new model (manual)       │  └─ newer model replaces the canary     │ drift within the rollback window:
      ▼                          ▼                                         ▼ back to the previous stable, once
    awaiting_approval ──approve─▶ progressing ──fails / drift / by hand──▶ aborted
"""
from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta

from shared.config import Policy
from shared.domain import OWNER_TAG, OWNER_VALUE, Endpoint, Health

STATE_SCHEMA = 1
FAILED_STATES = ("failed", "canceled", "deleting")  # provisioning states a deployment can never serve from


class Phase(str, enum.Enum):
    IDLE = "idle"  # nothing deployed yet, or a stable serves 100 % and nothing is in flight
    AWAITING_APPROVAL = "awaiting_approval"  # a gate-approved model waits for a named person
    PROGRESSING = "progressing"  # a canary takes a growing share of traffic, step by step, on analysis
    PROMOTED = "promoted"  # the last rollout reached 100 %: its canary is now the stable
    ABORTED = "aborted"  # the last rollout (or the last promotion) was rolled back

    @property
    def completed(self) -> bool:
        """True when no rollout is in flight."""
        return self in (Phase.IDLE, Phase.PROMOTED, Phase.ABORTED)


@dataclass(frozen=True)
class Change:
    """The last change of one kind (automatic or manual) on an endpoint."""

    action: str
    actor: str
    at: datetime


@dataclass(frozen=True)
class Candidate:
    """A gate-approved model that is waiting for a person's approval."""

    model: str  # model name
    version: str  # model version (a positive integer, as text)
    deployment: str  # the deployment it will get when approved
    data_version: str
    approval_id: str  # single-use, unguessable: the approval page's address
    requested_at: datetime
    expires_at: datetime
    gate_reason: str = ""
    event_id: str = ""
    resume_phase: str = ""  # the phase under "awaiting_approval" (promoted, aborted, idle): what drift acts on
    form_secret: str = ""  # keys the approval form's per-person anti-forgery token (never shown as such)


@dataclass(frozen=True)
class EndpointState:
    """The endpoint's state record: who is stable, who is canary, where the rollout stands, what was done when.

    ``version`` is the store's concurrency token (SQLite counter or Table ETag): it travels with the record but is
    not part of it, and a commit with a stale version fails.
    """

    endpoint: str
    phase: Phase = Phase.IDLE
    stable: str = ""  # deployment every rollback returns to
    stable_model: str = ""  # "name:version"
    canary: str = ""  # deployment under analysis ("" when none)
    canary_model: str = ""
    step: int = -1  # index into policy.rollout_steps of the canary's current weight
    weight: int = 0  # the canary's current share of live traffic
    step_started_at: datetime | None = None
    inconclusive_since: datetime | None = None
    held: bool = False  # analysis stayed inconclusive too long: the rollout waits for a person
    failures: int = 0  # failed analyses in the current rollout
    previous_stable: str = ""  # what a drift right after a promotion returns to (cleared once used)
    previous_model: str = ""
    promoted_at: datetime | None = None
    retained: tuple[str, ...] = ()  # known-good deployments kept for a return, newest first (excludes stable)
    rolled_back: tuple[str, ...] = ()  # never given traffic again by the automation
    surplus: tuple[tuple[str, str], ...] = ()  # (deployment, ISO time it stopped being needed): retired later
    candidate: Candidate | None = None
    last_automatic: Change | None = None
    last_manual: Change | None = None
    retrains: tuple[str, ...] = ()  # ISO times of drift-triggered retraining (budget window)
    traffic: dict[str, int] = field(default_factory=dict)  # the split the controller last set
    pending: dict | None = None  # a committed transition whose effects are not all carried out yet (controller)
    version: str = ""  # concurrency token; "" = no record stored yet

    def to_json(self) -> str:
        body = asdict(self)
        body.pop("version")
        body["schema"] = STATE_SCHEMA
        return json.dumps(body, default=_iso, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, version: str) -> EndpointState:
        raw = json.loads(text)
        raw.pop("schema", None)
        cand = raw.get("candidate")
        if cand:
            raw["candidate"] = Candidate(**{**cand, "requested_at": _dt(cand["requested_at"]),
                                            "expires_at": _dt(cand["expires_at"])})
        for k in ("last_automatic", "last_manual"):
            if raw.get(k):
                raw[k] = Change(**{**raw[k], "at": _dt(raw[k]["at"])})
        for k in ("step_started_at", "inconclusive_since", "promoted_at"):
            raw[k] = _dt(raw.get(k))
        raw["phase"] = Phase(raw.get("phase", "idle"))
        for k in ("retained", "rolled_back", "retrains"):
            raw[k] = tuple(raw.get(k) or ())
        raw["surplus"] = tuple((str(n), str(t)) for n, t in raw.get("surplus") or ())
        return cls(**raw, version=version)

    def live(self) -> set[str]:
        """Deployments the state needs whatever the retention: stable, canary and the awaited candidate."""
        names = {self.stable, self.canary}
        if self.candidate is not None:
            names.add(self.candidate.deployment)
        return {n for n in names if n}


def _iso(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    raise TypeError(f"cannot store {type(value).__name__}")


def _dt(value: object) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


# --- events the controller decides on ---------------------------------------------------------------------

@dataclass(frozen=True)
class NewModel:
    """A model the gate approved for this endpoint."""

    model: str
    version: str
    deployment: str
    data_version: str
    gate_reason: str
    approval_id: str  # used only under manual approval
    actor: str = "automation"
    form_secret: str = ""  # used only under manual approval


@dataclass(frozen=True)
class ApprovalDecision:
    approval_id: str
    approve: bool
    actor: str
    reason: str


@dataclass(frozen=True)
class Evidence:
    """Request statistics of the canary and the stable over the current step (None: the monitor had none)."""

    canary: Health | None = None
    stable: Health | None = None


@dataclass(frozen=True)
class Tick:
    evidence: Evidence = Evidence()


@dataclass(frozen=True)
class DriftSignal:
    resolved: bool = False
    summary: str = ""
    newest_data: tuple[str, str] | None = None  # (asset, version)
    data_status: str = "new"  # new | stable (the stable was trained on it) | tried (failed/rejected) | running


@dataclass(frozen=True)
class ManualRollback:
    actor: str
    reason: str
    to: str = ""


# --- effects, carried out by the controller in this order -------------------------------------------------

@dataclass(frozen=True)
class CreateDeployment:
    deployment: str
    model: str
    version: str


@dataclass(frozen=True)
class SetTraffic:
    split: dict[str, int]  # the whole live split; names left out serve 0
    expect: dict[str, int]  # the split the state believed was live: anything else means someone else changed it


@dataclass(frozen=True)
class TagDeployment:
    deployment: str
    tags: dict[str, str]


@dataclass(frozen=True)
class TagModel:
    model: str  # "name:version"
    tags: dict[str, str]


@dataclass(frozen=True)
class DeleteDeployment:
    deployment: str


@dataclass(frozen=True)
class Retrain:
    asset: str
    version: str


Effect = CreateDeployment | SetTraffic | TagDeployment | TagModel | DeleteDeployment | Retrain


@dataclass(frozen=True)
class Decision:
    """What ``decide`` came to: the action (audit decision name), why, the new state and the effects to carry
    out. ``state is None`` means nothing changes and nothing is committed."""

    action: str
    reason: str
    state: EndpointState | None = None
    effects: tuple[Effect, ...] = ()
    alert: str = ""  # alert kind to raise ("" = none)
    severity: str = "info"
    facts: dict[str, object] = field(default_factory=dict)

    @property
    def changes_traffic(self) -> bool:
        return any(isinstance(e, SetTraffic) for e in self.effects)


# --- analysis ------------------------------------------------------------------------------------------------

class Verdict(str, enum.Enum):
    SUCCESSFUL = "successful"
    FAILED = "failed"
    INCONCLUSIVE = "inconclusive"


def analyze(evidence: Evidence, policy: Policy) -> tuple[Verdict, str]:
    """Judge the canary against the stable (Argo's successful / failed / inconclusive): too few canary requests is
    inconclusive, never healthy; the error share may exceed the stable's by at most the tolerance; p95 latency may
    exceed the stable's by at most the latency tolerance (a fraction)."""
    c, s = evidence.canary, evidence.stable
    if c is None:
        return Verdict.INCONCLUSIVE, "no reading of the canary"
    if c.requests < policy.analysis_min_requests:
        return Verdict.INCONCLUSIVE, (f"canary served {c.requests} requests, fewer than the "
                                      f"{policy.analysis_min_requests} analysis needs")
    base_errors = s.error_share if s is not None and s.requests else 0.0
    if c.error_share > base_errors + policy.analysis_error_tolerance:
        return Verdict.FAILED, (f"canary error share {c.error_share:.1%} exceeds the stable's {base_errors:.1%} by more "
                                f"than {policy.analysis_error_tolerance:.1%}")
    if (s is not None and s.latency_p95_ms and c.latency_p95_ms is not None
            and c.latency_p95_ms > s.latency_p95_ms * (1 + policy.analysis_latency_tolerance)
            and c.latency_p95_ms - s.latency_p95_ms > policy.analysis_latency_floor_ms):  # ms-level noise is not a regression
        return Verdict.FAILED, (f"canary p95 {c.latency_p95_ms:.0f} ms exceeds the stable's {s.latency_p95_ms:.0f} ms "
                                f"by more than {policy.analysis_latency_tolerance:.0%}")
    p95 = f", p95 {c.latency_p95_ms:.0f} ms" if c.latency_p95_ms is not None else ""
    return Verdict.SUCCESSFUL, f"canary served {c.requests} requests, {c.error_share:.1%} errors{p95}"


# --- the decision ---------------------------------------------------------------------------------------------

def bootstrap(endpoint: str, view: Endpoint | None) -> EndpointState:
    """A first state record for an endpoint the controller has no record of (an endpoint deployed before the
    controller existed): the largest known-good share is the stable, any other live deployment the canary."""
    if view is None or not any(v > 0 for v in view.traffic.values()):
        return EndpointState(endpoint=endpoint)
    live = sorted((d for d in view.deployments if view.traffic.get(d.name, 0) > 0),
                  key=lambda d: (d.known_good, view.traffic.get(d.name, 0)), reverse=True)
    stable = live[0]
    traffic = {k: v for k, v in view.traffic.items() if v}
    rolled = tuple(d.name for d in view.deployments if d.rolled_back)
    if len(live) == 1:
        return EndpointState(endpoint=endpoint, phase=Phase.PROMOTED, stable=stable.name,
                             stable_model=f"{stable.model_name}:{stable.model_version}", traffic=traffic,
                             rolled_back=rolled)
    canary = live[1]
    return EndpointState(endpoint=endpoint, phase=Phase.PROGRESSING, stable=stable.name,
                         stable_model=f"{stable.model_name}:{stable.model_version}", canary=canary.name,
                         canary_model=f"{canary.model_name}:{canary.model_version}", step=0,
                         weight=view.traffic.get(canary.name, 0), traffic=traffic, rolled_back=rolled)


def _state_of(view: Endpoint | None, name: str) -> str:
    d = view.deployment(name) if view is not None and name else None
    return d.state if d is not None else ""


def _usable(view: Endpoint | None, name: str) -> bool:
    """A deployment exists and is not in a state it can never serve from."""
    d = view.deployment(name) if view is not None and name else None
    return d is not None and (d.state or "").lower() not in FAILED_STATES


def _split(stable: str, canary: str, weight: int) -> dict[str, int]:
    if not stable or weight >= 100:
        return {canary: 100}
    if not canary or weight <= 0:
        return {stable: 100}
    return {stable: 100 - weight, canary: weight}


def _mark_surplus(state: EndpointState, names: list[str], now: datetime) -> tuple[tuple[str, str], ...]:
    known = dict(state.surplus)
    for n in names:
        if n and n not in known:
            known[n] = now.isoformat()
    return tuple(sorted(known.items()))


CORRECTIVE = ("rollback", "abort", "retrain")  # changes that start a cooldown


def _cooldown(state: EndpointState, policy: Policy, now: datetime) -> str:
    """Why an automatic correction must wait, or "" when it may go ahead. A corrective change (rollback, abort,
    retrain), automatic or manual, starts the cooldown: the automation neither flaps nor overrides a person who
    just acted. Deploys, steps and promotions do not: a canary that misbehaves right after it started is exactly
    what a rollback is for. Manual changes are never held."""
    for label, change in (("automatic", state.last_automatic), ("manual", state.last_manual)):
        if change is None or change.action not in CORRECTIVE:
            continue
        until = change.at + timedelta(minutes=policy.cooldown_minutes)
        if now < until:
            return (f"cooldown: last {label} change ({change.action} by {change.actor}) at {change.at:%H:%M:%S}, "
                    f"next automatic change allowed after {until:%H:%M:%S}")
    return ""


def decide(state: EndpointState, event: object, view: Endpoint | None, policy: Policy, now: datetime) -> Decision:
    """The one decision function: the endpoint's state record, an event, what the workspace shows, the policy and
    the time in; a Decision out. Pure: no I/O, no clock, no randomness."""
    return _settle(_decide(state, event, view, policy, now))


def _phase(state: EndpointState) -> Phase:
    """The phase drift and rollbacks act on: under "awaiting_approval", the one the endpoint was in before."""
    if state.phase is Phase.AWAITING_APPROVAL and state.candidate is not None and state.candidate.resume_phase:
        return Phase(state.candidate.resume_phase)
    return state.phase


def _settle(d: Decision) -> Decision:
    """Keep "awaiting_approval" true to its word: it is the phase exactly while a candidate waits and nothing is in
    flight, and the phase underneath is kept with the candidate."""
    s = d.state
    if s is None:
        return d
    if s.candidate is not None and s.phase.completed:
        s = replace(s, phase=Phase.AWAITING_APPROVAL, candidate=replace(s.candidate, resume_phase=s.phase.value))
    elif s.candidate is None and s.phase is Phase.AWAITING_APPROVAL:
        s = replace(s, phase=Phase.PROMOTED if s.stable else Phase.IDLE)
    return replace(d, state=s)


def _decide(state: EndpointState, event: object, view: Endpoint | None, policy: Policy, now: datetime) -> Decision:
    if isinstance(event, NewModel):
        return _on_new_model(state, event, view, policy, now)
    if isinstance(event, ApprovalDecision):
        return _on_approval(state, event, view, policy, now)
    if isinstance(event, Tick):
        return _on_tick(state, event, view, policy, now)
    if isinstance(event, DriftSignal):
        return _on_drift(state, event, view, policy, now)
    if isinstance(event, ManualRollback):
        return _on_manual_rollback(state, event, view, policy, now)
    raise TypeError(f"decide() has no rule for {type(event).__name__}")


def _start(state: EndpointState, model: str, version: str, deployment: str, view: Endpoint | None, policy: Policy,
           now: datetime, *, actor: str, approved_by: str = "", reason: str) -> Decision:
    """Deploy ``deployment`` and give it the first step of traffic (all of it when nothing else serves). A canary
    already in flight is superseded: it goes back to 0 % (not marked rolled back) and is retired later."""
    ref = f"{model}:{version}"
    tags = {"mlops_model": ref}
    model_tags: dict[str, str] = {}
    if approved_by:
        tags.update({"mlops_approved_by": approved_by, "mlops_approved_at": now.isoformat()})
        model_tags = {"approved_by": approved_by, "approved_at": now.isoformat()}
    effects: list[Effect] = [CreateDeployment(deployment, model, version), TagDeployment(deployment, tags)]
    if model_tags:
        effects.append(TagModel(ref, model_tags))
    stable = state.stable if _usable(view, state.stable) else ""
    superseded = [state.canary] if state.canary and state.canary != deployment else []
    change = Change("deploy", actor, now)
    if not stable:
        # Nothing serves (first model, or the stable is gone): the new model takes everything and is known-good
        # from then on; there is nothing to compare it with.
        split = {deployment: 100}
        effects += [SetTraffic(split, dict(state.traffic)), TagDeployment(deployment, {"mlops_known_good": "true"})]
        new = replace(state, phase=Phase.PROMOTED, stable=deployment, stable_model=ref, canary="", canary_model="",
                      step=-1, weight=0, step_started_at=None, inconclusive_since=None, held=False, failures=0,
                      candidate=None, promoted_at=now, traffic=split, last_automatic=_auto(state, change, actor),
                      last_manual=_manual(state, change, actor),
                      surplus=_mark_surplus(state, superseded + ([state.stable] if state.stable else []), now))
        return Decision("deploy", f"{reason}; {deployment} takes 100 % (nothing else serves)", new, tuple(effects),
                        alert="deployment_changed", facts={"traffic_after": split, "deployment": deployment})
    weight = policy.rollout_steps[0]
    if weight >= 100:
        # A one-step rollout (MLOPS_ROLLOUT_STEPS=100): the new model is promoted at once; the stable it replaces
        # is the previous stable, kept for a return.
        split = {deployment: 100}
        effects += [SetTraffic(split, dict(state.traffic)), TagDeployment(deployment, {"mlops_known_good": "true"}),
                    TagModel(ref, {"mlops_known_good": "true"})]
        new = replace(state, phase=Phase.PROMOTED, stable=deployment, stable_model=ref, canary="", canary_model="",
                      step=-1, weight=0, step_started_at=None, inconclusive_since=None, held=False, failures=0,
                      candidate=None, previous_stable=stable, previous_model=state.stable_model, promoted_at=now,
                      retained=tuple(dict.fromkeys((stable, *state.retained))), traffic=split,
                      last_automatic=_auto(state, change, actor), last_manual=_manual(state, change, actor),
                      surplus=_mark_surplus(state, superseded, now))
        return Decision("deploy", f"{reason}; {deployment} takes 100 % at once (one-step rollout), {stable} is kept "
                                  "as the previous stable", new, tuple(effects), alert="deployment_changed",
                        facts={"traffic_after": split, "deployment": deployment, "previous_stable": stable})
    split = _split(stable, deployment, weight)
    effects.append(SetTraffic(split, dict(state.traffic)))
    new = replace(state, phase=Phase.PROGRESSING, canary=deployment,
                  canary_model=ref, step=0, weight=weight, step_started_at=now, inconclusive_since=None, held=False,
                  failures=0, candidate=None, traffic=split, last_automatic=_auto(state, change, actor),
                  last_manual=_manual(state, change, actor), surplus=_mark_surplus(state, superseded, now))
    why = f"{reason}; {deployment} starts at {weight} % beside stable {stable} at {100 - weight} %"
    if superseded:
        why += f"; it supersedes canary {superseded[0]}, which goes back to 0 %"
    return Decision("deploy", why, new, tuple(effects), alert="deployment_changed",
                    facts={"traffic_after": split, "deployment": deployment, "superseded": superseded})


def _auto(state: EndpointState, change: Change, actor: str) -> Change | None:
    return change if actor == "automation" else state.last_automatic


def _manual(state: EndpointState, change: Change, actor: str) -> Change | None:
    return change if actor != "automation" else state.last_manual


def _on_new_model(state: EndpointState, ev: NewModel, view: Endpoint | None, policy: Policy,
                  now: datetime) -> Decision:
    if ev.deployment in (state.stable, state.canary) or (state.candidate and state.candidate.deployment == ev.deployment):
        return Decision("noop", f"{ev.deployment} is already {'stable' if ev.deployment == state.stable else 'in flight'}")
    if ev.deployment in state.rolled_back:
        return Decision("noop", f"{ev.deployment} was rolled back before: it is never deployed again automatically")
    if policy.freeze:
        return Decision("hold", "freeze switch (MLOPS_FREEZE) is on: model registered, not deployed")
    if policy.approval_for(state.endpoint) == "manual":
        cand = Candidate(model=ev.model, version=ev.version, deployment=ev.deployment, data_version=ev.data_version,
                         approval_id=ev.approval_id, requested_at=now,
                         expires_at=now + timedelta(hours=policy.approval_ttl_hours), gate_reason=ev.gate_reason,
                         form_secret=ev.form_secret)
        replaced = state.candidate
        new = replace(state, phase=_phase(state), candidate=cand)  # _settle sets awaiting_approval
        why = f"{ev.model}:{ev.version} passed the gate and waits for approval until {cand.expires_at:%Y-%m-%d %H:%M} UTC"
        if replaced is not None:
            why += f" (replaces the unapproved {replaced.model}:{replaced.version})"
        return Decision("await_approval", why, new, (), alert="approval_requested",
                        facts={"model": f"{ev.model}:{ev.version}", "deployment": ev.deployment,
                               "approval_id": ev.approval_id, "expires_at": cand.expires_at.isoformat()})
    return _start(state, ev.model, ev.version, ev.deployment, view, policy, now, actor="automation",
                  reason=f"{ev.model}:{ev.version} passed the gate ({ev.gate_reason})")


def _on_approval(state: EndpointState, ev: ApprovalDecision, view: Endpoint | None, policy: Policy,
                 now: datetime) -> Decision:
    cand = state.candidate
    if cand is None or cand.approval_id != ev.approval_id:
        return Decision("refuse", "this approval is unknown or was already used (approvals are single-use)")
    if now >= cand.expires_at:
        return Decision("refuse", f"this approval expired at {cand.expires_at:%Y-%m-%d %H:%M} UTC")
    if not ev.approve:
        new = replace(state, candidate=None, phase=_phase(state), last_manual=Change("reject", ev.actor, now))
        ref = f"{cand.model}:{cand.version}"
        return Decision("reject_model", f"{ev.actor} rejected {ref}: {ev.reason}", new,
                        (TagModel(ref, {"rejected_by": ev.actor, "rejected_at": now.isoformat()}),),
                        alert="manual_action", facts={"model": ref, "approver": ev.actor})
    if policy.freeze:
        return Decision("refuse", "freeze switch (MLOPS_FREEZE) is on: nothing is deployed, approve again later")
    d = _start(replace(state, candidate=None, phase=_phase(state)), cand.model, cand.version, cand.deployment, view, policy, now,
               actor=ev.actor, approved_by=ev.actor,
               reason=f"approved by {ev.actor} ({ev.reason})")
    return replace(d, action="approve_deploy", facts={**d.facts, "approver": ev.actor,
                                                      "model": f"{cand.model}:{cand.version}"})


def _abort(state: EndpointState, view: Endpoint | None, now: datetime, *, actor: str, why: str,
           action: str = "abort") -> Decision:
    """The canary loses all traffic and is never a target again; the stable gets 100 %. The promotion before this
    rollout is no longer a drift's suspect: a later drift does not return past the stable (no cascade). When the
    stable cannot serve, nothing moves: a person must decide."""
    canary = state.canary
    if not _usable(view, state.stable):
        return Decision("hold", f"{why}; but stable {state.stable} cannot serve "
                                f"({_state_of(view, state.stable) or 'missing'}): nothing moved, a person must decide",
                        alert="rollback", severity="critical")
    split = {state.stable: 100}
    change = Change(action, actor, now)
    new = replace(state, phase=Phase.ABORTED, canary="", canary_model="", step=-1, weight=0, step_started_at=None,
                  inconclusive_since=None, held=False, failures=0, traffic=split, promoted_at=None,
                  rolled_back=tuple(dict.fromkeys((*state.rolled_back, canary))),
                  surplus=_mark_surplus(state, [canary], now), last_automatic=_auto(state, change, actor),
                  last_manual=_manual(state, change, actor))
    effects: list[Effect] = [SetTraffic(split, dict(state.traffic)),
                             TagDeployment(canary, {"mlops_rolled_back": "true"})]
    if state.canary_model:
        effects.append(TagModel(state.canary_model, {"mlops_rolled_back": "true"}))
    return Decision(action, why, new, tuple(effects), alert="rollback",
                    severity="critical" if actor == "automation" else "warning",
                    facts={"from": dict(state.traffic), "to_deployment": state.stable, "marked_bad": [canary],
                           "traffic_after": split})


def _return_to_previous(state: EndpointState, now: datetime, *, actor: str, why: str) -> Decision:
    """Undo the last promotion: the previous stable serves 100 % and becomes the stable again; the promoted model
    is marked rolled back. The previous stable's own predecessor is never a target: one promotion back, at most."""
    target = state.previous_stable
    bad = [n for n in (state.stable, state.canary) if n]  # a canary in flight goes too: it was judged against bad
    split = {target: 100}
    change = Change("rollback", actor, now)
    new = replace(state, phase=Phase.ABORTED, stable=target, stable_model=state.previous_model, previous_stable="",
                  previous_model="", promoted_at=None, traffic=split, canary="", canary_model="", step=-1, weight=0,
                  step_started_at=None, inconclusive_since=None, held=False, failures=0,
                  retained=tuple(n for n in state.retained if n != target),
                  rolled_back=tuple(dict.fromkeys((*state.rolled_back, *bad))),
                  surplus=_mark_surplus(state, bad, now), last_automatic=_auto(state, change, actor),
                  last_manual=_manual(state, change, actor))
    effects: list[Effect] = [SetTraffic(split, dict(state.traffic))]
    effects += [TagDeployment(n, {"mlops_rolled_back": "true"}) for n in bad]
    effects += [TagModel(m, {"mlops_rolled_back": "true"}) for m in (state.stable_model, state.canary_model) if m]
    return Decision("rollback", why, new, tuple(effects), alert="rollback",
                    severity="critical" if actor == "automation" else "warning",
                    facts={"from": dict(state.traffic), "to_deployment": target, "marked_bad": bad,
                           "traffic_after": split})


def _can_return(state: EndpointState, view: Endpoint | None) -> bool:
    p = state.previous_stable
    return bool(p) and p not in state.rolled_back and _usable(view, p)


def _on_drift(state: EndpointState, ev: DriftSignal, view: Endpoint | None, policy: Policy,
              now: datetime) -> Decision:
    if ev.resolved:
        return Decision("record", "alert resolved: recorded, nothing to do", alert="drift_detected")
    if policy.freeze:
        return Decision("hold", "freeze switch (MLOPS_FREEZE) is on: no automatic change, alert only",
                        alert="drift_detected")
    wait = _cooldown(state, policy, now)
    if wait:
        return Decision("hold", wait, alert="drift_detected")
    if _phase(state) is Phase.PROGRESSING and state.canary:
        if not _usable(view, state.stable):
            return Decision("hold", f"canary {state.canary} is suspect but stable {state.stable} cannot serve "
                                    f"({_state_of(view, state.stable) or 'missing'}): a person must decide",
                            alert="drift_detected", severity="critical")
        return _abort(state, view, now, actor="automation", action="rollback",
                      why=f"drift while canary {state.canary} served {state.weight} % ({ev.summary}): the canary is "
                          f"the suspect, stable {state.stable} takes 100 %")
    recent = state.promoted_at is not None and now - state.promoted_at <= timedelta(
        minutes=policy.rollback_window_minutes)
    if _phase(state) is Phase.PROMOTED and recent and _can_return(state, view):
        age = int((now - state.promoted_at).total_seconds() // 60)
        return _return_to_previous(state, now, actor="automation",
                                   why=f"drift {age} min after {state.stable} was promoted (window "
                                       f"{policy.rollback_window_minutes} min; {ev.summary}): back to the previous "
                                       f"stable {state.previous_stable}")
    return _retrain(state, ev, policy, now)


def _retrain(state: EndpointState, ev: DriftSignal, policy: Policy, now: datetime) -> Decision:
    if ev.newest_data is None:
        return Decision("hold", "drift, but no rollout to undo and no data asset known to retrain on: new data is "
                                "needed", alert="drift_detected", severity="warning")
    asset, version = ev.newest_data
    if ev.data_status == "running":
        return Decision("hold", f"drift, but training on {asset}:{version} is already running", alert="drift_detected")
    if ev.data_status in ("stable", "tried"):
        what = ("the stable was trained on it" if ev.data_status == "stable"
                else "a model from it already failed, was rejected or was rolled back")
        return Decision("hold", f"drift, but the newest data {asset}:{version} cannot help ({what}): land new data "
                                "to retrain", alert="drift_detected", severity="warning")
    window = now - timedelta(hours=24)
    recent = tuple(t for t in state.retrains if datetime.fromisoformat(t) > window)
    if len(recent) >= policy.retrain_budget:
        return Decision("hold", f"drift, but the retraining budget is spent ({len(recent)} of "
                                f"{policy.retrain_budget} in 24 h)", alert="drift_detected", severity="warning")
    change = Change("retrain", "automation", now)
    new = replace(state, retrains=(*recent, now.isoformat()), last_automatic=change)
    return Decision("retrain", f"no rollout to undo ({ev.summary}): retrain on {asset}:{version} "
                               f"({len(recent) + 1} of {policy.retrain_budget} in 24 h)", new,
                    (Retrain(asset, version),), alert="drift_detected", facts={"asset": asset, "version": version})


def _on_manual_rollback(state: EndpointState, ev: ManualRollback, view: Endpoint | None, policy: Policy,
                        now: datetime) -> Decision:
    why = f"requested by {ev.actor}: {ev.reason}"
    if ev.to:
        if view is None or view.deployment(ev.to) is None:
            return Decision("refuse", f"deployment {ev.to!r} does not exist on {state.endpoint}")
        if ev.to in state.rolled_back:
            return Decision("refuse", f"{ev.to} was itself rolled back; deploy a new model instead")
        if not _usable(view, ev.to):
            return Decision("refuse", f"{ev.to} cannot serve (state {_state_of(view, ev.to)})")
        if state.traffic.get(ev.to) == 100 and not state.canary:
            return Decision("noop", f"{ev.to} already serves 100 %")
        if ev.to == state.stable and state.canary:
            return _abort(state, view, now, actor=ev.actor, why=why, action="rollback")
        if ev.to == state.previous_stable:
            return _return_to_previous(state, now, actor=ev.actor, why=why)
        # Any other known deployment: it becomes the stable, everything that served is marked rolled back.
        bad = [n for n, v in state.traffic.items() if v and n != ev.to]
        split = {ev.to: 100}
        d = view.deployment(ev.to)
        new = replace(state, phase=Phase.ABORTED, stable=ev.to, stable_model=f"{d.model_name}:{d.model_version}",
                      canary="", canary_model="", step=-1, weight=0, previous_stable="", previous_model="",
                      promoted_at=None, traffic=split, retained=tuple(n for n in state.retained if n != ev.to),
                      rolled_back=tuple(dict.fromkeys((*state.rolled_back, *bad))),
                      surplus=_mark_surplus(state, bad, now), last_manual=Change("rollback", ev.actor, now))
        effects: list[Effect] = [SetTraffic(split, dict(state.traffic))]
        effects += [TagDeployment(n, {"mlops_rolled_back": "true"}) for n in bad]
        return Decision("rollback", why, new, tuple(effects), alert="rollback", severity="warning",
                        facts={"from": dict(state.traffic), "to_deployment": ev.to, "marked_bad": bad,
                               "traffic_after": split})
    if state.phase is Phase.PROGRESSING and state.canary and _usable(view, state.stable):
        return _abort(state, view, now, actor=ev.actor, why=why, action="rollback")
    if _can_return(state, view):
        return _return_to_previous(state, now, actor=ev.actor, why=why)
    return Decision("refuse", f"{state.endpoint} has no known-good deployment to roll back to")


def _on_tick(state: EndpointState, ev: Tick, view: Endpoint | None, policy: Policy, now: datetime) -> Decision:
    cand = state.candidate
    if cand is not None and now >= cand.expires_at:
        return Decision("expire_approval", f"approval of {cand.model}:{cand.version} expired unused at "
                                           f"{cand.expires_at:%Y-%m-%d %H:%M} UTC",
                        replace(state, candidate=None, phase=_phase(state)),
                        alert="approval_expired", severity="warning",
                        facts={"model": f"{cand.model}:{cand.version}"})
    if policy.freeze:  # no step, promotion, abort or retirement: the rollout stays where it is
        return Decision("noop", "freeze switch (MLOPS_FREEZE) is on: the rollout stays where it is")
    if state.phase is Phase.PROGRESSING and state.canary:
        step = _progress(state, ev, view, policy, now)
        retire = _retire(step.state or state, view, policy, now)
        if step.action == "noop" and step.state is None:
            return retire if retire.action != "noop" or retire.state is not None else step
        if retire.effects:  # the same tick also retires what became surplus (superseded canaries)
            return replace(step, state=retire.state, effects=(*step.effects, *retire.effects),
                           reason=f"{step.reason}; {retire.reason}", facts={**step.facts, **retire.facts})
        return replace(step, state=retire.state) if retire.state is not None else step
    return _retire(state, view, policy, now)


def _progress(state: EndpointState, ev: Tick, view: Endpoint | None, policy: Policy, now: datetime) -> Decision:
    if not _usable(view, state.canary):
        if not _usable(view, state.stable):
            return Decision("hold", f"neither canary {state.canary} nor stable {state.stable} can serve",
                            alert="deployment_changed", severity="critical")
        return _abort(state, view, now, actor="automation",
                      why=f"canary {state.canary} cannot serve (state {_state_of(view, state.canary) or 'missing'})")
    if state.step_started_at is None:  # a record made from an endpoint found mid-rollout: its step starts now
        return Decision("noop", f"canary {state.canary} at {state.weight} %: its step starts baking now",
                        replace(state, step_started_at=now))
    started = state.step_started_at
    if now - started < timedelta(minutes=policy.bake_minutes):
        return Decision("noop", f"canary {state.canary} bakes at {state.weight} % until "
                                f"{started + timedelta(minutes=policy.bake_minutes):%H:%M:%S}")
    verdict, why = analyze(ev.evidence, policy)
    if verdict is Verdict.INCONCLUSIVE:
        since = state.inconclusive_since or now
        if not state.held and now - since >= timedelta(minutes=policy.analysis_max_wait_minutes):
            return Decision("hold", f"analysis of {state.canary} inconclusive for "
                                    f"{policy.analysis_max_wait_minutes} min ({why}): the rollout holds at "
                                    f"{state.weight} % until a person decides or evidence arrives",
                            replace(state, inconclusive_since=since, held=True), alert="rollout_held",
                            severity="warning", facts={"analysis": why})
        if state.inconclusive_since is None:
            return Decision("noop", f"analysis inconclusive: {why}", replace(state, inconclusive_since=since))
        return Decision("noop", f"analysis inconclusive: {why}")
    if verdict is Verdict.FAILED:
        failures = state.failures + 1
        if failures >= policy.analysis_failure_limit:
            return _abort(state, view, now, actor="automation",
                          why=f"analysis failed {failures} times (limit {policy.analysis_failure_limit}): {why}")
        return Decision("noop", f"analysis failed ({failures} of {policy.analysis_failure_limit}): {why}; the step "
                                "bakes again", replace(state, failures=failures, step_started_at=now,
                                                       inconclusive_since=None), facts={"analysis": why})
    steps = policy.rollout_steps
    nxt = state.step + 1
    if nxt >= len(steps) or steps[nxt] >= 100:
        return _promote(state, now, why)
    weight = steps[nxt]
    split = _split(state.stable, state.canary, weight)
    new = replace(state, step=nxt, weight=weight, step_started_at=now, inconclusive_since=None, held=False,
                  traffic=split, last_automatic=Change("advance", "automation", now))
    return Decision("advance", f"analysis passed at {state.weight} % ({why}): {state.canary} goes to {weight} %", new,
                    (SetTraffic(split, dict(state.traffic)),), alert="deployment_changed",
                    facts={"traffic_after": split, "analysis": why})


def _promote(state: EndpointState, now: datetime, why: str) -> Decision:
    canary, old = state.canary, state.stable
    split = {canary: 100}
    retained = tuple(dict.fromkeys(n for n in (old, *state.retained) if n))
    new = replace(state, phase=Phase.PROMOTED, stable=canary, stable_model=state.canary_model, canary="",
                  canary_model="", step=-1, weight=0, step_started_at=None, inconclusive_since=None, held=False,
                  failures=0, previous_stable=old, previous_model=state.stable_model, promoted_at=now,
                  retained=retained, traffic=split, last_automatic=Change("promote", "automation", now))
    effects: list[Effect] = [SetTraffic(split, dict(state.traffic)), TagDeployment(canary, {"mlops_known_good": "true"})]
    if state.canary_model:
        effects.append(TagModel(state.canary_model, {"mlops_known_good": "true"}))
    return Decision("promote", f"analysis passed at {state.weight} % ({why}): {canary} takes 100 % and becomes the "
                               f"stable; {old} is kept as the previous stable", new, tuple(effects),
                    alert="deployment_changed", facts={"traffic_after": split, "previous_stable": old})


def _retire(state: EndpointState, view: Endpoint | None, policy: Policy, now: datetime) -> Decision:
    """Delete deployments that are neither the stable, the canary, the awaited candidate nor among the last N
    known-good, once they have been surplus for the retention period. Nothing with live or mirror traffic is ever
    deleted; the previous stable stays while a return to it is still possible."""
    if view is None:
        return Decision("noop", "endpoint does not exist")
    keep = set(state.live())
    keep.update(state.retained[:policy.retain_known_good])
    if state.previous_stable and state.promoted_at is not None and now - state.promoted_at <= timedelta(
            minutes=policy.rollback_window_minutes):
        keep.add(state.previous_stable)
    serving = {n for n, v in view.traffic.items() if v} | {n for n, v in view.mirror_traffic.items() if v}
    # Only deployments the automation created: a person's own deployment (a blue/green test at 0 %) is theirs.
    existing = {d.name for d in view.deployments if d.tags.get(OWNER_TAG) == OWNER_VALUE}
    since = dict(state.surplus)
    extra = sorted(n for n in existing - keep - serving if n not in since)
    due = sorted(n for n, t in since.items() if n in existing and n not in keep and n not in serving
                 and now - datetime.fromisoformat(t) >= timedelta(minutes=policy.retention_minutes))
    # Forget entries for deployments that are gone or needed again.
    surplus = tuple((n, t) for n, t in sorted({**since, **{n: now.isoformat() for n in extra}}.items())
                    if n in existing and n not in keep and n not in due)
    retained = tuple(n for n in state.retained if n in existing and n not in due)
    if not due:
        if surplus != state.surplus or retained != state.retained:
            return Decision("noop", "retention clock updated", replace(state, surplus=surplus, retained=retained))
        return Decision("noop", "nothing to do")
    new = replace(state, surplus=surplus, retained=retained)
    return Decision("retire", f"retired {', '.join(due)}: not the stable and not among the last "
                              f"{policy.retain_known_good} known-good after {policy.retention_minutes} min",
                    new, tuple(DeleteDeployment(n) for n in due), alert="deployment_retired",
                    facts={"retired": due})

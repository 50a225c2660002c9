"""Pure decisions: quality gate, rollout split, drift response, failed-run retry. Facts in, Decision out; no I/O."""
from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from shared.config import Policy
from shared.domain import Deployment, Endpoint

# Failure texts that mean the node went away, not that the code is wrong: worth another attempt.
TRANSIENT_FAILURES = ("preempt", "low priority", "low-priority", "lowpriority", "spot", "evict",
                      "node deallocated", "deallocated", "capacity", "transient")
# Matched as whole words (a prefix like "preempt" may go on: "preempted", "preemption"): a substring test took
# "KeyError: 'hotspot_count'" for a spot eviction and retried a bug. "_" counts as part of a word.
_TRANSIENT_WORDS = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(re.escape(p) for p in TRANSIENT_FAILURES) +
                              r")(?:ed|ion|ions|s|ing)?(?![A-Za-z0-9_])", re.IGNORECASE)


class Action(str, enum.Enum):
    APPROVE = "approve"
    REJECT = "reject"
    ROLLBACK = "rollback"
    RETRAIN = "retrain"
    HOLD = "hold"  # act later or not at all (freeze, cooldown); the alert still goes out
    RECORD = "record"  # nothing to do but keep the fact (resolved alert)
    RETRY = "retry"
    GIVE_UP = "give_up"


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    traffic: dict[str, int] = field(default_factory=dict)  # the split to set, when the action moves traffic
    target: str = ""  # deployment traffic moves to (rollback)
    mark_bad: tuple[str, ...] = ()  # deployments to mark rolled back


def _fmt(x: float) -> str:
    return f"{x:.4f}".rstrip("0").rstrip(".")


def gate(candidate: Mapping[str, float], champion: Mapping[str, float] | None, policy: Policy) -> Decision:
    """Approve when the primary metric clears the floor AND beats the champion by the margin AND no guard
    metric (lower is better) regresses beyond the tolerance. The reason lists every check made."""
    p = policy.primary_metric
    if p not in candidate:
        return Decision(Action.REJECT, f"run logged no {p!r} metric (logged: {', '.join(sorted(candidate)) or 'none'})")
    value = float(candidate[p])
    if not math.isfinite(value):  # NaN compares False with everything: it would slip past every check below
        return Decision(Action.REJECT, f"{p} is {value}, not a number the gate can rank")
    if value < policy.min_primary:
        return Decision(Action.REJECT, f"{p} {_fmt(value)} is below the minimum {_fmt(policy.min_primary)}")
    checks = [f"{p} {_fmt(value)} ≥ minimum {_fmt(policy.min_primary)}"]
    if champion and p in champion and not math.isfinite(float(champion[p])):
        checks.append(f"champion's {p} is {float(champion[p])}: judged on the floor alone")
    elif champion and p in champion:
        best = float(champion[p])
        gain = value - best
        if gain <= 0 or gain < policy.min_improvement:
            return Decision(Action.REJECT, f"{p} {_fmt(value)} does not beat the champion's {_fmt(best)} by the "
                                           f"margin {_fmt(policy.min_improvement)} (change {gain:+.4f})")
        checks.append(f"beats champion {_fmt(best)} by {gain:+.4f}")
        for g in policy.guard_metrics:
            if g not in champion:
                continue
            if not math.isfinite(float(champion[g])):
                checks.append(f"champion's {g} is {float(champion[g])}: guard not compared")
                continue
            if g not in candidate:
                return Decision(Action.REJECT, f"guard metric {g!r} missing from the run, champion has it")
            if not math.isfinite(float(candidate[g])):
                return Decision(Action.REJECT, f"guard metric {g} is {float(candidate[g])}, not a number")
            worse = float(candidate[g]) - float(champion[g])
            if worse > policy.guard_tolerance:
                return Decision(Action.REJECT, f"guard {g} regressed {_fmt(float(champion[g]))} → "
                                               f"{_fmt(float(candidate[g]))} (more than {_fmt(policy.guard_tolerance)})")
            checks.append(f"{g} {_fmt(float(candidate[g]))} within {_fmt(policy.guard_tolerance)} of champion")
    else:
        checks.append("no champion yet")
    return Decision(Action.APPROVE, "; ".join(checks))


def champion(endpoint: Endpoint | None) -> Deployment | None:
    """The deployment serving the largest share that was never rolled back (ties: the older one)."""
    if endpoint is None:
        return None
    live = [d for d in endpoint.deployments if endpoint.traffic.get(d.name, 0) > 0 and not d.rolled_back]
    if not live:
        return None
    return max(live, key=lambda d: (endpoint.traffic.get(d.name, 0), -_ts(d)))


def rollout(endpoint: Endpoint | None, new: str, policy: Policy) -> Decision:
    """Split for a newly approved deployment: 100% when nothing else serves, otherwise the initial share beside
    the champion, which stays as the rollback target; any other deployment goes to 0%."""
    current = champion(endpoint)
    if current is None or current.name == new or policy.initial_traffic >= 100:
        return Decision(Action.APPROVE, f"{new} takes 100% (no other deployment serves)", traffic={new: 100},
                        target=new)
    share = policy.initial_traffic
    return Decision(Action.APPROVE, f"{new} starts at {share}% beside champion {current.name} at {100 - share}%",
                    traffic={new: share, current.name: 100 - share}, target=new)


def _ts(d: Deployment) -> float:
    return d.created_at.timestamp() if d.created_at else 0.0


def rollback_target(endpoint: Endpoint, exclude: str = "") -> tuple[Deployment | None, tuple[str, ...]]:
    """The last known-good deployment that was never rolled back, and the deployments to mark bad.

    The newest deployment that serves traffic is the suspect: never a target. Nothing that was itself rolled
    back is ever a target again.
    """
    serving = [d for d in endpoint.deployments if endpoint.traffic.get(d.name, 0) > 0]
    suspect = max(serving, key=_ts) if serving else None
    candidates = [d for d in endpoint.deployments
                  if d.known_good and not d.rolled_back and d is not suspect and d.name != exclude]
    if not candidates:
        return None, ()
    target = max(candidates, key=_ts)
    bad = tuple(d.name for d in serving if d.name != target.name)
    return target, bad


@dataclass(frozen=True)
class DriftFacts:
    """What the drift decision looks at; gathered by the handler from current state."""

    endpoint: Endpoint | None
    resolved: bool
    now: datetime
    last_automatic_change: datetime | None  # newest automated rollback/retrain on this endpoint (audit trail)
    newest_data: tuple[str, str] | None  # (asset, version) to retrain on


def on_drift(f: DriftFacts, policy: Policy) -> Decision:
    """Roll back when a recent traffic change has a known-good predecessor; otherwise retrain on the newest data.
    Resolved alerts are only recorded; the freeze switch and the cooldown hold every change."""
    if f.resolved:
        return Decision(Action.RECORD, "alert resolved: recorded, nothing to do")
    if policy.freeze:
        return Decision(Action.HOLD, "freeze switch (MLOPS_FREEZE) is on: no automatic change, alert only")
    if f.last_automatic_change is not None:
        until = f.last_automatic_change + timedelta(minutes=policy.cooldown_minutes)
        if f.now < until:
            return Decision(Action.HOLD, f"cooldown: last automatic change at {f.last_automatic_change:%H:%M:%S}, "
                                         f"next allowed after {until:%H:%M:%S}")
    ep = f.endpoint
    changed = ep.traffic_changed_at if ep else None
    if ep is not None and changed is not None and f.now - changed <= timedelta(minutes=policy.rollback_window_minutes):
        target, bad = rollback_target(ep)
        if target is not None:
            age = int((f.now - changed).total_seconds() // 60)
            return Decision(Action.ROLLBACK, f"traffic changed {age} min ago (window {policy.rollback_window_minutes} "
                                             f"min) and {target.name} is the last known-good deployment",
                            traffic={target.name: 100}, target=target.name, mark_bad=bad)
    if f.newest_data is None:
        return Decision(Action.RECORD, "no recent rollout to undo and no data asset known to retrain on")
    asset, version = f.newest_data
    why = "no traffic change within the window" if ep is None or changed is None or \
        f.now - changed > timedelta(minutes=policy.rollback_window_minutes) else "no known-good deployment to return to"
    return Decision(Action.RETRAIN, f"{why}: retrain on {asset}:{version}")


def on_run_failed(status: str, error: str, attempt: int, policy: Policy) -> Decision:
    """Retry a failure that looks like lost capacity (e.g. a preempted low-priority node), up to max_attempts."""
    if status.lower() == "canceled":
        return Decision(Action.GIVE_UP, "run was canceled: not retried")
    found = _TRANSIENT_WORDS.search(error)
    hit = found.group(1).lower() if found else None
    if hit is None:
        return Decision(Action.GIVE_UP, "failure is not transient: fix and rerun by hand")
    if attempt >= policy.max_attempts:
        return Decision(Action.GIVE_UP, f"transient failure ({hit!r}) but attempt {attempt} of {policy.max_attempts} "
                                        "was the last")
    return Decision(Action.RETRY, f"transient failure ({hit!r}): attempt {attempt + 1} of {policy.max_attempts}")

"""Pure decisions: quality gate and failed-run retry. Facts in, Decision out; no I/O. Rollouts, rollbacks and
approvals are decided per endpoint in shared/rollout.py."""
from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from shared.config import Policy

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

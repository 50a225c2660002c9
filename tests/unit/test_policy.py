"""Pure decisions as tables: gate and retry (rollouts and rollbacks: test_rollout.py)."""
from datetime import datetime, timedelta, timezone

import pytest

from shared import policy as rules
from shared.config import Policy
from shared.domain import TAG_KNOWN_GOOD, TAG_ROLLED_BACK, Deployment

A = rules.Action
P = Policy(min_primary=0.70, min_improvement=0.005, guard_metrics=("logloss",), guard_tolerance=0.02)


@pytest.mark.parametrize("candidate, champion, action, why", [
    ({"auc": 0.80, "logloss": 0.45}, None, A.APPROVE, "no champion yet"),
    ({"auc": 0.65, "logloss": 0.45}, None, A.REJECT, "below the minimum"),
    ({"logloss": 0.45}, None, A.REJECT, "logged no 'auc'"),
    ({"auc": 0.86, "logloss": 0.40}, {"auc": 0.84, "logloss": 0.41}, A.APPROVE, "beats champion"),
    ({"auc": 0.842, "logloss": 0.40}, {"auc": 0.84, "logloss": 0.41}, A.REJECT, "does not beat"),  # under margin
    ({"auc": 0.84, "logloss": 0.40}, {"auc": 0.84, "logloss": 0.41}, A.REJECT, "does not beat"),  # a tie
    ({"auc": 0.83, "logloss": 0.40}, {"auc": 0.84, "logloss": 0.41}, A.REJECT, "does not beat"),
    ({"auc": 0.90, "logloss": 0.45}, {"auc": 0.84, "logloss": 0.41}, A.REJECT, "guard logloss regressed"),
    ({"auc": 0.90, "logloss": 0.425}, {"auc": 0.84, "logloss": 0.41}, A.APPROVE, "within"),
    ({"auc": 0.90}, {"auc": 0.84, "logloss": 0.41}, A.REJECT, "guard metric 'logloss' missing"),
    ({"auc": 0.90}, {"auc": 0.84}, A.APPROVE, "beats champion"),  # champion without the guard: nothing to compare
    ({"auc": float("nan"), "logloss": 0.4}, None, A.REJECT, "not a number"),  # NaN is never below a floor
    ({"auc": float("inf"), "logloss": 0.4}, {"auc": 0.84, "logloss": 0.41}, A.REJECT, "not a number"),
    ({"auc": 0.90, "logloss": float("nan")}, {"auc": 0.84, "logloss": 0.41}, A.REJECT, "guard metric logloss is nan"),
    # a champion registered with a broken metric is not a yardstick: say so instead of "beats it by +nan"
    ({"auc": 0.80, "logloss": 0.4}, {"auc": float("nan"), "logloss": 0.41}, A.APPROVE,
     "champion's auc is nan: judged on the floor alone"),
    ({"auc": 0.90, "logloss": 0.4}, {"auc": 0.84, "logloss": float("nan")}, A.APPROVE, "champion's logloss is nan"),
])
def test_gate(candidate, champion, action, why):
    d = rules.gate(candidate, champion, P)
    assert d.action is action
    assert why in d.reason
    assert not (champion and "no champion yet" in d.reason), "a champion was given: the reason must not deny it"


def test_gate_uses_the_configured_primary_metric():
    p = Policy(primary_metric="f1", min_primary=0.5, guard_metrics=())
    assert rules.gate({"f1": 0.6, "auc": 0.1}, None, p).action is A.APPROVE
    assert rules.gate({"f1": 0.4, "auc": 0.99}, None, p).action is A.REJECT


T0 = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)


def dep(name, minutes_ago, *, good=False, bad=False):
    tags = {}
    if good:
        tags[TAG_KNOWN_GOOD] = "true"
    if bad:
        tags[TAG_ROLLED_BACK] = "true"
    return Deployment(name=name, model_name="m", model_version=name[1:], tags=tags,
                      created_at=T0 - timedelta(minutes=minutes_ago))


@pytest.mark.parametrize("status, error, attempt, action", [
    ("Failed", "Low priority node was preempted", 1, A.RETRY),
    ("Failed", "Spot VM evicted", 2, A.RETRY),
    ("Failed", "node preempted", 3, A.GIVE_UP),  # max_attempts 3: that was the last
    ("Failed", "KeyError: 'churn'", 1, A.GIVE_UP),
    ("Canceled", "preempted", 1, A.GIVE_UP),
])
def test_failed_run_retry(status, error, attempt, action):
    assert rules.on_run_failed(status, error, attempt, Policy(max_attempts=3)).action is action

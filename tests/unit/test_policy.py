"""Pure decisions as tables: gate, rollout split, rollback-or-retrain, retry."""
from datetime import datetime, timedelta, timezone

import pytest

from shared import policy as rules
from shared.config import Policy
from shared.domain import TAG_KNOWN_GOOD, TAG_ROLLED_BACK, TAG_TRAFFIC_CHANGED, Deployment, Endpoint

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


def ep(traffic, deployments, changed_minutes_ago=None):
    tags = {TAG_TRAFFIC_CHANGED: (T0 - timedelta(minutes=changed_minutes_ago)).isoformat()} \
        if changed_minutes_ago is not None else {}
    return Endpoint(name="churn-endpoint", deployments=tuple(deployments), traffic=traffic, tags=tags)


@pytest.mark.parametrize("endpoint, initial, expected", [
    (None, 10, {"v2": 100}),
    (ep({}, []), 10, {"v2": 100}),
    (ep({"v1": 100}, [dep("v1", 60, good=True)]), 10, {"v2": 10, "v1": 90}),
    (ep({"v1": 100}, [dep("v1", 60, good=True)]), 25, {"v2": 25, "v1": 75}),
    (ep({"v1": 100}, [dep("v1", 60, good=True)]), 100, {"v2": 100}),
    # a canary in flight (v2) is replaced: the champion keeps its share, the old canary drops to 0
    (ep({"v1": 90, "v2": 10}, [dep("v1", 60, good=True), dep("v2", 10)]), 10, {"v3": 10, "v1": 90}),
    # a rolled-back deployment is never the champion even if it still had traffic
    (ep({"v1": 50, "v2": 50}, [dep("v1", 60, good=True), dep("v2", 10, bad=True)]), 10, {"v3": 10, "v1": 90}),
])
def test_rollout_split(endpoint, initial, expected):
    new = next(iter(expected))  # the first key of each expected split is the new deployment
    d = rules.rollout(endpoint, new, Policy(initial_traffic=initial))
    assert d.traffic == expected
    assert sum(d.traffic.values()) == 100


def facts(endpoint, *, resolved=False, last_change=None, data=("churn", "4")):
    return rules.DriftFacts(endpoint=endpoint, resolved=resolved, now=T0,
                            last_automatic_change=T0 - timedelta(minutes=last_change) if last_change is not None else None,
                            newest_data=data)


CANARY = ep({"v1": 90, "v2": 10}, [dep("v1", 300, good=True), dep("v2", 5)], changed_minutes_ago=5)


@pytest.mark.parametrize("f, policy, action, target, bad", [
    (facts(CANARY), Policy(), A.ROLLBACK, "v1", ("v2",)),
    (facts(CANARY, resolved=True), Policy(), A.RECORD, "", ()),
    (facts(CANARY), Policy(freeze=True), A.HOLD, "", ()),
    (facts(CANARY, last_change=10), Policy(cooldown_minutes=30), A.HOLD, "", ()),
    (facts(CANARY, last_change=45), Policy(cooldown_minutes=30), A.ROLLBACK, "v1", ("v2",)),
    # the rollout is older than the window: retrain on the newest data instead
    (facts(ep({"v1": 90, "v2": 10}, [dep("v1", 900, good=True), dep("v2", 600)], changed_minutes_ago=600)),
     Policy(rollback_window_minutes=120), A.RETRAIN, "", ()),
    # only one deployment: nothing to return to
    (facts(ep({"v1": 100}, [dep("v1", 5, good=True)], changed_minutes_ago=5)), Policy(), A.RETRAIN, "", ()),
    # never roll back onto a deployment that was itself rolled back
    (facts(ep({"v3": 100}, [dep("v1", 900, good=True, bad=True), dep("v3", 5, good=True)], changed_minutes_ago=5)),
     Policy(), A.RETRAIN, "", ()),
    # after a rollback (v2 rolled back, v1 at 100%), a new alert within the window does not flip back to v2
    (facts(ep({"v1": 100, "v2": 0}, [dep("v1", 300, good=True), dep("v2", 20, good=True, bad=True)],
              changed_minutes_ago=40)), Policy(cooldown_minutes=30), A.RETRAIN, "", ()),
    (facts(None, data=None), Policy(), A.RECORD, "", ()),
])
def test_drift_response(f, policy, action, target, bad):
    d = rules.on_drift(f, policy)
    assert d.action is action, d.reason
    assert d.target == target
    assert d.mark_bad == bad
    if action is A.ROLLBACK:
        assert d.traffic == {target: 100}


def test_rollback_target_picks_the_newest_known_good_that_is_not_the_suspect():
    e = ep({"v2": 90, "v3": 10}, [dep("v1", 900, good=True), dep("v2", 300, good=True), dep("v3", 5)],
           changed_minutes_ago=5)
    target, bad = rules.rollback_target(e)
    assert target.name == "v2" and bad == ("v3",)


@pytest.mark.parametrize("status, error, attempt, action", [
    ("Failed", "Low priority node was preempted", 1, A.RETRY),
    ("Failed", "Spot VM evicted", 2, A.RETRY),
    ("Failed", "node preempted", 3, A.GIVE_UP),  # max_attempts 3: that was the last
    ("Failed", "KeyError: 'churn'", 1, A.GIVE_UP),
    ("Canceled", "preempted", 1, A.GIVE_UP),
])
def test_failed_run_retry(status, error, attempt, action):
    assert rules.on_run_failed(status, error, attempt, Policy(max_attempts=3)).action is action

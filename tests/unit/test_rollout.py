"""The rollout controller's pure decisions: phases, analysis, promotion, rollback, approval, retirement, names.

Each of the review's defects has a test here named after it; the old policy (policy.rollback_target / on_drift /
rollout) failed each of them.
"""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from shared.config import Policy
from shared.domain import OWNER_TAG, OWNER_VALUE, Deployment, Endpoint, Health, deployment_name_for
from shared.errors import InvalidPayload
from shared.rollout import (
    ApprovalDecision,
    DeleteDeployment,
    DriftSignal,
    EndpointState,
    Evidence,
    ManualRollback,
    NewModel,
    Phase,
    Retrain,
    SetTraffic,
    Tick,
    Verdict,
    analyze,
    bootstrap,
    decide,
)

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
P = Policy()
EP = "churn-endpoint"


def view(traffic: dict[str, int], *names: str, failed: tuple[str, ...] = ()) -> Endpoint:
    names = names or tuple(traffic)
    deps = tuple(Deployment(name=n, model_name="churn-model", model_version=n.rsplit("v", 1)[-1],
                            tags={OWNER_TAG: OWNER_VALUE}, state="Failed" if n in failed else "Succeeded")
                 for n in names)
    return Endpoint(name=EP, deployments=deps, traffic=dict(traffic))


def healthy(n: int = 500, errors: float = 0.0, p95: float = 20.0) -> Health:
    return Health(endpoint=EP, deployment="x", window_minutes=10, requests=n, error_share=errors, latency_p95_ms=p95)


def new(version: int) -> NewModel:
    return NewModel(model="churn-model", version=str(version), deployment=f"churn-model-v{version}",
                    data_version=str(version), gate_reason="auc 0.9", approval_id=f"approval-{version}")


def run(state: EndpointState, event, v: Endpoint | None, now: datetime, policy: Policy = P):
    d = decide(state, event, v, policy, now)
    return d, (d.state or state)


def apply_traffic(v: Endpoint, d) -> Endpoint:
    for e in d.effects:
        if isinstance(e, SetTraffic):
            v = replace(v, traffic={n: e.split.get(n, 0) for n in {*v.traffic, *e.split}})
    return v


def first_model() -> tuple[EndpointState, Endpoint]:
    s = EndpointState(endpoint=EP)
    d, s = run(s, new(1), None, T0)
    assert d.action == "deploy" and s.stable == "churn-model-v1" and s.traffic == {"churn-model-v1": 100}
    return s, view({"churn-model-v1": 100})


def canary_at_10() -> tuple[EndpointState, Endpoint]:
    s, v = first_model()
    v = view({"churn-model-v1": 100, "churn-model-v2": 0})
    d, s = run(s, new(2), v, T0 + timedelta(hours=3))
    return s, apply_traffic(v, d)


def promote_v2() -> tuple[EndpointState, Endpoint, datetime]:
    s, v = canary_at_10()
    now = T0 + timedelta(hours=3)
    for _ in range(2):
        now += timedelta(minutes=P.bake_minutes)
        d, s = run(s, Tick(Evidence(healthy(), healthy())), v, now)
        v = apply_traffic(v, d)
    assert d.action == "promote" and s.stable == "churn-model-v2" and s.phase is Phase.PROMOTED
    return s, v, now


def test_a_canary_advances_10_50_100_on_passing_analysis_and_is_promoted_to_stable():
    s, v = canary_at_10()
    assert s.phase is Phase.PROGRESSING and v.traffic == {"churn-model-v1": 90, "churn-model-v2": 10}
    d, s2 = run(s, Tick(Evidence(healthy(), healthy())), v, T0 + timedelta(hours=3, minutes=1))
    assert d.action == "noop" and "bakes" in d.reason, "no analysis before the bake time"
    s, v, now = promote_v2()
    assert v.traffic == {"churn-model-v1": 0, "churn-model-v2": 100}
    assert s.previous_stable == "churn-model-v1" and s.retained == ("churn-model-v1",)


def test_too_few_requests_is_inconclusive_then_holds_and_alerts_once():
    s, v = canary_at_10()
    now = T0 + timedelta(hours=3, minutes=P.bake_minutes)
    d, s = run(s, Tick(Evidence(healthy(n=3), healthy())), v, now)
    assert d.action == "noop" and "inconclusive" in d.reason and s.inconclusive_since == now
    d, s = run(s, Tick(Evidence(healthy(n=3), healthy())), v, now + timedelta(minutes=P.analysis_max_wait_minutes))
    assert d.action == "hold" and d.alert == "rollout_held" and s.held and not d.effects
    d, _ = run(s, Tick(Evidence(healthy(n=3), healthy())), v, now + timedelta(minutes=P.analysis_max_wait_minutes + 1))
    assert d.alert == "", "held once, not alerted every minute"


def test_failed_analysis_up_to_the_limit_aborts_to_the_stable_and_marks_the_canary():
    s, v = canary_at_10()
    now = T0 + timedelta(hours=3)
    bad = Evidence(healthy(errors=0.3), healthy())
    assert analyze(bad, P)[0] is Verdict.FAILED
    for _ in range(P.analysis_failure_limit):
        now += timedelta(minutes=P.bake_minutes)
        d, s = run(s, Tick(bad), v, now)
    assert d.action == "abort" and s.phase is Phase.ABORTED and s.traffic == {"churn-model-v1": 100}
    assert "churn-model-v2" in s.rolled_back and d.alert == "rollback"


def test_slow_canary_fails_analysis_on_p95_against_the_stable():
    verdict, why = analyze(Evidence(healthy(p95=120), healthy(p95=20)), P)
    assert verdict is Verdict.FAILED and "p95" in why


def test_millisecond_noise_in_p95_does_not_fail_analysis():
    verdict, _ = analyze(Evidence(healthy(p95=4), healthy(p95=2)), P)  # twice as slow, by 2 ms: noise
    assert verdict is Verdict.SUCCESSFUL


def test_defect_1_persistent_drift_never_cascades_past_one_promotion():
    s, v, now = promote_v2()
    d, s = run(s, DriftSignal(summary="psi 0.4", newest_data=("churn", "2"), data_status="stable"), v,
               now + timedelta(minutes=5))
    v = apply_traffic(v, d)
    assert d.action == "rollback" and s.stable == "churn-model-v1" and v.traffic["churn-model-v1"] == 100
    # Drift persists past the cooldown but inside the rollback window: v1 is the stable, never the suspect.
    later = now + timedelta(minutes=P.cooldown_minutes + 10)
    d, s2 = run(s, DriftSignal(summary="psi 0.5", newest_data=("churn", "2"), data_status="stable"), v, later)
    assert d.action == "hold" and not d.changes_traffic and "churn-model-v1" not in s2.rolled_back


def test_defect_2_a_manual_rollback_does_not_hide_the_automatic_one_from_the_cooldown():
    s, v = canary_at_10()
    now = T0 + timedelta(hours=4)
    d, s = run(s, DriftSignal(summary="psi"), v, now)
    assert d.action == "rollback"
    s = replace(s, last_manual=None)
    d, s = run(s, ManualRollback(actor="http:bob", reason="double-check", to="churn-model-v1"), v,
               now + timedelta(minutes=1))
    d, _ = run(s, DriftSignal(summary="psi", newest_data=("churn", "3")), v, now + timedelta(minutes=5))
    assert d.action == "hold" and "cooldown" in d.reason


def test_defect_5_two_decisions_from_one_read_commit_once():
    # The state record's version is what makes the second commit fail (SqliteStateStore / TableStateStore);
    # here: both decisions are computed from the same read and are equal, so whichever commits, one effect set.
    s, v = canary_at_10()
    now = T0 + timedelta(hours=4)
    a = decide(s, DriftSignal(summary="a"), v, P, now)
    b = decide(s, DriftSignal(summary="b"), v, P, now)
    assert a.effects == b.effects and a.state.version == s.version


def test_defect_6_a_failed_stable_is_never_the_target_of_a_rollback():
    s, v = canary_at_10()
    broken = view(v.traffic, failed=("churn-model-v1",))
    d, _ = run(s, DriftSignal(summary="psi"), broken, T0 + timedelta(hours=4))
    assert d.action == "hold" and not d.effects and "cannot serve" in d.reason
    s, v, now = promote_v2()
    d, _ = run(s, DriftSignal(summary="psi", newest_data=("churn", "3")), view(v.traffic, failed=("churn-model-v1",)),
               now + timedelta(minutes=5))
    assert d.action != "rollback"


def test_a_failed_canary_is_aborted_on_the_next_tick():
    s, v = canary_at_10()
    d, s = run(s, Tick(), view(v.traffic, failed=("churn-model-v2",)), T0 + timedelta(hours=3, minutes=1))
    assert d.action == "abort" and s.traffic == {"churn-model-v1": 100}


def test_defect_8_drift_retraining_is_bounded_and_never_on_data_that_cannot_help():
    s, v, now = promote_v2()
    now += timedelta(hours=5)  # past the rollback window: retrain
    for status in ("stable", "tried", "running"):
        d, _ = run(s, DriftSignal(summary="psi", newest_data=("churn", "2"), data_status=status), v, now)
        assert d.action == "hold" and not d.effects, status
    d, _ = run(s, DriftSignal(summary="psi", newest_data=None), v, now)
    assert d.action == "hold" and "new data is needed" in d.reason
    budget = replace(P, retrain_budget=2, cooldown_minutes=0)
    for i in range(2):
        d, s = run(s, DriftSignal(summary="psi", newest_data=("churn", f"{3 + i}")), v, now + timedelta(minutes=i),
                   budget)
        assert d.action == "retrain" and d.effects == (Retrain("churn", f"{3 + i}"),)
    d, _ = run(s, DriftSignal(summary="psi", newest_data=("churn", "5")), v, now + timedelta(minutes=3), budget)
    assert d.action == "hold" and "budget" in d.reason
    d, _ = run(s, DriftSignal(summary="psi", newest_data=("churn", "5")), v, now + timedelta(hours=25), budget)
    assert d.action == "retrain", "the budget is per 24 h"


def test_defect_9_freeze_holds_and_says_so():
    s, v = canary_at_10()
    frozen = replace(P, freeze=True)
    d, _ = run(s, DriftSignal(summary="psi"), v, T0 + timedelta(hours=4), frozen)
    assert d.action == "hold" and "freeze" in d.reason and not d.effects
    d, _ = run(s, new(3), v, T0 + timedelta(hours=4), frozen)
    assert d.action == "hold" and not d.effects


def test_defect_10_surplus_deployments_are_retired_after_retention_but_never_while_serving():
    s, v, now = promote_v2()
    s, v2 = s, view({"churn-model-v2": 100}, "churn-model-v0", "churn-model-v1", "churn-model-v2")
    d, s = run(s, Tick(), v2, now + timedelta(minutes=1))
    assert d.action == "noop" and dict(s.surplus).keys() == {"churn-model-v0"}
    d, s = run(s, Tick(), v2, now + timedelta(minutes=P.retention_minutes + 2))
    assert d.action == "retire" and d.effects == (DeleteDeployment("churn-model-v0"),)
    assert "churn-model-v1" not in d.facts["retired"], "the previous stable is kept (N = 1 retained)"
    serving = view({"churn-model-v2": 90, "churn-model-v0": 10}, "churn-model-v0", "churn-model-v1", "churn-model-v2")
    d, _ = run(replace(s, surplus=(("churn-model-v0", T0.isoformat()),)), Tick(), serving,
               now + timedelta(days=3))
    assert not any(isinstance(e, DeleteDeployment) and e.deployment == "churn-model-v0" for e in d.effects)


def test_a_newer_model_during_a_rollout_replaces_the_canary_without_marking_it_bad():
    s, v = canary_at_10()
    v = view(v.traffic | {"churn-model-v3": 0})
    d, s = run(s, new(3), v, T0 + timedelta(hours=3, minutes=2))
    assert d.action == "deploy" and s.canary == "churn-model-v3" and s.traffic == {"churn-model-v1": 90,
                                                                                    "churn-model-v3": 10}
    assert "churn-model-v2" not in s.rolled_back and dict(s.surplus).keys() == {"churn-model-v2"}


def test_manual_approval_waits_then_a_named_person_deploys_single_use_and_expiring():
    manual = replace(P, approval="manual")
    s, v = first_model()
    v = view({"churn-model-v1": 100, "churn-model-v2": 0})
    d, s = run(s, new(2), v, T0, manual)
    assert d.action == "await_approval" and s.phase is Phase.AWAITING_APPROVAL and not d.effects
    assert d.alert == "approval_requested"
    wrong = decide(s, ApprovalDecision("guess", True, "user:eve", "ok"), v, manual, T0)
    assert wrong.action == "refuse"
    d, s2 = run(s, ApprovalDecision("approval-2", True, "user:ana@contoso.com", "looks good"), v,
                T0 + timedelta(hours=1), manual)
    assert d.action == "approve_deploy" and s2.canary == "churn-model-v2" and s2.candidate is None
    tags = [e for e in d.effects if type(e).__name__ == "TagModel"][0].tags
    assert tags["approved_by"] == "user:ana@contoso.com" and "approved_at" in tags
    again = decide(s2, ApprovalDecision("approval-2", True, "user:ana@contoso.com", "twice"), v, manual, T0)
    assert again.action == "refuse", "single use"
    late = decide(s, ApprovalDecision("approval-2", True, "user:ana@contoso.com", "late"), v, manual,
                  T0 + timedelta(hours=manual.approval_ttl_hours))
    assert late.action == "refuse" and "expired" in late.reason
    d, s3 = run(s, Tick(), v, T0 + timedelta(hours=manual.approval_ttl_hours))
    assert d.action == "expire_approval" and s3.candidate is None and s3.phase is Phase.PROMOTED


def test_defect_4_deployment_names_are_valid_deterministic_and_collision_free():
    import re

    valid = re.compile(r"^[a-z][a-z0-9-]{1,30}[a-z0-9]$")
    long = "customer-churn-prediction-model-for-emea"
    names = {deployment_name_for(long, str(v)) for v in range(1, 200)}
    assert len(names) == 199 and all(valid.match(n) for n in names)
    assert deployment_name_for(long, "1") == deployment_name_for(long, "1")
    assert deployment_name_for(long + "-a", "1") != deployment_name_for(long + "-b", "1")
    assert valid.match(deployment_name_for("9lives", "12")) and valid.match(deployment_name_for("x" * 40 + "-", "3"))
    for bad in ("1.1", "1-2", "0", ""):
        with pytest.raises(InvalidPayload):
            deployment_name_for("churn-model", bad)


def test_state_records_round_trip_through_json():
    s, v = canary_at_10()
    d, s = run(s, new(3), view(v.traffic | {"churn-model-v3": 0}), T0 + timedelta(hours=4))
    back = EndpointState.from_json(s.to_json(), "7")
    assert back == replace(s, version="7")


PROMOTED = EndpointState(endpoint=EP, phase=Phase.PROMOTED, stable="churn-model-v2", stable_model="churn-model:2",
                         previous_stable="churn-model-v1", previous_model="churn-model:1", promoted_at=T0,
                         retained=("churn-model-v1",), traffic={"churn-model-v2": 100})
CANARY = EndpointState(endpoint=EP, phase=Phase.PROGRESSING, stable="churn-model-v1", stable_model="churn-model:1",
                       canary="churn-model-v2", canary_model="churn-model:2", step=0, weight=10,
                       step_started_at=T0, traffic={"churn-model-v1": 90, "churn-model-v2": 10})
TWO = view({"churn-model-v1": 0, "churn-model-v2": 100})
DATA = ("churn", "4")


def ago(state: EndpointState, minutes: int, action: str = "rollback") -> EndpointState:
    from shared.rollout import Change

    return replace(state, last_automatic=Change(action, "automation", T0 + timedelta(minutes=5 - minutes)))


@pytest.mark.parametrize("state, signal, policy, minutes, action, to", [
    (CANARY, DriftSignal(summary="s", newest_data=DATA), P, 5, "rollback", "churn-model-v1"),
    (CANARY, DriftSignal(resolved=True), P, 5, "record", None),
    (CANARY, DriftSignal(summary="s"), replace(P, freeze=True), 5, "hold", None),
    (ago(CANARY, 10), DriftSignal(summary="s"), replace(P, cooldown_minutes=30), 5, "hold", None),
    (ago(CANARY, 45), DriftSignal(summary="s"), replace(P, cooldown_minutes=30), 5, "rollback", "churn-model-v1"),
    (ago(CANARY, 10, "deploy"), DriftSignal(summary="s"), P, 5, "rollback", "churn-model-v1"),  # deploys: no cooldown
    (PROMOTED, DriftSignal(summary="s", newest_data=DATA), P, 5, "rollback", "churn-model-v1"),
    # the promotion is older than the window: retrain on the newest data instead
    (PROMOTED, DriftSignal(summary="s", newest_data=DATA), replace(P, rollback_window_minutes=120), 600, "retrain",
     None),
    # only one deployment ever: nothing to return to
    (replace(PROMOTED, previous_stable="", retained=()), DriftSignal(summary="s", newest_data=DATA), P, 5, "retrain",
     None),
    # never onto a deployment that was itself rolled back
    (replace(PROMOTED, rolled_back=("churn-model-v1",)), DriftSignal(summary="s", newest_data=DATA), P, 5, "retrain",
     None),
    (replace(PROMOTED, previous_stable=""), DriftSignal(summary="s", newest_data=None), P, 5, "hold", None),
])
def test_drift_response(state, signal, policy, minutes, action, to):
    v = TWO if state.phase is Phase.PROMOTED else view(state.traffic)
    d = decide(state, signal, v, policy, T0 + timedelta(minutes=minutes))
    assert d.action == action, d.reason
    assert d.facts.get("to_deployment") == to
    if to:
        assert d.state.traffic == {to: 100} and any(isinstance(e, SetTraffic) for e in d.effects)
    else:
        assert not any(isinstance(e, SetTraffic) for e in d.effects)


# --- found by review -------------------------------------------------------------------------------------

OWNED = {OWNER_TAG: OWNER_VALUE}
MANUAL = replace(P, approval="manual")


def test_an_endpoint_found_mid_rollout_starts_baking_and_moves_on():
    # An endpoint left at 90/10 by the pre-controller code (the "stays there forever") is bootstrapped.
    v = view({"churn-model-v1": 90, "churn-model-v2": 10})
    v = replace(v, deployments=(replace(v.deployments[0], tags={"mlops_known_good": "true"}), v.deployments[1]))
    s = bootstrap(EP, v)
    assert s.phase is Phase.PROGRESSING and s.step_started_at is None
    now = T0
    for _ in range(24):  # a day of hourly ticks with excellent evidence
        now += timedelta(hours=1)
        d, s = run(s, Tick(Evidence(healthy(), healthy())), v, now)
        v = apply_traffic(v, d)
    assert s.phase is Phase.PROMOTED and s.stable == "churn-model-v2", f"stuck at {s.weight} %: {d.reason}"


def test_failed_analysis_never_aborts_onto_a_failed_stable():
    s, v = canary_at_10()
    v = view(dict(v.traffic), "churn-model-v1", "churn-model-v2", failed=("churn-model-v1",))
    now = T0 + timedelta(hours=3)
    bad = Evidence(healthy(errors=0.3), healthy())
    for _ in range(P.analysis_failure_limit):
        now += timedelta(minutes=P.bake_minutes)
        d, s = run(s, Tick(bad), v, now)
    assert not (d.action == "abort" and s.traffic == {"churn-model-v1": 100}), \
        "100 % of traffic sent to a deployment in state Failed"


def test_a_candidate_waiting_for_approval_does_not_hide_the_return_after_a_promotion():
    s, v, now = promote_v2()
    d, s = run(s, new(3), v, now + timedelta(minutes=1), MANUAL)
    assert s.phase is Phase.AWAITING_APPROVAL
    d, s = run(s, DriftSignal(summary="psi 0.5", newest_data=("churn", "9")), v, now + timedelta(minutes=5), MANUAL)
    assert d.action == "rollback", f"drift 5 min after promotion did not return to v1: {d.action}: {d.reason}"


def test_after_an_abort_and_a_rejected_candidate_the_same_drift_does_not_cascade():
    s, v, now = promote_v2()                       # v2 stable, v1 previous, promoted at `now`
    d, s = run(s, new(3), replace(v, deployments=(*v.deployments, Deployment(
        name="churn-model-v3", model_name="churn-model", model_version="3"))), now + timedelta(minutes=1))
    v = apply_traffic(replace(v, deployments=(*v.deployments, Deployment(
        name="churn-model-v3", model_name="churn-model", model_version="3"))), d)
    drift = DriftSignal(summary="psi 0.5", newest_data=("churn", "9"), data_status="tried")
    d, s = run(s, drift, v, now + timedelta(minutes=2))
    assert d.action == "rollback" and s.phase is Phase.ABORTED   # v3 aborted: the canary was the suspect
    v = apply_traffic(v, d)
    d, s = run(s, new(4), v, now + timedelta(minutes=3), MANUAL)   # a manual candidate arrives...
    d, s = run(s, ApprovalDecision(s.candidate.approval_id, False, "user:ana", "no"), v, now + timedelta(minutes=4),
               MANUAL)                                             # ...and is rejected
    d, s = run(s, drift, v, now + timedelta(minutes=2 + P.cooldown_minutes + 1), MANUAL)  # same drift persists
    assert d.action != "rollback", f"second automatic rollback for one drift: {d.reason}"


def test_a_manual_return_to_the_previous_stable_mid_rollout_takes_the_canary_out_too():
    s, v, now = promote_v2()
    v3 = replace(v, deployments=(*v.deployments, Deployment(name="churn-model-v3", model_name="churn-model",
                                                            model_version="3")))
    d, s = run(s, new(3), v3, now + timedelta(minutes=1))
    v3 = apply_traffic(v3, d)
    assert s.phase is Phase.PROGRESSING and s.canary == "churn-model-v3"
    d, s = run(s, ManualRollback(actor="http:bob", reason="bad", to="churn-model-v1"), v3, now + timedelta(minutes=2))
    assert d.action == "rollback" and s.traffic == {"churn-model-v1": 100}
    assert s.canary == "" and "churn-model-v3" in s.rolled_back, \
        f"canary={s.canary!r} weight={s.weight} rolled_back={s.rolled_back}: v3 served and is neither cleared nor marked"


def test_retirement_never_deletes_a_deployment_the_automation_did_not_create():
    s, v, now = promote_v2()
    blue = Deployment(name="blue-by-hand", model_name="other", model_version="1", tags={})  # a person's 0 % test
    v = replace(v, deployments=(*v.deployments, blue), traffic={**v.traffic, "blue-by-hand": 0})
    pol = replace(P, retention_minutes=0)
    d, s = run(s, Tick(), v, now + timedelta(days=2), pol)
    d, s = run(s, Tick(), v, now + timedelta(days=2, minutes=1), pol)
    assert "blue-by-hand" not in d.facts.get("retired", []), "deleted a deployment not created by the automation"


def test_freeze_stops_the_tick_from_advancing_promoting_or_retiring():
    s, v = canary_at_10()
    frozen = replace(P, freeze=True)
    d, s2 = run(s, Tick(Evidence(healthy(), healthy())), v, T0 + timedelta(hours=3, minutes=P.bake_minutes), frozen)
    assert d.action not in ("advance", "promote") and not d.effects, \
        f"MLOPS_FREEZE on, yet the tick did {d.action}: {d.reason}"

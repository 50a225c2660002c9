"""Crash injection: the worker dies right after each side effect of the landing → training → registration →
rollout chain; Event Grid redelivers once the dead worker's lease has run out, and the chain converges with every
effect exactly once, and every alert delivered exactly once through the real outbox (issue 11, reliability
suite)."""
from __future__ import annotations

import pytest

from shared.local.ledger import SqliteLedger
from shared.local.outbox import SqliteOutbox
from shared.notify import Outbox, Router
from tests.helpers import EpochClock, Harness, Recorder
from tests.reliability.storm import write_figures

pytestmark = pytest.mark.slow
POINTS = ["claim", "submit_training", "register_model", "create_deployment", "set_traffic", "audit_append",
          "transition_record", "alert_admitted", "alert_stored", "outbox_enqueue"]
ALERTS = sorted([("training_started", "Training started: churn v1"),
                 ("model_registered", "Model registered: churn-model v1"),
                 ("deployment_changed", "Deployed to churn-endpoint at 100 %")])
converged: list[str] = []


class Crash(BaseException):
    """The process dies here: not an Exception, so nothing in the app catches or records it."""


def arm(h: Harness, point: str) -> dict:
    """Make the first call at ``point`` do its effect and then kill the worker."""
    fired = {"at": None}
    if point == "alert_admitted":  # dedupe let the first card through; the store has not got it yet
        tracking = h.notifier._tracking
        admit = tracking["update_incident"]

        def dies_after_admitting(key, step):
            result = admit(key, step)
            if fired["at"] is None and getattr(result, "send", False):
                fired["at"] = point
                raise Crash(point)
            return result

        tracking["update_incident"] = dies_after_admitting
        return fired
    owners = {"claim": h.rt.ledger, "audit_append": h.rt.audit, "transition_record": h.rt.audit,
              "alert_stored": h.notifier.store, "outbox_enqueue": h.notifier}
    method = {"claim": "claim", "audit_append": "append", "transition_record": "append_once",
              "alert_stored": "add", "outbox_enqueue": "notify"}.get(point, point)
    owner = owners.get(point, h.ws)
    original = getattr(owner, method)

    def first(args: tuple, result: object) -> bool:
        if point == "claim":
            return result == "new"
        if point == "transition_record":  # a rollout transition's record, which its alert follows
            return bool(args[0].facts.get("transition"))
        return True

    def crashing(*args, **kwargs):
        result = original(*args, **kwargs)
        if fired["at"] is None and first(args, result):
            fired["at"] = point
            raise Crash(point)
        return result

    setattr(owner, method, crashing)
    return fired


def pump_with_redelivery(h: Harness, clock: EpochClock) -> int:
    """Deliver every event the workspace raises; an event whose worker crashed is delivered again after the dead
    worker's lease ran out (as Event Grid would, having had no answer). Returns the redeliveries made."""
    redelivered = 0
    while True:
        h.ws.wait_for_jobs(timeout=120)
        with h._lock:
            batch, h.events = h.events, []
        if not batch:
            h.ws.wait_for_jobs(timeout=120)
            with h._lock:
                if not h.events:
                    return redelivered
            continue
        for event in batch:
            for _ in range(3):
                try:
                    h.deliver(event)
                    break
                except Crash:
                    clock.advance(400)  # past the 300 s lease of the claim the dead worker held
                    h.clock.advance(seconds=400)  # and past the 5 min lease of its endpoint transition
                    redelivered += 1


def rig(tmp_path, **policy) -> tuple[EpochClock, Recorder, Outbox, Harness]:
    """A harness whose ledger and real outbox (delivering to a recorder) share one epoch clock, so a test can step
    past leases and dedupe windows."""
    clock = EpochClock()
    teams = Recorder()
    outbox = Outbox(SqliteOutbox(tmp_path / "outbox.db", clock=clock), Router(always=[teams]), clock=clock)
    h = Harness(tmp_path, ports={"ledger": SqliteLedger(tmp_path / "ledger.db", clock=clock)}, notifier=outbox,
                **{"min_primary": 0.6, **policy})
    return clock, teams, outbox, h


@pytest.mark.parametrize("point", POINTS)
def test_a_crash_right_after_each_side_effect_converges_with_every_effect_once(tmp_path, point):
    clock, teams, outbox, h = rig(tmp_path)
    try:
        fired = arm(h, point)
        h.land("1", rows=900, seed=201, label_noise=0.15)
        redelivered = pump_with_redelivery(h, clock)
        assert fired["at"] == point and redelivered == 1
        assert [j.name for j in h.ws.list_jobs()] == ["train-churn-v1-a1"]  # one job
        assert [m.version for m in h.ws.list_models("churn-model")] == ["1"]  # one model
        assert h.traffic() == {"churn-model-v1": 100}  # one deployment, serving
        assert [d.name for d in h.ws.get_endpoint("churn-endpoint").deployments] == ["churn-model-v1"]
        assert h.rt.ledger.stats().get("processing", 0) == 0  # every claim settled
        outbox.flush(30)
        # Each alert once: the redelivery queues again what the dead worker may not have (training started, the
        # deployment after its transition's record), and the outbox drops a repeat of what it had queued.
        assert sorted((a.kind, a.title) for a in teams.sent) == ALERTS
        converged.append(point)
        write_figures("crash", {"crash_points": len(POINTS), "converged": len(converged), "points": converged})
    finally:
        h.close()
        outbox.close()


def test_a_drift_retrain_a_tick_finishes_after_a_crash_sends_one_drift_card(tmp_path):
    """The worker dies after queueing the drift card and before clearing its retrain transition; the next tick carries
    the transition out and projects it as the drift event saw it (its incident key and facts), so the outbox drops
    the repeat. It guards the queue-again above: keyed by the tick's own context, the repeat would be a new
    incident, a second drift card (the code before the queue-again sent one because it queued nothing again)."""
    from tests.integration.test_rollout_defects import data, drift, model, tick

    clock, teams, outbox, h = rig(tmp_path, env={"MLOPS_ANALYSIS_MIN_REQUESTS": "5"}, min_primary=0.5)
    try:
        data(h, "1")
        model(h, 1)
        h.clock.advance(hours=5)  # promoted long ago: nothing to roll back, so drift retrains
        data(h, "2")
        queue = outbox.notify

        def dies_after_the_drift_card(alert):
            queue(alert)
            if alert.kind == "drift_detected":
                outbox.notify = queue
                raise Crash("after the drift card")

        outbox.notify = dies_after_the_drift_card
        with pytest.raises(Crash):
            drift(h)
        h.clock.advance(minutes=6)  # past the dead worker's lease on the transition
        clock.advance(400)
        tick(h)
        outbox.flush(30)
        assert [a.kind for a in teams.sent].count("drift_detected") == 1
        [retrain] = h.decisions("retrain")
        assert retrain.facts["signal"]["metric"] == "psi"  # the drift event's facts, not the tick's
        assert sorted(j.name for j in h.ws.list_jobs()) == ["train-churn-v1-a1", "train-churn-v2-a1"]
    finally:
        h.close()
        outbox.close()


def test_a_crash_after_the_record_awaits_approval_still_sends_the_approval_request(tmp_path):
    """Awaiting approval changes only the endpoint's record. It was saved, then projected: a worker dying between
    left the run waiting for an approval nobody was asked for, and the redelivery found nothing left to decide."""
    clock, teams, outbox, h = rig(tmp_path, env={"MLOPS_APPROVAL": "manual"})
    try:
        states = h.rt.states
        save = states.save

        def dies_after_saving_the_candidate(state):
            saved = save(state)
            if state.candidate is not None:
                states.save = save
                raise Crash("after the record awaits approval")
            return saved

        states.save = dies_after_saving_the_candidate
        h.land("1", rows=900, seed=201, label_noise=0.15)
        assert pump_with_redelivery(h, clock) == 1
        outbox.flush(30)
        assert [a.kind for a in teams.sent].count("approval_requested") == 1, [a.kind for a in teams.sent]
        assert h.ws.get_endpoint("churn-endpoint") is None or h.traffic() == {}  # nothing deployed unapproved
        assert h.rt.states.load("churn-endpoint").candidate.version == "1"
    finally:
        h.close()
        outbox.close()


def test_a_redelivery_after_the_job_finished_does_not_announce_it_again(tmp_path):
    """The worker died after submitting; Event Grid's redelivery came after the job had finished and past the
    outbox's 60-minute window. It re-announced the job ("Training started", a reminder) for a run already over."""
    clock, teams, outbox, h = rig(tmp_path)
    try:
        fired = arm(h, "submit_training")
        h.land("1", rows=900, seed=201, label_noise=0.15)
        with h._lock:
            [landed], h.events = h.events, []
        with pytest.raises(Crash):
            h.deliver(landed)
        assert fired["at"] == "submit_training"
        h.ws.wait_for_jobs(timeout=120)  # the job ran to its end meanwhile
        clock.advance(2 * 3600)
        h.clock.advance(hours=2)
        h.deliver(landed)
        pump_with_redelivery(h, clock)
        outbox.flush(30)
        assert [a.kind for a in teams.sent].count("training_started") == 0  # the dead worker never queued it
        assert [j.name for j in h.ws.list_jobs()] == ["train-churn-v1-a1"]
        assert [m.version for m in h.ws.list_models("churn-model")] == ["1"]
    finally:
        h.close()
        outbox.close()

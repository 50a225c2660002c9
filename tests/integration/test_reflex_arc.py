"""Handlers through the bus on the embedded backend: real training, gate, registration, rollout, rollback, retry."""
from __future__ import annotations

import httpx
import pytest

from shared.domain import TAG_EVENT
from shared.errors import ServiceRejected, Throttled, TransientError
from shared.local import wire
from shared.local.churn import feature_rows
from shared.local.ledger import SqliteLedger
from shared.local.serving import score
from shared.messages import RollBack, RunFinished, StartTraining
from tests.helpers import Harness

pytestmark = pytest.mark.slow
MODEL, ENDPOINT = "churn-model", "churn-endpoint"
V1 = dict(rows=900, seed=201, label_noise=0.15)
V2 = dict(rows=3000, seed=202)
NOISY = dict(rows=1500, seed=203, label_noise=0.5)


@pytest.fixture
def arc(tmp_path):
    h = Harness(tmp_path, min_primary=0.6)
    yield h
    h.close()


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """v1 then v2 landed and handled, every event delivered twice."""
    h = Harness(tmp_path_factory.mktemp("arc"), min_primary=0.6)
    h.land("1", **V1)
    first = h.pump(twice=True)
    h.clock.advance(minutes=30)
    h.land("2", **V2)
    second = h.pump(twice=True)
    yield h, first, second
    h.close()


def test_landed_data_is_registered_trained_gated_and_deployed_at_100_percent(two_models):
    h, first, _ = two_models
    data = h.ws.get_data("churn", "1")
    assert data.path.endswith("churn/1/data.csv")
    job = h.ws.get_job("train-churn-v1-a1")
    assert job.owned and job.tags[TAG_EVENT] and job.tags["mlops_code_version"].startswith("sha256:")
    model = h.ws.get_model(MODEL, "1")
    assert model.tags["mlops_job"] == "train-churn-v1-a1"
    assert model.tags["mlops_data_version"] == "1" and model.tags["mlops_gate"] == "approved"
    assert float(model.tags["metric_auc"]) > 0.6
    # the tags keep the run's metrics exactly: the next gate compares a candidate with these very values
    assert {k: float(model.tags[f"metric_{k}"]) for k in ("auc", "logloss")} == {
        k: v for k, v in h.ws.get_run_metrics("train-churn-v1-a1").items() if k in ("auc", "logloss")}
    assert "no champion yet" in model.tags["mlops_gate_reason"]
    first_deploy = next(r for r in h.decisions("deploy") if r.facts["deployment"] == "churn-model-v1")
    assert first_deploy.facts["traffic_after"] == {"churn-model-v1": 100}


def test_a_better_model_starts_at_the_initial_share_beside_the_champion(two_models):
    h, _, _ = two_models
    assert h.traffic() == {"churn-model-v2": 10, "churn-model-v1": 90}
    ep = h.ws.get_endpoint(ENDPOINT)
    assert ep.deployment("churn-model-v1").known_good and not ep.deployment("churn-model-v2").known_good
    approve = next(r for r in h.decisions("approve") if r.facts["job"] == "train-churn-v2-a1")
    assert approve.facts["champion"] == f"{MODEL}:1"
    assert approve.facts["metrics"]["auc"] > approve.facts["champion_metrics"]["auc"]


def test_every_event_delivered_twice_took_effect_once(two_models):
    h, first, second = two_models
    dups = [r for r in first + second if r.outcome == "duplicate"]
    assert dups, "the harness delivered every event twice"
    assert len(h.ws.list_models(MODEL)) == 2
    assert sorted(j.name for j in h.ws.list_jobs()) == ["train-churn-v1-a1", "train-churn-v2-a1"]
    assert len([r for r in h.decisions("deploy")]) == 2
    assert h.rt.ledger.stats()["duplicates"] >= len(dups)


def test_run_completed_and_run_status_changed_act_once(two_models):
    h, _, _ = two_models
    job = h.ws.get_job("train-churn-v2-a1")
    before = len(h.decisions())
    late = h.deliver(wire.run_completed(job.name, experiment="e", tags=job.tags))
    assert [r.outcome for r in late] == ["ignored"] and "already handled" in late[0].reason
    assert len(h.decisions()) == before


def test_the_audit_trail_names_event_facts_decision_reason_actor_and_resources(two_models):
    h, _, _ = two_models
    deploy = next(r for r in h.decisions("deploy") if r.facts["deployment"] == "churn-model-v2")
    assert deploy.actor == "automation" and deploy.event_id
    assert deploy.facts["traffic_before"] == {"churn-model-v1": 100}
    assert deploy.resources == (f"deployment:{ENDPOINT}/churn-model-v1", f"deployment:{ENDPOINT}/churn-model-v2")
    assert "churn-model-v2 starts at 10 %" in deploy.reason


def test_corrupted_labels_are_rejected_by_the_gate_recorded_and_alerted(arc):
    arc.land("1", **V1)
    arc.pump()
    arc.land("3", **NOISY)
    arc.pump()
    reject = next(r for r in arc.decisions("reject"))
    assert reject.facts["job"] == "train-churn-v3-a1" and "below the minimum" in reject.reason
    assert [m.version for m in arc.ws.list_models(MODEL)] == ["1"]
    assert arc.traffic() == {"churn-model-v1": 100}
    alert = next(a for a in arc.notifier.alerts if a.kind == "model_rejected")
    assert "train-churn-v3-a1" in alert.summary and alert.severity == "warning"


def _canary(h: Harness) -> None:
    h.land("1", **V1)
    h.pump()
    h.clock.advance(minutes=30)
    h.land("2", **V2)
    h.pump()
    assert h.traffic() == {"churn-model-v2": 10, "churn-model-v1": 90}


def _drift(h: Harness, **extra) -> dict:
    return wire.custom("MLOps.DriftDetected", f"endpoints/{ENDPOINT}",
                       {"endpoint": ENDPOINT, "metric": "psi", "value": 0.4, "threshold": 0.2, **extra})


def test_drift_soon_after_a_rollout_rolls_back_to_the_known_good_deployment_and_marks_the_suspect(arc):
    _canary(arc)
    served = {}
    with httpx.Client() as client:
        for i in range(20):
            name, _ = score(arc.ws, ENDPOINT, feature_rows(5, seed=i, drift=1.0), client=client)
            served[name] = served.get(name, 0) + 1
    arc.clock.advance(minutes=10)
    results = arc.deliver(_drift(arc))
    assert results[0].outcome == "done" and results[0].data["to"] == "churn-model-v1"
    assert arc.traffic() == {"churn-model-v1": 100}
    # what production looked like when the decision was made is kept with it and shown in the alert
    health = arc.decisions("rollback")[0].facts["health"]
    assert {name: h["requests"] for name, h in health.items()} == served
    assert all(h["error_share"] == 0 and h["latency_p95_ms"] > 0 for h in health.values())
    card_facts = dict(next(a for a in arc.notifier.alerts if a.kind == "rollback").facts)
    assert f"churn-model-v2: {served['churn-model-v2']} req, 0.0% errors" in card_facts["Health, last 15 min"]
    ep = arc.ws.get_endpoint(ENDPOINT)
    assert ep.deployment("churn-model-v2").rolled_back and ep.traffic.get("churn-model-v2", 0) == 0
    assert arc.ws.get_model(MODEL, "2").tags["mlops_rolled_back"] == "true"
    rollback = arc.decisions("rollback")[0]
    assert rollback.facts["from"] == {"churn-model-v2": 10, "churn-model-v1": 90} and rollback.facts["marked_bad"] == ["churn-model-v2"]
    assert any(a.kind == "rollback" and a.severity == "critical" for a in arc.notifier.alerts)
    # within the cooldown a second alert only records and alerts
    again = arc.deliver(_drift(arc, value=0.5))
    assert "cooldown" in again[0].reason and arc.traffic() == {"churn-model-v1": 100}
    assert arc.decisions()[0].decision == "hold"


def test_drift_without_a_rollout_to_undo_retrains_on_new_data_once(arc, tmp_path):
    arc.land("1", **V1)
    arc.pump()
    arc.clock.advance(hours=5)
    # The newest data is what the stable was trained on: retraining cannot help, new data is needed.
    held = arc.deliver(_drift(arc))
    assert held[0].data["decision"] == "hold" and "land new data" in held[0].reason
    assert [j.name for j in arc.ws.list_jobs()] == ["train-churn-v1-a1"]
    # Data registered outside the landing path (no training yet): drift retrains on it.
    path = arc.home / "gen" / "v2.csv"
    from shared.local.churn import write_csv
    write_csv(path, **V2)
    arc.ws.register_data("churn", "2", str(path))
    arc.clock.advance(minutes=31)
    event = _drift(arc)
    results = arc.deliver(event)
    assert results[0].data["decision"] == "retrain"
    assert arc.ws.get_job("train-churn-v2-a1").tags[TAG_EVENT] == event["id"]
    assert arc.traffic() == {"churn-model-v1": 100}
    retrain = next(a for a in arc.notifier.alerts if a.kind == "retraining_started")
    assert dict(retrain.facts)["Endpoint"] == ENDPOINT and "train-churn-v2-a1" in retrain.summary
    # A crash after the submit but before the ledger recorded it: the redelivered alert (past the cooldown) finds
    # that data version already in training and starts nothing more.
    arc.rt.bus.ledger = SqliteLedger(tmp_path / "ledger-without-the-record.db")
    arc.clock.advance(hours=1)
    redo = arc.deliver(event)
    assert redo[0].data["decision"] == "hold"
    assert sorted(j.name for j in arc.ws.list_jobs()) == ["train-churn-v1-a1", "train-churn-v2-a1"]


def test_a_resolved_alert_is_only_recorded(arc):
    _canary(arc)
    results = arc.deliver(_drift(arc, resolved=True))
    assert results[0].outcome == "ignored" and arc.traffic() == {"churn-model-v2": 10, "churn-model-v1": 90}
    assert arc.notifier.alerts[-1].resolved


def test_the_freeze_switch_stops_automatic_changes_but_still_alerts(tmp_path):
    h = Harness(tmp_path, min_primary=0.6)
    try:
        _canary(h)
    finally:
        h.close()
    frozen = Harness(tmp_path, min_primary=0.6, freeze=True)  # same state, restarted with MLOPS_FREEZE
    try:
        results = frozen.deliver(_drift(frozen))
        assert "freeze" in results[0].reason and frozen.traffic() == {"churn-model-v2": 10, "churn-model-v1": 90}
        assert frozen.notifier.alerts[-1].kind == "drift_detected"
        frozen.land("4", **V2)
        frozen.pump()
        assert [j.name for j in frozen.ws.list_jobs() if "v4" in j.name] == []
    finally:
        frozen.close()


def test_a_preempted_low_priority_run_is_retried_up_to_the_attempt_limit(arc):
    arc.ws.fail_next("Low priority node preempted by the platform")
    arc.land("1", **V1)
    arc.pump()
    assert arc.ws.get_job("train-churn-v1-a1").status.value == "Failed"
    assert arc.ws.get_job("train-churn-v1-a2").status.value == "Completed"
    assert arc.traffic() == {"churn-model-v1": 100}
    assert arc.ws.get_model(MODEL, "1").tags["mlops_job"] == "train-churn-v1-a2"
    failed = next(a for a in arc.notifier.alerts if a.kind == "training_failed")
    assert failed.severity == "warning" and "preempted" in failed.detail
    assert failed.next_step.startswith("Nothing to do now: attempt 2 was started")


def test_a_failed_run_alerts_with_the_error_and_is_not_retried(tmp_path):
    # The data contract would refuse a file this small before training (docs/data-contract.md); with its minimum
    # lowered, the file lands and train.py itself fails on it: a permanent failure, alerted with the job's log.
    arc = Harness(tmp_path, env={"MLOPS_MIN_ROWS": "2"}, min_primary=0.6)
    try:
        bad = arc.home / "gen" / "bad.csv"
        bad.parent.mkdir(parents=True, exist_ok=True)
        bad.write_text("customer_id,tenure_months,churn\nC1,3,0\nC2,4,1\n")
        arc.ws.land("landing", "churn/9/data.csv", bad)
        arc.pump()
        assert arc.ws.get_job("train-churn-v9-a1").status.value == "Failed"
        assert not [j for j in arc.ws.list_jobs() if j.name.endswith("-a2")]
        alert = next(a for a in arc.notifier.alerts if a.kind == "training_failed")
        assert alert.severity == "error" and "2 rows are too few to train" in alert.detail
        assert 'rerun the job: POST /api/reruns with {"job": "train-churn-v9-a1"}' in alert.next_step
    finally:
        arc.close()


def test_runs_the_automation_did_not_start_are_recorded_and_ignored(arc):
    from shared.domain import TrainingJobSpec
    from shared.local.churn import write_csv

    arc.ws.register_data("other", "1", str(write_csv(arc.home / "gen" / "other.csv", rows=300, seed=5)))
    arc.ws.submit_training(TrainingJobSpec(name="someone-elses-run", asset="other", data_version="1", attempt=1,
                                           tags={"team": "fraud"}))
    before = len(arc.ws.list_models(MODEL))
    results = arc.pump()
    foreign = [r for r in results if r.message == "RunFinished" and "not started by the automation" in r.reason]
    assert foreign and all(r.outcome == "ignored" for r in foreign)
    assert len(arc.ws.list_models(MODEL)) == before


def test_a_completion_event_that_outruns_the_job_state_is_retried_later(arc):
    arc.deliver(arc.land("1", **V1))  # submits the job; a real run takes far longer than the next two lines
    assert not arc.ws.get_job("train-churn-v1-a1").status.completed
    with pytest.raises(TransientError):
        arc.rt.bus.handle(RunFinished(event_id="early", job_name="train-churn-v1-a1", status="Completed"))
    assert arc.rt.ledger.claim("early/RunFinished", event_type="RunFinished") == "new"  # released for redelivery


def test_manual_rollback_needs_a_known_good_target_and_records_the_caller(arc):
    arc.land("1", **V1)
    arc.pump()
    nothing = arc.rt.bus.handle(RollBack(event_id="m1", endpoint=ENDPOINT, reason="why not", actor="http:bob"))
    assert nothing[0].outcome == "failed" and "no known-good deployment" in nothing[0].reason
    arc.clock.advance(minutes=30)
    arc.land("2", **V2)
    arc.pump()
    done = arc.rt.bus.handle(RollBack(event_id="m2", endpoint=ENDPOINT, reason="latency", actor="http:bob"))
    assert done[0].outcome == "done" and arc.traffic() == {"churn-model-v1": 100}
    assert arc.decisions("rollback")[0].actor == "http:bob"
    assert [a.severity for a in arc.notifier.alerts if a.kind == "rollback" and a.actor == "http:bob"] == ["warning"]
    # one card per manual action: the failed attempt (m1, a 409 answered to bob) pages no one, the rollback one card
    assert [(a.event_id, a.kind) for a in arc.notifier.alerts if a.event_id in ("m1", "m2")] == [("m2", "rollback")]
    assert [d.actor for d in arc.decisions("failed")] == ["http:bob"]
    again = arc.rt.bus.handle(RollBack(event_id="m3", endpoint=ENDPOINT, reason="again", to_deployment="churn-model-v2",
                                       actor="http:bob"))
    assert again[0].outcome == "failed" and "itself rolled back" in again[0].reason


def test_start_training_twice_starts_one_job_and_a_new_attempt_on_request(arc):
    arc.land("1", **V1)
    arc.pump()
    again = arc.rt.bus.handle(StartTraining(event_id="x1", asset="churn", version="1", attempt=1, actor="http:a"))
    assert again[0].data == {"job": "train-churn-v1-a1", "created": False, "attempt": 1}
    forced = arc.rt.bus.handle(StartTraining(event_id="x2", asset="churn", version="1", attempt=0, actor="http:a"))
    assert forced[0].data == {"job": "train-churn-v1-a2", "created": True, "attempt": 2}


def test_a_blob_off_the_path_convention_is_rejected_once_and_never_retried(arc):
    event = wire.blob_created("landing", "churn/no-version.csv", content_length=3)
    first, second = arc.deliver(event), arc.deliver(event)
    assert first[0].outcome == "rejected" and "<asset>/<version>/<file>" in first[0].reason
    assert second[0].outcome == "duplicate"
    assert arc.rt.ledger.stats().get("rejected") == 1
    assert [a.kind for a in arc.notifier.alerts] == ["event_rejected"]


def test_an_announced_data_version_that_does_not_exist_is_rejected(arc):
    results = arc.deliver(wire.custom("MLOps.DataRegistered", "data/churn", {"asset": "churn", "version": "42"}))
    assert results[0].outcome == "failed" and "42" in results[0].reason


def test_models_registered_by_hand_reach_the_audit_trail(arc):
    arc.deliver(wire.model_registered("fraud-model", "7", {"owner": "alice"}))
    record = arc.decisions("observe")[0]
    assert record.facts["model"] == "fraud-model" and "outside the automation" in record.reason


class ThrottledMonitor:
    """The Monitor port answering as a throttled Azure Monitor would."""

    def health(self, endpoint, deployment, window_minutes):
        raise Throttled("Log Analytics: HTTP 429", retry_after=30)


class RejectingPublisher:
    """The Publisher port answering as a topic that refuses us (e.g. a missing EventGrid Data Sender role)."""

    def __init__(self) -> None:
        self.tried: list[str] = []

    def publish(self, event_type, subject, data):
        self.tried.append(event_type)
        raise ServiceRejected("HTTP 403: Forbidden", status=403)


def test_neither_a_throttled_monitor_nor_a_refused_publish_holds_up_or_unmakes_a_rollback(tmp_path):
    publisher = RejectingPublisher()
    h = Harness(tmp_path, min_primary=0.6, ports={"monitor": ThrottledMonitor(), "publisher": publisher})
    try:
        _canary(h)
        h.clock.advance(minutes=10)
        result = h.deliver(_drift(h))
        assert result[0].outcome == "done" and h.traffic() == {"churn-model-v1": 100}
        assert publisher.tried == ["MLOps.RollbackCompleted"]
        health = h.decisions("rollback")[0].facts["health"]
        assert set(health) == {"churn-model-v1", "churn-model-v2"} and all(v["error"].startswith("Throttled") for v in health.values())
        assert not any(a.kind == "event_rejected" for a in h.notifier.alerts)
    finally:
        h.close()

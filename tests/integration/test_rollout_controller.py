"""The rollout controller through the real bus, handlers, SQLite (or Azurite) state store and embedded workspace.

- a property-based test: random sequences of new models, approvals, drift and resolved alerts, ticks with good or
  bad evidence, failed deployments, manual rollbacks, clock jumps and duplicate deliveries, with the controller's
  invariants checked after every step;
- two workers racing two alerts for one endpoint: exactly one rollback, on SQLite and on Table Storage (Azurite).
"""
from __future__ import annotations

import tempfile
import threading
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared import handlers
from shared.bootstrap import build
from shared.config import Settings
from shared.errors import ServiceRejected, StaleState, Throttled, TransientError
from shared.messages import AdvanceRollouts, DecideApproval, DriftDetected, RollBack, RunFinished
from tests.helpers import Recording, finished_job

pytestmark = pytest.mark.slow
EP = "churn-endpoint"
N_RETAINED = 1


class World:
    """One embedded workspace with the real runtime on top; models are made without training (finished_job)."""

    def __init__(self, home: Path, *, approval: str = "auto", **policy) -> None:
        from shared.local.clock import SimClock

        env = {"MLOPS_HOME": str(home), "MLOPS_APPROVAL": approval, "MLOPS_APPROVAL_AUTH": "none"}
        base = Settings.from_env(env)
        self.settings = base.with_policy(**{"analysis_min_requests": 5, "retention_minutes": 0,
                                            "retain_known_good": N_RETAINED, "min_primary": 0.5, **policy})
        self.clock = SimClock()
        self.notifier = Recording()
        self.rt = build(self.settings, clock=self.clock, notifier=self.notifier)
        self.ws = self.rt.workspace
        self.models = 0

    def handle(self, message):
        try:
            return self.rt.bus.handle(message)
        except TransientError:
            return []

    def new_model(self) -> RunFinished:
        self.models += 1
        job = finished_job(self.ws, f"train-churn-v{self.models}-a1", version=str(self.models),
                           auc=0.7 + 0.02 * self.models, logloss=0.5 - 0.01 * self.models)
        return RunFinished(event_id=str(uuid.uuid4()), job_name=job, status="Completed")

    def state(self):
        return self.rt.states.load(EP)

    def traffic(self) -> dict[str, int]:
        ep = self.ws.get_endpoint(EP)
        return {k: v for k, v in ep.traffic.items() if v} if ep else {}

    def evidence(self, good: bool) -> None:
        """Requests of the canary and the stable in the request log, as the scoring server writes them."""
        s = self.state()
        if s is None:
            return
        for name in (s.canary, s.stable):
            if not name:
                continue
            bad = not good and name == s.canary
            for i in range(8):
                self.ws.record_request(endpoint=EP, deployment=name, inputs=[], outputs=[], latency_ms=10.0,
                                       status=500 if bad and i % 2 else 200)

    def close(self) -> None:
        self.rt.close()


# Weighted towards what moves a rollout (new models, ticks after a bake period), so that most sequences reach
# canaries, promotions, aborts and rollbacks rather than acting on an empty endpoint.
OPS = st.one_of(
    st.just(("new_model",)), st.just(("new_model",)), st.just(("approve",)), st.just(("reject",)),
    st.just(("drift",)), st.just(("resolved",)), st.tuples(st.just("tick"), st.booleans()),
    st.tuples(st.just("tick"), st.booleans()), st.tuples(st.just("tick"), st.just(True)),
    st.just(("manual_rollback",)), st.just(("fail_canary",)), st.just(("duplicate",)),
    st.tuples(st.just("clock"), st.sampled_from([1, 31, 200, 1500])),
)


def _step(w: World, op: tuple, last: list) -> object | None:
    kind = op[0]
    if kind == "new_model":
        if w.models >= 4:  # 2-4 deployments
            return None
        return w.new_model()
    if kind in ("approve", "reject"):
        s = w.state()
        approval = s.candidate.approval_id if s is not None and s.candidate else "no-such-approval"
        return DecideApproval(event_id=str(uuid.uuid4()), endpoint=EP, approval_id=approval,
                              approve=kind == "approve", reason="property test", actor="user:ana@contoso.example")
    if kind in ("drift", "resolved"):
        return DriftDetected(event_id=str(uuid.uuid4()), endpoint=EP, source="test", metric="psi", value=0.5,
                             threshold=0.2, resolved=kind == "resolved")
    if kind == "tick":  # the timer, one bake period after the last one, with fresh evidence
        w.clock.advance(minutes=w.settings.policy.bake_minutes)
        w.evidence(op[1])
        return AdvanceRollouts(event_id=str(uuid.uuid4()))
    if kind == "manual_rollback":
        return RollBack(event_id=str(uuid.uuid4()), endpoint=EP, reason="property test", actor="http:bob")
    if kind == "fail_canary":
        s = w.state()
        if s is not None and s.canary:
            w.ws.fail_deployment(EP, s.canary)
        return None
    if kind == "duplicate":
        return last[-1] if last else None
    if kind == "clock":
        w.clock.advance(minutes=op[1])
        return None
    raise AssertionError(op)


def _check(w: World, op: tuple, before: dict[str, int], audits_before: int, ever_rolled_back: set[str]) -> None:
    ep = w.ws.get_endpoint(EP)
    s = w.state()
    after = w.traffic()
    if ep is not None and after:
        names = {d.name for d in ep.deployments}
        assert sum(after.values()) == 100 and set(after) <= names, after
        if op[0] == "tick":  # a failure is outside news: the controller must have reacted by the next tick
            failed = {d.name for d in ep.deployments if d.state.lower() == "failed"}
            assert not set(after) & failed or not (names - failed - set(after)), (after, failed)
    assert len(after) <= 2, f"at most stable + one canary serve: {after}"
    if s is not None:
        ever_rolled_back.update(s.rolled_back)
    assert not set(after) & ever_rolled_back, f"a rolled-back deployment got traffic back: {after}"
    if op[0] == "tick" and ep is not None and s is not None and s.pending is None:
        assert len(ep.deployments) <= 2 + N_RETAINED, [d.name for d in ep.deployments]
    if after != before:
        new = w.rt.audit.recent(limit=50)[:len(w.rt.audit.recent(limit=1000)) - audits_before]
        moved = [r for r in new if r.facts.get("traffic_after") == after and r.facts.get("traffic_before") == before]
        assert len(moved) == 1, f"{before} → {after}: {[(r.decision, r.facts.get('traffic_after')) for r in new]}"
        assert moved[0].actor, "the traffic change names its actor"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OPS, min_size=4, max_size=24), approval=st.sampled_from(["auto", "manual"]))
def test_random_event_sequences_keep_the_controller_invariants(ops, approval):
    with tempfile.TemporaryDirectory() as home:
        w = World(Path(home), approval=approval)
        try:
            last: list = []
            ever_rolled_back: set[str] = set()
            for op in ops:
                before, audits = w.traffic(), len(w.rt.audit.recent(limit=1000))
                message = _step(w, op, last)
                if message is not None:
                    w.handle(message)
                    last.append(message)
                _check(w, op, before, audits, ever_rolled_back)
        finally:
            w.close()


# --- two workers, two alerts, one endpoint -------------------------------------------------------------------

class RacingStore:
    """A state store whose first commit in each thread waits until both workers have decided: the interleaving
    that made two alerts roll back twice (both read the same state, both act)."""

    def __init__(self, inner, barrier: threading.Barrier) -> None:
        self.inner, self.barrier = inner, barrier
        self.local = threading.local()

    def load(self, endpoint):
        return self.inner.load(endpoint)

    def endpoints(self):
        return self.inner.endpoints()

    def save(self, state):
        if getattr(self.local, "armed", False):
            self.local.armed = False
            self.barrier.wait(timeout=10)
        return self.inner.save(state)


def _race(w: World, make_store) -> None:
    w.handle(w.new_model())
    w.clock.advance(minutes=30)
    w.handle(w.new_model())
    assert w.traffic() == {"churn-model-v1": 90, "churn-model-v2": 10}
    barrier = threading.Barrier(2)
    workers = [build(w.settings, workspace=w.ws, clock=w.clock, notifier=w.notifier,
                     states=RacingStore(make_store(), barrier)) for _ in range(2)]
    alerts = [DriftDetected(event_id=f"alert-{i}", endpoint=EP, source="azure-monitor", metric="errors", value=0.3)
              for i in range(2)]
    outcomes: dict[int, object] = {}

    def run(i: int) -> None:
        workers[i].states.local.armed = True
        try:
            outcomes[i] = workers[i].bus.handle(alerts[i])[0].data["decision"]
        except StaleState as error:
            outcomes[i] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    won = [i for i, o in outcomes.items() if o == "rollback"]
    lost = [i for i, o in outcomes.items() if isinstance(o, StaleState)]
    assert len(won) == 1 and len(lost) == 1, outcomes
    # Event Grid redelivers the loser's alert: it decides again on the new record and holds (cooldown).
    again = workers[lost[0]].bus.handle(alerts[lost[0]])
    assert again[0].data["decision"] == "hold" and "cooldown" in again[0].reason
    assert w.traffic() == {"churn-model-v1": 100}
    assert len(w.rt.audit.recent(decisions=["rollback"])) == 1
    assert [a.kind for a in w.notifier.alerts].count("rollback") == 1
    # (the workers share the world's workspace: only the world closes it)


def test_two_workers_two_alerts_one_rollback_on_sqlite(tmp_path):
    from shared.local.state import SqliteStateStore

    w = World(tmp_path)
    try:
        _race(w, lambda: SqliteStateStore(tmp_path / "ledger.db"))
    finally:
        w.close()


def test_two_workers_two_alerts_one_rollback_on_table_storage(tmp_path, azurite):
    from shared.adapters.statestore import TableStateStore

    table = f"state{uuid.uuid4().hex[:12]}"
    service = azurite.service()
    service.create_table(table)
    shared_store = TableStateStore(service.get_table_client(table))
    w = World(tmp_path)
    w.rt = build(w.settings, workspace=w.ws, clock=w.clock, notifier=w.notifier, states=shared_store)
    try:
        _race(w, lambda: TableStateStore(azurite.service().get_table_client(table)))
        assert shared_store.load(EP).stable == "churn-model-v1"
    finally:
        w.close()


def test_a_split_changed_outside_the_automation_is_adopted_not_overwritten(tmp_path):
    w = World(tmp_path)
    try:
        w.handle(w.new_model())
        w.handle(w.new_model())
        assert w.traffic() == {"churn-model-v1": 90, "churn-model-v2": 10}
        w.ws.set_traffic(EP, {"churn-model-v1": 50, "churn-model-v2": 50})  # someone in the studio
        result = w.handle(DriftDetected(event_id="d1", endpoint=EP, source="test", metric="psi", value=0.5))
        assert w.traffic() == {"churn-model-v1": 50, "churn-model-v2": 50}, "their split is not overwritten"
        state = w.state()
        assert state.pending is None and state.traffic == {"churn-model-v1": 50, "churn-model-v2": 50}
        assert state.phase.value == "progressing" and "churn-model-v2" not in state.rolled_back
        [abandoned] = w.rt.audit.recent(decisions=["abandon"])
        assert "changed outside the automation" in abandoned.reason and result[0].outcome == "done"
        assert w.notifier.alerts[-1].title == "Traffic changed outside the automation on churn-endpoint"
    finally:
        w.close()


# --- found by review -------------------------------------------------------------------------------------

def test_an_effect_that_fails_for_good_is_dropped_and_never_blocks_a_later_rollback(tmp_path, monkeypatch):
    w = World(tmp_path)
    try:
        w.handle(w.new_model())
        w.handle(w.new_model())
        assert w.traffic() == {"churn-model-v1": 90, "churn-model-v2": 10}
        real = w.ws.create_deployment

        def quota(endpoint, deployment, model, tags):  # a third deployment exceeds the subscription's core quota
            if deployment == "churn-model-v3":
                raise ServiceRejected("HTTP 400: not enough quota", status=400)
            return real(endpoint, deployment, model, tags)

        monkeypatch.setattr(w.ws, "create_deployment", quota)
        w.handle(w.new_model())  # v3 supersedes v2: committed, then CreateDeployment fails for good
        state = w.state()
        assert state.pending is None and state.canary == "churn-model-v2", "dropped: back to the record before"
        # v2 (10 %) now misbehaves: a person asks for a rollback
        w.handle(RollBack(event_id=str(uuid.uuid4()), endpoint=EP, reason="v2 is bad", actor="http:bob"))
        assert w.traffic() == {"churn-model-v1": 100}
        [dropped] = w.rt.audit.recent(decisions=["abandon"])
        assert "not enough quota" in dropped.reason and dropped.facts["abandoned"] == "deploy"
    finally:
        w.close()


def test_a_retrain_left_pending_is_finished_by_the_next_tick(tmp_path, monkeypatch):
    w = World(tmp_path)
    try:
        w.handle(w.new_model())  # v1 stable at 100 %
        w.clock.advance(minutes=600)  # long after the promotion: drift means retrain
        (w.ws.root / "new.csv").write_text("a,b\n1,2\n")
        w.ws.register_data("churn", "99", str(w.ws.root / "new.csv"))

        def throttled(*a, **k):
            raise Throttled("429 from the workspace")

        monkeypatch.setattr(handlers, "start_training", throttled)
        w.handle(DriftDetected(event_id="d1", endpoint=EP, source="test", metric="psi", value=0.5))
        assert w.state().pending and w.state().pending["action"] == "retrain"
        monkeypatch.undo()
        # Before the drift event is redelivered, the minute tick loads the record and finishes the pending Retrain
        # with a Context that has no retrain function: MLOpsError("no retraining function wired"), neither
        # transient nor permanent, escapes the bus (same for RollBack/DecideApproval/RunFinished on this endpoint).
        w.handle(AdvanceRollouts(event_id=str(uuid.uuid4())))
        assert w.state().pending is None
    finally:
        w.close()


def test_a_failed_audit_write_is_retried_and_the_traffic_change_recorded_once(tmp_path, monkeypatch):
    w = World(tmp_path)
    try:
        w.handle(w.new_model())
        w.handle(w.new_model())
        real = w.rt.audit.append
        calls = {"n": 0}

        def flaky(record):
            if record.decision == "rollback" and calls["n"] == 0:
                calls["n"] += 1
                raise TransientError("table storage 503")
            return real(record)

        monkeypatch.setattr(w.rt.audit, "append", flaky)
        w.handle(DriftDetected(event_id="d1", endpoint=EP, source="test", metric="psi", value=0.5))
        w.handle(DriftDetected(event_id="d1", endpoint=EP, source="test", metric="psi", value=0.5))  # redelivery
        assert w.traffic() == {"churn-model-v1": 100}
        rollbacks = w.rt.audit.recent(decisions=["rollback"])
        assert len(rollbacks) == 1, f"traffic changed 90/10 -> 100 with {len(rollbacks)} audit records"
    finally:
        w.close()


def test_one_endpoint_in_trouble_does_not_stop_the_tick_for_the_others(tmp_path, monkeypatch):
    from shared.messages import RunFinished
    from tests.helpers import finished_job

    w = World(tmp_path)
    try:
        for v in ("1", "2"):  # zeta-endpoint: v1 stable, v2 canary at 10 %
            job = finished_job(w.ws, f"train-zeta-v{v}-a1", asset="zeta", version=v, auc=0.7 + 0.02 * int(v),
                               logloss=0.5 - 0.01 * int(v))
            w.handle(RunFinished(event_id=str(uuid.uuid4()), job_name=job, status="Completed"))
        assert w.rt.states.load("zeta-endpoint").weight == 10
        w.handle(w.new_model())  # churn-endpoint: v1 stable
        real = w.ws.create_deployment
        monkeypatch.setattr(w.ws, "create_deployment", lambda e, d, m, t: (_ for _ in ()).throw(
            Throttled("429: still creating")) if d == "churn-model-v2" else real(e, d, m, t))
        w.handle(w.new_model())  # churn-endpoint: its deploy stays pending, every try throttled
        for _ in range(3):
            w.clock.advance(minutes=w.settings.policy.bake_minutes)
            for dep in ("zeta-model-v1", "zeta-model-v2"):
                for _ in range(8):
                    w.ws.record_request(endpoint="zeta-endpoint", deployment=dep, inputs=[], outputs=[],
                                        latency_ms=10.0, status=200)
            w.handle(AdvanceRollouts(event_id=str(uuid.uuid4())))
        s = w.rt.states.load("zeta-endpoint")
        assert s.phase.value == "promoted", f"zeta-endpoint never ticked: {s.phase.value} at {s.weight} %"
        assert w.rt.states.load(EP).pending["action"] == "deploy", "churn-endpoint's deploy is still to be finished"
    finally:
        w.close()


def test_a_completion_redelivered_after_a_transient_failure_records_the_gate_verdict_once(tmp_path, monkeypatch):
    w = World(tmp_path)
    try:
        w.handle(w.new_model())
        real = w.ws.create_deployment
        calls = {"n": 0}

        def throttled_once(*args):
            calls["n"] += 1
            if calls["n"] == 1:
                raise Throttled("429 on the deployment PUT")
            return real(*args)

        monkeypatch.setattr(w.ws, "create_deployment", throttled_once)
        message = w.new_model()
        assert w.handle(message) == [], "the transient failure raised for redelivery"
        w.handle(message)  # Event Grid delivers it again
        assert w.traffic() == {"churn-model-v1": 90, "churn-model-v2": 10}
        verdicts = [r.decision for r in w.rt.audit.recent(decisions=["approve", "reject"])
                    if r.facts["job"] == message.job_name]
        assert verdicts == ["approve"], "judged once; not judged again against itself as the canary"
    finally:
        w.close()

"""Crash injection: the worker dies right after each side effect of the landing → training → registration →
rollout chain; Event Grid redelivers once the dead worker's lease has run out, and the chain converges with every
effect exactly once (issue 11, reliability suite)."""
from __future__ import annotations

import pytest

from shared.local.ledger import SqliteLedger
from tests.helpers import EpochClock, Harness
from tests.reliability.storm import write_figures

pytestmark = pytest.mark.slow
POINTS = ["claim", "submit_training", "register_model", "create_deployment", "set_traffic", "audit_append",
          "outbox_enqueue"]
converged: list[str] = []


class Crash(BaseException):
    """The process dies here: not an Exception, so nothing in the app catches or records it."""


def arm(h: Harness, point: str) -> dict:
    """Make the first call at ``point`` do its effect and then kill the worker."""
    fired = {"at": None}
    owners = {"claim": h.rt.ledger, "audit_append": h.rt.audit, "outbox_enqueue": h.notifier}
    method = {"claim": "claim", "audit_append": "append", "outbox_enqueue": "notify"}.get(point, point)
    owner = owners.get(point, h.ws)
    original = getattr(owner, method)

    def crashing(*args, **kwargs):
        result = original(*args, **kwargs)
        if fired["at"] is None and (point != "claim" or result == "new"):
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


@pytest.mark.parametrize("point", POINTS)
def test_a_crash_right_after_each_side_effect_converges_with_every_effect_once(tmp_path, point):
    clock = EpochClock()
    h = Harness(tmp_path, min_primary=0.6, ports={"ledger": SqliteLedger(tmp_path / "ledger.db", clock=clock)})
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
        assert len([a for a in h.notifier.alerts if a.kind == "model_registered"]) >= 1
        converged.append(point)
        write_figures("crash", {"crash_points": len(POINTS), "converged": len(converged), "points": converged})
    finally:
        h.close()

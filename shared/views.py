"""Read models for GET /api/status: endpoints and their split, recent decisions, running jobs."""
from __future__ import annotations

from shared.domain import OWNER_TAG, OWNER_VALUE, JobStatus
from shared.ports import AuditLog, Ledger, StateStore, Workspace
from shared.redact import redact
from shared.rollout import EndpointState


def status(workspace: Workspace, audit: AuditLog, ledger: Ledger, *, decisions: int = 20,
           states: StateStore | None = None, endpoint: str | None = None) -> dict:
    """A JSON-ready snapshot; every value is re-read from the workspace, the state records and the audit trail.
    ``endpoint`` narrows it to one endpoint and the decisions about it; ``decisions`` caps the decisions listed."""
    endpoints = []
    for ep in workspace.list_endpoints():
        if endpoint and ep.name != endpoint:
            continue
        state = states.load(ep.name) if states is not None else None
        endpoints.append({
            "rollout": _rollout(state) if state is not None else None,
            "name": ep.name,
            "traffic": {k: v for k, v in sorted(ep.traffic.items()) if v},
            "traffic_changed_at": ep.traffic_changed_at.isoformat() if ep.traffic_changed_at else None,
            "deployments": [{"name": d.name, "model": f"{d.model_name}:{d.model_version}",
                             "traffic": ep.traffic.get(d.name, 0), "known_good": d.known_good,
                             "rolled_back": d.rolled_back} for d in ep.deployments],
        })
    if states is not None:  # an endpoint whose first model waits for approval has a record but no deployment yet
        known = {e["name"] for e in endpoints}
        for name in states.endpoints():
            if endpoint and name != endpoint:
                continue
            state = states.load(name)
            if name not in known and state is not None:
                endpoints.append({"rollout": _rollout(state), "name": name, "traffic": {}, "traffic_changed_at": None,
                                  "deployments": []})
    running = workspace.list_jobs(status=[JobStatus.QUEUED, JobStatus.RUNNING], tags={OWNER_TAG: OWNER_VALUE})
    return {
        "endpoints": endpoints,
        "running_jobs": [{"name": j.name, "status": j.status.value, "attempt": j.attempt,
                          "data": f"{j.tags.get('mlops_data_asset', '')}:{j.tags.get('mlops_data_version', '')}"}
                         for j in running],
        "recent_decisions": [{"at": r.at.isoformat() if r.at else None, "event_id": r.event_id,
                              "message": r.message, "decision": r.decision, "reason": redact(r.reason),
                              "actor": r.actor,
                              "resources": list(r.resources)} for r in audit.recent(limit=decisions, subject=endpoint or None)],
        "ledger": ledger.stats(),
    }


def _rollout(s: EndpointState) -> dict:
    """The controller's view of an endpoint: roles, phase, step, what waits for approval (never its secret link)."""
    return {"phase": s.phase.value, "stable": s.stable, "canary": s.canary or None, "canary_weight": s.weight,
            "step": s.step, "held": s.held, "previous_stable": s.previous_stable or None,
            "retained": list(s.retained), "rolled_back": list(s.rolled_back),
            "awaiting_approval": {"model": f"{s.candidate.model}:{s.candidate.version}",
                                  "expires_at": s.candidate.expires_at.isoformat()} if s.candidate else None,
            "last_automatic": {"action": s.last_automatic.action, "at": s.last_automatic.at.isoformat()}
            if s.last_automatic else None,
            "last_manual": {"action": s.last_manual.action, "actor": s.last_manual.actor,
                            "at": s.last_manual.at.isoformat()} if s.last_manual else None}

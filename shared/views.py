"""Read models for GET /api/status: endpoints and their split, recent decisions, running jobs."""
from __future__ import annotations

from shared.domain import OWNER_TAG, OWNER_VALUE, JobStatus
from shared.ports import AuditLog, Ledger, Workspace


def status(workspace: Workspace, audit: AuditLog, ledger: Ledger, *, decisions: int = 20) -> dict:
    """A JSON-ready snapshot; every value is re-read from the workspace and the audit trail."""
    endpoints = []
    for ep in workspace.list_endpoints():
        endpoints.append({
            "name": ep.name,
            "traffic": {k: v for k, v in sorted(ep.traffic.items()) if v},
            "traffic_changed_at": ep.traffic_changed_at.isoformat() if ep.traffic_changed_at else None,
            "deployments": [{"name": d.name, "model": f"{d.model_name}:{d.model_version}",
                             "traffic": ep.traffic.get(d.name, 0), "known_good": d.known_good,
                             "rolled_back": d.rolled_back} for d in ep.deployments],
        })
    running = workspace.list_jobs(status=[JobStatus.QUEUED, JobStatus.RUNNING], tags={OWNER_TAG: OWNER_VALUE})
    return {
        "endpoints": endpoints,
        "running_jobs": [{"name": j.name, "status": j.status.value, "attempt": j.attempt,
                          "data": f"{j.tags.get('mlops_data_asset', '')}:{j.tags.get('mlops_data_version', '')}"}
                         for j in running],
        "recent_decisions": [{"at": r.at.isoformat() if r.at else None, "event_id": r.event_id,
                              "message": r.message, "decision": r.decision, "reason": r.reason, "actor": r.actor,
                              "resources": list(r.resources)} for r in audit.recent(limit=decisions)],
        "ledger": ledger.stats(),
    }

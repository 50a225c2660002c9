"""Read models for people on call: a model version's lineage and one endpoint's story (the CLI and the page).

Everything is re-read through the ports (workspace, audit trail, state records), so the same code answers for the
embedded backend and for Azure. Nothing here writes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from shared.domain import TAG_ASSET, TAG_DATA_VERSION, TAG_JOB, AuditRecord, Endpoint, Model
from shared.errors import NotFound
from shared.ports import AuditLog, StateStore, Workspace
from shared.redact import redact


@dataclass(frozen=True)
class Link:
    """One node of a lineage chain: what it is, its name, and a line of detail ("" when unknown)."""

    kind: str  # data | job | model | deployment | approver
    name: str
    detail: str = ""
    found: bool = True


@dataclass(frozen=True)
class Lineage:
    model: str
    version: str
    links: tuple[Link, ...]
    gate: str = ""
    metrics: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"model": f"{self.model}:{self.version}", "gate": self.gate, "metrics": self.metrics,
                "chain": [{"kind": ln.kind, "name": ln.name, "detail": ln.detail, "found": ln.found}
                          for ln in self.links]}


def parse_ref(ref: str) -> tuple[str, str]:
    """"name:version" or "name" (the newest version) → (name, version or "")."""
    name, sep, version = ref.strip().rpartition(":")
    if not sep:
        return ref.strip(), ""
    if not name:
        raise ValueError(f"{ref!r} names no model: use MODEL or MODEL:VERSION")
    return name, version


def resolve_model(workspace: Workspace, ref: str) -> Model:
    """The model version ``ref`` names; the newest version when it names none. Raises NotFound."""
    name, version = parse_ref(ref)
    if version:
        return workspace.get_model(name, version)
    models = workspace.list_models(name)
    if not models:
        raise NotFound(f"model {name} has no versions")
    return models[0]


def lineage(workspace: Workspace, audit: AuditLog, model: Model) -> Lineage:
    """data asset version → training job → model version → deployments → who approved it.

    The chain comes from the tags the automation writes at each hop (the model names its job and data version,
    a deployment names its model) and from the audit trail (who approved, when nothing else says)."""
    tags = model.tags
    asset, data_version, job_name = tags.get(TAG_ASSET, ""), tags.get(TAG_DATA_VERSION, ""), tags.get(TAG_JOB, "")
    links: list[Link] = []
    if asset and data_version:
        try:
            data = workspace.get_data(asset, data_version)
            links.append(Link("data", f"{asset}:{data_version}", data.path))
        except NotFound:
            links.append(Link("data", f"{asset}:{data_version}", "no longer in the workspace", found=False))
    else:
        links.append(Link("data", "unknown", "the model carries no data version tag", found=False))
    if job_name:
        try:
            job = workspace.get_job(job_name)
            links.append(Link("job", job_name, job.status.value))
        except NotFound:
            links.append(Link("job", job_name, "no longer in the workspace", found=False))
    else:
        links.append(Link("job", "unknown", "registered by hand (no job tag)", found=False))
    ref = f"{model.name}:{model.version}"
    links.append(Link("model", ref, f"gate {tags.get('mlops_gate', '?')}: {tags.get('mlops_gate_reason', '')}".strip()))
    deployments = [(ep, d) for ep in workspace.list_endpoints() for d in ep.deployments
                   if d.model_name == model.name and d.model_version == model.version]
    for ep, d in deployments:
        links.append(Link("deployment", f"{ep.name}/{d.name}", f"{ep.traffic.get(d.name, 0)}% of traffic"
                          + (" · rolled back" if d.rolled_back else "") + (" · known good" if d.known_good else "")))
    if not deployments:
        links.append(Link("deployment", "none", "not deployed (or already retired)", found=False))
    approver, how = approved_by(audit, model)
    links.append(Link("approver", approver or "nobody yet", how, found=bool(approver)))
    return Lineage(model=model.name, version=model.version, links=tuple(links), gate=tags.get("mlops_gate", ""),
                   metrics=model.metrics())


def approved_by(audit: AuditLog, model: Model) -> tuple[str, str]:
    """(who, how) let this model version serve: a named person's approval (the model's ``approved_by`` tag, else
    the audit trail), or the automatic policy when the gate approved it and it was deployed automatically."""
    ref = f"{model.name}:{model.version}"
    if model.tags.get("approved_by"):
        return model.tags["approved_by"], f"approved at {model.tags.get('approved_at', '?')}"
    for r in audit.recent(limit=50, subject=ref, decisions=["approve_deploy"]):
        if r.facts.get("approver") and r.facts.get("model") == ref:
            return str(r.facts["approver"]), f"{r.decision} at {_at(r)}"
    if model.tags.get("mlops_gate") == "approved":
        return "automation", "the quality gate approved it (approval policy auto)"
    return "", model.tags.get("mlops_gate_reason", "")


def _at(record: AuditRecord) -> str:
    return record.at.isoformat(timespec="seconds") if record.at else "?"


@dataclass
class EndpointStory:
    """Everything the endpoint page shows, read once."""

    name: str
    endpoint: Endpoint | None
    state: dict | None
    lineages: list[Lineage]
    traffic_history: list[dict]
    timeline: list[dict]
    drift: list[dict]


def endpoint_story(workspace: Workspace, audit: AuditLog, states: StateStore | None, endpoint: str, *,
                   limit: int = 100) -> EndpointStory:
    """The endpoint's deployments with their lineage, rollout state, traffic changes, audit timeline and drift
    findings. Raises NotFound when neither the workspace nor the state records know the endpoint."""
    from shared.views import _rollout

    ep = workspace.get_endpoint(endpoint)
    state = states.load(endpoint) if states is not None else None
    if ep is None and state is None:
        raise NotFound(f"endpoint {endpoint} is unknown")
    lineages: list[Lineage] = []
    for d in ep.deployments if ep is not None else ():
        try:
            lineages.append(lineage(workspace, audit, workspace.get_model(d.model_name, d.model_version)))
        except NotFound:
            continue
    records = audit.recent(limit=limit, subject=endpoint)
    timeline = [_record(r) for r in records]
    history: list[dict] = []
    for r in reversed(records):  # oldest first; only the decisions that changed the live split
        after = r.facts.get("traffic_after")
        if not isinstance(after, dict):
            continue
        split = {str(k): int(v) for k, v in after.items() if int(v)}
        if split and (not history or split != history[-1]["traffic"]):
            history.append({"at": _at(r), "traffic": split, "decision": r.decision, "actor": r.actor})
    drift = []
    for r in reversed(records):
        signal = r.facts.get("signal")
        if r.message == "DriftDetected" and isinstance(signal, dict):
            drift.append({"at": _at(r), "decision": r.decision, "metric": str(signal.get("metric", "")),
                          "value": _number(signal.get("value")), "threshold": _number(signal.get("threshold")),
                          "rule": str(signal.get("rule") or ""), "source": str(signal.get("source") or ""),
                          "reason": redact(r.reason)})
    return EndpointStory(name=endpoint, endpoint=ep, state=_rollout(state) if state is not None else None,
                         lineages=lineages, traffic_history=history, timeline=timeline, drift=drift)


def _number(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _record(r: AuditRecord) -> dict:
    return {"at": _at(r), "event_id": r.event_id, "message": r.message, "decision": r.decision,
            "reason": redact(r.reason), "actor": r.actor, "resources": list(r.resources)}


def parse_since(text: str, now: datetime) -> datetime:
    """"30m", "2h", "7d" (before ``now``) or an ISO 8601 time (UTC when it names no zone)."""
    from datetime import timedelta, timezone

    raw = text.strip()
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    if raw[-1:].lower() in units and raw[:-1].isdigit():
        return now - timedelta(**{units[raw[-1].lower()]: int(raw[:-1])})
    try:
        at = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"--since takes 30m, 2h, 7d or an ISO time, not {text!r}") from None
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)

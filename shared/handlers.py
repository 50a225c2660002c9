"""Use cases: one plain function per message. Read current state, ask policy.py, act through the ports.

Handlers never trust event order: each re-reads the job, endpoint or data asset it acts on. Every create is
idempotent at its source (deterministic names), so running a handler twice has the effect of running it once.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from shared import policy as rules
from shared.bus import Handled
from shared.config import Settings
from shared.domain import (
    OWNER_TAG,
    OWNER_VALUE,
    TAG_ACTOR,
    TAG_ASSET,
    TAG_ATTEMPT,
    TAG_CODE,
    TAG_DATA_VERSION,
    TAG_EVENT,
    TAG_GATE,
    TAG_GATE_REASON,
    TAG_JOB,
    TAG_KNOWN_GOOD,
    TAG_METRIC_PREFIX,
    TAG_ROLLED_BACK,
    TAG_TRAFFIC_CHANGED,
    Alert,
    AuditRecord,
    Endpoint,
    Job,
    JobStatus,
    ModelSpec,
    TrainingJobSpec,
    deployment_name_for,
    model_version_for,
    training_job_name,
)
from shared.errors import Conflict, InvalidPayload, MLOpsError, NotFound, TransientError
from shared.messages import (
    DataRegistered,
    DriftDetected,
    EventIgnored,
    ModelDeployed,
    ModelRegistered,
    RerunJob,
    RollBack,
    RunFinished,
    StartTraining,
)
from shared.ports import AuditLog, Ledger, Monitor, Notifier, Publisher, RunMetrics, Workspace

logger = logging.getLogger(__name__)
Clock = Callable[[], datetime]
TRAINING_CODE = Path(__file__).parent / "training"
HEALTH_WINDOW_MINUTES = 15  # request statistics read as evidence before acting on a drift or health alert


def code_version(settings: Settings) -> str:
    """The configured code version, else a content hash of the training code (what actually ran)."""
    if settings.code_version:
        return settings.code_version
    h = hashlib.sha256()
    for f in sorted(p for p in TRAINING_CODE.rglob("*") if p.suffix in (".py", ".yaml")):  # code + its environment
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return "sha256:" + h.hexdigest()[:12]


def _audit(audit: AuditLog, clock: Clock, msg, decision: str, reason: str, *, actor: str = "automation",
           facts: dict | None = None, resources: tuple[str, ...] = ()) -> None:
    audit.append(AuditRecord(event_id=msg.event_id, message=msg.type, decision=decision, reason=reason, actor=actor,
                             facts=facts or {}, resources=resources, at=clock()))


def _links(settings: Settings, **kinds: str) -> tuple[tuple[str, str], ...]:
    """Studio links (Azure) for the named resources; the embedded backend has none."""
    if settings.backend != "azure":
        return ()
    ws = (f"?wsid=/subscriptions/{settings.subscription_id}/resourceGroups/{settings.resource_group}"
          f"/providers/Microsoft.MachineLearningServices/workspaces/{settings.workspace}")
    base = settings.studio_url.rstrip("/")
    out = []
    if "job" in kinds:
        out.append(("Open job", f"{base}/runs/{kinds['job']}{ws}"))
    if "model" in kinds:
        out.append(("Open model", f"{base}/model/{kinds['model']}{ws}"))
    if "endpoint" in kinds:
        out.append(("Open endpoint", f"{base}/endpoints/realtime/{kinds['endpoint']}/detail{ws}"))
    return tuple(out)


# --- data → training ---------------------------------------------------------------------------------

def data_registered(msg: DataRegistered, *, workspace: Workspace, audit: AuditLog, settings: Settings,
                    clock: Clock) -> Handled:
    """Register the landed data version (or check it exists) and ask for a training run on it."""
    if msg.register:
        asset = workspace.register_data(msg.asset, msg.version, msg.path,
                                        tags={TAG_EVENT: msg.event_id, OWNER_TAG: OWNER_VALUE})
        decision = "register_data"
    else:
        asset = workspace.get_data(msg.asset, msg.version)  # NotFound → rejected: nothing to train on
        decision = "data_announced"
    _audit(audit, clock, msg, decision, f"{asset.name}:{asset.version} from {msg.source or 'custom event'}",
           facts={"asset": asset.name, "version": asset.version, "path": asset.path},
           resources=(f"data:{asset.name}:{asset.version}",))
    if settings.policy.freeze:
        return Handled("done", f"data {asset.name}:{asset.version} registered; freeze is on, no training",
                       resources=(f"data:{asset.name}:{asset.version}",))
    return Handled("done", f"data {asset.name}:{asset.version} registered",
                   resources=(f"data:{asset.name}:{asset.version}",),
                   follow_ups=(StartTraining(event_id=msg.event_id, asset=asset.name, version=asset.version,
                                             attempt=1, reason="new data version"),))


def _attempts(workspace: Workspace, asset: str, version: str) -> list[Job]:
    return workspace.list_jobs(tags={OWNER_TAG: OWNER_VALUE, TAG_ASSET: asset, TAG_DATA_VERSION: version})


def start_training(msg: StartTraining, *, workspace: Workspace, audit: AuditLog, notifier: Notifier,
                   settings: Settings, clock: Clock) -> Handled:
    """Submit the training job for (asset, version, attempt); the deterministic name makes it happen once."""
    if msg.version == "latest":
        data = workspace.latest_data(msg.asset)
        if data is None:
            raise NotFound(f"data asset {msg.asset!r} has no versions to train on")
    else:
        data = workspace.get_data(msg.asset, msg.version)
    attempt = msg.attempt
    if attempt == 0:
        # "Next attempt": unless this very event already started one (redelivery), take the next free number.
        previous = _attempts(workspace, data.name, data.version)
        mine = [j for j in previous if j.tags.get(TAG_EVENT) == msg.event_id]
        attempt = mine[0].attempt if mine else max((j.attempt for j in previous), default=0) + 1
    name = training_job_name(data.name, data.version, attempt)
    spec = TrainingJobSpec(
        name=name, asset=data.name, data_version=data.version, attempt=attempt,
        tags={OWNER_TAG: OWNER_VALUE, TAG_ASSET: data.name, TAG_DATA_VERSION: data.version,
              TAG_ATTEMPT: str(attempt), TAG_EVENT: msg.event_id, TAG_CODE: code_version(settings),
              TAG_ACTOR: msg.actor},
        compute=settings.compute, low_priority=settings.low_priority, max_run_seconds=settings.max_run_seconds)
    existed = _exists(workspace, name)
    job = workspace.submit_training(spec)
    reason = f"{'existing' if existed else 'submitted'} {job.name} on {data.name}:{data.version} ({msg.reason})"
    _audit(audit, clock, msg, "start_training" if not existed else "training_exists", reason, actor=msg.actor,
           facts={"asset": data.name, "version": data.version, "attempt": attempt, "job": job.name,
                  "compute": settings.compute, "low_priority": settings.low_priority},
           resources=(f"job:{job.name}",))
    if not existed:
        drift = msg.drift_on
        notifier.notify(Alert(
            kind="retraining_started" if drift else "training_started", severity="info",
            title=(f"Retraining started after drift on {drift}: {data.name} v{data.version}" if drift
                   else f"Training started: {data.name} v{data.version}"),
            summary=f"Job {job.name} trains on {data.name}:{data.version} because: {msg.reason or 'requested'}.",
            facts=((("Endpoint", drift),) if drift else ()) + (
                ("Job", job.name), ("Data", f"{data.name}:{data.version}"), ("Attempt", str(attempt)),
                ("Compute", settings.compute), ("Requested by", msg.actor)),
            links=_links(settings, job=job.name), incident_key=f"job:{job.name}:started", actor=msg.actor,
            event_id=msg.event_id))
    return Handled("done", reason, resources=(f"job:{job.name}",),
                   data={"job": job.name, "created": not existed, "attempt": attempt})


def _exists(workspace: Workspace, job_name: str) -> bool:
    try:
        workspace.get_job(job_name)
        return True
    except NotFound:
        return False


def rerun_job(msg: RerunJob, *, workspace: Workspace) -> Handled:
    """A rerun of a finished job: the next attempt on the same data. Asked twice, it is still one job."""
    job = workspace.get_job(msg.job_name)
    asset, version = job.tags.get(TAG_ASSET), job.tags.get(TAG_DATA_VERSION)
    if not job.owned or not asset or not version:
        raise Conflict(f"job {msg.job_name} was not started by the automation: it has no data lineage to rerun")
    attempt = 0 if msg.force else job.attempt + 1
    return Handled("done", f"rerun of {job.name}", follow_ups=(StartTraining(
        event_id=msg.event_id, asset=asset, version=version, attempt=attempt,
        reason=msg.reason or f"rerun of {job.name}", actor=msg.actor),))


# --- run finished → gate → register → roll out ----------------------------------------------------------

def run_finished(msg: RunFinished, *, workspace: Workspace, metrics: RunMetrics, ledger: Ledger, audit: AuditLog,
                 notifier: Notifier, settings: Settings, clock: Clock) -> Handled:
    """Act on a run's terminal state, read from the workspace (the event's status is only a hint)."""
    try:
        job = workspace.get_job(msg.job_name)
    except NotFound:
        return Handled("ignored", f"job {msg.job_name} is unknown to this workspace")
    if not job.owned:
        _audit(audit, clock, msg, "ignore", f"{job.name} was not started by the automation", facts={"job": job.name})
        return Handled("ignored", f"{job.name} was not started by the automation")
    if not job.status.completed:
        if JobStatus.parse(msg.status).completed:
            # The event says finished, the service not yet (eventual consistency): let Event Grid redeliver.
            raise TransientError(f"{job.name} reported {msg.status} but reads {job.status.value}; retry later")
        return Handled("ignored", f"{job.name} is {job.status.value}")
    # RunCompleted and RunStatusChanged both announce one completion: act on it once, whichever comes first.
    key = f"job:{job.name}:{job.status.value}"
    state = ledger.claim(key, event_type="JobTerminal")
    if state != "new":
        return Handled("ignored", f"{job.name} {job.status.value} already handled")
    try:
        if job.status is JobStatus.COMPLETED:
            result = _completed(msg, job, workspace, metrics, audit, notifier, settings, clock)
        else:
            result = _failed(msg, job, audit, notifier, settings, clock)
    except TransientError:
        ledger.release(key, token=getattr(state, "token", None))
        raise
    # Any other failure propagates with the claim still held: the bus settles it with the message (completed
    # with the failure when permanent, released when it will be retried).
    ledger.complete(key, result.outcome, result.reason, token=getattr(state, "token", None))
    return result


def _completed(msg, job: Job, workspace: Workspace, metrics: RunMetrics, audit: AuditLog, notifier: Notifier,
               settings: Settings, clock: Clock) -> Handled:
    asset, version = job.tags.get(TAG_ASSET, ""), job.tags.get(TAG_DATA_VERSION, "")
    if not asset or not version:
        raise InvalidPayload(f"job {job.name} has no data lineage tags", field="tags")
    model_name, endpoint_name = settings.model_for(asset), settings.endpoint_for(asset)
    measured = metrics.get_run_metrics(job.name)
    endpoint = workspace.get_endpoint(endpoint_name)
    champ = rules.champion(endpoint)
    champ_model = workspace.get_model(champ.model_name, champ.model_version) if champ else None
    champ_metrics = champ_model.metrics() if champ_model else None
    verdict = rules.gate(measured, champ_metrics, settings.policy)
    facts = {"job": job.name, "asset": asset, "version": version, "metrics": measured, "model": model_name,
             "champion": f"{champ_model.name}:{champ_model.version}" if champ_model else None,
             "champion_metrics": champ_metrics, "endpoint": endpoint_name,
             "policy": {"primary": settings.policy.primary_metric, "min": settings.policy.min_primary,
                        "margin": settings.policy.min_improvement, "guards": list(settings.policy.guard_metrics),
                        "tolerance": settings.policy.guard_tolerance}}
    primary = settings.policy.primary_metric
    metric_facts = tuple((k, f"{v:.4f}") for k, v in sorted(measured.items()) if not k.startswith("n_"))
    if verdict.action is rules.Action.REJECT:
        _audit(audit, clock, msg, "reject", verdict.reason, facts=facts, resources=(f"job:{job.name}",))
        notifier.notify(Alert(
            kind="model_rejected", severity="warning", title=f"Model rejected by the gate: {asset} v{version}",
            summary=f"Job {job.name} finished but its model was not registered: {verdict.reason}.",
            facts=(("Job", job.name), ("Data", f"{asset}:{version}"), *metric_facts,
                   ("Champion", facts["champion"] or "none"),
                   ("Champion " + primary, f"{champ_metrics.get(primary, float('nan')):.4f}" if champ_metrics else "—")),
            links=_links(settings, job=job.name), incident_key=f"gate:{job.name}", event_id=msg.event_id))
        return Handled("done", f"rejected: {verdict.reason}", resources=(f"job:{job.name}",))

    tags = {OWNER_TAG: OWNER_VALUE, TAG_JOB: job.name, TAG_ASSET: asset, TAG_DATA_VERSION: version,
            TAG_CODE: job.tags.get(TAG_CODE, ""), TAG_EVENT: job.tags.get(TAG_EVENT, ""),
            "mlops_run_event": msg.event_id, TAG_GATE: "approved", TAG_GATE_REASON: verdict.reason[:250]}
    # repr keeps every digit: the next gate compares with these exact values, and a rounded champion would let
    # an identical retrain "beat" it (or not) depending on which way the rounding fell.
    tags.update({f"{TAG_METRIC_PREFIX}{k}": repr(float(v)) for k, v in measured.items()})
    model = workspace.register_model(ModelSpec(name=model_name, version=model_version_for(version, job.attempt),
                                               job_name=job.name, tags=tags,
                                               description=f"trained by {job.name} on {asset}:{version}"))
    _audit(audit, clock, msg, "approve", verdict.reason, facts=facts,
           resources=(f"model:{model.name}:{model.version}",))
    notifier.notify(Alert(
        kind="model_registered", severity="info", title=f"Model registered: {model.name} v{model.version}",
        summary=f"The gate approved the model from {job.name}: {verdict.reason}.",
        facts=(("Model", f"{model.name}:{model.version}"), ("Data", f"{asset}:{version}"), ("Job", job.name),
               *metric_facts, ("Champion", facts["champion"] or "none")),
        links=_links(settings, job=job.name, model=f"{model.name}/{model.version}"),
        incident_key=f"model:{model.name}:{model.version}", event_id=msg.event_id))
    if settings.policy.freeze:
        _audit(audit, clock, msg, "hold", "freeze is on: model registered, not deployed",
               facts={"model": model.name, "endpoint": endpoint_name})
        return Handled("done", f"registered {model.name}:{model.version}; freeze is on, not deployed",
                       resources=(f"model:{model.name}:{model.version}",))
    return _roll_out(msg, model, endpoint, endpoint_name, workspace, audit, notifier, settings, clock)


def _roll_out(msg, model, endpoint: Endpoint | None, endpoint_name: str, workspace: Workspace, audit: AuditLog,
              notifier: Notifier, settings: Settings, clock: Clock) -> Handled:
    deployment = deployment_name_for(model.version)
    lineage = {OWNER_TAG: OWNER_VALUE, "mlops_model": f"{model.name}:{model.version}",
               TAG_ASSET: model.tags.get(TAG_ASSET, ""), TAG_EVENT: msg.event_id}
    if endpoint is not None and endpoint.traffic.get(deployment, 0) > 0:
        return Handled("done", f"{deployment} already serves {endpoint.traffic[deployment]}%",
                       resources=(f"deployment:{endpoint_name}/{deployment}",))
    workspace.create_deployment(endpoint_name, deployment, model, lineage)
    endpoint = workspace.get_endpoint(endpoint_name)
    plan = rules.rollout(endpoint, deployment, settings.policy)
    now = clock()
    dep_tags = {name: {TAG_KNOWN_GOOD: "true"} for name, share in plan.traffic.items() if share == 100}
    before = dict(endpoint.traffic) if endpoint else {}
    workspace.set_traffic(endpoint_name, plan.traffic, tags={TAG_TRAFFIC_CHANGED: now.isoformat()},
                          deployment_tags=dep_tags)
    _audit(audit, clock, msg, "deploy", plan.reason,
           facts={"endpoint": endpoint_name, "deployment": deployment, "model": model.name,
                  "model_version": model.version, "traffic_before": before, "traffic_after": plan.traffic},
           resources=(f"deployment:{endpoint_name}/{deployment}",))
    split = ", ".join(f"{k} {v}%" for k, v in sorted(plan.traffic.items(), key=lambda kv: -kv[1]))
    notifier.notify(Alert(
        kind="deployment_changed", severity="info", title=f"Deployed {model.name} v{model.version} to {endpoint_name}",
        summary=f"{plan.reason}. Traffic is now: {split}.",
        facts=(("Endpoint", endpoint_name), ("Deployment", deployment), ("Model", f"{model.name}:{model.version}"),
               ("Traffic before", ", ".join(f"{k} {v}%" for k, v in before.items() if v) or "none"),
               ("Traffic now", split)),
        links=_links(settings, endpoint=endpoint_name), incident_key=f"deploy:{endpoint_name}:{deployment}",
        event_id=msg.event_id))
    return Handled("done", f"registered {model.name}:{model.version} and deployed: {split}",
                   resources=(f"model:{model.name}:{model.version}", f"deployment:{endpoint_name}/{deployment}"))


def _failed(msg, job: Job, audit: AuditLog, notifier: Notifier, settings: Settings, clock: Clock) -> Handled:
    decision = rules.on_run_failed(job.status.value, job.error, job.attempt, settings.policy)
    asset, version = job.tags.get(TAG_ASSET, ""), job.tags.get(TAG_DATA_VERSION, "")
    retry = decision.action is rules.Action.RETRY and not settings.policy.freeze
    _audit(audit, clock, msg, decision.action.value, decision.reason,
           facts={"job": job.name, "status": job.status.value, "error": job.error[:2000], "asset": asset,
                  "attempt": job.attempt})
    notifier.notify(Alert(
        kind="training_failed", severity="error" if not retry else "warning",
        title=f"Training {job.status.value.lower()}: {job.name}",
        summary=f"Job {job.name} on {asset}:{version} ended {job.status.value}. {decision.reason}."
                + (" A new attempt was started." if retry else ""),
        facts=(("Job", job.name), ("Status", job.status.value), ("Data", f"{asset}:{version}"),
               ("Attempt", f"{job.attempt} of {settings.policy.max_attempts}"),
               ("Next", "retry" if retry else "none: fix and rerun (POST /api/reruns)")),
        links=_links(settings, job=job.name), incident_key=f"job:{job.name}:failed", event_id=msg.event_id,
        detail=job.error))
    follow = (StartTraining(event_id=msg.event_id, asset=asset, version=version, attempt=job.attempt + 1,
                            reason=f"retry of {job.name}: {decision.reason}"),) if retry else ()
    return Handled("done", f"{job.name} {job.status.value}: {decision.reason}", follow_ups=follow,
                   resources=(f"job:{job.name}",))


# --- drift → rollback or retrain ----------------------------------------------------------------------

def _health_evidence(monitor: Monitor | None, endpoint: Endpoint | None) -> dict[str, dict]:
    """Each serving deployment's requests, error share and latency over the last window, read from the monitor
    before acting, so the audit trail and the alert show what production looked like when the decision was made.
    A monitor that cannot answer (throttled, not configured, rejected) is recorded as a gap, never fatal."""
    if monitor is None or endpoint is None:
        return {}
    out: dict[str, dict] = {}
    for name in sorted(n for n, share in endpoint.traffic.items() if share > 0):
        try:
            h = monitor.health(endpoint.name, name, HEALTH_WINDOW_MINUTES)
        except MLOpsError as error:
            # Evidence, not a precondition: a throttled or unconfigured monitor must not hold up a rollback (a
            # transient error here would block it until Event Grid gave up). The gap is recorded instead.
            out[name] = {"error": f"{type(error).__name__}: {error}"}
            continue
        out[name] = {"requests": h.requests, "error_share": round(h.error_share, 4),
                     "latency_p50_ms": h.latency_p50_ms, "latency_p95_ms": h.latency_p95_ms, "partial": h.partial}
    return out


def _health_line(evidence: dict[str, dict]) -> str:
    parts = []
    for name, h in evidence.items():
        if "error" in h:
            parts.append(f"{name}: unavailable")
            continue
        p95 = f", p95 {h['latency_p95_ms']:.0f} ms" if h.get("latency_p95_ms") is not None else ""
        parts.append(f"{name}: {h['requests']} req, {h['error_share']:.1%} errors{p95}"
                     + (" (partial)" if h.get("partial") else ""))
    return "; ".join(parts)


def drift_detected(msg: DriftDetected, *, workspace: Workspace, audit: AuditLog, notifier: Notifier,
                   settings: Settings, clock: Clock, publisher: Publisher | None = None,
                   monitor: Monitor | None = None) -> Handled:
    """Roll back a recent rollout to the last known-good deployment, or retrain, by policy."""
    now = clock()
    endpoint = workspace.get_endpoint(msg.endpoint) if msg.endpoint else None
    health = _health_evidence(monitor, endpoint) if not msg.resolved else {}
    asset = msg.asset or _asset_of(endpoint)
    newest = workspace.latest_data(asset) if asset else None
    recent = audit.recent(subject=msg.endpoint, decisions=["rollback", "retrain"], limit=1,
                          since=now - timedelta(minutes=settings.policy.cooldown_minutes)) if msg.endpoint else []
    recent = [r for r in recent if r.actor == "automation"]
    facts = rules.DriftFacts(endpoint=endpoint, resolved=msg.resolved, now=now,
                             last_automatic_change=recent[0].at if recent else None,
                             newest_data=(newest.name, newest.version) if newest else None)
    decision = rules.on_drift(facts, settings.policy)
    audit_facts = {"endpoint": msg.endpoint, "deployment": msg.deployment, "source": msg.source, "rule": msg.rule,
                   "metric": msg.metric, "value": msg.value, "threshold": msg.threshold, "resolved": msg.resolved,
                   "traffic": dict(endpoint.traffic) if endpoint else None,
                   "traffic_changed_at": endpoint.traffic_changed_at.isoformat()
                   if endpoint and endpoint.traffic_changed_at else None,
                   "last_automatic_change": facts.last_automatic_change.isoformat()
                   if facts.last_automatic_change else None,
                   "newest_data": f"{newest.name}:{newest.version}" if newest else None, "asset": asset,
                   "health_window_minutes": HEALTH_WINDOW_MINUTES if health else None, "health": health}
    incident = f"drift:{msg.endpoint or asset}:{msg.rule or msg.metric}"
    measured = f"{msg.metric} {msg.value:.3f}" if msg.value is not None else msg.metric or "alert"
    if msg.threshold is not None:
        measured += f" (threshold {msg.threshold:.3f})"
    drift_facts = (("Endpoint", msg.endpoint or "—"), ("Source", msg.source), ("Signal", measured),
                   ("Rule", msg.rule or "—"))
    if health:
        drift_facts += ((f"Health, last {HEALTH_WINDOW_MINUTES} min", _health_line(health)),)
    if decision.action is rules.Action.ROLLBACK:
        return _roll_back(msg, endpoint, decision, workspace, audit, notifier, settings, clock, "automation",
                          audit_facts, publisher)
    _audit(audit, clock, msg, decision.action.value, decision.reason, facts=audit_facts)
    notifier.notify(Alert(
        kind="drift_detected", severity="info" if msg.resolved else msg.severity,
        title=f"{'Resolved' if msg.resolved else 'Drift or health alert'}: {msg.endpoint or asset}",
        summary=f"{msg.description or measured}. Decision: {decision.action.value} — {decision.reason}.",
        facts=(*drift_facts, ("Decision", decision.action.value)), links=_links(settings, endpoint=msg.endpoint)
        if msg.endpoint else (), incident_key=incident, resolved=msg.resolved, event_id=msg.event_id))
    if decision.action is rules.Action.RETRAIN and newest is not None:
        return Handled("done", decision.reason, follow_ups=(StartTraining(
            event_id=msg.event_id, asset=newest.name, version=newest.version, attempt=0,
            reason=f"drift on {msg.endpoint or asset}: {measured}", drift_on=msg.endpoint or asset),))
    return Handled("done" if decision.action is not rules.Action.RECORD else "ignored", decision.reason)


def _asset_of(endpoint: Endpoint | None) -> str:
    if endpoint is None:
        return ""
    for d in sorted(endpoint.deployments, key=lambda d: -endpoint.traffic.get(d.name, 0)):
        if d.tags.get(TAG_ASSET):
            return d.tags[TAG_ASSET]
    return endpoint.tags.get(TAG_ASSET, "")


def _publish(publisher: Publisher, event_type: str, subject: str, data: dict) -> None:
    """Announce an action that already happened. Its failure must not undo the record of the action or make the
    bus report it as failed, and a redelivery would meet the cooldown, not a second publish: log and go on."""
    try:
        publisher.publish(event_type, subject, data)
    except MLOpsError as error:
        logger.error("could not publish %s for %s (the action itself is done and recorded): %s", event_type,
                     subject, error)


def _roll_back(msg, endpoint: Endpoint, decision: rules.Decision, workspace: Workspace, audit: AuditLog,
               notifier: Notifier, settings: Settings, clock: Clock, actor: str, facts: dict,
               publisher: Publisher | None) -> Handled:
    before = {k: v for k, v in endpoint.traffic.items() if v}
    workspace.set_traffic(endpoint.name, decision.traffic, tags={TAG_TRAFFIC_CHANGED: clock().isoformat()},
                          deployment_tags={name: {TAG_ROLLED_BACK: "true"} for name in decision.mark_bad})
    bad_models = []
    for name in decision.mark_bad:
        dep = endpoint.deployment(name)
        if dep is not None:
            workspace.tag_model(dep.model_name, dep.model_version, {TAG_ROLLED_BACK: "true"})
            bad_models.append(f"{dep.model_name}:{dep.model_version}")
    facts = {**facts, "endpoint": endpoint.name, "from": before, "to_deployment": decision.target,
             "marked_bad": list(decision.mark_bad), "bad_models": bad_models}
    _audit(audit, clock, msg, "rollback", decision.reason, actor=actor, facts=facts,
           resources=tuple(f"deployment:{endpoint.name}/{n}" for n in (decision.target, *decision.mark_bad)))
    split_before = ", ".join(f"{k} {v}%" for k, v in before.items())
    notifier.notify(Alert(
        kind="rollback", severity="critical" if actor == "automation" else "warning",
        title=f"Rolled back {endpoint.name} to {decision.target}",
        summary=f"All traffic moved to {decision.target}: {decision.reason}. "
                f"Marked as rolled back (never a target again): {', '.join(decision.mark_bad) or 'none'}.",
        facts=(("Endpoint", endpoint.name), ("From", split_before or "—"), ("To", f"{decision.target} 100%"),
               ("Marked bad", ", ".join(bad_models) or "—"), ("By", actor))
              + (((f"Health, last {HEALTH_WINDOW_MINUTES} min", _health_line(facts["health"])),)
                 if facts.get("health") else ()),
        links=_links(settings, endpoint=endpoint.name), incident_key=f"rollback:{endpoint.name}:{msg.event_id}",
        actor=actor, event_id=msg.event_id))
    if publisher is not None:
        _publish(publisher, "MLOps.RollbackCompleted", f"endpoints/{endpoint.name}",
                 {"endpoint": endpoint.name, "to": decision.target, "from": before,
                  "markedBad": list(decision.mark_bad), "reason": decision.reason, "actor": actor,
                  "causationId": msg.event_id})
    return Handled("done", f"rolled back to {decision.target}: {decision.reason}",
                   resources=(f"deployment:{endpoint.name}/{decision.target}",),
                   data={"endpoint": endpoint.name, "to": decision.target, "marked_bad": list(decision.mark_bad)})


def roll_back(msg: RollBack, *, workspace: Workspace, audit: AuditLog, notifier: Notifier, settings: Settings,
              clock: Clock, publisher: Publisher | None = None) -> Handled:
    """A rollback asked for by a person: no cooldown or freeze applies, but never onto a rolled-back deployment."""
    endpoint = workspace.get_endpoint(msg.endpoint)
    if endpoint is None:
        raise NotFound(f"endpoint {msg.endpoint!r} does not exist")
    if msg.to_deployment:
        target = endpoint.deployment(msg.to_deployment)
        if target is None:
            raise NotFound(f"deployment {msg.to_deployment!r} does not exist on {msg.endpoint}")
        if target.rolled_back:
            raise Conflict(f"{target.name} was itself rolled back; deploy a new model instead")
        bad = tuple(n for n, share in endpoint.traffic.items() if share > 0 and n != target.name)
    else:
        target, bad = rules.rollback_target(endpoint)
        if target is None:
            raise Conflict(f"{msg.endpoint} has no known-good deployment to roll back to")
    if endpoint.traffic.get(target.name, 0) == 100:
        return Handled("ignored", f"{target.name} already serves 100%")
    decision = rules.Decision(rules.Action.ROLLBACK, f"requested by {msg.actor}: {msg.reason}",
                              traffic={target.name: 100}, target=target.name, mark_bad=bad)
    notifier.notify(Alert(kind="manual_action", severity="info", title=f"Manual rollback of {endpoint.name}",
                          summary=f"{msg.actor} asked to roll back {endpoint.name}: {msg.reason}.",
                          facts=(("Endpoint", endpoint.name), ("Requested by", msg.actor), ("Reason", msg.reason)),
                          incident_key=f"manual:{msg.event_id}", actor=msg.actor, event_id=msg.event_id))
    return _roll_back(msg, endpoint, decision, workspace, audit, notifier, settings, clock, msg.actor,
                      {"reason": msg.reason}, publisher)


# --- audit-only events ---------------------------------------------------------------------------------

def model_registered(msg: ModelRegistered, *, audit: AuditLog, clock: Clock) -> Handled:
    by = "automation" if msg.tags.get(OWNER_TAG) == OWNER_VALUE else "outside the automation"
    _audit(audit, clock, msg, "observe", f"model {msg.name}:{msg.version} registered ({by})",
           facts={"model": msg.name, "version": msg.version, "tags": msg.tags})
    return Handled("done", f"recorded {msg.name}:{msg.version}")


def model_deployed(msg: ModelDeployed, *, audit: AuditLog, clock: Clock) -> Handled:
    _audit(audit, clock, msg, "observe", f"models {msg.models or '?'} deployed to {msg.endpoint}",
           facts={"endpoint": msg.endpoint, "models": msg.models})
    return Handled("done", f"recorded deployment on {msg.endpoint}")


def event_ignored(msg: EventIgnored) -> Handled:
    return Handled("ignored", msg.reason)


EVENT_HANDLERS = {
    DataRegistered: data_registered,
    RunFinished: run_finished,
    DriftDetected: drift_detected,
    ModelRegistered: model_registered,
    ModelDeployed: model_deployed,
    EventIgnored: event_ignored,
}
COMMAND_HANDLERS = {
    StartTraining: start_training,
    RerunJob: rerun_job,
    RollBack: roll_back,
}

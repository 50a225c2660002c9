"""Use cases: one plain function per message. Read current state, ask policy.py, act through the ports.

Handlers never trust event order: each re-reads the job, endpoint or data asset it acts on. Every create is
idempotent at its source (deterministic names), so running a handler twice has the effect of running it once.
"""
from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from shared import controller, datacontract, logs, rollout
from shared import policy as rules
from shared.bus import Handled
from shared.config import Settings
from shared.datacontract import LandingReader
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
    TAG_METRIC_PREFIX,
    Alert,
    AuditRecord,
    Endpoint,
    Job,
    JobStatus,
    ModelSpec,
    TrainingJobSpec,
    deployment_name_for,
    training_job_name,
)
from shared.errors import Conflict, InvalidPayload, MLOpsError, NotFound, TransientError
from shared.labels import labels_landed
from shared.messages import (
    AdvanceRollouts,
    DataRegistered,
    DecideApproval,
    DriftDetected,
    EventIgnored,
    LabelsLanded,
    ModelDeployed,
    ModelRegistered,
    RerunJob,
    RollBack,
    RunFinished,
    StartTraining,
)
from shared.ports import AuditLog, Ledger, Monitor, Notifier, Publisher, RunMetrics, StateStore, Workspace
from shared.redact import redact

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


def _record(clock: Clock, msg, decision: str, reason: str, *, actor: str = "automation", facts: dict | None = None,
            resources: tuple[str, ...] = ()) -> AuditRecord:
    return AuditRecord(event_id=msg.event_id, message=msg.type, decision=decision, reason=redact(reason), actor=actor,
                       facts=facts or {}, resources=resources, at=clock())


def _audit(audit: AuditLog, clock: Clock, msg, decision: str, reason: str, *, actor: str = "automation",
           facts: dict | None = None, resources: tuple[str, ...] = ()) -> None:
    audit.append(_record(clock, msg, decision, reason, actor=actor, facts=facts, resources=resources))


def _audit_once(audit: AuditLog, clock: Clock, msg, decision: str, reason: str, *, facts: dict,
                resources: tuple[str, ...] = ()) -> None:
    """The gate's verdict on a run, recorded once: a completion redelivered after a transient failure further on
    (registration, rollout) decides again, and the trail must not show two verdicts for one run."""
    record = _record(clock, msg, decision, reason, facts=facts, resources=resources)
    job = facts.get("job")
    if job:
        audit.append_once(record, subject=job, same=lambda r: r.facts.get("job") == job)
    else:
        audit.append(record)


def _links(settings: Settings, **kinds: str) -> tuple[tuple[str, str], ...]:
    """Studio links (Azure) for the named resources (shared/links.py); the embedded backend has none."""
    from shared.links import studio_links

    return studio_links(settings, **kinds)


# --- data → training ---------------------------------------------------------------------------------

def data_registered(msg: DataRegistered, *, workspace: Workspace, audit: AuditLog, settings: Settings,
                    clock: Clock, landing: LandingReader | None = None) -> Handled:
    """Register the landed data version (or check it exists) and ask for a training run on it. A landed file is
    first checked against the data contract (shared/datacontract.py): one that breaks it is rejected (recorded and
    alerted by the bus) before anything is registered."""
    if msg.register and landing is not None:
        _check_contract(msg, workspace, landing, settings)
    if msg.register:
        asset = workspace.register_data(msg.asset, msg.version, msg.path,
                                        tags=logs.tag({TAG_EVENT: msg.event_id, OWNER_TAG: OWNER_VALUE}))
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


def _check_contract(msg: DataRegistered, workspace: Workspace, landing: LandingReader, settings: Settings) -> None:
    try:
        head = landing.head(msg.path)
    except FileNotFoundError:
        raise NotFound(f"landed data for {msg.asset}:{msg.version} is gone from {msg.path}") from None
    report, problems = datacontract.check(head, settings.contract)
    if report is not None:
        return
    # Only a refused file costs the workspace call that names the next free version.
    latest = workspace.latest_data(msg.asset)
    datacontract.validate(head, settings.contract, asset=msg.asset, version=msg.version,
                          taken=[latest.version] if latest else [])


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
        if not mine and msg.actor == "automation" and attempt > settings.policy.max_attempts:
            # Automatic "next attempt" requests (drift) are bounded like retries; a person may force more.
            raise Conflict(f"{data.name}:{data.version} already had {attempt - 1} attempts (MLOPS_MAX_ATTEMPTS "
                           f"{settings.policy.max_attempts}): not trained again automatically")
    name = training_job_name(data.name, data.version, attempt)
    spec = TrainingJobSpec(
        name=name, asset=data.name, data_version=data.version, attempt=attempt,
        tags=logs.tag({OWNER_TAG: OWNER_VALUE, TAG_ASSET: data.name, TAG_DATA_VERSION: data.version,
                       TAG_ATTEMPT: str(attempt), TAG_EVENT: msg.event_id, TAG_CODE: code_version(settings),
                       TAG_ACTOR: msg.actor}),
        compute=settings.compute, low_priority=settings.low_priority, max_run_seconds=settings.max_run_seconds,
        train_args=settings.contract.train_args())
    existed = _exists(workspace, name)
    job = workspace.submit_training(spec)
    reason = f"{'existing' if existed else 'submitted'} {job.name} on {data.name}:{data.version} ({msg.reason})"
    _audit(audit, clock, msg, "start_training" if not existed else "training_exists", reason, actor=msg.actor,
           facts={"asset": data.name, "version": data.version, "attempt": attempt, "job": job.name,
                  "compute": settings.compute, "low_priority": settings.low_priority},
           resources=(f"job:{job.name}",))
    # A redelivery of the event that submitted the job announces it again while the job has not finished: the
    # worker before may have died between the submit and its alert, and the outbox drops the repeat of a card it
    # did queue (same incident key). A job some other event started, or one already over, is not announced again.
    if not existed or (job.tags.get(TAG_EVENT) == msg.event_id and not job.status.completed):
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
                 notifier: Notifier, settings: Settings, clock: Clock, states: StateStore,
                 publisher: Publisher | None = None, credential=None, drift_container=None) -> Handled:
    """Act on a run's terminal state, read from the workspace (the event's status is only a hint)."""
    try:
        job = workspace.get_job(msg.job_name)
    except NotFound:
        return Handled("ignored", f"job {msg.job_name} is unknown to this workspace")
    logs.adopt(job.tags)  # this completion belongs to the chain that started the job
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
        if job.tags.get("mlops_drift_check"):  # a drift check run as a job (shared/drift/offload.py)
            result = _drift_job(job, workspace, settings, publisher, credential, drift_container)
        elif job.status is JobStatus.COMPLETED:
            result = _completed(msg, job, workspace, metrics, audit, notifier, settings, clock, states)
        else:
            result = _failed(msg, job, audit, notifier, settings, clock)
    except TransientError:
        ledger.release(key, token=getattr(state, "token", None))
        raise
    # Any other failure propagates with the claim still held: the bus settles it with the message (completed
    # with the failure when permanent, released when it will be retried).
    ledger.complete(key, result.outcome, result.reason, token=getattr(state, "token", None))
    return result


def _drift_job(job: Job, workspace: Workspace, settings: Settings, publisher: Publisher | None, credential,
               container) -> Handled:
    """Publish the DriftDetected of a drifted window checked by a drift job, as the in-function check would."""
    from shared.drift import offload

    if publisher is None and callable(getattr(workspace, "publish", None)):
        publisher = workspace  # the embedded workspace emits our events itself
    container = container or offload.container_for(settings, workspace, credential)
    outcome, reason = offload.finished(job, container=container, publisher=publisher)
    return Handled(outcome, reason)


def _ctx(msg, *, workspace: Workspace, states: StateStore, audit: AuditLog, notifier: Notifier,
         settings: Settings, clock: Clock, actor: str = "automation", **extra) -> controller.Context:
    # Every context can start retraining: a committed drift decision may be finished by any later event or tick.
    return controller.Context(workspace=workspace, states=states, audit=audit, notifier=notifier, settings=settings,
                              clock=clock, event_id=msg.event_id, message=msg.type, actor=actor,
                              links=lambda **kinds: _links(settings, **kinds),
                              retrain=_retrainer(workspace, audit, notifier, settings, clock), **extra)


def _reference_metrics(workspace: Workspace, metrics: RunMetrics, ref: str) -> tuple[dict[str, float], str]:
    """The metrics a deployed model was registered with, else those its training run logged; ("", why) if none."""
    name, _, version = ref.rpartition(":")
    try:
        model = workspace.get_model(name, version)
    except NotFound:
        return {}, f"model {ref} no longer exists in the workspace"
    found = model.metrics()
    if not found and model.tags.get(TAG_JOB):
        try:
            found = metrics.get_run_metrics(model.tags[TAG_JOB])
        except NotFound:
            found = {}
    return found, "" if found else f"model {ref} has no recorded metrics"


def _completed(msg, job: Job, workspace: Workspace, metrics: RunMetrics, audit: AuditLog, notifier: Notifier,
               settings: Settings, clock: Clock, states: StateStore) -> Handled:
    asset, version = job.tags.get(TAG_ASSET, ""), job.tags.get(TAG_DATA_VERSION, "")
    if not asset or not version:
        raise InvalidPayload(f"job {job.name} has no data lineage tags", field="tags")
    model_name, endpoint_name = settings.model_for(asset), settings.endpoint_for(asset)
    ctx = _ctx(msg, workspace=workspace, states=states, audit=audit, notifier=notifier, settings=settings,
               clock=clock)
    # Judged before? A completion redelivered after a transient failure further on finds the model its job
    # already registered: the gate approved it then. Judging it again would compare it with itself (it may be the
    # canary by now) and record a contradicting verdict; only the rollout is carried on (idempotent).
    mine = next((m for m in workspace.list_models(model_name) if m.tags.get(TAG_JOB) == job.name), None)
    if mine is not None:
        reason = mine.tags.get(TAG_GATE_REASON, "approved before")
        # What a crash right after the registration may have left unsaid: recorded and alerted once (the audit by
        # job, the alert by its incident key).
        _audit_once(audit, clock, msg, "approve", reason, resources=(f"model:{mine.name}:{mine.version}",),
                    facts={"job": job.name, "asset": asset, "version": version, "model": mine.name,
                           "model_version": mine.version, "endpoint": endpoint_name, "metrics": mine.metrics()})
        notifier.notify(_registered(msg, mine, job.name, f"{asset}:{version}", reason, settings))
        return _roll_out(ctx, msg, mine, endpoint_name, version, reason)
    measured = metrics.get_run_metrics(job.name)
    state, _ = controller.load(ctx, endpoint_name)
    # The candidate must beat the stable AND any canary in flight: approving it against the stable alone would
    # let a model worse than the live canary replace it.
    verdict = rules.gate(measured, None, settings.policy)
    compared: dict[str, object] = {}
    for role, ref in (("stable", state.stable_model), ("canary", state.canary_model)):
        if not ref or verdict.action is rules.Action.REJECT:
            continue
        ref_metrics, missing = _reference_metrics(workspace, metrics, ref)
        compared[role] = {"model": ref, "metrics": ref_metrics}
        if missing:
            # Without the reference's numbers the guard metrics cannot be checked: no silent "no champion".
            verdict = rules.Decision(rules.Action.REJECT, f"cannot compare with the {role} ({missing}); the gate "
                                                          "does not approve what it cannot compare")
            continue
        verdict = rules.gate(measured, ref_metrics, settings.policy)
        if verdict.action is rules.Action.REJECT:
            verdict = rules.Decision(rules.Action.REJECT, f"against the {role} {ref}: {verdict.reason}")
        else:
            verdict = rules.Decision(rules.Action.APPROVE, f"against the {role} {ref}: {verdict.reason}")
    champ = compared.get("stable") or compared.get("canary")
    champ_metrics = champ["metrics"] if champ else None
    facts = {"job": job.name, "asset": asset, "version": version, "metrics": measured, "model": model_name,
             "champion": champ["model"] if champ else None, "compared": compared,
             "champion_metrics": champ_metrics, "endpoint": endpoint_name,
             "policy": {"primary": settings.policy.primary_metric, "min": settings.policy.min_primary,
                        "margin": settings.policy.min_improvement, "guards": list(settings.policy.guard_metrics),
                        "tolerance": settings.policy.guard_tolerance}}
    primary = settings.policy.primary_metric
    metric_facts = tuple((k, f"{v:.4f}") for k, v in sorted(measured.items()) if not k.startswith("n_"))
    if verdict.action is rules.Action.REJECT:
        _audit_once(audit, clock, msg, "reject", verdict.reason, facts=facts, resources=(f"job:{job.name}",))
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
    logs.tag(tags, job.tags)
    # repr keeps every digit: the next gate compares with these exact values, and a rounded champion would let
    # an identical retrain "beat" it (or not) depending on which way the rounding fell.
    tags.update({f"{TAG_METRIC_PREFIX}{k}": repr(float(v)) for k, v in measured.items()})
    # Azure requires a positive integer version: the workspace assigns the next one, or returns the version this
    # job already produced (a redelivered event), found by its mlops_job tag.
    model = workspace.register_model(ModelSpec(name=model_name, version="", job_name=job.name, tags=tags,
                                               description=f"trained by {job.name} on {asset}:{version}"))
    _audit_once(audit, clock, msg, "approve", verdict.reason, facts={**facts, "model_version": model.version},
           resources=(f"model:{model.name}:{model.version}",))
    notifier.notify(_registered(msg, model, job.name, f"{asset}:{version}", verdict.reason, settings,
                                extra=(*metric_facts, ("Champion", facts["champion"] or "none"))))
    return _roll_out(ctx, msg, model, endpoint_name, version, verdict.reason)


def _registered(msg, model, job: str, data: str, reason: str, settings: Settings, *,
                extra: tuple[tuple[str, str], ...] = ()) -> Alert:
    """The model_registered alert; one incident per model version, so announcing it again is held back."""
    return Alert(kind="model_registered", severity="info", title=f"Model registered: {model.name} v{model.version}",
                 summary=f"The gate approved the model from {job}: {reason}.",
                 facts=(("Model", f"{model.name}:{model.version}"), ("Data", data), ("Job", job), *extra),
                 links=_links(settings, job=job, model=f"{model.name}/{model.version}"),
                 incident_key=f"model:{model.name}:{model.version}", event_id=msg.event_id)


def _roll_out(ctx: controller.Context, msg, model, endpoint_name: str, version: str, gate_reason: str) -> Handled:
    deployment = deployment_name_for(model.name, model.version)
    decision = controller.apply(ctx, endpoint_name, rollout.NewModel(
        model=model.name, version=model.version, deployment=deployment, data_version=version,
        gate_reason=gate_reason, approval_id=secrets.token_urlsafe(24), form_secret=secrets.token_urlsafe(24)))
    return Handled("done", f"registered {model.name}:{model.version}; {decision.action}: {decision.reason}",
                   resources=(f"model:{model.name}:{model.version}", f"deployment:{endpoint_name}/{deployment}"),
                   data={"model": model.name, "model_version": model.version, "deployment": deployment,
                         "rollout": decision.action})


def _failed(msg, job: Job, audit: AuditLog, notifier: Notifier, settings: Settings, clock: Clock) -> Handled:
    decision = rules.on_run_failed(job.status.value, job.error, job.attempt, settings.policy)
    asset, version = job.tags.get(TAG_ASSET, ""), job.tags.get(TAG_DATA_VERSION, "")
    retry = decision.action is rules.Action.RETRY and not settings.policy.freeze
    # The audit says what was done: a retry the freeze switch suppressed is a hold, not a retry.
    action, reason = decision.action.value, decision.reason
    if decision.action is rules.Action.RETRY and not retry:
        action, reason = "hold", f"{decision.reason}; not retried: freeze switch (MLOPS_FREEZE) is on"
    _audit(audit, clock, msg, action, reason,
           facts={"job": job.name, "status": job.status.value, "error": job.error[:2000], "asset": asset,
                  "attempt": job.attempt})
    notifier.notify(Alert(
        kind="training_failed", severity="error" if not retry else "warning",
        title=f"Training {job.status.value.lower()}: {job.name}",
        summary=f"Job {job.name} on {asset}:{version} ended {job.status.value}. {reason}."
                + (" A new attempt was started." if retry else ""),
        facts=(("Job", job.name), ("Status", job.status.value), ("Data", f"{asset}:{version}"),
               ("Attempt", f"{job.attempt} of {settings.policy.max_attempts}")),
        next_step=(f"Nothing to do now: attempt {job.attempt + 1} was started and another card follows when it ends."
                   if retry else f"Read the error excerpt, fix the data or the training code, then rerun the job: "
                                 f"POST /api/reruns with {{\"job\": \"{job.name}\"}}."),
        links=_links(settings, job=job.name), incident_key=f"job:{job.name}:failed", event_id=msg.event_id,
        detail=job.error))
    follow = (StartTraining(event_id=msg.event_id, asset=asset, version=version, attempt=job.attempt + 1,
                            reason=f"retry of {job.name}: {decision.reason}"),) if retry else ()
    return Handled("done", f"{job.name} {job.status.value}: {reason}", follow_ups=follow,
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


def _data_status(workspace: Workspace, state: rollout.EndpointState, asset: str, version: str) -> str:
    """Whether retraining on (asset, version) could help: new, running, stable (the stable was trained on it) or
    tried (a job on it failed for good, or its model was rejected by the gate or rolled back)."""
    stable_data = ""
    if state.stable_model:
        name, _, ver = state.stable_model.rpartition(":")
        try:
            stable_data = workspace.get_model(name, ver).tags.get(TAG_DATA_VERSION, "")
        except NotFound:
            stable_data = ""
    if stable_data == version:
        return "stable"
    jobs = _attempts(workspace, asset, version)
    if any(not j.status.completed for j in jobs):
        return "running"
    return "tried" if jobs else "new"


def drift_detected(msg: DriftDetected, *, workspace: Workspace, audit: AuditLog, notifier: Notifier,
                   settings: Settings, clock: Clock, states: StateStore, publisher: Publisher | None = None,
                   monitor: Monitor | None = None) -> Handled:
    """Abort the canary, return to the previous stable right after a promotion, or retrain, by policy."""
    endpoint = workspace.get_endpoint(msg.endpoint) if msg.endpoint else None
    asset = msg.asset or _asset_of(endpoint)
    measured = f"{msg.metric} {msg.value:.3f}" if msg.value is not None else msg.metric or "alert"
    if msg.threshold is not None:
        measured += f" (threshold {msg.threshold:.3f})"
    signal = {"endpoint": msg.endpoint, "deployment": msg.deployment, "source": msg.source, "rule": msg.rule,
              "metric": msg.metric, "value": msg.value, "threshold": msg.threshold, "resolved": msg.resolved,
              "asset": asset, **({"details": msg.details} if msg.details else {})}
    if not msg.endpoint or endpoint is None:
        # Dataset drift without an endpoint: nothing to roll back, retraining is the only answer (budget aside).
        newest = workspace.latest_data(asset) if asset else None
        reason = f"drift on {asset or 'unknown data'} ({measured}) with no endpoint to act on"
        _audit(audit, clock, msg, "record", reason, facts=signal)
        notifier.notify(Alert(kind="drift_detected", severity="info" if msg.resolved else msg.severity,
                              title=f"Drift: {asset or msg.endpoint or 'unknown'}", summary=f"{reason}.",
                              facts=(("Source", msg.source), ("Signal", measured)),
                              incident_key=f"drift:{asset}:{msg.rule or msg.metric}", resolved=msg.resolved,
                              event_id=msg.event_id))
        return Handled("ignored", reason, data={"newest": f"{newest.name}:{newest.version}" if newest else None})
    health = _health_evidence(monitor, endpoint) if not msg.resolved else {}
    ctx = _ctx(msg, workspace=workspace, states=states, audit=audit, notifier=notifier, settings=settings,
               clock=clock, extra_facts={"signal": signal, "health": health,
                            "health_window_minutes": HEALTH_WINDOW_MINUTES if health else None},
               incident=f"drift:{msg.endpoint}:{msg.rule or msg.metric}")

    def signal_for(state: rollout.EndpointState, view) -> rollout.DriftSignal:
        newest = workspace.latest_data(asset) if asset else None
        status = _data_status(workspace, state, newest.name, newest.version) if newest else "new"
        return rollout.DriftSignal(resolved=msg.resolved, summary=f"{msg.source or 'alert'}: {measured}",
                                   newest_data=(newest.name, newest.version) if newest else None, data_status=status)

    decision = controller.apply(ctx, msg.endpoint, signal_for)
    if decision.action in ("rollback", "abort") and publisher is not None:
        _publish(publisher, "MLOps.RollbackCompleted", f"endpoints/{msg.endpoint}",
                 {"endpoint": msg.endpoint, "to": decision.facts.get("to_deployment"),
                  "markedBad": decision.facts.get("marked_bad"), "reason": decision.reason, "actor": "automation",
                  "causationId": msg.event_id})
    outcome = "ignored" if decision.action in ("record", "noop") else "done"
    return Handled(outcome, f"{decision.action}: {decision.reason}",
                   data={"endpoint": msg.endpoint, "decision": decision.action,
                         "to": decision.facts.get("to_deployment"), "marked_bad": decision.facts.get("marked_bad")})


def _retrainer(workspace: Workspace, audit: AuditLog, notifier: Notifier, settings: Settings,
               clock: Clock) -> Callable[[str, str, str, str], object]:
    """Start retraining as an effect of a committed drift decision (not as a follow-up message: a failure after
    the decision was committed must be finished by the next worker, which only effects are). The job is named by
    the drift event's id, so finishing it twice starts one job."""
    def retrain(asset: str, version: str, event_id: str, endpoint: str) -> object:
        return start_training(StartTraining(event_id=event_id, asset=asset, version=version, attempt=0,
                                            reason=f"drift on {endpoint}", drift_on=endpoint),
                              workspace=workspace, audit=audit, notifier=notifier, settings=settings, clock=clock)
    return retrain


def _asset_of(endpoint: Endpoint | None) -> str:
    if endpoint is None:
        return ""
    for d in sorted(endpoint.deployments, key=lambda d: -endpoint.traffic.get(d.name, 0)):
        if d.tags.get(TAG_ASSET):
            return d.tags[TAG_ASSET]
    return endpoint.tags.get(TAG_ASSET, "")


def _publish(publisher: Publisher, event_type: str, subject: str, data: dict) -> None:
    """Announce an action that already happened. Its failure must not undo the record of the action or make the
    bus report it as failed: log and go on."""
    try:
        publisher.publish(event_type, subject, data)
    except MLOpsError as error:
        logger.error("could not publish %s for %s (the action itself is done and recorded): %s", event_type,
                     subject, error)


def roll_back(msg: RollBack, *, workspace: Workspace, audit: AuditLog, notifier: Notifier, settings: Settings,
              clock: Clock, states: StateStore, publisher: Publisher | None = None) -> Handled:
    """A rollback asked for by a person: no cooldown or freeze applies, never onto a rolled-back or failed
    deployment. Without ``to_deployment``: the canary is aborted, or the last promotion undone."""
    if workspace.get_endpoint(msg.endpoint) is None:
        raise NotFound(f"endpoint {msg.endpoint!r} does not exist")
    ctx = _ctx(msg, workspace=workspace, states=states, audit=audit, notifier=notifier, settings=settings,
               clock=clock, actor=msg.actor, extra_facts={"reason": msg.reason})
    decision = controller.apply(ctx, msg.endpoint, rollout.ManualRollback(actor=msg.actor, reason=msg.reason,
                                                                          to=msg.to_deployment))
    if decision.action == "noop":
        return Handled("ignored", decision.reason)
    if publisher is not None:
        _publish(publisher, "MLOps.RollbackCompleted", f"endpoints/{msg.endpoint}",
                 {"endpoint": msg.endpoint, "to": decision.facts.get("to_deployment"),
                  "markedBad": decision.facts.get("marked_bad"), "reason": decision.reason, "actor": msg.actor,
                  "causationId": msg.event_id})
    return Handled("done", f"rolled back to {decision.facts.get('to_deployment')}: {decision.reason}",
                   resources=(f"deployment:{msg.endpoint}/{decision.facts.get('to_deployment')}",),
                   data={"endpoint": msg.endpoint, "to": decision.facts.get("to_deployment"),
                         "marked_bad": decision.facts.get("marked_bad")})


def decide_approval(msg: DecideApproval, *, workspace: Workspace, audit: AuditLog, notifier: Notifier,
                    settings: Settings, clock: Clock, states: StateStore) -> Handled:
    """A named person approves (deploys as a canary) or rejects a model waiting for approval. Single-use."""
    ctx = _ctx(msg, workspace=workspace, states=states, audit=audit, notifier=notifier, settings=settings,
               clock=clock, actor=msg.actor, extra_facts={"reason": msg.reason})
    decision = controller.apply(ctx, msg.endpoint, rollout.ApprovalDecision(
        approval_id=msg.approval_id, approve=msg.approve, actor=msg.actor, reason=msg.reason))
    return Handled("done", f"{decision.action}: {decision.reason}",
                   data={"endpoint": msg.endpoint, "decision": decision.action, "approver": msg.actor})


def advance_rollouts(msg: AdvanceRollouts, *, workspace: Workspace, audit: AuditLog, notifier: Notifier,
                     settings: Settings, clock: Clock, states: StateStore, monitor: Monitor | None = None) -> Handled:
    """The controller's timer: analyse each canary over its current step and advance, promote or abort it; expire
    approvals; retire surplus deployments. A tick delivered twice decides on the same record twice: the second
    finds the step just started (bake time) or nothing due, and changes nothing."""
    names = [msg.endpoint] if msg.endpoint else states.endpoints()
    done: dict[str, str] = {}
    failed: dict[str, str] = {}
    for name in names:
        ctx = _ctx(msg, workspace=workspace, states=states, audit=audit, notifier=notifier, settings=settings,
                   clock=clock)

        def tick_for(state: rollout.EndpointState, view, name=name) -> rollout.Tick:
            if state.phase is not rollout.Phase.PROGRESSING or not state.canary:
                return rollout.Tick()
            minutes = controller.recent_window(state, clock())
            return rollout.Tick(rollout.Evidence(
                canary=controller.health_or_none(monitor, name, state.canary, minutes),
                stable=controller.health_or_none(monitor, name, state.stable, minutes)))

        try:
            done[name] = controller.apply(ctx, name, tick_for).action
        except MLOpsError as error:
            # One endpoint's trouble (a deployment still being created, a throttled read) must not stop the tick
            # for the others; the next tick tries this one again.
            logger.warning("tick on %s: %s: %s", name, type(error).__name__, error)
            failed[name] = f"{type(error).__name__}: {error}"
    changed = {k: v for k, v in done.items() if v != "noop"}
    reason = ", ".join(f"{k}: {v}" for k, v in changed.items()) or "nothing to do"
    if failed:
        reason += f"; not this time: {', '.join(failed)}"
    return Handled("done" if changed else "ignored", reason, data={"endpoints": done, "failed": failed})


# --- audit-only events ---------------------------------------------------------------------------------

def model_registered(msg: ModelRegistered, *, audit: AuditLog, clock: Clock) -> Handled:
    logs.adopt(msg.tags)
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
    LabelsLanded: labels_landed,
}
COMMAND_HANDLERS = {
    StartTraining: start_training,
    RerunJob: rerun_job,
    RollBack: roll_back,
    DecideApproval: decide_approval,
    AdvanceRollouts: advance_rollouts,
}

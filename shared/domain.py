"""Value objects the ports exchange: plain frozen dataclasses, no SDK types."""
from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from shared.errors import InvalidPayload

# Tag keys the automation writes on jobs, models and deployments (Azure tag values are strings).
# No dots in keys: Event Grid advanced filters read dots in a key as nesting (data.runTags.<key>).
OWNER_TAG = "mlops_owner"
OWNER_VALUE = "mlops-automation"
TAG_ASSET = "mlops_data_asset"
TAG_DATA_VERSION = "mlops_data_version"
TAG_ATTEMPT = "mlops_attempt"
TAG_EVENT = "mlops_trigger_event"
TAG_CODE = "mlops_code_version"
TAG_ACTOR = "mlops_actor"
TAG_JOB = "mlops_job"
TAG_GATE = "mlops_gate"
TAG_GATE_REASON = "mlops_gate_reason"
TAG_METRIC_PREFIX = "metric_"
TAG_KNOWN_GOOD = "mlops_known_good"  # "true" once a deployment has served 100% of traffic
TAG_ROLLED_BACK = "mlops_rolled_back"  # "true" once traffic was rolled back away from it
TAG_TRAFFIC_CHANGED = "mlops_traffic_changed_at"  # ISO time of the last automated traffic change


class JobStatus(str, enum.Enum):
    """Azure ML job statuses we act on; ``completed`` is true for terminal states."""

    QUEUED = "Queued"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELED = "Canceled"

    @property
    def completed(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED)

    @classmethod
    def parse(cls, value: str) -> JobStatus:
        """Any letter case; Azure ML's intermediate states (Preparing, Starting, ...) count as Running."""
        v = (value or "").strip().lower()
        for s in cls:
            if s.value.lower() == v:
                return s
        if v in ("cancelled", "cancelrequested"):
            return cls.CANCELED
        if v in ("notstarted", "queued", "provisioning"):
            return cls.QUEUED
        return cls.RUNNING


def slug(value: str) -> str:
    """Lower-case letters, digits and hyphens: safe in job, model and deployment names."""
    s = re.sub(r"[^a-z0-9]+", "-", str(value).lower()).strip("-")
    return s or "x"


def training_job_name(asset: str, version: str, attempt: int) -> str:
    """Deterministic job name: a redelivered event can never start a second job."""
    return f"train-{slug(asset)}-v{slug(version)}-a{attempt}"


def deployment_name_for(model_name: str, model_version: str) -> str:
    """A valid, deterministic, collision-free Azure deployment name for a model version.

    Azure: 3-32 characters, letters, digits and "-", starting with a letter and not ending with "-". The version
    (a positive integer) is kept whole and last, so two versions never share a name; the model name part is cut
    to fit, with a short hash of the whole name when cut, so two long model names that share a prefix differ too.
    """
    version = str(int(check_model_version(str(model_version).strip())))
    tail = f"-v{version}"
    base = slug(model_name)
    room = 32 - len(tail)
    if len(base) > room:
        digest = hashlib.sha256(model_name.encode("utf-8")).hexdigest()[:6]
        base = base[:room - 7].rstrip("-") + "-" + digest
    if not base[0].isalpha():
        base = ("m" + base)[:room].rstrip("-")
    return base + tail


def check_model_version(version: str) -> str:
    """``version`` when it is what an Azure ML workspace accepts for a model (a positive integer); else
    InvalidPayload naming it."""
    if not (version.isdigit() and int(version) > 0):
        raise InvalidPayload(f"model version must be a positive integer, as Azure ML requires, not {version!r}",
                             field="version")
    return version


def next_model_version(existing: Iterable[str]) -> str:
    """The next positive integer after every integer version that exists (other versions are ignored)."""
    numbers = [int(v) for v in existing if str(v).isdigit()]
    return str(max(numbers, default=0) + 1)


def check_traffic(traffic: Mapping[str, int]) -> dict[str, int]:
    """A traffic split as every backend takes it: whole percents 0-100 per deployment, adding up to 100.
    Returns it as a plain dict; raises InvalidPayload naming the problem."""
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 100 for v in traffic.values()):
        raise InvalidPayload(f"traffic shares must be whole percents 0-100, not {dict(traffic)}", field="traffic")
    if sum(traffic.values()) != 100:
        raise InvalidPayload(f"traffic must add up to 100, not {sum(traffic.values())} ({dict(traffic)})",
                             field="traffic")
    return {name: int(share) for name, share in traffic.items()}


@dataclass(frozen=True)
class DataAsset:
    name: str
    version: str
    path: str  # local file path, or azureml://datastores/<ds>/paths/<path>
    tags: dict[str, str] = field(default_factory=dict)
    created_at: datetime | None = None


@dataclass(frozen=True)
class TrainingJobSpec:
    """What to train. The adapter turns it into a command job (local process or Azure ML)."""

    name: str
    asset: str
    data_version: str
    attempt: int
    tags: dict[str, str]
    compute: str = ""
    low_priority: bool = False
    max_run_seconds: int = 3600
    experiment: str = "mlops-automation"
    train_args: tuple[str, ...] = ()  # the data contract as train.py arguments (--label, --id-columns, --features)


@dataclass(frozen=True)
class CommandJobSpec:
    """A job that runs one Python module of this repository (``python -m <module> <args>``) on the training
    compute. ``inputs`` name datastore paths (``azureml://datastores/<store>/paths/<path>``, a folder when it ends
    in ``/``); ``args`` refer to them and to ``outputs`` (folders) as ``${{inputs.<name>}}`` / ``${{outputs.<name>}}``,
    as an Azure ML command does. Each output lands at Azure ML's default place, ``azureml/<job>/<output>/`` on
    workspaceblobstore (the embedded backend keeps that layout in its datastore)."""

    name: str
    module: str
    args: tuple[str, ...]
    inputs: dict[str, str]
    outputs: tuple[str, ...]
    tags: dict[str, str]
    description: str = ""
    compute: str = ""
    max_run_seconds: int = 3600
    experiment: str = "mlops-automation"


@dataclass(frozen=True)
class Job:
    name: str
    status: JobStatus
    tags: dict[str, str] = field(default_factory=dict)
    error: str = ""
    created_at: datetime | None = None
    url: str = ""  # studio link (Azure) or local path

    @property
    def owned(self) -> bool:
        return self.tags.get(OWNER_TAG) == OWNER_VALUE

    @property
    def attempt(self) -> int:
        try:
            return int(self.tags.get(TAG_ATTEMPT, "1"))
        except ValueError:
            return 1


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str  # "" = the next positive integer, unless a version from the same job exists (idempotent)
    job_name: str  # the model files come from this job's "model" output
    tags: dict[str, str]
    description: str = ""


@dataclass(frozen=True)
class Model:
    name: str
    version: str
    tags: dict[str, str] = field(default_factory=dict)
    path: str = ""
    created_at: datetime | None = None

    def metrics(self) -> dict[str, float]:
        """The metrics recorded as ``metric_<name>`` tags at registration."""
        out: dict[str, float] = {}
        for k, v in self.tags.items():
            if k.startswith(TAG_METRIC_PREFIX):
                try:
                    out[k[len(TAG_METRIC_PREFIX):]] = float(v)
                except ValueError:
                    continue
        return out


@dataclass(frozen=True)
class Deployment:
    name: str
    model_name: str
    model_version: str
    tags: dict[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    state: str = "Succeeded"

    @property
    def known_good(self) -> bool:
        return self.tags.get(TAG_KNOWN_GOOD) == "true"

    @property
    def rolled_back(self) -> bool:
        return self.tags.get(TAG_ROLLED_BACK) == "true"


@dataclass(frozen=True)
class Endpoint:
    name: str
    deployments: tuple[Deployment, ...]
    traffic: dict[str, int]  # deployment name -> percent; missing names mean 0
    tags: dict[str, str] = field(default_factory=dict)
    scoring_uri: str = ""
    mirror_traffic: dict[str, int] = field(default_factory=dict)

    def deployment(self, name: str) -> Deployment | None:
        return next((d for d in self.deployments if d.name == name), None)

    @property
    def traffic_changed_at(self) -> datetime | None:
        raw = self.tags.get(TAG_TRAFFIC_CHANGED)
        return datetime.fromisoformat(raw) if raw else None


@dataclass(frozen=True)
class Health:
    """Request statistics of one endpoint or deployment over a window."""

    endpoint: str
    deployment: str | None
    window_minutes: int
    requests: int
    error_share: float  # 0..1, non-2xx / requests
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    partial: bool = False  # the service answered with partial results


@dataclass(frozen=True)
class Alert:
    """A notification, before any channel renders it (console, Teams card).

    ``incident_key`` groups repeats of one incident (dedupe); ``resolved`` closes it.
    """

    kind: str  # see ALERT_KINDS
    severity: str  # info | warning | error | critical
    title: str
    summary: str  # what happened, why, what was done
    facts: tuple[tuple[str, str], ...] = ()
    links: tuple[tuple[str, str], ...] = ()  # (title, url)
    incident_key: str = ""
    resolved: bool = False
    actor: str = "automation"
    event_id: str = ""
    detail: str = ""  # long text (error log excerpt); channels may truncate it
    next_step: str = ""  # what a person should do now; empty: the kind's runbook step (shared/cards.py)
    at: str = ""  # ISO 8601 UTC time the alert was raised; the outbox stamps it when empty
    correlation_id: str = ""  # the chain (data event → job → model → deployment) this alert belongs to


ALERT_KINDS = (
    "training_started", "training_failed", "model_registered", "model_rejected", "deployment_changed",
    "rollback", "retraining_started", "drift_detected", "manual_action", "event_rejected",
    "approval_requested", "approval_expired", "rollout_held", "deployment_retired",
    "model_degraded",
)
SEVERITIES = ("info", "warning", "error", "critical")


@dataclass(frozen=True)
class AuditRecord:
    """One decision in the audit trail: what triggered it, what was looked at, what was done, by whom."""

    event_id: str
    message: str  # message type that was handled
    decision: str  # e.g. approve, reject, rollback, retrain, hold, start_training, ignore
    reason: str
    actor: str  # "automation" or the HTTP caller
    facts: dict[str, object] = field(default_factory=dict)
    resources: tuple[str, ...] = ()  # ids of what was created or changed
    at: datetime | None = None

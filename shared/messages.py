"""Messages: events (facts, past tense) and commands (intents, imperative). Frozen dataclasses of primitives.

Every message carries ``event_id``: the Event Grid event (or HTTP request) that caused it, so the ledger
can make its effect happen once and the audit trail can name the cause.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Message:
    event_id: str

    @property
    def type(self) -> str:
        return type(self).__name__


class Event(Message):
    pass


class Command(Message):
    pass


# --- events -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DataRegistered(Event):
    """A data asset version exists (registered from a landed blob, or announced by our custom event)."""

    asset: str
    version: str
    path: str = ""  # where the data lives; empty when the asset was registered elsewhere
    source: str = ""  # blob url or "custom"
    register: bool = False  # True when this automation must create the asset version from ``path``


@dataclass(frozen=True)
class RunFinished(Event):
    """An Azure ML run changed status (RunCompleted or RunStatusChanged)."""

    job_name: str
    status: str  # Completed, Failed, Canceled, Running, ... as sent (any case)
    experiment: str = ""
    error: str = ""


@dataclass(frozen=True)
class DriftDetected(Event):
    """Data drift or an endpoint health alert, from Azure ML, Azure Monitor or our own monitor."""

    endpoint: str = ""  # may be empty for Azure ML dataset drift: then ``asset`` names the data
    asset: str = ""
    deployment: str = ""
    source: str = ""  # azureml | azure-monitor | mlops-monitor
    severity: str = "warning"
    resolved: bool = False
    rule: str = ""  # alert rule or monitor name
    metric: str = ""
    value: float | None = None
    threshold: float | None = None
    description: str = ""
    # our monitor's top features, window, sample sizes and chart (shared/drift/chart.py): shown on the alert only
    details: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class LabelsLanded(Event):
    """Ground truth for served predictions landed (``<landing>/<asset>-labels/<date>/<file>``): joined with what
    the endpoint of ``asset`` served, it tells whether the model degraded (shared/labels.py)."""

    asset: str  # the data asset the model was trained on (the folder name without "-labels")
    version: str  # the folder below it (a date, by convention)
    path: str  # blob url of the labels file


@dataclass(frozen=True)
class ModelRegistered(Event):
    """A model version was registered (by us or by hand): audit only."""

    name: str
    version: str
    tags: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class ModelDeployed(Event):
    """A model was deployed to an endpoint (Azure ML ModelDeployed): audit only."""

    endpoint: str
    models: str = ""  # "name:version,..." as Azure sends it


@dataclass(frozen=True)
class EventIgnored(Event):
    """An event that needs no action (unknown type, uncommitted blob write): acknowledged and recorded."""

    event_type: str
    reason: str


# --- commands ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StartTraining(Command):
    """Train on a data asset version. ``attempt`` 0 means: the next attempt after those that exist."""

    asset: str
    version: str  # "latest" resolves to the newest version
    attempt: int = 1
    reason: str = ""
    actor: str = "automation"
    drift_on: str = ""  # the endpoint whose drift asked for this training (alerted as "retraining started")


@dataclass(frozen=True)
class RerunJob(Command):
    """Run a finished job's training again as a new attempt (HTTP rerun by job name)."""

    job_name: str
    force: bool = False
    reason: str = ""
    actor: str = "automation"


@dataclass(frozen=True)
class RollBack(Command):
    """Move all traffic of an endpoint back to a known-good deployment (by hand over HTTP)."""

    endpoint: str
    reason: str
    to_deployment: str = ""  # empty: the policy picks the last known-good deployment
    actor: str = "automation"


@dataclass(frozen=True)
class DecideApproval(Command):
    """A named person approves or rejects a model waiting for approval (the approval page, Easy Auth)."""

    endpoint: str
    approval_id: str
    approve: bool
    reason: str
    actor: str


@dataclass(frozen=True)
class AdvanceRollouts(Command):
    """A timer tick: analyse every canary, advance, promote or abort it, expire approvals, retire deployments."""

    endpoint: str = ""  # empty: every endpoint the controller knows

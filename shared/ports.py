"""Ports: the small Protocols handlers act through. Adapters (Azure) and the embedded backend implement them."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

from shared.domain import (
    Alert,
    AuditRecord,
    CommandJobSpec,
    DataAsset,
    Endpoint,
    Health,
    Job,
    JobStatus,
    Model,
    ModelSpec,
    TrainingJobSpec,
)
from shared.rollout import EndpointState


class DataAssets(Protocol):
    def register_data(self, name: str, version: str, path: str, tags: Mapping[str, str] | None = None) -> DataAsset:
        """Create the version, or return it unchanged if it already exists with the same path (idempotent).
        A different path for an existing version raises Conflict: versions are immutable."""

    def get_data(self, name: str, version: str) -> DataAsset:
        """Raise NotFound when missing."""

    def latest_data(self, name: str) -> DataAsset | None:
        """Newest version by creation time; None when the asset has no versions."""


class Jobs(Protocol):
    def submit_training(self, spec: TrainingJobSpec) -> Job:
        """Start the job; if a job with ``spec.name`` already exists return it instead (never resubmit)."""

    def submit_command(self, spec: CommandJobSpec) -> Job:
        """Start a job running ``python -m spec.module``; a job named ``spec.name`` already there is returned."""

    def get_job(self, name: str) -> Job:
        """Current state; raise NotFound when missing."""

    def list_jobs(self, *, status: Iterable[JobStatus] | None = None, tags: Mapping[str, str] | None = None) -> list[Job]:
        """Jobs filtered by status and by tags (all given tags must match), newest first."""


class RunMetrics(Protocol):
    def get_run_metrics(self, job_name: str) -> dict[str, float]:
        """Final value of every metric the run logged (MLflow names, e.g. auc, logloss)."""


class Models(Protocol):
    def register_model(self, spec: ModelSpec) -> Model:
        """Register the job's model output and return it. Idempotent: a version already registered from the same
        job (tag ``mlops_job``) is returned unchanged. ``spec.version`` "" takes the next positive integer."""

    def get_model(self, name: str, version: str) -> Model:
        """Raise NotFound when missing."""

    def list_models(self, name: str) -> list[Model]:
        """Every version of a model, newest first; empty when none."""

    def tag_model(self, name: str, version: str, tags: Mapping[str, str]) -> Model:
        """Merge tags into the model version (e.g. mark it rolled back)."""


class Endpoints(Protocol):
    def get_endpoint(self, name: str) -> Endpoint | None:
        """The endpoint with its deployments and traffic; None when it does not exist."""

    def create_deployment(self, endpoint: str, deployment: str, model: Model, tags: Mapping[str, str]) -> Endpoint:
        """Create the endpoint if needed and the deployment at 0% traffic; existing ones are kept (idempotent)."""

    def set_traffic(self, endpoint: str, traffic: Mapping[str, int], *, tags: Mapping[str, str] | None = None,
                    deployment_tags: Mapping[str, Mapping[str, str]] | None = None,
                    expect: Mapping[str, int] | None = None) -> Endpoint:
        """Make the split exactly ``traffic`` (names left out get 0; the sum must be 100) and merge tags into the
        endpoint and into named deployments in the same change. With ``expect`` the write is conditional: when the
        live split is neither ``expect`` nor already ``traffic``, someone else changed it and TrafficChanged is
        raised without writing."""

    def delete_deployment(self, endpoint: str, deployment: str) -> bool:
        """Delete a deployment that serves no live or mirror traffic; False when it did not exist (idempotent).
        A deployment that serves traffic raises Conflict and is kept."""

    def list_endpoints(self) -> list[Endpoint]:
        """Every endpoint in the workspace."""


@runtime_checkable
class Workspace(DataAssets, Jobs, Models, Endpoints, Protocol):
    """The Azure ML workspace as the handlers see it: the four small ports together."""


class Claim(str):
    """What ``Ledger.claim`` answers: "new" (go ahead) or the outcome already recorded. A "new" claim also
    carries its fencing ``token`` (unique to this holding; a takeover gets a fresh one) and its ``attempt``
    (1 for the first holder; every release or takeover adds one)."""

    token: str
    attempt: int

    def __new__(cls, state: str, *, token: str = "", attempt: int = 0) -> Claim:
        claim = super().__new__(cls, state)
        claim.token, claim.attempt = token, attempt
        return claim


class Ledger(Protocol):
    """Exactly-once bookkeeping: each key takes effect once.

    Fencing: ``complete`` and ``release`` given the ``token`` of the claim they settle act only while that
    claim is still the current one (still processing, not taken over since); a stale holder's call is refused,
    logged, and answers False. Without a token they act unconditionally (tools, tests)."""

    def claim(self, key: str, *, event_type: str, lease_seconds: float = 300.0) -> str:
        """Atomically claim ``key``: returns "new" (go ahead) or the recorded outcome when it was already
        processed (a duplicate, counted); a ``Claim``. Raises Busy while another worker's lease is live."""

    def complete(self, key: str, outcome: str, reason: str = "", *, token: str | None = None) -> bool:
        """Record the final outcome (done, ignored, rejected, failed) of a claimed key."""

    def release(self, key: str, *, token: str | None = None) -> bool:
        """Give a claim up after a failure worth retrying, so a redelivery can try again at once. The key stays
        known (an expired claim), so the next claim counts as a further attempt."""

    def stats(self) -> dict[str, int]:
        """Counts by outcome, plus "duplicates" skipped."""


class AuditLog(Protocol):
    def append(self, record: AuditRecord) -> None:
        """Add a decision to the trail (never rewritten)."""

    def recent(self, *, limit: int = 50, subject: str | None = None, since: datetime | None = None,
               decisions: Sequence[str] | None = None) -> list[AuditRecord]:
        """Newest first; ``subject`` matches records whose facts name that endpoint, model or asset."""

    def append_once(self, record: AuditRecord, *, subject: str, same: Callable[[AuditRecord], bool]) -> bool:
        """Append ``record`` unless a record of its decision about ``subject`` for which ``same`` holds exists.
        True when this call made the record whole: written, or completed from what an append that failed part-way
        left (Table Storage writes one copy per partition). False when it was complete already."""


class Notifier(Protocol):
    def notify(self, alert: Alert) -> None:
        """Queue the alert; delivery happens after the action it reports is committed and never raises into it."""


class Monitor(Protocol):
    def health(self, endpoint: str, deployment: str | None, window_minutes: int) -> Health:
        """Request count, error share and latency of an endpoint (or one deployment) over the window."""


class StateStore(Protocol):
    """One state record per endpoint (shared/rollout.py) with optimistic concurrency."""

    def load(self, endpoint: str) -> EndpointState | None:
        """The record with its version (ETag), or None when the controller never stored one."""

    def save(self, state: EndpointState) -> EndpointState:
        """Commit if ``state.version`` is still current ("" = create); returns the record with its new version.
        Raises StaleState when another worker committed first."""

    def endpoints(self) -> list[str]:
        """Names of the endpoints that have a record."""


class Publisher(Protocol):
    def publish(self, event_type: str, subject: str, data: Mapping[str, object]) -> str:
        """Publish one of our own events to the custom topic; returns its id. (EventGridPublisher also takes an
        optional ``event_id=`` keyword: the drift monitor fixes the id of what a retried check repeats.)"""


class OutboxStore(Protocol):
    """Durable queue of alerts waiting for delivery (the outbox pattern): nothing is lost when a channel is down."""

    def add(self, alert: Alert) -> int:
        """Store the alert; returns its id."""

    def pending(self, *, limit: int = 100) -> list[tuple[int, Alert, int]]:
        """(id, alert, attempts so far) of undelivered alerts, oldest first, whose next try is due."""

    def mark(self, alert_id: int, *, delivered: bool, error: str = "", retry_in_seconds: float | None = None) -> None:
        """Record a delivery try: delivered, failed for good (retry_in_seconds None), or failed, retry later."""

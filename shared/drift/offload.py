"""Drift windows too large for one function: the check as an Azure ML command job, and acting on its completion.

The monitor sums the sizes of a window's collected input blobs from the listing (no row read). Above
``MLOPS_DRIFT_OFFLOAD_MB`` it submits shared/drift/job.py on the training compute through the Workspace port, as a
job named after the window's claim key (a second tick, or a second worker, gets the same job back). The job is
tagged ``mlops_drift_check=<claim key>``; its RunCompleted comes to handlers.run_finished like a training run's,
which hands it here: the statistics are read from the job's ``statistics`` output and a drifted window publishes
the same ``MLOps.DriftDetected`` the in-function check would, with the same event id.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from datetime import datetime
from pathlib import Path

from shared.domain import OWNER_TAG, OWNER_VALUE, CommandJobSpec, Job, Model, slug
from shared.drift.collector import INPUTS, ROOT, hour_prefixes
from shared.errors import InvalidPayload, PermanentError

logger = logging.getLogger(__name__)

TAG_DRIFT_CHECK = "mlops_drift_check"  # the window's claim key: marks a drift job, and names its window
TAG_ENDPOINT, TAG_DEPLOYMENT, TAG_MODEL = "mlops_endpoint", "mlops_deployment", "mlops_model"
TAG_START, TAG_END = "mlops_window_start", "mlops_window_end"
MODULE = "shared.drift.job"
OUTPUT = "statistics"
DATASTORE = "workspaceblobstore"  # where the collector writes and where job outputs land by default


def window_bytes(container, endpoint: str, deployment: str, start: datetime, end: datetime) -> int:
    """Bytes of collected input JSONL in the hour folders the window touches: the listing's sizes, no download."""
    total = 0
    for prefix in hour_prefixes(endpoint, deployment, INPUTS, start, end):
        total += sum(int(getattr(b, "size", 0) or 0) for b in container.list_blobs(name_starts_with=prefix)
                     if b.name.endswith(".jsonl"))
    return total


def job_name(key: str) -> str:
    """One job name per (deployment, window), readable and within Azure ML's limits."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return f"drift-{slug(key.removeprefix('drift:'))[:80]}-{digest}"


def job_spec(key: str, endpoint: str, deployment: str, start: datetime, end: datetime, model: Model,
             baseline: str, *, thresholds, max_rows: int, compute: str = "") -> CommandJobSpec:
    """The command job of one window. ``baseline`` is the baseline's blob name on workspaceblobstore, or a local
    file (the embedded workspace keeps models on disk)."""
    baseline_input = baseline if Path(baseline).is_absolute() else f"azureml://datastores/{DATASTORE}/paths/{baseline}"
    args = ("--collected", "${{inputs.collected}}", "--baseline", "${{inputs.baseline}}",
            "--endpoint", endpoint, "--deployment", deployment, "--start", start.isoformat(),
            "--end", end.isoformat(), "--thresholds", json.dumps(dataclasses.asdict(thresholds), sort_keys=True),
            "--max-rows", str(max_rows), "--output", "${{outputs." + OUTPUT + "}}")
    return CommandJobSpec(
        name=job_name(key), module=MODULE, args=args,
        inputs={"collected": f"azureml://datastores/{DATASTORE}/paths/{ROOT}/{endpoint}/{deployment}/",
                "baseline": baseline_input},
        outputs=(OUTPUT,),
        tags={OWNER_TAG: OWNER_VALUE, TAG_DRIFT_CHECK: key, TAG_ENDPOINT: endpoint, TAG_DEPLOYMENT: deployment,
              TAG_MODEL: f"{model.name}:{model.version}", TAG_START: start.isoformat(), TAG_END: end.isoformat()},
        description=f"drift check of {endpoint}/{deployment} over [{start.isoformat()}, {end.isoformat()})",
        compute=compute, max_run_seconds=3600, experiment="mlops-drift")


def is_drift_job(job: Job) -> bool:
    return bool(job.tags.get(TAG_DRIFT_CHECK))


def statistics_blob(job_name_: str) -> str:
    """Azure ML's default place of the job's output on workspaceblobstore (the embedded backend mirrors it)."""
    return f"azureml/{job_name_}/{OUTPUT}/statistics.json"


def finished(job: Job, *, container, publisher) -> tuple[str, str]:
    """Act on a drift job's terminal state: (outcome, reason). A drifted window publishes one DriftDetected."""
    from shared.drift.monitor import publish_drift

    key = job.tags[TAG_DRIFT_CHECK]
    try:
        endpoint, deployment = job.tags[TAG_ENDPOINT], job.tags[TAG_DEPLOYMENT]
        start, end = datetime.fromisoformat(job.tags[TAG_START]), datetime.fromisoformat(job.tags[TAG_END])
    except (KeyError, ValueError) as error:
        raise InvalidPayload(f"drift job {job.name} has no readable window tags: {error}", field="tags") from None
    if job.status.value != "Completed":
        logger.error("drift job %s for %s ended %s: %s", job.name, key, job.status.value, job.error)
        return "failed", f"drift job {job.name} {job.status.value}: {job.error}"[:500]
    from azure.core.exceptions import ResourceNotFoundError

    from shared.adapters.errors import translated

    name = statistics_blob(job.name)
    try:
        with translated(f"read {name}"):
            stats = json.loads(container.download_blob(name).readall())
    except ResourceNotFoundError:
        raise PermanentError(f"drift job {job.name} completed without {name}") from None
    if not stats.get("drifted"):
        logger.info("drift job %s: %s over %d rows, nothing to publish", job.name, stats.get("status"),
                    stats.get("rows", 0))
        return "ignored", f"{stats.get('status')} over {stats.get('rows', 0)} rows (job {job.name})"
    if publisher is None:
        raise PermanentError("a drifted window needs a publisher for MLOps.DriftDetected (MLOPS_EVENTS__topicEndpointUri)")
    event_id = publish_drift(publisher, key, endpoint, deployment, job.tags.get(TAG_MODEL, ""), start, end, stats)
    return "done", f"drift over {stats['rows']} rows (job {job.name}): event {event_id}"


def container_for(settings, workspace, credential=None):
    """Where drift job outputs are read: the collector's container on Azure (workspaceblobstore), the embedded
    workspace's datastore folder of the same name locally."""
    root = getattr(workspace, "root", None)
    if settings.backend != "azure" and root is not None:
        from shared.drift.job import FolderContainer

        return FolderContainer(Path(root) / "datastore" / DATASTORE)
    if not settings.drift.container_url:
        raise PermanentError("reading a drift job's statistics needs MLOPS_DRIFT_CONTAINER_URL")
    from shared.drift.monitor import container_for as blob_container

    return blob_container(settings.drift.container_url, credential)

"""Azure ML workspace adapter: the Workspace port (and RunMetrics) over azure-ai-ml's MLClient.

Every SDK call runs inside ``translated`` (shared/adapters/errors.py), so callers only ever see the app's error tree.
Idempotency comes from deterministic names: each create first reads, and a create that loses a race (409) resolves
to a read. Long-running operations (online endpoints and deployments) are waited for at most ``lro_timeout``
seconds; one still running after that raises TransientError, Azure carries on, and the redelivered event finds it.

azure-ai-ml is imported inside functions only: importing this module costs nothing on a Function App cold start.
"""
from __future__ import annotations

import logging
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from shared import retry
from shared.adapters.errors import translate, translated
from shared.config import Settings
from shared.domain import (
    OWNER_TAG,
    OWNER_VALUE,
    TAG_JOB,
    CommandJobSpec,
    DataAsset,
    Deployment,
    Endpoint,
    Job,
    JobStatus,
    Model,
    ModelSpec,
    TrainingJobSpec,
    check_model_version,
    check_traffic,
    next_model_version,
)
from shared.errors import (
    Conflict,
    InvalidPayload,
    NotFound,
    PermanentError,
    ServiceRejected,
    StaleState,
    TrafficChanged,
    TransientError,
)

logger = logging.getLogger(__name__)

SHARED_CODE = Path(__file__).resolve().parents[1]  # the shared package: the code of submit_command's jobs
TRAINING_CODE = SHARED_CODE / "training"  # uploaded as the job's code (train.py, score.py)
RUN_OUTPUT = "output"  # train.py --output: metrics.json, baseline.json and model/
MODEL_OUTPUT = "model"  # the MLflow model folder alone, typed mlflow_model, registered from here
# The same invocation as the embedded backend (train.py --data <file or folder> --output <dir>), run from the code
# folder; the MLflow model it writes under <output>/model is copied to its own output so Azure ML knows its type.
TRAIN_COMMAND = ("python train.py --data ${{inputs.data}} --output ${{outputs.output}}"
                 " && cp -r ${{outputs.output}}/model/. ${{outputs.model}}")


def train_command(args: tuple[str, ...] = ()) -> str:
    """TRAIN_COMMAND with the data contract's arguments (shell-quoted) after --output."""
    import shlex

    if not args:
        return TRAIN_COMMAND
    extra = " ".join(shlex.quote(a) for a in args)
    head, sep, tail = TRAIN_COMMAND.partition(" && ")
    return f"{head} {extra}{sep}{tail}"


# With MLOPS_ENVIRONMENT empty (the default) the job runs in an environment Azure ML builds from this base image
# and shared/training/conda.yaml; it is built once and reused while the file is unchanged.
TRAINING_IMAGE = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"
TRAINING_CONDA = TRAINING_CODE / "conda.yaml"
# MLOPS_COMPUTE values meaning serverless compute (no cluster): Azure ML provisions a VM for each job, and the job's
# queue settings pick its tier: Spot with MLOPS_LOW_PRIORITY (preemptible, cheaper), Standard otherwise.
SERVERLESS = frozenset({"serverless", ""})
PROVIDER = "Microsoft.MachineLearningServices"
BUSY_STATES = frozenset({"creating", "updating", "deleting", "scaling"})  # provisioning still under way
BLOB_URL = re.compile(r"^https://([a-z0-9]+)\.blob\.core\.[a-z0-9.]+/([^/?#]+)/([^?#]+)$", re.IGNORECASE)
LONG_DATASTORE_URI = re.compile(
    r"^azureml://subscriptions/[^/]+/resourcegroups/[^/]+/(?:providers/microsoft\.machinelearningservices/)?"
    r"workspaces/[^/]+/datastores/", re.IGNORECASE)
MODEL_ARM_ID = re.compile(r"/models/([^/]+)/versions/([^/]+)$", re.IGNORECASE)
MODEL_SHORT_ID = re.compile(r"^azureml:([^:/]+):([^:/]+)$")
# MLClient copies an endpoint's systemData into its property bag when it reads it; a read-modify-PUT would store
# them as user properties (with a stale lastModifiedAt), so they are taken out again before the PUT.
REGISTER_ATTEMPTS = 5  # next-version races lost before giving up (transient: the event is redelivered)
SDK_SYSTEM_PROPERTIES = ("createdBy", "createdAt", "lastModifiedAt")
COLLECTIONS = ("model_inputs", "model_outputs")  # the data collector's collections on every deployment we create
COLLECTOR_ROLLING_RATE = "Hour"  # folders per hour: what shared/drift/collector.py lists


def data_collector():
    """Azure ML's data collector on ``model_inputs`` and ``model_outputs`` of a deployment (docs/drift.md).

    Our deployments serve MLflow models without a scoring script; for those Azure ML instruments the generated
    scoring server itself when these two collections are on (the docs' "Collect data for MLflow models": the studio's
    single toggle), and registers the data assets ``<endpoint>-<deployment>-model_inputs`` / ``-model_outputs``.
    Everything is collected (sampling 1.0) into hourly folders (rolling rate ``Hour``), the layout the drift
    monitor's reader lists (shared/drift/collector.py)."""
    from azure.ai.ml.entities import DataCollector, DeploymentCollection

    return DataCollector(collections={name: DeploymentCollection(enabled="true") for name in COLLECTIONS},
                         rolling_rate=COLLECTOR_ROLLING_RATE, sampling_rate=1.0)


_DATA_ID = re.compile(r"/data/([^/]+)/versions/([^/]+)$", re.IGNORECASE)


def _collector_for_put(deployment) -> None:
    """Make a deployment read from the service fit to be PUT again. azure-ai-ml reads each collection's data asset
    back as its ARM id (a string), but before a PUT it registers the collection's data asset from ``data.name``
    (azure-ai-ml 1.2x, ``_register_collection_data_assets``), which fails on a string. So the id goes back to the
    asset it names; the SDK then finds that version and sends the same id again. It also reads a collection as on
    only when the service spells the mode "Enabled", while it sends "enabled" itself: a collection of ours read back
    as off would be switched off by the PUT, so ours are kept on (collecting is the product's setting)."""
    from azure.ai.ml.entities._deployment.data_asset import DataAsset

    collector = getattr(deployment, "data_collector", None)
    for name, collection in (collector.collections.items() if collector is not None else ()):
        if name in COLLECTIONS:
            collection.enabled = "true"
        if isinstance(collection.data, str):
            found = _DATA_ID.search(collection.data)
            collection.data = DataAsset(name=found[1], version=found[2]) if found else None


def build_ml_client(settings: Settings, credential, **kwargs: Any):
    """MLClient for the configured workspace. ``kwargs`` go to MLClient and on to every client it builds
    (``transport=`` in tests); the retry policy defaults to one bounded by the function's time budget."""
    from azure.ai.ml import MLClient

    for name, value in (("MLOPS_SUBSCRIPTION_ID", settings.subscription_id),
                        ("MLOPS_RESOURCE_GROUP", settings.resource_group), ("MLOPS_WORKSPACE", settings.workspace)):
        if not value:
            raise InvalidPayload(f"{name} must be set for the azure backend", field=name)
    kwargs.setdefault("cloud", settings.azure_cloud)  # ARM and studio hosts of Azure Government / China
    kwargs.setdefault("retry_policy", retry.sdk_policy())
    kwargs.setdefault("show_progress", False)  # no progress bars on a Function App's stderr
    kwargs.setdefault("enable_telemetry", False)
    return MLClient(credential, settings.subscription_id, settings.resource_group, settings.workspace, **kwargs)


def build_workspace(settings: Settings, credential, **kwargs: Any) -> AzureMLWorkspace:
    """The adapter with its MLClient; ``kwargs`` (e.g. ``transport=``) reach both MLClient and the REST calls
    MLClient has no API for (run metrics, a failed run's error)."""
    return AzureMLWorkspace(build_ml_client(settings, credential, **kwargs), settings, credential=credential,
                            transport=kwargs.get("transport"))


def _tags(value: Mapping[str, object] | None) -> dict[str, str]:
    return {str(k): str(v) for k, v in (value or {}).items()}


def _text(value: Any) -> str:
    """An SDK enum member (e.g. DeploymentProvisioningState.SUCCEEDED) or a string, as its plain string value."""
    return str(getattr(value, "value", value) or "")


def _created(entity: Any):
    context = getattr(entity, "creation_context", None)
    return getattr(context, "created_at", None)


def _missing(exc: BaseException) -> bool:
    """True when an SDK error (or one it wraps) says the resource does not exist."""
    from azure.core.exceptions import ResourceNotFoundError

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ResourceNotFoundError) or getattr(exc, "status_code", None) == 404:
            return True
        if "resource_not_found" in str(getattr(exc, "error_type", "")).lower():
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class PollerStopped(Exception):
    """Ends an abandoned long-running-operation poller's thread (raised inside it, kept by the poller)."""


def _stop_polling(poller) -> None:
    """Make the SDK's polling thread of an operation we stopped waiting for end at its next poll: Azure carries
    on with the operation either way, and a thread per abandoned operation would poll until it ends."""
    def stopped() -> None:
        raise PollerStopped("the caller stopped waiting for this operation")

    method = poller.polling_method()
    if method is not None:
        method.update_status = stopped  # the instance's, looked up before the class's on every poll


def _quiet_polling() -> None:
    """azure-ai-ml polls online deployments with AzureMLPolling, whose update_status prints a dot to stdout on
    every poll, from the poller's thread. Once per process it gets ARM polling's own update_status (the same
    polling, no print): nothing the adapter calls writes to stdout, which the Functions host takes as logs."""
    from azure.ai.ml._utils._azureml_polling import AzureMLPolling
    from azure.mgmt.core.polling.arm_polling import ARMPolling

    if AzureMLPolling.update_status is not ARMPolling.update_status:
        AzureMLPolling.update_status = ARMPolling.update_status


def _from_rest_object_in_stack() -> bool:
    """azure-ai-ml's test for "is this experimental class being built from a REST object?", by frame names alone.
    The SDK's own (``_utils._experimental._should_skip_warning``) calls ``inspect.stack()``, which reads the source
    file of every frame on the stack, and runs on every construction of an experimental class: a DataCollector and
    a DeploymentCollection for each collection, on every deployment read. With a collector on every deployment
    (docs/drift.md) that made reading an endpoint the host's main CPU cost (about 3/4 of it in the storm, and the
    cause of its slowing with each deployment; `make bench` measures it). Same answer, no source read."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "_from_rest_object":
            return True
        frame = frame.f_back
    return False


def _cheap_experimental_check() -> None:
    """Once per process: azure-ai-ml's experimental-class check gets ``_from_rest_object_in_stack`` (the SDK looks
    the function up as a module global on every call, so replacing it there is enough). Left alone if a release of
    the SDK no longer has it."""
    from azure.ai.ml._utils import _experimental

    if callable(getattr(_experimental, "_should_skip_warning", None)):
        _experimental._should_skip_warning = _from_rest_object_in_stack


def _quiet_uploads() -> None:
    """azure-ai-ml ends every upload of a job's code (or any artifact) to blob or ADLS storage with
    ``print(Fore.RESET + "\n", file=sys.stderr)``, whatever ``show_progress`` says: an ANSI code and a blank line in
    the Function App's logs per upload. Once per process those two modules' ``print`` (a global name, looked up in
    the module before builtins) becomes a no-op; nothing else there prints."""
    from azure.ai.ml._artifacts import _blob_storage_helper, _gen2_storage_helper

    for module in (_blob_storage_helper, _gen2_storage_helper):
        module.print = _no_print


def _no_print(*args: Any, **kwargs: Any) -> None:
    """Stands in for ``print`` in azure-ai-ml's storage helpers (``_quiet_uploads``)."""


SDK_LOGGER = "azure.ai.ml"


def _sdk_logs_into_ours() -> None:
    """azure-ai-ml gives its package logger and a few module loggers a handler of their own on stderr and stops them
    propagating, so its messages ("Check: endpoint ... exists" on every deployment create) reached the host as bare
    stderr lines, outside the app's logs and without the invocation's ids. Here those handlers go and the loggers
    propagate again, at WARNING (its INFO lines are progress chatter). Its notice that a class is experimental is
    dropped: the adapter builds the collector classes on purpose (docs/drift.md). Cheap, so it runs on every
    adapter build and also catches a module of the SDK imported since."""
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if not isinstance(logger, logging.Logger) or not (name == SDK_LOGGER or name.startswith(SDK_LOGGER + ".")):
            continue
        own = [h for h in logger.handlers if type(h) is logging.StreamHandler]  # noqa: E721 - not a FileHandler
        if own:  # the SDK's telemetry logger (a NullHandler, no propagation on purpose) is left as it is
            for handler in own:
                logger.removeHandler(handler)
            logger.propagate = True
            logger.setLevel(logging.WARNING)
    logging.getLogger(SDK_LOGGER + "._utils._experimental").setLevel(logging.ERROR)


class AzureMLWorkspace:
    """The Workspace and RunMetrics ports on an Azure ML workspace, through azure-ai-ml's MLClient."""

    def __init__(self, ml_client, settings: Settings, *, credential=None, transport=None,
                 budget_seconds: float = retry.CALL_SECONDS, lro_timeout: float | None = None) -> None:
        _quiet_polling()
        _quiet_uploads()
        _cheap_experimental_check()
        _sdk_logs_into_ours()
        self.ml = ml_client
        self.settings = settings
        self.budget_seconds = budget_seconds
        self.lro_timeout = budget_seconds if lro_timeout is None else lro_timeout
        # MLClient has no API for run metrics or a run's error: those two REST calls go through a small pipeline
        # of our own, with the same credential and transport (taken from the MLClient when not given).
        self._credential = credential if credential is not None else getattr(ml_client, "_credential", None)
        self._transport = transport if transport is not None else getattr(ml_client, "_kwargs", {}).get("transport")
        self._rest = None
        self._metrics = None
        self._urls: dict[str, str] = {}
        self._lock = threading.Lock()

    # --- plumbing ------------------------------------------------------------------------------------

    def _deadline(self) -> float:
        """The instant this call must end by: the invocation's deadline (shared/retry.py), never more than
        ``budget_seconds`` from now."""
        return retry.call_deadline(self.budget_seconds)

    @property
    def _ws_path(self) -> str:
        s = self.settings
        return (f"/subscriptions/{s.subscription_id}/resourceGroups/{s.resource_group}/providers/{PROVIDER}"
                f"/workspaces/{s.workspace}")

    def _wait(self, poller, what: str, deadline: float):
        """The finished operation's result; TransientError when it is still running at the time limit."""
        limit = max(0.0, min(self.lro_timeout, deadline - time.monotonic()))
        with translated(what):
            poller.wait(timeout=limit)
            if poller.done():
                return poller.result()
        # Azure carries on without us; the SDK's polling thread must not (it would poll, and print, for as long as
        # the operation runs): it stops at its next poll.
        _stop_polling(poller)
        raise TransientError(f"{what}: still {poller.status()} after {limit:.0f} s; Azure carries on and a "
                             "redelivered event picks the result up")

    def close(self) -> None:
        if self._rest is not None:
            self._rest.close()
        if self._metrics is not None:
            self._metrics.close()

    # --- data assets ---------------------------------------------------------------------------------

    def datastore_uri(self, path: str) -> str:
        """``azureml://datastores/<ds>/paths/<path>`` for a datastore URI (short or long form) or a blob URL in the
        landing container (which the configured datastore covers)."""
        if path.startswith("azureml://datastores/"):
            return path
        if LONG_DATASTORE_URI.match(path):
            return "azureml://datastores/" + LONG_DATASTORE_URI.sub("", path)
        m = BLOB_URL.match(path)
        if m:
            container, blob = m.group(2), unquote(m.group(3))
            if container.lower() != self.settings.landing_container.lower():
                raise InvalidPayload(f"blob {path} is not in the landing container {self.settings.landing_container!r}"
                                     f" that datastore {self.settings.datastore!r} covers", field="path")
            return f"azureml://datastores/{self.settings.datastore}/paths/{quote(blob)}"
        raise InvalidPayload(f"data path {path!r} is neither an azureml://datastores/ URI nor a blob URL in the "
                             "landing container", field="path")

    def register_data(self, name: str, version: str, path: str, tags: Mapping[str, str] | None = None) -> DataAsset:
        from azure.ai.ml.constants import AssetTypes
        from azure.ai.ml.entities import Data

        uri = self.datastore_uri(path)
        deadline = self._deadline()
        existing = self._find_data(name, version, deadline)
        if existing is None:
            kind = AssetTypes.URI_FOLDER if uri.endswith("/") else AssetTypes.URI_FILE
            entity = Data(name=name, version=version, path=uri, type=kind, tags=_tags(tags),
                          description=f"registered by {OWNER_VALUE}")
            try:
                with translated(f"register data {name}:{version}"):
                    created = self.ml.data.create_or_update(entity)
                logger.info("registered data %s:%s at %s", name, version, uri)
                return self._asset(created)
            except Conflict:
                existing = self._find_data(name, version, deadline)  # another worker registered it first
                if existing is None:
                    raise
        asset = self._asset(existing)
        if asset.path != uri:
            raise Conflict(f"data {name}:{version} already points at {asset.path}; versions are immutable, "
                           f"register {uri} as a new version")
        return asset

    def _find_data(self, name: str, version: str, deadline: float):
        try:
            with translated(f"get data {name}:{version}"):
                return self.ml.data.get(name, version=version)
        except NotFound:
            return None

    def get_data(self, name: str, version: str) -> DataAsset:
        found = self._find_data(name, version, self._deadline())
        if found is None:
            raise NotFound(f"data asset {name}:{version} does not exist")
        return self._asset(found)

    def latest_data(self, name: str) -> DataAsset | None:
        from azure.core.exceptions import AzureError

        # label="latest" reads the container's latestVersion (the newest by creation), then that version.
        try:
            entity = self.ml.data.get(name, label="latest")
        except (AzureError, TimeoutError, ConnectionError) as exc:  # what translated() takes, so none escapes raw
            if _missing(exc):
                return None
            raise translate(exc, what=f"get latest data {name}") from exc
        return self._asset(entity)

    def _asset(self, entity) -> DataAsset:
        # Reading never refuses a path (someone may have registered any URI by hand); only the long datastore form
        # is shortened, so the same location always compares equal.
        path = entity.path or ""
        if LONG_DATASTORE_URI.match(path):
            path = "azureml://datastores/" + LONG_DATASTORE_URI.sub("", path)
        return DataAsset(name=entity.name, version=str(entity.version), path=path,
                         tags=_tags(entity.tags), created_at=_created(entity))

    # --- jobs ----------------------------------------------------------------------------------------

    def submit_training(self, spec: TrainingJobSpec) -> Job:
        deadline = self._deadline()
        existing = self._find_job(spec.name, deadline)
        if existing is not None:
            return self._job(existing)  # never resubmit: a redelivered event gets the first job back
        data = self._find_data(spec.asset, spec.data_version, deadline)
        if data is None:
            raise NotFound(f"data asset {spec.asset}:{spec.data_version} does not exist")
        created, raced = self._create_job(self._command_job(spec, data), deadline)
        if not raced:
            logger.info("submitted %s on %s:%s to %s", spec.name, spec.asset, spec.data_version,
                        spec.compute or self.settings.compute)
        return self._job(created)

    def _create_job(self, job, deadline: float):
        """(the job, raced): create it, or, when the create raced another worker's, the job that worker made."""
        try:
            with translated(f"submit job {job.name}"):
                return self.ml.jobs.create_or_update(job), False
        except (Conflict, ServiceRejected) as error:
            # A create that raced another worker's: the job exists now, so that one is the answer.
            if isinstance(error, ServiceRejected) and "already exist" not in str(error).lower():
                raise
            found = self._find_job(job.name, deadline)
            if found is None:
                if isinstance(error, Conflict):
                    # One rule for every 409 (docs/reliability.md): read after it; what we meant to create being
                    # there is success, its absence means an operation is still in flight: transient, never a
                    # final answer (before, that data version never trained).
                    raise TransientError(f"submit job {job.name}: 409 but no such job yet: {error}") from error
                raise
            return found, True

    def _command_job(self, spec: TrainingJobSpec, data):
        from azure.ai.ml import Input, Output, command
        from azure.ai.ml.constants import AssetTypes
        from azure.ai.ml.entities import QueueSettings

        compute = spec.compute or self.settings.compute
        low_priority = spec.low_priority or self.settings.low_priority
        serverless = compute.strip().lower() in SERVERLESS
        if low_priority and not serverless:
            # A named AmlCompute cluster runs every job at its own VM priority (vmPriority, set when the cluster is
            # made: MLOPS_COMPUTE_LOW_PRIORITY in azd); a job tier on it would be sent but decide nothing.
            logger.warning("MLOPS_LOW_PRIORITY has no effect on the compute cluster %s: its VM priority decides; "
                           "use a low-priority cluster, or serverless compute (MLOPS_COMPUTE=serverless)", compute)
        job = command(
            name=spec.name,
            display_name=spec.name,
            experiment_name=spec.experiment,
            description=f"train on {spec.asset}:{spec.data_version} (attempt {spec.attempt})",
            code=str(TRAINING_CODE),
            command=train_command(spec.train_args),
            inputs={"data": Input(type=data.type or AssetTypes.URI_FILE,
                                  path=f"azureml:{spec.asset}:{spec.data_version}")},
            outputs={RUN_OUTPUT: Output(type=AssetTypes.URI_FOLDER),
                     MODEL_OUTPUT: Output(type=AssetTypes.MLFLOW_MODEL)},
            environment=self._environment(),
            # Serverless: no compute target at all; Azure ML picks the VM per job and the job tier is the cost lever.
            compute=None if serverless else compute,
            tags=_tags(spec.tags),
            queue_settings=QueueSettings(job_tier="Spot" if low_priority else "Standard") if serverless else None,
        )
        job.set_limits(timeout=int(spec.max_run_seconds or self.settings.max_run_seconds))
        return job

    def submit_command(self, spec: CommandJobSpec) -> Job:
        """``python -m <module>`` on the training compute, with this repository's ``shared`` package as the code
        and the training environment (numpy is all shared/drift/job.py needs). Never resubmits a name."""
        deadline = self._deadline()
        existing = self._find_job(spec.name, deadline)
        if existing is not None:
            return self._job(existing)
        with tempfile.TemporaryDirectory(prefix="mlops-code-") as code:
            shutil.copytree(SHARED_CODE, Path(code) / "shared",
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
            created, raced = self._create_job(self._module_job(spec, code), deadline)
        if not raced:
            logger.info("submitted %s (python -m %s) to %s", spec.name, spec.module,
                        spec.compute or self.settings.compute)
        return self._job(created)

    def _module_job(self, spec: CommandJobSpec, code: str):
        import shlex

        from azure.ai.ml import Input, Output, command
        from azure.ai.ml.constants import AssetTypes

        compute = spec.compute or self.settings.compute
        serverless = compute.strip().lower() in SERVERLESS
        placeholder = re.compile(r"^\$\{\{(inputs|outputs)\.[A-Za-z0-9_]+\}\}$")
        args = " ".join(a if placeholder.match(a) else shlex.quote(a) for a in spec.args)
        job = command(
            name=spec.name,
            display_name=spec.name,
            experiment_name=spec.experiment,
            description=spec.description or f"python -m {spec.module}",
            code=code,
            command=f"python -m {spec.module} {args}".strip(),
            inputs={k: Input(type=AssetTypes.URI_FOLDER if v.endswith("/") else AssetTypes.URI_FILE, path=v)
                    for k, v in spec.inputs.items()},
            outputs={k: Output(type=AssetTypes.URI_FOLDER) for k in spec.outputs},
            environment=self._environment(),
            compute=None if serverless else compute,
            tags=_tags(spec.tags),
        )
        job.set_limits(timeout=int(spec.max_run_seconds or self.settings.max_run_seconds))
        return job

    def _environment(self):
        """The configured environment (a name, an id or a registry URI), else the one conda.yaml describes."""
        if self.settings.environment:
            return self.settings.environment
        from azure.ai.ml.entities import Environment

        return Environment(image=TRAINING_IMAGE, conda_file=str(TRAINING_CONDA),
                           description="mlops-automation training: numpy, xgboost, mlflow, azureml-mlflow")

    def _find_job(self, name: str, deadline: float):
        try:
            with translated(f"get job {name}"):
                return self.ml.jobs.get(name)
        except NotFound:
            return None

    def get_job(self, name: str) -> Job:
        deadline = self._deadline()
        job = self._find_job(name, deadline)
        if job is None:
            raise NotFound(f"job {name} does not exist")
        status = JobStatus.parse(job.status or "")
        error = self._run_error(name, deadline) if status is JobStatus.FAILED else ""
        return self._job(job, error)

    def list_jobs(self, *, status: Iterable[JobStatus] | None = None,
                  tags: Mapping[str, str] | None = None) -> list[Job]:
        wanted = {JobStatus(s) for s in status} if status is not None else None
        tags = _tags(tags)
        # The service filters by one tag key (Jobs_List "tag"); values and the other keys are matched here.
        query = {"tag": next(iter(tags))} if tags else {}
        with translated("list jobs"):
            found = [j for j in self.ml.jobs.list(**query) if j is not None]
        jobs = [self._job(j) for j in found]
        jobs = [j for j in jobs if (wanted is None or j.status in wanted)
                and all(j.tags.get(k) == v for k, v in tags.items())]
        return sorted(jobs, key=lambda j: j.created_at.timestamp() if j.created_at else 0.0, reverse=True)

    def _job(self, job, error: str = "") -> Job:
        return Job(name=job.name, status=JobStatus.parse(job.status or ""), tags=_tags(job.tags), error=error,
                   created_at=_created(job), url=getattr(job, "studio_url", None) or "")

    def get_run_metrics(self, job_name: str) -> dict[str, float]:
        """The final value of every metric the run logged to MLflow (the workspace's tracking server), read by
        shared/adapters/runmetrics.py. A run that logged none is a PermanentError, as on the embedded backend."""
        metrics = self._metrics_reader().get_run_metrics(job_name)
        if not metrics:
            raise PermanentError(f"job {job_name} logged no metrics to MLflow")
        return metrics

    def _metrics_reader(self):
        from shared.adapters.runmetrics import MlflowRunMetrics

        with self._lock:
            if self._metrics is None:
                if self._credential is None:
                    raise PermanentError("the Azure ML adapter needs a credential for run metrics")
                # ARM audience, as Azure ML's own "MLflow REST" sample and azureml-mlflow authenticate.
                self._metrics = MlflowRunMetrics(lambda: self._mlflow_base(self._deadline()), self._credential,
                                                 scope=self._arm_scope(), transport=self._transport,
                                                 budget_seconds=self.budget_seconds)
            return self._metrics

    def _arm_scope(self) -> str:
        """The ARM token audience of MLClient's cloud (Azure Government, China), the public one by default."""
        arm = str(getattr(self.ml, "_base_url", "") or "https://management.azure.com").rstrip("/")
        return f"{arm}/.default"

    def _run_error(self, name: str, deadline: float) -> str:
        """A failed run's error message (RunHistory); empty when the service has none to give."""
        try:
            run = self._rest_get(f"{self._history_base(deadline)}/history/v1.0{self._ws_path}/runs/{quote(name)}",
                                 {}, f"get run error of {name}", deadline)
        except PermanentError as error:
            logger.warning("no error details for failed job %s: %s", name, error)
            return ""
        root = (run.get("error") or {}).get("error") or {}
        return str(root.get("message") or root.get("code") or "")

    # --- REST calls MLClient has no API for ----------------------------------------------------------------

    def _pipeline(self):
        from azure.core import PipelineClient
        from azure.core.pipeline.policies import (
            BearerTokenCredentialPolicy,
            HeadersPolicy,
            NetworkTraceLoggingPolicy,
            UserAgentPolicy,
        )

        with self._lock:
            if self._rest is None:
                if self._credential is None:
                    raise PermanentError("the Azure ML adapter needs a credential for run metrics")
                policies = [HeadersPolicy(), UserAgentPolicy(sdk_moniker="mlops-reflex"),
                            retry.sdk_policy(call_seconds=self.budget_seconds),
                            BearerTokenCredentialPolicy(self._credential, self._arm_scope()),
                            NetworkTraceLoggingPolicy()]
                kwargs = {"transport": self._transport} if self._transport is not None else {}
                self._rest = PipelineClient(base_url="https://management.azure.com", policies=policies, **kwargs)
            return self._rest

    def _rest_get(self, url: str, params: Mapping[str, str], what: str, deadline: float) -> dict:
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
        from azure.core.rest import HttpRequest

        request = HttpRequest("GET", url, params=dict(params), headers={"Accept": "application/json"})
        with translated(what):
            response = self._pipeline().send_request(request)
            if response.status_code == 404:
                raise ResourceNotFoundError(response=response)
            if response.status_code >= 400:
                raise HttpResponseError(response=response)
            return response.json()

    def _workspace_urls(self, deadline: float) -> dict[str, str]:
        with self._lock:
            if self._urls:
                return self._urls
        with translated(f"get workspace {self.settings.workspace}"):
            ws = self.ml.workspaces.get(self.settings.workspace)
        urls = {"mlflow": (ws.mlflow_tracking_uri or "").replace("azureml://", "https://", 1).rstrip("/"),
                "discovery": ws.discovery_url or ""}
        with self._lock:
            self._urls.update(urls)
            return self._urls

    def _mlflow_base(self, deadline: float) -> str:
        base = self._workspace_urls(deadline)["mlflow"]
        if not base:
            raise PermanentError(f"workspace {self.settings.workspace} reports no MLflow tracking URI")
        return base

    def _history_base(self, deadline: float) -> str:
        urls = self._workspace_urls(deadline)
        if "history" not in urls:
            found = self._rest_get(urls["discovery"], {}, "discover workspace services", deadline)
            with self._lock:
                urls["history"] = str(found.get("history") or found.get("api") or "").rstrip("/")
        return urls["history"]

    # --- models --------------------------------------------------------------------------------------

    def register_model(self, spec: ModelSpec) -> Model:
        """Idempotent by job: a version whose ``mlops_job`` tag names this job is returned as it is; otherwise the
        next positive integer is registered (Azure ML refuses any other model version). Two workers that picked the
        same number for different jobs: the loser's create conflicts or comes back with another job's tag, and it
        takes the next number (bounded)."""
        from azure.ai.ml.constants import AssetTypes
        from azure.ai.ml.entities import Model as AzureModel

        if spec.version:
            check_model_version(spec.version)
        deadline = self._deadline()
        job = self._find_job(spec.job_name, deadline)
        if job is None:
            raise NotFound(f"job {spec.job_name} does not exist")
        for _ in range(REGISTER_ATTEMPTS):
            versions = self._model_versions(spec.name, deadline)
            mine = [m for m in versions if _tags(m.tags).get(TAG_JOB) == spec.job_name]
            if mine:
                return self._model(min(mine, key=lambda m: int(m.version) if str(m.version).isdigit() else 0))
            status = JobStatus.parse(job.status or "")
            if status is not JobStatus.COMPLETED:
                raise Conflict(f"job {spec.job_name} has no model output (status {status.value})")
            version = spec.version or next_model_version(str(m.version) for m in versions)
            entity = AzureModel(name=spec.name, version=version, type=AssetTypes.MLFLOW_MODEL,
                                path=f"azureml://jobs/{spec.job_name}/outputs/{MODEL_OUTPUT}",
                                tags={**_tags(spec.tags), TAG_JOB: spec.job_name},
                                description=spec.description or None, properties={"mlops_job": spec.job_name})
            try:
                with translated(f"register model {spec.name}:{version}"):
                    created = self.ml.models.create_or_update(entity)
            except PermanentError:
                # Another job took this number between our read and our PUT: the service answers 409, or
                # azure-ai-ml refuses to change the existing version's path (AssetPathException, no status).
                # Only then is it worth the next number; anything else is a real refusal.
                taken = self._find_model(spec.name, version, deadline)
                if spec.version or taken is None or _tags(taken.tags).get(TAG_JOB) == spec.job_name:
                    raise
                continue
            if _tags(created.tags).get(TAG_JOB) != spec.job_name:
                if spec.version:
                    raise Conflict(f"model {spec.name}:{version} belongs to another job")
                continue
            logger.info("registered model %s:%s from %s", spec.name, version, spec.job_name)
            return self._model(created)
        raise StaleState(f"model {spec.name}: the next version kept being taken by other jobs; try again")

    def _model_versions(self, name: str, deadline: float) -> list:
        try:
            with translated(f"list models {name}"):
                return list(self.ml.models.list(name=name))
        except NotFound:
            return []

    def _find_model(self, name: str, version: str, deadline: float):
        try:
            with translated(f"get model {name}:{version}"):
                return self.ml.models.get(name, version=version)
        except NotFound:
            return None

    def get_model(self, name: str, version: str) -> Model:
        found = self._find_model(name, version, self._deadline())
        if found is None:
            raise NotFound(f"model {name}:{version} does not exist")
        return self._model(found)

    def list_models(self, name: str) -> list[Model]:
        models = [self._model(m) for m in self._model_versions(name, self._deadline())]
        return sorted(models, key=lambda m: m.created_at.timestamp() if m.created_at else 0.0, reverse=True)

    def tag_model(self, name: str, version: str, tags: Mapping[str, str]) -> Model:
        deadline = self._deadline()
        entity = self._find_model(name, version, deadline)
        if entity is None:
            raise NotFound(f"model {name}:{version} does not exist")
        merged = {**_tags(entity.tags), **_tags(tags)}
        if merged == _tags(entity.tags):
            return self._model(entity)
        entity.tags = merged
        with translated(f"tag model {name}:{version}"):
            updated = self.ml.models.create_or_update(entity)
        return self._model(updated)

    @staticmethod
    def _model(entity) -> Model:
        return Model(name=entity.name, version=str(entity.version), tags=_tags(entity.tags), path=entity.path or "",
                     created_at=_created(entity))

    # --- endpoints -----------------------------------------------------------------------------------

    def _find_endpoint(self, name: str, deadline: float):
        try:
            with translated(f"get endpoint {name}"):
                return self.ml.online_endpoints.get(name)
        except NotFound:
            return None

    def _deployments(self, endpoint: str, deadline: float) -> list:
        with translated(f"list deployments of {endpoint}"):
            return list(self.ml.online_deployments.list(endpoint_name=endpoint))

    def get_endpoint(self, name: str) -> Endpoint | None:
        deadline = self._deadline()
        entity = self._find_endpoint(name, deadline)
        if entity is None:
            return None
        return self._endpoint(entity, self._deployments(name, deadline))

    def list_endpoints(self) -> list[Endpoint]:
        deadline = self._deadline()
        with translated("list endpoints"):
            found = list(self.ml.online_endpoints.list())
        return [self._endpoint(e, self._deployments(e.name, deadline)) for e in found]

    def create_deployment(self, endpoint: str, deployment: str, model: Model, tags: Mapping[str, str]) -> Endpoint:
        from azure.ai.ml.entities import ManagedOnlineDeployment, ManagedOnlineEndpoint

        deadline = self._deadline()
        registered = self._find_model(model.name, model.version, deadline)
        if registered is None:  # a deployment of a model that does not exist cannot serve
            raise NotFound(f"model {model.name}:{model.version} does not exist")
        entity = self._find_endpoint(endpoint, deadline)
        if entity is None:
            new = ManagedOnlineEndpoint(name=endpoint, auth_mode="key", tags={OWNER_TAG: OWNER_VALUE},
                                        description=f"managed by {OWNER_VALUE}")
            self._put(self.ml.online_endpoints.begin_create_or_update, new, f"create endpoint {endpoint}", deadline)
            logger.info("created endpoint %s", endpoint)
        else:
            self._not_busy(f"endpoint {endpoint}", entity.provisioning_state)
        current = next((d for d in self._deployments(endpoint, deadline) if d.name.lower() == deployment.lower()),
                       None)
        if current is not None and _text(current.provisioning_state).lower() != "failed":
            self._not_busy(f"deployment {endpoint}/{deployment}", current.provisioning_state)
            return self.get_endpoint(endpoint)  # existing deployments are kept as they are
        new_deployment = ManagedOnlineDeployment(
            name=deployment, endpoint_name=endpoint, model=registered.id or f"azureml:{model.name}:{model.version}",
            instance_type=self.settings.instance_type, instance_count=1, tags=_tags(tags),
            description=f"{model.name}:{model.version}, deployed by {OWNER_VALUE}",
            data_collector=data_collector())
        self._put(self.ml.online_deployments.begin_create_or_update, new_deployment,
                  f"create deployment {endpoint}/{deployment}", deadline)
        logger.info("deployed %s:%s as %s/%s at 0%%", model.name, model.version, endpoint, deployment)
        return self.get_endpoint(endpoint)

    def set_traffic(self, endpoint: str, traffic: Mapping[str, int], *, tags: Mapping[str, str] | None = None,
                    deployment_tags: Mapping[str, Mapping[str, str]] | None = None,
                    expect: Mapping[str, int] | None = None) -> Endpoint:
        """Online endpoints take no If-Match, so the write is made conditional by reading first: with ``expect``,
        a live split that is neither the expected one nor already the wanted one raises TrafficChanged and nothing
        is written. Every writer of ours goes through the endpoint's state record (one commit per decision), so
        the only other writers are people and tools outside the automation, which this catches."""
        deadline = self._deadline()
        entity = self._find_endpoint(endpoint, deadline)
        if entity is None:
            raise NotFound(f"endpoint {endpoint} does not exist")
        if expect is not None:
            live_now = {str(k).lower(): int(v) for k, v in (entity.traffic or {}).items() if int(v or 0)}
            wanted = {k.lower(): int(v) for k, v in traffic.items() if int(v)}
            expected = {k.lower(): int(v) for k, v in expect.items() if int(v)}
            if live_now not in (wanted, expected):
                raise TrafficChanged(f"traffic of {endpoint} is {live_now}, not the expected {expected}: changed "
                                     "outside the automation", actual=live_now)
        deployments = {d.name.lower(): d for d in self._deployments(endpoint, deadline)}
        unknown = sorted(n for n in {*traffic, *(deployment_tags or {})} if n.lower() not in deployments)
        if unknown:
            raise NotFound(f"endpoint {endpoint} has no deployment {', '.join(unknown)}")
        check_traffic(traffic)
        self._not_busy(f"endpoint {endpoint}", entity.provisioning_state)
        for d in deployments.values():
            self._not_busy(f"deployment {endpoint}/{d.name}", d.provisioning_state)
        # Deployment tags first: if the traffic change then fails, the redelivered event still sees the old split
        # and does the whole change again; the other order could leave a new split whose tags never follow.
        tagged = False
        for name, extra in (deployment_tags or {}).items():
            current = deployments[name.lower()]
            merged = {**_tags(current.tags), **_tags(extra)}
            if merged != _tags(current.tags):
                current.tags = merged
                _collector_for_put(current)
                self._put(self.ml.online_deployments.begin_create_or_update, current,
                          f"tag deployment {endpoint}/{current.name}", deadline)
                tagged = True
        split = {deployments[n.lower()].name: int(v) for n, v in traffic.items()}
        live = {n: v for n, v in split.items() if v}
        # Live traffic wins over mirroring: the service refuses a deployment that would get both.
        canonical = {k: d.name for k, d in deployments.items()}
        mirror = {canonical.get(n.lower(), n): int(v) for n, v in (entity.mirror_traffic or {}).items()
                  if int(v or 0) and not any(n.lower() == k.lower() for k in live)}
        dropped = {n for n, v in (entity.mirror_traffic or {}).items() if int(v or 0)} - set(mirror)
        if dropped:
            logger.warning("endpoint %s: mirror traffic to %s stopped, it now serves live traffic", endpoint,
                           ", ".join(sorted(dropped)))
        merged_tags = {**_tags(entity.tags), **_tags(tags)}
        before = self._endpoint(entity, list(deployments.values()))
        unchanged = ({n: v for n, v in before.traffic.items() if v} == live and before.mirror_traffic == mirror
                     and before.tags == merged_tags)
        if unchanged:  # a redelivered change: the endpoint already is what was asked, so no second operation
            logger.info("traffic of %s already is %s", endpoint, live)
            return self.get_endpoint(endpoint) if tagged else before
        # MLClient drops 0% entries and lower-cases names in place before the PUT; a name absent from the map
        # serves 0%, which is exactly the split asked for. The read-back below proves it.
        entity.traffic = dict(live)
        entity.mirror_traffic = mirror
        entity.tags = merged_tags
        entity.properties = {k: v for k, v in (entity.properties or {}).items() if k not in SDK_SYSTEM_PROPERTIES}
        self._put(self.ml.online_endpoints.begin_create_or_update, entity, f"set traffic of {endpoint}", deadline)
        after = self.get_endpoint(endpoint)
        if after is None:
            raise TransientError(f"endpoint {endpoint} vanished while its traffic was set")
        names = {*split, *after.traffic}
        got = {n: after.traffic.get(n, 0) for n in names}
        want = {n: split.get(n, 0) for n in names}
        if got != want:
            raise TransientError(f"traffic of {endpoint} is {got} after the update, not {want}")
        logger.info("traffic of %s is now %s", endpoint, {k: v for k, v in want.items() if v})
        return after

    def delete_deployment(self, endpoint: str, deployment: str) -> bool:
        deadline = self._deadline()
        entity = self._find_endpoint(endpoint, deadline)
        if entity is None:
            return False
        if any(str(k).lower() == deployment.lower() and int(v or 0)
               for k, v in {**(entity.traffic or {}), **(entity.mirror_traffic or {})}.items()):
            raise Conflict(f"{endpoint}/{deployment} serves live or mirror traffic: it is not deleted")
        current = next((d for d in self._deployments(endpoint, deadline) if d.name.lower() == deployment.lower()),
                       None)
        if current is None:
            return False
        self._not_busy(f"deployment {endpoint}/{deployment}", current.provisioning_state)
        what = f"delete deployment {endpoint}/{deployment}"
        try:
            with translated(what):
                poller = self.ml.online_deployments.begin_delete(name=current.name, endpoint_name=endpoint)
            self._wait(poller, what, deadline)
        except NotFound:
            return False
        logger.info("deleted deployment %s/%s", endpoint, deployment)
        return True

    def _put(self, begin, entity, what: str, deadline: float):
        """Start a create-or-update and wait for it. A 409 here means another operation on the endpoint is still
        running (our reads already ruled out the rest), which is worth retrying, not a permanent conflict."""
        try:
            with translated(what):
                poller = begin(entity)
            return self._wait(poller, what, deadline)
        except Conflict as error:
            raise TransientError(f"{what}: {error}") from error

    @staticmethod
    def _not_busy(what: str, state: str | None) -> None:
        if _text(state).lower() in BUSY_STATES:
            raise TransientError(f"{what} is still {_text(state)}: try again once Azure has finished")

    def _endpoint(self, entity, deployments: list) -> Endpoint:
        live = {str(k).lower(): int(v or 0) for k, v in (entity.traffic or {}).items()}
        mirrored = {str(k).lower(): int(v or 0) for k, v in (entity.mirror_traffic or {}).items()}
        ordered = sorted(deployments, key=lambda d: _created(d).timestamp() if _created(d) else 0.0)
        names = {d.name.lower(): d.name for d in ordered}
        traffic = {d.name: live.get(d.name.lower(), 0) for d in ordered}
        traffic.update({k: v for k, v in live.items() if k not in names})
        mirror = {names.get(k, k): v for k, v in mirrored.items() if v}
        return Endpoint(name=entity.name, deployments=tuple(self._deployment(d) for d in ordered), traffic=traffic,
                        tags=_tags(entity.tags), scoring_uri=entity.scoring_uri or "", mirror_traffic=mirror)

    @staticmethod
    def _deployment(entity) -> Deployment:
        ref = entity.model if isinstance(entity.model, str) else getattr(entity.model, "id", "") or ""
        m = MODEL_ARM_ID.search(ref) or MODEL_SHORT_ID.match(ref)
        model_name, model_version = (m.group(1), m.group(2)) if m else (ref, "")
        return Deployment(name=entity.name, model_name=model_name, model_version=model_version,
                          tags=_tags(entity.tags), created_at=_created(entity),
                          state=_text(entity.provisioning_state) or "Succeeded")

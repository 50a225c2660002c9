"""The Azure drift monitor: each serving deployment's collected inputs and outputs against its model's baseline.

On every tick (function_app.drift_monitor) it works out the last complete window: windows are
``MLOPS_DRIFT_INTERVAL_MINUTES`` long, aligned to multiples of that length since midnight UTC, and a window is due
``SETTLE_MINUTES`` after it ends (the collector writes with a delay). For each endpoint the automation keeps a state
record of (shared/rollout.py) and each deployment with live traffic in that record, it

1. claims ``drift:<endpoint>/<deployment>/<window start>`` in the ledger (the bus's claim pattern): a claim already
   settled means this window was checked, so a second tick does nothing; a live claim means another worker is on it;
2. reads the window from the collector's JSONL in blob storage (shared/drift/collector.py: streamed, bounded);
   a window whose input blobs add up to more than ``MLOPS_DRIFT_OFFLOAD_MB`` in the listing is submitted as a drift
   job instead (shared/drift/offload.py), and that job's completion publishes its event;
3. loads the deployed model's baseline profile (``baseline.json`` next to the MLflow model) from the same container;
4. compares them with the engine (shared/drift/engine.py) at the configured thresholds and minimum sample;
5. publishes one ``MLOps.DriftDetected`` when the window drifted, with an event id derived from the claim key, so a
   check retried after a crash repeats the same event (the subscribers' ledger skips it) instead of a second one.

A transient failure (storage or Event Grid throttled, a network error) releases the claim: the next tick tries the
window again. A permanent one (no baseline, an unreadable profile) settles it as failed, logged and recorded.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from shared.domain import TAG_JOB, Model
from shared.errors import Busy, MLOpsError, NotFound, PermanentError, TransientError

logger = logging.getLogger(__name__)

SETTLE_MINUTES = 10  # a window is checked this long after it ends: the collector flushes its batches meanwhile
MONITOR = "mlops-drift-monitor"  # the rule name of our events (and so of the drift incident they open)
EVENT_TYPE = "MLOps.DriftDetected"
CLAIM_TYPE = "DriftCheck"
BASELINE = "baseline.json"
_DATASTORE_PATH = re.compile(r"/datastores/[^/]+/paths/(?P<path>.+)$", re.IGNORECASE)
_JOB_OUTPUT = re.compile(r"^azureml://jobs/(?P<job>[^/]+)/outputs/(?P<output>[^/]+)(?:/paths/(?P<sub>.*))?$",
                         re.IGNORECASE)


def due_window(now: datetime, interval_minutes: int, settle_minutes: int = SETTLE_MINUTES) -> tuple[datetime, datetime]:
    """[start, end) of the newest window that ended at least ``settle_minutes`` before ``now``."""
    now = now.astimezone(timezone.utc)
    ready = now - timedelta(minutes=settle_minutes)
    midnight = ready.replace(hour=0, minute=0, second=0, microsecond=0)
    step = timedelta(minutes=interval_minutes)
    end = midnight + step * ((ready - midnight) // step)
    return end - step, end


def claim_key(endpoint: str, deployment: str, start: datetime) -> str:
    return f"drift:{endpoint}/{deployment}/{start.astimezone(timezone.utc):%Y%m%dT%H%MZ}"


def event_id_for(key: str) -> str:
    """A stable event id for one (deployment, window): the same check repeated publishes the same event."""
    return "drift-" + hashlib.sha256(key.encode()).hexdigest()[:32]


def baseline_blob(model: Model) -> str:
    """Where ``baseline.json`` of a registered model lies in the workspace's default blob container.

    train.py writes it inside the MLflow model folder, which the training job's ``model`` output holds. A model
    registered from ``azureml://jobs/<job>/outputs/<output>`` lives at the job output's default location,
    ``azureml/<job>/<output>/`` on workspaceblobstore (Azure ML's default output path); a model whose path is
    already a datastore path is read there."""
    path = (model.path or "").rstrip("/")
    found = _DATASTORE_PATH.search(path)
    if found:
        return f"{found['path'].rstrip('/')}/{BASELINE}"
    found = _JOB_OUTPUT.match(path)
    if found:
        sub = (found["sub"] or "").strip("/")
        return "/".join(p for p in ("azureml", found["job"], found["output"], sub, BASELINE) if p)
    job = model.tags.get(TAG_JOB)
    if job:
        return f"azureml/{job}/model/{BASELINE}"
    raise NotFound(f"model {model.name}:{model.version} names no path or job to find its {BASELINE} under")


@dataclass(frozen=True)
class Check:
    """What one (deployment, window) came to: drift | no_drift | inconclusive | offloaded (a drift job has it) |
    skipped | failed | retry."""

    endpoint: str
    deployment: str
    start: datetime
    end: datetime
    outcome: str
    rows: int = 0
    event_id: str = ""
    reason: str = ""
    result: Any = None  # the engine's DriftResult


class DriftMonitor:
    """One tick of the monitor over every endpoint state record. Ports: ``states`` (StateStore), ``workspace``
    (get_endpoint, get_model), ``ledger``, ``publisher`` (EventGridPublisher) and ``container`` (a ContainerClient
    on the collector's container, made with the app's managed identity)."""

    def __init__(self, *, states, workspace, ledger, publisher, container, settings,
                 clock: Callable[[], datetime] | None = None, lease_seconds: float = 900.0) -> None:
        self.states = states
        self.workspace = workspace
        self.ledger = ledger
        self.publisher = publisher
        self.container = container
        self.settings = settings
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.lease_seconds = lease_seconds
        self._baselines: dict[str, dict] = {}

    @property
    def thresholds(self):
        return self.settings.drift.thresholds(self.settings.policy.drift_psi_threshold)

    def tick(self) -> list[Check]:
        start, end = due_window(self.clock(), self.settings.drift.interval_minutes)
        checks: list[Check] = []
        for endpoint in self.states.endpoints():
            state = self.states.load(endpoint)
            if state is None:
                continue
            serving = sorted(name for name, share in (state.traffic or {}).items() if int(share or 0) > 0)
            if not serving and state.stable:
                serving = [state.stable]
            cache: dict = {}

            def read(ep: str = endpoint, cache: dict = cache):  # read only for a new claim, and once per endpoint
                if "endpoint" not in cache:
                    cache["endpoint"] = self._endpoint(ep)
                return cache["endpoint"]

            for deployment in serving:
                checks.append(self._one(endpoint, deployment, start, end, read))
        return checks

    def _endpoint(self, name: str):
        endpoint = self.workspace.get_endpoint(name)
        if endpoint is None:
            raise NotFound(f"endpoint {name} does not exist")
        return endpoint

    def _one(self, endpoint: str, deployment: str, start: datetime, end: datetime, read_endpoint) -> Check:
        key = claim_key(endpoint, deployment, start)
        try:
            claim = self.ledger.claim(key, event_type=CLAIM_TYPE, lease_seconds=self.lease_seconds)
        except Busy:
            return Check(endpoint, deployment, start, end, "skipped", reason="another worker is checking it")
        if claim != "new":
            return Check(endpoint, deployment, start, end, "skipped", reason=f"already checked ({claim})")
        token = getattr(claim, "token", None)
        try:
            check = self._compute(key, endpoint, deployment, start, end, read_endpoint)
        except TransientError as error:
            _settle(lambda: self.ledger.release(key, token=token), f"release {key}")
            logger.warning("drift check %s: %s; the next tick tries again", key, error)
            return Check(endpoint, deployment, start, end, "retry", reason=str(error))
        except (PermanentError, MLOpsError, ValueError, KeyError) as error:
            reason = f"{type(error).__name__}: {error}"
            _settle(lambda: self.ledger.complete(key, "failed", reason[:500], token=token), f"complete {key}")
            logger.error("drift check %s failed: %s", key, reason)
            return Check(endpoint, deployment, start, end, "failed", reason=reason)
        except Exception as error:  # an SDK error not translated: retried like a transient one, never swallowed
            _settle(lambda: self.ledger.release(key, token=token), f"release {key}")
            logger.exception("drift check %s: unexpected error; the next tick tries again", key)
            return Check(endpoint, deployment, start, end, "retry", reason=f"{type(error).__name__}: {error}")
        _settle(lambda: self.ledger.complete(
            key, "done" if check.outcome in ("drift", "offloaded") else "ignored",
            check.reason if check.outcome == "offloaded" else f"{check.outcome} over {check.rows} rows", token=token),
            f"complete {key}")
        return check

    def _compute(self, key: str, endpoint: str, deployment: str, start: datetime, end: datetime,
                 read_endpoint) -> Check:
        from shared.adapters.errors import translated
        from shared.drift.chart import histogram
        from shared.drift.collector import CollectorReader
        from shared.drift.engine import PREDICTION, compare
        from shared.local.monitor import describe

        live = read_endpoint()
        found = next((d for d in live.deployments if d.name.lower() == deployment.lower()), None)
        if found is None:
            raise NotFound(f"deployment {endpoint}/{deployment} does not exist")
        model = self.workspace.get_model(found.model_name, found.model_version)
        profile = self._baseline(model)
        offloaded = self._offload(key, endpoint, deployment, start, end, model)
        if offloaded is not None:
            return offloaded
        reader = CollectorReader(self.container, max_rows=self.settings.drift.max_rows)
        with translated(f"read the collected window {key}"):
            window = reader.window(endpoint, deployment, profile, start, end)
        limits = self.thresholds
        result = compare(profile, window.columns, predictions=window.predictions, thresholds=limits, workers=2)
        logger.info("drift check %s: %s over %d rows from %d blobs%s", key, result.status, window.rows,
                    window.blobs, f" ({describe(result)})" if result.drifted else "")
        if not result.drifted:
            return Check(endpoint, deployment, start, end, result.status, rows=window.rows, result=result)
        top = result.top()
        metric, value, threshold = top[0].signal(limits)
        stats = {
            "status": result.status, "metric": metric, "value": value, "threshold": threshold,
            "rows": window.rows, "records": window.records, "blobs": window.blobs,
            "truncated": window.truncated, "skipped_lines": window.skipped_lines,
            "top": [f.to_dict(limits) for f in top],
            "chart": histogram(top[0].name, profile.get("prediction") if top[0].name == PREDICTION else
                               profile["features"][top[0].name],
                               window.predictions if top[0].name == PREDICTION else window.columns[top[0].name]),
            "results": {k: f.to_dict(limits) for k, f in result.features.items()},
            "description": describe(result),
        }
        published = publish_drift(self.publisher, key, endpoint, deployment, f"{model.name}:{model.version}",
                                  start, end, stats)
        return Check(endpoint, deployment, start, end, "drift", rows=window.rows, event_id=str(published),
                     result=result)

    def _offload(self, key: str, endpoint: str, deployment: str, start: datetime, end: datetime,
                 model: Model) -> Check | None:
        """Above MLOPS_DRIFT_OFFLOAD_MB of collected inputs (summed from the listing, before any row is read), the
        window becomes a drift job (shared/drift/offload.py) named after the claim key; None: check it here."""
        from shared.adapters.errors import translated
        from shared.drift import offload

        with translated(f"list the collected window {key}"):
            size = offload.window_bytes(self.container, endpoint, deployment, start, end)
        if size <= self.settings.drift.offload_mb * 1024 * 1024:
            return None
        spec = offload.job_spec(key, endpoint, deployment, start, end, model, self._baseline_name(model),
                                thresholds=self.thresholds, max_rows=2**62, compute=self.settings.compute)
        job = self.workspace.submit_command(spec)
        logger.info("drift check %s: %d bytes collected, over the %d MB line: job %s (%s)", key, size,
                    self.settings.drift.offload_mb, job.name, job.status.value)
        return Check(endpoint, deployment, start, end, "offloaded", reason=f"offloaded to job {job.name}")

    @staticmethod
    def _baseline_name(model: Model) -> str:
        local = Path(model.path or "")
        if local.is_absolute() and (local / BASELINE).is_file():  # the embedded workspace keeps models on disk
            return str(local / BASELINE)
        return baseline_blob(model)

    def _baseline(self, model: Model) -> dict:
        from azure.core.exceptions import ResourceNotFoundError

        from shared.adapters.errors import translated
        from shared.training.baseline_profile import read_profile

        name = self._baseline_name(model)
        if name not in self._baselines and Path(name).is_absolute():
            self._baselines[name] = read_profile(json.loads(Path(name).read_text()))
        if name not in self._baselines:
            try:
                with translated(f"read {name}"):
                    raw = self.container.download_blob(name).readall()
            except ResourceNotFoundError:
                raise NotFound(f"model {model.name}:{model.version} has no {BASELINE} at {name}") from None
            self._baselines[name] = read_profile(json.loads(raw))
        return self._baselines[name]


def publish_drift(publisher, key: str, endpoint: str, deployment: str, model: str, start: datetime, end: datetime,
                  stats: dict) -> str:
    """Publish the one ``MLOps.DriftDetected`` of a drifted window, computed in the function or by a drift job
    (shared/drift/offload.py): the same data, and the event id derived from the window's claim key."""
    data = {
        "endpoint": endpoint, "deployment": deployment, "monitor": MONITOR, "severity": "warning",
        "metric": stats["metric"], "value": stats["value"], "threshold": stats["threshold"],
        "status": stats["status"], "model": model,
        "window": {"start": start.isoformat(), "end": end.isoformat(),
                   "minutes": int((end - start).total_seconds() // 60)},
        "rows": stats["rows"], "records": stats["records"], "blobs": stats["blobs"],
        "truncated": stats["truncated"], "skipped_lines": stats["skipped_lines"],
        "top": stats["top"], "chart": stats["chart"], "results": stats["results"],
        "description": f"drift on {endpoint}/{deployment}: {stats['description']}",
    }
    return publisher.publish(EVENT_TYPE, f"endpoints/{endpoint}/deployments/{deployment}", data,
                             event_id=event_id_for(key))


def run_tick(rt) -> list[Check]:
    """The timer's work on a wired runtime (function_app.drift_monitor): nothing without a collector container
    URL, a publisher and a state store, or on the local backend (its own monitor watches the embedded server)."""
    settings = rt.settings
    if settings.backend != "azure":
        return []
    publisher = getattr(rt, "publisher", None) if "publisher" in rt.deps else None
    if not settings.drift.container_url or publisher is None:
        logger.warning("drift monitor off: it needs MLOPS_DRIFT_CONTAINER_URL and MLOPS_EVENTS__topicEndpointUri")
        return []
    monitor = rt.deps.get("drift_monitor")
    if monitor is None:
        monitor = DriftMonitor(states=rt.states, workspace=rt.workspace, ledger=rt.ledger, publisher=publisher,
                               container=container_for(settings.drift.container_url, rt.credential),
                               settings=settings, clock=rt.deps.get("clock"))
        rt.deps["drift_monitor"] = monitor  # kept for the worker's life: its baseline cache and HTTP pool
    return monitor.tick()


def container_for(url: str, credential, **options):
    """A ContainerClient on ``https://<account>.blob.<suffix>/<container>`` with a token credential."""
    from shared.drift.collector import container_client

    account, _, container = url.rstrip("/").rpartition("/")
    return container_client(account, container, credential, **options)


def _settle(step, what: str):
    """Settle a claim even when the check used the whole deadline (retry.settling), retried like the bus does:
    a claim left held would block its window until the lease runs out."""
    from shared import retry

    with retry.settling():
        return retry.call(step, what=what)

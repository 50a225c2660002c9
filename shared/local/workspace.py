"""Embedded Azure ML workspace: SQLite state, a local datastore, real training subprocesses and scoring endpoints."""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import unquote

from shared.domain import (
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
from shared.errors import Conflict, InvalidPayload, NotFound, PermanentError, TrafficChanged
from shared.local import wire
from shared.local.serving import ERROR_TAG

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]  # the folder holding shared/: cwd of training processes
BLOB_URL = re.compile(r"^https://[a-z0-9]+\.blob\.core\.windows\.net/([^/]+)/(.*)$", re.IGNORECASE)
# The error of a job whose process died with the workspace: "preempted" makes it lost capacity to the retry policy.
INTERRUPTED = "interrupted: the workspace stopped while the job ran (its node was preempted, as far as the run knows)"
ERROR_LINES = 12  # last lines of a failed job's log kept as its error
POLL_SECONDS = 0.05  # how often the watcher looks at running processes

SCHEMA = """
CREATE TABLE IF NOT EXISTS data_assets (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, version TEXT NOT NULL, path TEXT NOT NULL,
    local_path TEXT NOT NULL, tags TEXT NOT NULL, created_at TEXT NOT NULL, UNIQUE (name, version));
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE, status TEXT NOT NULL, tags TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '', experiment TEXT NOT NULL, data_path TEXT NOT NULL, max_run_seconds REAL,
    created_at TEXT NOT NULL, started_at TEXT, finished_at TEXT);
CREATE TABLE IF NOT EXISTS models (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, version TEXT NOT NULL, job_name TEXT NOT NULL,
    tags TEXT NOT NULL, path TEXT NOT NULL, description TEXT NOT NULL DEFAULT '', created_at TEXT NOT NULL,
    UNIQUE (name, version));
CREATE TABLE IF NOT EXISTS endpoints (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE, tags TEXT NOT NULL, traffic TEXT NOT NULL,
    created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS deployments (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, endpoint TEXT NOT NULL, name TEXT NOT NULL, model_name TEXT NOT NULL,
    model_version TEXT NOT NULL, tags TEXT NOT NULL, created_at TEXT NOT NULL, UNIQUE (endpoint, name));
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY, at TEXT, endpoint TEXT, deployment TEXT, inputs TEXT, outputs TEXT, latency_ms REAL,
    status INTEGER, error TEXT);
CREATE INDEX IF NOT EXISTS requests_by_endpoint ON requests (endpoint, at);
"""


STATE_TAG = "local_provisioning_state"  # a simulated provisioning state (fail_deployment), as Azure reports
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")  # Azure's job/model name characters; no path tricks


def _safe(value: str, what: str) -> str:
    # Names become folder names under root: refuse anything that could climb out of it.
    if not SAFE_NAME.match(value or "") or ".." in value:
        raise InvalidPayload(f"{what} {value!r} must be letters, digits, '.', '_' or '-'", field=what)
    return value


def _now() -> str:
    # Microseconds, so creation order survives a round trip through the text column.
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _tags(value: Mapping[str, object] | None) -> dict[str, str]:
    return {str(k): str(v) for k, v in (value or {}).items()}


class _Run:
    """A running training process, as the watcher tracks it."""

    def __init__(self, proc: subprocess.Popen, log, deadline: float | None) -> None:
        self.proc, self.log, self.deadline = proc, log, deadline


WORKSPACE_DIR = "workspace"  # the embedded workspace lives in $MLOPS_HOME/workspace


def datastore_path(root: Path, container: str, blob_path: str) -> Path:
    """Where the blob ``container/blob_path`` of the local datastore lives under a workspace ``root``."""
    parts = [p for p in blob_path.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise InvalidPayload(f"blob path {blob_path!r} names no blob inside container {container!r}", field="path")
    return root / "datastore" / container / Path(*parts)


def upload(root: Path, container: str, blob_path: str, source_file: Path | str) -> dict:
    """Put a file into the local datastore of the workspace at ``root`` as a blob upload would, and return the
    BlobCreated event that upload causes (the caller emits it: the workspace itself, or the CLI's `land`)."""
    target = datastore_path(root, container, blob_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write aside, then rename: a reader never sees half a blob (Azure commits a blob atomically too).
    partial = target.with_name(f".{target.name}.uploading")
    shutil.copyfile(source_file, partial)
    partial.replace(target)
    logger.info("landed %s/%s (%d bytes)", container, blob_path, target.stat().st_size)
    return wire.blob_created(container, blob_path, content_length=target.stat().st_size, api="PutBlob")


class LocalWorkspace:
    """The Workspace and RunMetrics ports on one machine; safe to call from several threads."""

    def __init__(self, root: Path | str, *, emit: Callable[[dict], object] | None = None,
                 python: str = sys.executable, max_parallel: int = 2, readonly: bool = False) -> None:
        if max_parallel < 1:
            raise ValueError(f"max_parallel must be at least 1, not {max_parallel}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.emit = emit
        self.python = python
        self.max_parallel = max_parallel
        # One connection behind one lock: the HTTP server's threads, the watcher and callers all share it.
        self._db_lock = threading.RLock()
        self._db = sqlite3.connect(self.root / "workspace.db", timeout=30, isolation_level=None,
                                   check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.executescript(SCHEMA)
        if "train_args" not in {r["name"] for r in self._db.execute("PRAGMA table_info(jobs)")}:
            self._db.execute("ALTER TABLE jobs ADD COLUMN train_args TEXT NOT NULL DEFAULT '[]'")  # older homes
        if "command" not in {r["name"] for r in self._db.execute("PRAGMA table_info(jobs)")}:
            # submit_command's argv after "python": empty for training jobs
            self._db.execute("ALTER TABLE jobs ADD COLUMN command TEXT NOT NULL DEFAULT ''")
        # Job scheduling state, guarded by _cond (never held while emitting).
        self._cond = threading.Condition()
        self._queue: collections.deque[str] = collections.deque()
        self._running: dict[str, _Run] = {}
        self._busy: set[str] = set()  # submitted and not yet settled (terminal state written and events emitted)
        self._cancel: set[str] = set()
        self._fail_next: str | None = None
        self._preempted: dict[str, str] = {}
        self._closed = False
        self._server = None
        self._server_lock = threading.Lock()
        self.readonly = readonly
        if readonly:
            # Another process (the served app) owns the jobs: an observer (the `mlops` CLI) reads the same files
            # and must neither recover that process's running jobs as interrupted nor run jobs itself.
            self._watcher = None
            return
        self._recover()
        self._watcher = threading.Thread(target=self._watch, name="local-workspace-jobs", daemon=True)
        self._watcher.start()

    # --- plumbing ------------------------------------------------------------------------------------

    def _query(self, sql: str, args: Iterable = ()) -> list[sqlite3.Row]:
        with self._db_lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    def _write(self, sql: str, args: Iterable = ()) -> None:
        with self._db_lock:
            self._db.execute(sql, tuple(args))

    def _emit(self, event: dict) -> None:
        if self.emit is None:
            return
        try:
            self.emit(event)
        except Exception:  # noqa: BLE001 - a broken subscriber must not stop the job watcher or a caller's change
            logger.exception("emitting %s for %s failed", event.get("eventType"), event.get("subject"))

    def _recover(self) -> None:
        """Jobs another instance left behind: queued ones run again; running ones died with their process (a
        crash, or close()), so they end Failed here *with* their RunStatusChanged event, as a preempted node's run
        does in Azure. The app then retries them as their next attempt, or alerts once the attempts are spent:
        never silently dropped."""
        for row in self._query("SELECT name, status FROM jobs WHERE status IN (?, ?) ORDER BY seq",
                               (JobStatus.QUEUED.value, JobStatus.RUNNING.value)):
            if row["status"] == JobStatus.QUEUED.value:
                self._queue.append(row["name"])
                self._busy.add(row["name"])
            else:
                self._busy.add(row["name"])
                self._finish(row["name"], JobStatus.FAILED, INTERRUPTED)

    # --- data assets ---------------------------------------------------------------------------------

    def local_path(self, path: str) -> Path:
        """Where a data path lives on this machine: a blob URL maps into ``root/datastore/<container>/``."""
        m = BLOB_URL.match(path)
        if m:
            return datastore_path(self.root, m.group(1), unquote(m.group(2)))
        if "://" in path:
            raise InvalidPayload(f"the embedded workspace reads local paths and blob URLs, not {path!r}", field="path")
        return Path(path).expanduser().resolve()

    def register_data(self, name: str, version: str, path: str, tags: Mapping[str, str] | None = None) -> DataAsset:
        local = self.local_path(path)
        if not local.exists() or (path.endswith("/") and not local.is_dir()):
            raise NotFound(f"data for {name}:{version} not found at {path} ({local})")
        # Blob URLs are kept as given (like Azure's datastore URIs); local paths are made absolute.
        stored = path if BLOB_URL.match(path) else str(local)
        with self._db_lock:
            existing = self._query("SELECT * FROM data_assets WHERE name = ? AND version = ?", (name, version))
            if existing:
                if existing[0]["path"] != stored:
                    raise Conflict(f"data {name}:{version} already points at {existing[0]['path']}; versions are "
                                   f"immutable, register {stored} as a new version")
                return self._asset(existing[0])
            self._write("INSERT INTO data_assets (name, version, path, local_path, tags, created_at) "
                        "VALUES (?, ?, ?, ?, ?, ?)", (name, version, stored, str(local), json.dumps(_tags(tags)), _now()))
            logger.info("registered data %s:%s at %s", name, version, stored)
            return self.get_data(name, version)

    def get_data(self, name: str, version: str) -> DataAsset:
        rows = self._query("SELECT * FROM data_assets WHERE name = ? AND version = ?", (name, version))
        if not rows:
            raise NotFound(f"data asset {name}:{version} does not exist")
        return self._asset(rows[0])

    def latest_data(self, name: str) -> DataAsset | None:
        rows = self._query("SELECT * FROM data_assets WHERE name = ? ORDER BY seq DESC LIMIT 1", (name,))
        return self._asset(rows[0]) if rows else None

    @staticmethod
    def _asset(row: sqlite3.Row) -> DataAsset:
        return DataAsset(name=row["name"], version=row["version"], path=row["path"], tags=json.loads(row["tags"]),
                         created_at=datetime.fromisoformat(row["created_at"]))

    def land(self, container: str, blob_path: str, source_file: Path | str) -> dict:
        """Copy a file into the local datastore as an upload would, and emit the BlobCreated that upload causes."""
        event = upload(self.root, container, blob_path, source_file)
        self._emit(event)
        return event

    # --- jobs ----------------------------------------------------------------------------------------

    def submit_training(self, spec: TrainingJobSpec) -> Job:
        _safe(spec.name, "job name")
        data = self.get_data(spec.asset, spec.data_version)  # NotFound before anything is created
        if self._enqueue(spec.name, {"tags": json.dumps(_tags(spec.tags)), "experiment": spec.experiment,
                                     "data_path": self._row_local_path(data), "max_run_seconds": spec.max_run_seconds,
                                     "train_args": json.dumps(spec.train_args)}, training=True):
            logger.info("submitted %s on %s:%s", spec.name, spec.asset, spec.data_version)
        return self.get_job(spec.name)

    def submit_command(self, spec: CommandJobSpec) -> Job:
        """Run ``python -m spec.module`` as a process, as submit_training runs train.py. Inputs on a datastore
        (``azureml://datastores/<store>/paths/<path>``) resolve into this workspace's datastore, and each output is
        the folder ``datastore/workspaceblobstore/azureml/<job>/<output>/``: where Azure ML puts it by default."""
        _safe(spec.name, "job name")
        values = {f"${{{{inputs.{k}}}}}": str(self._input_path(v)) for k, v in spec.inputs.items()}
        values.update({f"${{{{outputs.{k}}}}}": str(datastore_path(self.root, "workspaceblobstore",
                                                                      f"azureml/{spec.name}/{k}"))
                       for k in spec.outputs})
        argv = ["-m", spec.module, *(values.get(a, a) for a in spec.args)]
        if self._enqueue(spec.name, {"tags": json.dumps(_tags(spec.tags)), "experiment": spec.experiment,
                                     "data_path": "", "max_run_seconds": spec.max_run_seconds,
                                     "command": json.dumps(argv)}):
            logger.info("submitted %s: python -m %s", spec.name, spec.module)
        return self.get_job(spec.name)

    def _enqueue(self, name: str, columns: dict[str, object], *, training: bool = False) -> bool:
        """Insert a queued job row and hand the job to the runner; False (nothing done) when a job of that name
        exists already: a redelivered submission finds its job. A failure injected for the next job
        (``fail_next``) goes to a training job."""
        row = {"name": name, "status": JobStatus.QUEUED.value, "created_at": _now(), **columns}
        with self._cond:
            if self._closed:
                raise PermanentError("the workspace is closed")
            with self._db_lock:
                if self._query("SELECT 1 FROM jobs WHERE name = ?", (name,)):
                    return False
                self._write(f"INSERT INTO jobs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                            tuple(row.values()))
            if training and self._fail_next is not None:
                self._preempted[name], self._fail_next = self._fail_next, None
            self._queue.append(name)
            self._busy.add(name)
            self._cond.notify_all()
        return True

    def _input_path(self, path: str) -> Path:
        m = re.match(r"^azureml://datastores/([^/]+)/paths/(.+)$", path)
        if m:
            return datastore_path(self.root, m.group(1), m.group(2))
        if Path(path).is_absolute():
            return Path(path)
        raise InvalidPayload(f"the embedded workspace runs jobs on datastore paths and local files, not {path!r}",
                             field="inputs")

    def publish(self, event_type: str, subject: str, data: Mapping[str, object], *, event_id: str | None = None) -> str:
        """One of our own events to the custom topic, as EventGridPublisher sends it (emitted like the workspace's
        events): the embedded backend's Publisher for drift jobs' results."""
        event = wire.custom(event_type, subject, data, event_id=event_id)
        self._emit(event)
        return event["id"]

    def _row_local_path(self, data: DataAsset) -> str:
        return self._query("SELECT local_path FROM data_assets WHERE name = ? AND version = ?",
                           (data.name, data.version))[0]["local_path"]

    def get_job(self, name: str) -> Job:
        rows = self._query("SELECT * FROM jobs WHERE name = ?", (name,))
        if not rows:
            raise NotFound(f"job {name} does not exist")
        return self._job(rows[0])

    def list_jobs(self, *, status: Iterable[JobStatus] | None = None,
                  tags: Mapping[str, str] | None = None) -> list[Job]:
        wanted = {JobStatus(s) for s in status} if status is not None else None
        jobs = [self._job(r) for r in self._query("SELECT * FROM jobs ORDER BY seq DESC")]
        return [j for j in jobs if (wanted is None or j.status in wanted)
                and all(j.tags.get(k) == str(v) for k, v in (tags or {}).items())]

    def _job(self, row: sqlite3.Row) -> Job:
        return Job(name=row["name"], status=JobStatus(row["status"]), tags=json.loads(row["tags"]),
                   error=row["error"], created_at=datetime.fromisoformat(row["created_at"]),
                   url=str(self._job_dir(row["name"])))

    def _job_dir(self, name: str) -> Path:
        return self.root / "jobs" / name

    def cancel_job(self, name: str, *, timeout: float = 10.0) -> Job:
        """Cancel a queued or running job (a finished one is returned as it is)."""
        job = self.get_job(name)
        if job.status.completed:
            return job
        with self._cond:
            self._cancel.add(name)
            self._cond.notify_all()
            self._cond.wait_for(lambda: name not in self._busy, timeout=timeout)
        return self.get_job(name)

    def fail_next(self, reason: str) -> None:
        """The next submitted job fails without training, as when a low-priority node is preempted."""
        with self._cond:
            self._fail_next = reason

    def wait_for_jobs(self, timeout: float = 120) -> bool:
        """Block until no job is queued or running and its events are out; False when ``timeout`` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._busy, timeout=max(0.0, timeout))

    def get_run_metrics(self, job_name: str) -> dict[str, float]:
        job = self.get_job(job_name)
        path = self._job_dir(job_name) / "outputs" / "metrics.json"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise PermanentError(f"job {job_name} logged no metrics (status {job.status.value}"
                                 f"{': ' + job.error if job.error else ''})") from None
        except json.JSONDecodeError as error:
            raise PermanentError(f"job {job_name} wrote unreadable metrics: {error}") from None
        return {k: float(v) for k, v in raw.items() if isinstance(v, int | float) and not isinstance(v, bool)}

    # --- the job watcher -----------------------------------------------------------------------------

    def _watch(self) -> None:
        """Start queued jobs as slots free up, notice exits, timeouts and cancellations; emits from this thread."""
        while True:
            with self._cond:
                if self._closed:
                    return
                actions = self._plan()
                if not actions:
                    self._cond.wait(POLL_SECONDS)
                    continue
            for action in actions:
                action()

    def _plan(self) -> list[Callable[[], None]]:
        """Under _cond: what to do next, as closures run outside the lock (they write, emit, then settle)."""
        actions: list[Callable[[], None]] = []
        for name in [n for n in self._queue if n in self._cancel]:
            self._queue.remove(name)
            actions.append(lambda n=name: self._finish(n, JobStatus.CANCELED, "canceled while queued"))
        for name, run in list(self._running.items()):
            code = run.proc.poll()
            if name in self._cancel and code is None:
                run.proc.kill()
                run.proc.wait()
                actions.append(lambda n=name: self._finish(n, JobStatus.CANCELED, "canceled while running"))
            elif code is None and run.deadline is not None and time.monotonic() > run.deadline:
                run.proc.kill()
                run.proc.wait()
                actions.append(lambda n=name: self._finish(n, JobStatus.FAILED, "timeout: the job ran longer than "
                                                           "its max_run_seconds and was killed"))
            elif code is not None:
                actions.append(lambda n=name, c=code: self._exited(n, c))
            else:
                continue
            del self._running[name]
            run.log.close()
        while self._queue and len(self._running) < self.max_parallel:
            name = self._queue.popleft()
            if name in self._preempted:
                reason = self._preempted.pop(name)
                actions.append(lambda n=name, r=reason: self._preempt(n, r))
                continue
            try:
                self._running[name] = self._start(name)
            except OSError as error:
                actions.append(lambda n=name, e=error: self._finish(n, JobStatus.FAILED, f"could not start: {e}"))
                continue
            actions.append(lambda n=name: self._emit_status(n, JobStatus.RUNNING))
        return actions

    def _start(self, name: str) -> _Run:
        row = self._query("SELECT * FROM jobs WHERE name = ?", (name,))[0]
        out = self._job_dir(name) / "outputs"
        out.mkdir(parents=True, exist_ok=True)
        log = (self._job_dir(name) / "job.log").open("wb")
        command = json.loads(row["command"] or "[]") if "command" in row.keys() else []
        cmd = [self.python, *command] if command else [
            self.python, "-m", "shared.training.train", "--data", row["data_path"], "--output", str(out),
            *json.loads(row["train_args"] or "[]")]
        # Share the cores between parallel runs: two xgboost processes each spinning two OpenMP threads on two
        # cores took 11 s instead of 0.3 s for the same 400 rows (spin-waiting threads starve each other).
        threads = str(max(1, (os.cpu_count() or 1) // self.max_parallel))
        env = {**os.environ, "OMP_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
        try:
            proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env)
        except OSError:
            log.close()
            raise
        self._write("UPDATE jobs SET status = ?, started_at = ? WHERE name = ?",
                    (JobStatus.RUNNING.value, _now(), name))
        limit = row["max_run_seconds"]
        logger.info("started %s (pid %d)", name, proc.pid)
        return _Run(proc, log, time.monotonic() + limit if limit else None)

    def _exited(self, name: str, code: int) -> None:
        if code == 0:
            self._finish(name, JobStatus.COMPLETED, "")
            return
        log = self._job_dir(name) / "job.log"
        tail = log.read_text(errors="replace").strip().splitlines()[-ERROR_LINES:] if log.exists() else []
        self._finish(name, JobStatus.FAILED, "\n".join(tail) or f"the training process exited with {code}")

    def _preempt(self, name: str, reason: str) -> None:
        # A preempted node did start the run: Running first, then Failed, as Azure reports it.
        self._write("UPDATE jobs SET status = ?, started_at = ? WHERE name = ?", (JobStatus.RUNNING.value, _now(), name))
        self._emit_status(name, JobStatus.RUNNING)
        self._finish(name, JobStatus.FAILED, reason)

    def _emit_status(self, name: str, status: JobStatus, error: str = "") -> None:
        job = self.get_job(name)
        experiment = self._query("SELECT experiment FROM jobs WHERE name = ?", (name,))[0]["experiment"]
        props = {"error": error} if error else {}
        self._emit(wire.run_status_changed(name, status.value, experiment=experiment, tags=job.tags,
                                           properties=props))
        if status is JobStatus.COMPLETED:  # Azure raises RunCompleted for successful runs only
            self._emit(wire.run_completed(name, experiment=experiment, tags=job.tags))

    def _finish(self, name: str, status: JobStatus, error: str) -> None:
        """Write the terminal state, emit its events, then let waiters go: they see the events already out."""
        try:
            self._write("UPDATE jobs SET status = ?, error = ?, finished_at = ? WHERE name = ?",
                        (status.value, error, _now(), name))
            log = logger.info if status is JobStatus.COMPLETED else logger.warning
            log("job %s %s%s", name, status.value, f": {error.splitlines()[-1]}" if error else "")
            self._emit_status(name, status, error)
        finally:
            with self._cond:
                self._busy.discard(name)
                self._cancel.discard(name)
                self._cond.notify_all()

    # --- models --------------------------------------------------------------------------------------

    def register_model(self, spec: ModelSpec) -> Model:
        _safe(spec.name, "model name")
        if spec.version:
            check_model_version(spec.version)
        job = self.get_job(spec.job_name)  # NotFound for an unknown job
        with self._db_lock:
            # Idempotent by job: a redelivered completion finds the version its job already produced.
            mine = self._query("SELECT * FROM models WHERE name = ? AND job_name = ? ORDER BY seq", (spec.name, job.name))
            if mine:
                return self._model(mine[0])
            versions = [r["version"] for r in self._query("SELECT version FROM models WHERE name = ?", (spec.name,))]
            if spec.version and spec.version in versions:
                raise Conflict(f"model {spec.name}:{spec.version} exists and came from another job")
            spec = dataclasses.replace(spec, version=spec.version or next_model_version(versions))
            source = self._job_dir(job.name) / "outputs" / "model"
            if not (source / "MLmodel").exists():
                raise Conflict(f"job {job.name} has no model output (status {job.status.value})")
            target = self.root / "models" / spec.name / spec.version
            if target.exists():  # left by a copy that crashed before its row was written
                shutil.rmtree(target)
            shutil.copytree(source, target)
            tags = {**_tags(spec.tags), TAG_JOB: job.name}  # as the Azure adapter: the model names its job
            self._write("INSERT INTO models (name, version, job_name, tags, path, description, created_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)", (spec.name, spec.version, job.name, json.dumps(tags),
                                                          str(target), spec.description, _now()))
            model = self.get_model(spec.name, spec.version)
        logger.info("registered model %s:%s from %s", spec.name, spec.version, job.name)
        self._emit(wire.model_registered(spec.name, spec.version, tags))
        return model

    def get_model(self, name: str, version: str) -> Model:
        rows = self._query("SELECT * FROM models WHERE name = ? AND version = ?", (name, version))
        if not rows:
            raise NotFound(f"model {name}:{version} does not exist")
        return self._model(rows[0])

    def list_models(self, name: str) -> list[Model]:
        return [self._model(r) for r in self._query("SELECT * FROM models WHERE name = ? ORDER BY seq DESC", (name,))]

    def tag_model(self, name: str, version: str, tags: Mapping[str, str]) -> Model:
        with self._db_lock:
            model = self.get_model(name, version)
            self._write("UPDATE models SET tags = ? WHERE name = ? AND version = ?",
                        (json.dumps({**model.tags, **_tags(tags)}), name, version))
            return self.get_model(name, version)

    @staticmethod
    def _model(row: sqlite3.Row) -> Model:
        return Model(name=row["name"], version=row["version"], tags=json.loads(row["tags"]), path=row["path"],
                     created_at=datetime.fromisoformat(row["created_at"]))

    # --- endpoints -----------------------------------------------------------------------------------

    def create_deployment(self, endpoint: str, deployment: str, model: Model, tags: Mapping[str, str]) -> Endpoint:
        self.get_model(model.name, model.version)  # a deployment of a model that does not exist cannot serve
        created = False
        with self._db_lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if not self._query("SELECT 1 FROM endpoints WHERE name = ?", (endpoint,)):
                    self._write("INSERT INTO endpoints (name, tags, traffic, created_at) VALUES (?, '{}', '{}', ?)",
                                (endpoint, _now()))
                if not self._query("SELECT 1 FROM deployments WHERE endpoint = ? AND name = ?", (endpoint, deployment)):
                    self._write("INSERT INTO deployments (endpoint, name, model_name, model_version, tags, created_at) "
                                "VALUES (?, ?, ?, ?, ?, ?)", (endpoint, deployment, model.name, model.version,
                                                              json.dumps(_tags(tags)), _now()))
                    created = True
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        if created:
            # Only a real change is announced, as Azure raises ModelDeployed when a deployment is created.
            logger.info("deployed %s:%s as %s/%s at 0%%", model.name, model.version, endpoint, deployment)
            self._emit(wire.model_deployed(endpoint, f"{model.name}:{model.version}"))
        return self.get_endpoint(endpoint)

    def set_traffic(self, endpoint: str, traffic: Mapping[str, int], *, tags: Mapping[str, str] | None = None,
                    deployment_tags: Mapping[str, Mapping[str, str]] | None = None,
                    expect: Mapping[str, int] | None = None) -> Endpoint:
        with self._db_lock:
            rows = self._query("SELECT * FROM endpoints WHERE name = ?", (endpoint,))
            if not rows:
                raise NotFound(f"endpoint {endpoint} does not exist")
            live = {k: int(v) for k, v in json.loads(rows[0]["traffic"]).items() if int(v)}
            wanted = {k: int(v) for k, v in traffic.items() if int(v)}
            if expect is not None and live != wanted and live != {k: v for k, v in expect.items() if v}:
                raise TrafficChanged(f"traffic of {endpoint} is {live}, not the expected {dict(expect)}: changed "
                                     "outside the automation", actual=live)
            deployments = {r["name"]: r for r in self._query("SELECT * FROM deployments WHERE endpoint = ?",
                                                             (endpoint,))}
            unknown = sorted((set(traffic) | set(deployment_tags or {})) - set(deployments))
            if unknown:
                raise NotFound(f"endpoint {endpoint} has no deployment {', '.join(unknown)}")
            split = check_traffic(traffic)  # exactly as given; the rest serve 0
            merged = {**json.loads(rows[0]["tags"]), **_tags(tags)}
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._write("UPDATE endpoints SET traffic = ?, tags = ? WHERE name = ?",
                            (json.dumps(split), json.dumps(merged), endpoint))
                for name, extra in (deployment_tags or {}).items():
                    self._write("UPDATE deployments SET tags = ? WHERE endpoint = ? AND name = ?",
                                (json.dumps({**json.loads(deployments[name]["tags"]), **_tags(extra)}), endpoint, name))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        logger.info("traffic of %s is now %s", endpoint, {k: v for k, v in split.items() if v})
        return self.get_endpoint(endpoint)

    def delete_deployment(self, endpoint: str, deployment: str) -> bool:
        with self._db_lock:
            rows = self._query("SELECT traffic FROM endpoints WHERE name = ?", (endpoint,))
            if not rows or not self._query("SELECT 1 FROM deployments WHERE endpoint = ? AND name = ?",
                                           (endpoint, deployment)):
                return False
            if int(json.loads(rows[0]["traffic"]).get(deployment, 0)):
                raise Conflict(f"{endpoint}/{deployment} serves traffic: it is not deleted")
            self._write("DELETE FROM deployments WHERE endpoint = ? AND name = ?", (endpoint, deployment))
        logger.info("deleted deployment %s/%s", endpoint, deployment)
        return True

    def inject_errors(self, endpoint: str, deployment: str, share: float) -> None:
        """Make a share (0..1) of the deployment's scoring requests fail with 500: tests and the demo."""
        self._tag_deployment(endpoint, deployment, {ERROR_TAG: repr(float(share))})

    def _tag_deployment(self, endpoint: str, deployment: str, extra: Mapping[str, str]) -> None:
        with self._db_lock:
            row = self._query("SELECT tags FROM deployments WHERE endpoint = ? AND name = ?", (endpoint, deployment))
            if not row:
                raise NotFound(f"{endpoint}/{deployment} does not exist")
            self._write("UPDATE deployments SET tags = ? WHERE endpoint = ? AND name = ?",
                        (json.dumps({**json.loads(row[0]["tags"]), **extra}), endpoint, deployment))

    def fail_deployment(self, endpoint: str, deployment: str) -> None:
        """Mark a deployment Failed (what Azure shows when its container cannot start): for tests and the demo."""
        self._tag_deployment(endpoint, deployment, {STATE_TAG: "Failed"})

    def get_endpoint(self, name: str) -> Endpoint | None:
        with self._db_lock:
            rows = self._query("SELECT * FROM endpoints WHERE name = ?", (name,))
            if not rows:
                return None
            deps = self._query("SELECT * FROM deployments WHERE endpoint = ? ORDER BY seq", (name,))
        traffic = json.loads(rows[0]["traffic"])
        deployments = tuple(Deployment(name=d["name"], model_name=d["model_name"], model_version=d["model_version"],
                                       tags=json.loads(d["tags"]), created_at=datetime.fromisoformat(d["created_at"]),
                                       state=json.loads(d["tags"]).get(STATE_TAG, "Succeeded"))
                            for d in deps)
        return Endpoint(name=name, deployments=deployments,
                        traffic={k: int(v) for k, v in traffic.items()},
                        tags=json.loads(rows[0]["tags"]), scoring_uri=self.scoring_url(name))

    def list_endpoints(self) -> list[Endpoint]:
        names = [r["name"] for r in self._query("SELECT name FROM endpoints ORDER BY seq")]
        return [e for e in (self.get_endpoint(n) for n in names) if e is not None]

    # --- scoring ---------------------------------------------------------------------------------------

    def scoring_url(self, endpoint: str) -> str:
        """The endpoint's scoring URI on the local server, which starts on first use ("" for an observer: the
        serving process answers scoring requests, not the one reading)."""
        if self.readonly:
            return ""
        with self._server_lock:
            if self._server is None:
                if self._closed:
                    raise PermanentError("the workspace is closed")
                from shared.local.serving import ScoringServer

                self._server = ScoringServer(self)
        return f"{self._server.url}/score/{endpoint}"

    def record_request(self, *, endpoint: str, deployment: str | None, inputs: list, outputs: list,
                       latency_ms: float, status: int, error: str = "") -> None:
        """One scoring request in the request log (what Azure ML's data collector keeps)."""
        self._write("INSERT INTO requests (at, endpoint, deployment, inputs, outputs, latency_ms, status, error) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (_now(), endpoint, deployment, json.dumps(inputs), json.dumps(outputs), latency_ms, status,
                     error))

    # --- lifecycle -------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the watcher and the scoring server; running jobs are killed (the next instance reports them)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            running, self._running = self._running, {}
            queued = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
        for run in running.values():
            if run.proc.poll() is None:
                run.proc.kill()
            run.proc.wait()
            run.log.close()
            # Left Running on purpose: the next instance on this root fails it with its event (see _recover), so
            # the app retries it. Written here, the failure would reach nobody.
        with self._cond:
            # Queued jobs stay Queued in the database: the next instance on this root runs them.
            self._busy.clear()
            self._cond.notify_all()
        with self._server_lock:
            server, self._server = self._server, None
        if server is not None:
            server.close()
        with self._db_lock:
            self._db.close()
        logger.debug("closed workspace at %s (%d running jobs killed, %d left queued)", self.root, len(running),
                     len(queued))

    def __enter__(self) -> LocalWorkspace:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

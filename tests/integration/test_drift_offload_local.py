"""A drift window over MLOPS_DRIFT_OFFLOAD_MB on the local backend: the monitor submits it as a drift job, the
embedded workspace runs shared/drift/job.py as a real process, and the job's RunCompleted, handled by the bus like
any run's, publishes exactly one DriftDetected for the drifted window and none for the steady one."""
from __future__ import annotations

import json
import threading
from datetime import datetime, timezone

from shared import bootstrap, eventgrid
from shared.config import DriftSettings, Settings
from shared.domain import ModelSpec
from shared.drift import offload
from shared.drift.job import FolderContainer
from shared.drift.monitor import DriftMonitor
from shared.local.churn import feature_rows, generate
from shared.rollout import EndpointState
from shared.training.baseline_profile import build_profile
from tests.helpers import Recording, finished_job

NOW = datetime(2026, 12, 2, 12, 15, tzinfo=timezone.utc)  # the due window is [11:00, 12:00)
NUMERIC = ("tenure_months", "monthly_charges", "total_charges", "support_calls", "senior_citizen")
CATEGORICAL = ("contract", "payment_method", "internet_service", "paperless_billing")


class Events:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: list[dict] = []

    def __call__(self, event: dict) -> None:
        with self._lock:
            self.items.append(event)

    def take(self) -> list[dict]:
        with self._lock:
            out, self.items = self.items, []
        return out


class Published:
    """The Publisher port, keeping what it was given."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def publish(self, event_type: str, subject: str, data, *, event_id: str | None = None) -> str:
        self.events.append((event_type, subject, data, event_id))
        return event_id or ""


def _collected(root, endpoint: str, rows: list[dict]) -> None:
    folder = root / "datastore" / "workspaceblobstore" / "modelDataCollector" / endpoint / "blue" / "model_inputs"
    folder = folder / "2026" / "12" / "02" / "11"
    folder.mkdir(parents=True)
    with open(folder / "instance-1.jsonl", "w") as f:
        for i in range(0, len(rows), 50):
            f.write(json.dumps({"time": "2026-12-02T11:30:00Z", "correlationid": f"c{i}",
                                "data": rows[i:i + 50]}) + "\n")


def _model(ws) -> None:
    job = finished_job(ws, "train-churn-1")
    train = generate(3000, seed=1)
    profile = build_profile({n: [r[n] for r in train] for n in NUMERIC}, {n: [r[n] for r in train] for n in CATEGORICAL},
                            rows=len(train))
    (ws.root / "jobs" / job / "outputs" / "model" / "baseline.json").write_text(json.dumps(profile))
    model = ws.register_model(ModelSpec(name="churn-model", version="1", job_name=job, tags={}))
    for endpoint in ("ep-drifted", "ep-steady"):
        ws.create_deployment(endpoint, "blue", model, {"mlops_owner": "mlops-automation"})


def test_a_window_over_the_line_becomes_a_local_job_whose_completion_publishes_once(tmp_path):
    events = Events()
    settings = Settings(backend="local", home=tmp_path / "home", drift=DriftSettings(offload_mb=1))
    rt = bootstrap.build(settings, emit=events, notifier=Recording())
    try:
        ws = rt.workspace
        _model(ws)
        for endpoint in ("ep-drifted", "ep-steady"):
            rt.states.save(EndpointState(endpoint=endpoint, stable="blue", stable_model="churn-model:1",
                                         traffic={"blue": 100}))
        _collected(ws.root, "ep-drifted", feature_rows(5000, seed=7, drift=1.0))
        _collected(ws.root, "ep-steady", feature_rows(5000, seed=8))
        container = FolderContainer(ws.root / "datastore" / "workspaceblobstore")
        monitor = DriftMonitor(states=rt.states, workspace=ws, ledger=rt.ledger, publisher=ws, container=container,
                               settings=settings, clock=lambda: NOW)
        checks = monitor.tick()
        assert sorted((c.endpoint, c.outcome) for c in checks) == [("ep-drifted", "offloaded"),
                                                                  ("ep-steady", "offloaded")]
        # A second tick (or a second worker) submits nothing more: the window's claim is settled.
        assert {c.outcome for c in monitor.tick()} == {"skipped"}
        drift_jobs = [j for j in ws.list_jobs() if offload.is_drift_job(j)]
        assert len(drift_jobs) == 2
        assert all(j.name == offload.job_name(j.tags[offload.TAG_DRIFT_CHECK]) for j in drift_jobs)
        assert ws.wait_for_jobs(timeout=120)
        for job in drift_jobs:
            assert ws.get_job(job.name).status.value == "Completed", ws.get_job(job.name).error
        # The run events the workspace raised go through the bus, as Event Grid delivers them (both kinds, so
        # each completion arrives twice: RunStatusChanged and RunCompleted).
        for event in events.take():
            message = eventgrid.to_message(event)
            if message is not None:
                rt.bus.handle(message)
        published = [e for e in events.take() if e["eventType"] == "MLOps.DriftDetected"]
        assert len(published) == 1
        [event] = published
        assert event["subject"] == "endpoints/ep-drifted/deployments/blue"
        data = event["data"]
        assert data["rows"] == 5000 and data["model"] == "churn-model:1" and data["top"]
        assert data["window"] == {"start": "2026-12-02T11:00:00+00:00", "end": "2026-12-02T12:00:00+00:00",
                                  "minutes": 60}
        from shared.drift.monitor import claim_key, event_id_for

        assert event["id"] == event_id_for(claim_key("ep-drifted", "blue", datetime(2026, 12, 2, 11, tzinfo=timezone.utc)))
        steady = next(j for j in drift_jobs if j.tags[offload.TAG_ENDPOINT] == "ep-steady")
        stats = json.loads(container.download_blob(offload.statistics_blob(steady.name)).readall())
        assert stats["drifted"] is False and stats["rows"] == 5000
    finally:
        rt.close()


def test_below_the_line_the_window_is_still_checked_in_the_function(tmp_path):
    settings = Settings(backend="local", home=tmp_path / "home", drift=DriftSettings(offload_mb=64))
    rt = bootstrap.build(settings, emit=Events(), notifier=Recording())
    try:
        ws = rt.workspace
        _model(ws)
        rt.states.save(EndpointState(endpoint="ep-drifted", stable="blue", traffic={"blue": 100}))
        _collected(ws.root, "ep-drifted", feature_rows(5000, seed=7, drift=1.0))
        publisher = Published()
        monitor = DriftMonitor(states=rt.states, workspace=ws, ledger=rt.ledger, publisher=publisher,
                               container=FolderContainer(ws.root / "datastore" / "workspaceblobstore"),
                               settings=settings, clock=lambda: NOW)
        [check] = monitor.tick()
        assert check.outcome == "drift" and check.rows == 5000
        assert [e[0] for e in publisher.events] == ["MLOps.DriftDetected"]
        assert not [j for j in ws.list_jobs() if offload.is_drift_job(j)]
    finally:
        rt.close()

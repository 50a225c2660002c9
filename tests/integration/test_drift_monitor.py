"""The Azure drift monitor end to end, offline: collector-shaped JSONL and the model's baseline.json in Azurite Blob
(read with a bearer token, as the app's managed identity would), the endpoint and model through the real MLClient
against the fake Azure ML service, state records and the ledger on SQLite, and MLOps.DriftDetected through the real
Event Grid client with a canned transport."""
from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from shared import eventgrid
from shared.adapters.azureml import build_workspace
from shared.config import Settings
from shared.domain import ModelSpec
from shared.drift import monitor as drift_monitor
from shared.drift.monitor import DriftMonitor, claim_key, container_for, due_window, event_id_for
from shared.local.ledger import SqliteLedger
from shared.local.state import SqliteStateStore
from shared.messages import DriftDetected
from shared.rollout import EndpointState
from shared.training.baseline_profile import build_profile
from tests.fakes.azureml_service import FakeCredential as ArmCredential
from tests.integration.azurite import (
    STORAGE_SCOPE,
    StaticTokenCredential,
    start_azurite,
    unsigned_storage_token,
)
from tests.integration.test_collector_blob import _record
from tests.integration.test_eventgrid_publisher import publisher

pytestmark = pytest.mark.filterwarnings("ignore::marshmallow.warnings.RemovedInMarshmallow4Warning")

EP, DEP, JOB = "churn-endpoint", "v2-1", "train-churn-v1-a1"
EVENTGRID_SCOPE = "https://eventgrid.azure.net/.default"
NOW = datetime(2026, 12, 2, 14, 12, tzinfo=timezone.utc)  # the due hourly window is 13:00-14:00
START, END = datetime(2026, 12, 2, 13, 0, tzinfo=timezone.utc), datetime(2026, 12, 2, 14, 0, tzinfo=timezone.utc)


@pytest.fixture
def azurite(blob_azurite_oauth):
    """This module's Azurite serves blobs (the session's, with bearer tokens)."""
    return blob_azurite_oauth


def _rows(rng, n, shift=0.0):
    return [{"tenure": float(t), "plan": str(p)} for t, p in
            zip(rng.normal(24 + shift, 6, n), rng.choice(["monthly", "one-year", "two-year"], n), strict=True)]


class World:
    """Everything one monitor runs against; ``seen`` are the blob requests, ``transport`` the Event Grid ones."""

    def __init__(self, azurite, fake, tmp_path, *, window_rows: int, shift: float, replies=()):
        rng = np.random.default_rng(7)
        self.token = StaticTokenCredential(*unsigned_storage_token())
        name = "azureml-blobstore-" + uuid.uuid4().hex[:12]
        azurite.blob_service(self.token).create_container(name)
        self.seen: list = []
        url = f"{azurite.endpoint}/{name}"
        self.container = container_for(url, self.token, raw_request_hook=lambda r: self.seen.append(r.http_request),
                                       **azurite.client_options)
        base = _rows(rng, 3000)
        profile = build_profile({"tenure": [r["tenure"] for r in base]}, {"plan": [r["plan"] for r in base]},
                                rows=3000, prediction=rng.beta(2, 5, 3000))
        self.container.upload_blob(f"azureml/{JOB}/model/baseline.json", json.dumps(profile))
        rows, scores = _rows(rng, window_rows, shift), list(rng.beta(2, 5, window_rows))
        for i in range(0, window_rows, 50):
            at = START + timedelta(minutes=55 * i / max(window_rows, 1))
            for kind, data in (("model_inputs", rows[i:i + 50]),
                               ("model_outputs", [{"churn_probability": s} for s in scores[i:i + 50]])):
                self.container.upload_blob(f"modelDataCollector/{EP}/{DEP}/{kind}/{at:%Y/%m/%d/%H}/{i}.jsonl",
                                           _record(kind, at, data) + "\n")
        # the model behind the deployment, registered and deployed through the real MLClient
        settings = Settings(backend="azure", subscription_id=fake.subscription_id,
                            resource_group=fake.resource_group, workspace=fake.workspace, datastore="landing")
        ws = build_workspace(settings, ArmCredential(), transport=fake)
        ws.register_data("churn", "1", "https://mlopsdata.blob.core.windows.net/landing/churn/1/churn.csv")
        from shared.domain import TrainingJobSpec
        ws.submit_training(TrainingJobSpec(name=JOB, asset="churn", data_version="1", attempt=1, tags={},
                                           compute="cpu-cluster", max_run_seconds=300, experiment="mlops"))
        fake.finish_job(JOB, metrics={"auc": 0.81, "logloss": 0.45})
        model = ws.register_model(ModelSpec(name="churn-model", version="1", job_name=JOB, tags={}))
        ws.create_deployment(EP, DEP, model, {"mlops_owner": "mlops-automation"})
        self.workspace = ws
        self.seen.clear()  # the uploads above were the setup's
        self.states = SqliteStateStore(tmp_path / "ledger.db")
        self.states.save(EndpointState(endpoint=EP, stable=DEP, stable_model="churn-model:1", traffic={DEP: 100}))
        self.ledger = SqliteLedger(tmp_path / "ledger.db")
        self.publisher, self.transport, self.eg_credential, _ = publisher(*replies)
        self.settings = Settings(backend="azure").with_policy()
        self.settings = replace(self.settings, drift=replace(self.settings.drift, container_url=url))
        self.monitor = DriftMonitor(states=self.states, workspace=ws, ledger=self.ledger, publisher=self.publisher,
                                    container=self.container, settings=self.settings, clock=lambda: NOW)

    def close(self):
        self.workspace.close()
        self.container.close()


@pytest.fixture
def world(azurite, fake, tmp_path):
    made: list[World] = []

    def make(**kw):
        made.append(World(azurite, fake, tmp_path, **kw))
        return made[-1]

    yield make
    for w in made:
        w.close()


def test_the_due_window_is_the_last_complete_one_after_the_settle_delay():
    assert due_window(NOW, 60) == (START, END)
    assert due_window(datetime(2026, 12, 2, 14, 9, tzinfo=timezone.utc), 60) == (START - timedelta(hours=1), START)
    assert due_window(datetime(2026, 12, 3, 0, 5, tzinfo=timezone.utc), 1440) == (
        datetime(2026, 12, 1, tzinfo=timezone.utc), datetime(2026, 12, 2, tzinfo=timezone.utc))
    assert due_window(NOW, 15) == (datetime(2026, 12, 2, 13, 45, tzinfo=timezone.utc), datetime(2026, 12, 2, 14, 0,
                                                                                              tzinfo=timezone.utc))


def test_a_drifted_window_publishes_exactly_one_drift_detected_and_a_second_tick_nothing(world):
    w = world(window_rows=600, shift=10.0)
    [check] = w.monitor.tick()

    assert check.outcome == "drift" and check.rows == 600 and (check.start, check.end) == (START, END)
    [request] = w.transport.requests
    [event] = request["body"]
    assert event["eventType"] == "MLOps.DriftDetected" and event["subject"] == f"endpoints/{EP}/deployments/{DEP}"
    assert event["id"] == event_id_for(claim_key(EP, DEP, START)) == check.event_id
    data = event["data"]
    assert data["top"][0]["feature"] == "tenure" and data["top"][0]["status"] == "drift"
    assert data["results"]["plan"]["status"] == "no_drift" and set(data["results"]) == {"tenure", "plan",
                                                                                        "prediction"}
    assert data["window"] == {"start": START.isoformat(), "end": END.isoformat(), "minutes": 60}
    assert data["rows"] == 600 and data["model"] == "churn-model:1" and not data["truncated"]
    # it is what the policy path reads: a DriftDetected for this endpoint and deployment, with the fired statistic
    message = eventgrid.to_message(event)
    assert isinstance(message, DriftDetected) and (message.endpoint, message.deployment) == (EP, DEP)
    assert message.rule == drift_monitor.MONITOR and message.metric == data["top"][0]["signal"]["metric"]
    assert message.value > message.threshold
    # and what the drift card shows: the top feature's baseline against this window, the window and its rows
    assert data["chart"]["feature"] == "tenure" and len(data["chart"]["bins"]) == 10
    assert message.details["chart"] == data["chart"] and message.details["window"]["minutes"] == 60
    assert message.details["top"][0] == {"feature": "tenure", "metric": data["top"][0]["signal"]["metric"],
                                         "value": data["top"][0]["signal"]["value"],
                                         "threshold": message.threshold, "rows": 600,
                                         "baseline_rows": 3000}
    # token audiences: storage for the blobs, Event Grid for the topic; every blob request a bearer over https
    assert w.token.scopes and set(w.token.scopes) == {(STORAGE_SCOPE,)}
    assert w.eg_credential.scopes == [(EVENTGRID_SCOPE,)]
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert headers["authorization"] == "Bearer fake-entra-token"
    assert w.seen and all(r.headers["Authorization"].startswith("Bearer ") and r.url.startswith("https://")
                          for r in w.seen)
    # request shapes: the baseline blob of the deployed model, one listing per collection's hour folder, no writes
    gets = [r.url.split("?")[0] for r in w.seen if r.method == "GET" and "comp=list" not in r.url]
    assert any(u.endswith(f"/azureml/{JOB}/model/baseline.json") for u in gets)
    listings = [r.url for r in w.seen if "comp=list" in r.url]
    # inputs listed once for the offload decision (sizes only), then inputs and outputs to read the window
    assert len(listings) == 3 and "model_inputs" in listings[0] and all("prefix=modelDataCollector%2Fchurn-endpoint%2Fv2-1%2Fmodel_" in u
                                      for u in listings)
    assert {r.method for r in w.seen} == {"GET"}

    w.seen.clear()
    [again] = w.monitor.tick()
    assert again.outcome == "skipped" and len(w.transport.requests) == 1 and w.seen == []


def test_an_undrifted_window_publishes_nothing(world):
    w = world(window_rows=600, shift=0.0)
    [check] = w.monitor.tick()
    assert check.outcome == "no_drift" and check.rows == 600
    assert w.transport.requests == []
    assert w.ledger.claim(claim_key(EP, DEP, START), event_type="DriftCheck") == "ignored"


def test_too_few_rows_are_inconclusive_never_drift(world):
    w = world(window_rows=60, shift=25.0)  # a huge shift, but 60 rows < the minimum sample of 100
    [check] = w.monitor.tick()
    assert check.outcome == "inconclusive" and check.rows == 60 and w.transport.requests == []


def test_a_publish_that_fails_releases_the_window_and_the_next_tick_sends_the_same_event(world):
    unavailable = (503, {}, json.dumps({"error": {"code": "ServiceUnavailable", "message": "busy"}}).encode())
    w = world(window_rows=600, shift=10.0, replies=(unavailable, unavailable, unavailable))
    [first] = w.monitor.tick()
    assert first.outcome == "retry" and len(w.transport.requests) == 3
    [second] = w.monitor.tick()
    assert second.outcome == "drift" and len(w.transport.requests) == 4
    ids = {r["body"][0]["id"] for r in w.transport.requests}
    assert ids == {event_id_for(claim_key(EP, DEP, START))}, "a retried check repeats its event, never a new one"
    [third] = w.monitor.tick()
    assert third.outcome == "skipped" and len(w.transport.requests) == 4


def test_a_model_without_a_baseline_fails_the_window_for_good_and_publishes_nothing(world):
    w = world(window_rows=600, shift=10.0)
    w.container.delete_blob(f"azureml/{JOB}/model/baseline.json")
    [check] = w.monitor.tick()
    assert check.outcome == "failed" and "baseline.json" in check.reason and w.transport.requests == []
    assert w.monitor.tick()[0].outcome == "skipped"


def test_a_check_that_spends_the_deadline_still_releases_its_window_on_table_storage(world, tmp_path):
    """The window's claim is settled even when the check used the whole deadline (the timer's 540 s in Azure):
    left held, the window would wait out its lease before any tick could check it again."""
    import time

    from shared import retry
    from shared.adapters.tables import TableLedger
    from shared.errors import TransientError

    (tmp_path / "tables").mkdir()
    tables = start_azurite(tmp_path / "tables")  # this module's own Azurite serves blobs only
    w = world(window_rows=600, shift=10.0)
    w.monitor.ledger = TableLedger(tables.fresh_table())
    real = w.publisher.publish

    def slow_then_refused(*args, **kwargs):
        time.sleep(retry.remaining() + 0.05)
        raise TransientError("the topic did not answer before the deadline")

    w.publisher.publish = slow_then_refused
    with retry.deadline(0.5):
        [first] = w.monitor.tick()
    assert first.outcome == "retry"
    w.publisher.publish = real
    [second] = w.monitor.tick()  # the next tick: the window is free again, not held by the spent one
    try:
        assert second.outcome == "drift" and len(w.transport.requests) == 1
    finally:
        tables.stop()


@pytest.mark.parametrize("shift, events", [(10.0, 1), (0.0, 0)])
def test_a_window_over_the_offload_line_runs_as_a_job_and_its_completion_publishes_once(world, fake, tmp_path,
                                                                                       shift, events):
    """Azurite's listing decides (no row downloaded), the command job goes through the real MLClient, the command
    Azure ML would run is run here as a process, and its RunCompleted, handled twice, publishes once or never."""
    import shlex
    import subprocess
    import sys
    from pathlib import Path

    from shared.drift import offload
    from shared.handlers import run_finished
    from shared.local.ledger import SqliteAuditLog
    from shared.messages import RunFinished
    from tests.helpers import Recording

    w = world(window_rows=600, shift=shift)
    w.monitor.settings = replace(w.settings, drift=replace(w.settings.drift, offload_mb=0))  # every window is over
    [check] = w.monitor.tick()
    name = offload.job_name(claim_key(EP, DEP, START))
    assert check.outcome == "offloaded" and check.reason == f"offloaded to job {name}"
    assert w.transport.requests == []
    # decided from the listing: the inputs' hour folder listed, the baseline read, not one collected blob downloaded
    assert [r.url for r in w.seen if "comp=list" in r.url and "model_inputs" in r.url]
    assert not [r for r in w.seen if r.method == "GET" and ".jsonl" in r.url.split("?")[0]]
    [put] = fake.find("PUT", f"/jobs/{name}")
    command = put.json["properties"]["command"]
    [again] = w.monitor.tick()
    assert again.outcome == "skipped" and len(fake.find("PUT", "/jobs/drift-")) == 1

    # What Azure ML would do: mount the inputs, run the command, keep the output at its default path.
    mount = tmp_path / "collected"
    for blob in w.container.list_blobs(name_starts_with=f"modelDataCollector/{EP}/{DEP}/"):
        target = mount / blob.name.removeprefix(f"modelDataCollector/{EP}/{DEP}/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(w.container.download_blob(blob.name).readall())
    baseline = tmp_path / "baseline.json"
    baseline.write_bytes(w.container.download_blob(f"azureml/{JOB}/model/baseline.json").readall())
    out = tmp_path / "out"
    values = {"${{inputs.collected}}": str(mount), "${{inputs.baseline}}": str(baseline),
              "${{outputs.statistics}}": str(out)}
    argv = [values.get(a, a) for a in shlex.split(command)]
    assert argv[:3] == ["python", "-m", "shared.drift.job"]
    done = subprocess.run([sys.executable, *argv[1:]], cwd=Path(__file__).resolve().parents[2], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    w.container.upload_blob(offload.statistics_blob(name), (out / "statistics.json").read_bytes())
    fake.finish_job(name)

    deps = dict(workspace=w.workspace, metrics=w.workspace, ledger=w.ledger, audit=SqliteAuditLog(tmp_path / "a.db"),
                notifier=Recording(), settings=w.settings, clock=lambda: NOW, states=w.states,
                publisher=w.publisher, drift_container=w.container)
    for event_id in ("status-changed", "run-completed"):
        run_finished(RunFinished(event_id=event_id, job_name=name, status="Completed"), **deps)
    assert len(w.transport.requests) == events
    if events:
        [[event]] = [r["body"] for r in w.transport.requests]
        assert event["eventType"] == "MLOps.DriftDetected" and event["id"] == event_id_for(claim_key(EP, DEP, START))
        assert event["data"]["rows"] == 600 and event["data"]["top"][0]["feature"] == "tenure"
        assert event["data"]["model"] == "churn-model:1"

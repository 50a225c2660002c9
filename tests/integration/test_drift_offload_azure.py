"""The drift job on Azure: what the adapter sends to Azure ML for a window over the line (the real MLClient against
the fake Azure ML service), that a second submission only reads, and that the job's completion, through
handlers.run_finished, publishes the window's DriftDetected from the job's statistics output."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from shared.adapters.azureml import build_workspace
from shared.bootstrap import utcnow
from shared.config import Settings
from shared.domain import Model
from shared.drift import offload
from shared.drift.engine import Thresholds
from shared.drift.job import FolderContainer, statistics
from shared.drift.monitor import claim_key, event_id_for
from shared.handlers import run_finished
from shared.local.churn import feature_rows, generate
from shared.messages import RunFinished
from tests.fakes.azureml_service import FakeCredential
from tests.helpers import Recording
from tests.integration.test_drift_offload_local import CATEGORICAL, NUMERIC, Published, _collected

pytestmark = pytest.mark.filterwarnings("ignore::marshmallow.warnings.RemovedInMarshmallow4Warning")

START, END = datetime(2026, 12, 2, 11, tzinfo=timezone.utc), datetime(2026, 12, 2, 12, tzinfo=timezone.utc)
KEY = claim_key("churn-ep", "blue", START)
MODEL = Model(name="churn-model", version="3", tags={"mlops_job": "train-churn-v3-a1"},
              path="azureml://jobs/train-churn-v3-a1/outputs/model")


@pytest.fixture
def settings(fake) -> Settings:
    return Settings(backend="azure", subscription_id=fake.subscription_id, resource_group=fake.resource_group,
                    workspace=fake.workspace, datastore="landing", compute="cpu-cluster")


@pytest.fixture
def ws(fake, settings):
    workspace = build_workspace(settings, FakeCredential(), transport=fake)
    yield workspace
    workspace.close()


def _spec():
    return offload.job_spec(KEY, "churn-ep", "blue", START, END, MODEL, "azureml/train-churn-v3-a1/model/baseline.json",
                            thresholds=Thresholds(), max_rows=2**62)


def test_a_window_over_the_line_is_sent_as_a_command_job_running_the_drift_module(ws, fake):
    job = ws.submit_command(_spec())
    name = offload.job_name(KEY)
    assert job.name == name and name.startswith("drift-churn-ep-blue-20261202t1100z-")
    [put] = fake.find("PUT", "/jobs/")
    assert put.path == f"{fake.ws_path}/jobs/{name}"
    props = put.json["properties"]
    assert props["jobType"] == "Command" and props["experimentName"] == "mlops-drift"
    assert props["command"].startswith("python -m shared.drift.job --collected ${{inputs.collected}} "
                                       "--baseline ${{inputs.baseline}} --endpoint churn-ep --deployment blue "
                                       "--start 2026-12-02T11:00:00+00:00 --end 2026-12-02T12:00:00+00:00 "
                                       "--thresholds '{")
    assert props["command"].endswith("--output ${{outputs.statistics}}")
    assert props["inputs"] == {
        "collected": {"jobInputType": "uri_folder",
                      "uri": "azureml://datastores/workspaceblobstore/paths/modelDataCollector/churn-ep/blue/"},
        "baseline": {"jobInputType": "uri_file",
                     "uri": "azureml://datastores/workspaceblobstore/paths/azureml/train-churn-v3-a1/model/"
                            "baseline.json"}}
    assert props["outputs"] == {"statistics": {"jobOutputType": "uri_folder"}}
    assert props["computeId"] == f"{fake.ws_path}/computes/cpu-cluster"
    assert props["tags"][offload.TAG_DRIFT_CHECK] == KEY and props["tags"]["mlops_owner"] == "mlops-automation"
    assert props["limits"] == {"jobLimitsType": "Command", "timeout": "PT1H"}
    # The code is the shared package (the job imports shared.drift and shared.training), uploaded like train.py.
    blob_puts = [r for r in fake.find("PUT", host="127.0.0.1") if r.query.get("comp") != "metadata"]
    uploaded = {r.path.split("/shared/", 1)[-1] for r in blob_puts if "/shared/" in r.path}
    assert {"drift/job.py", "drift/engine.py", "drift/collector.py", "training/baseline_profile.py"} <= uploaded
    assert not any("__pycache__" in r.path for r in blob_puts)


def test_a_second_tick_submitting_the_same_window_only_reads_the_job(ws, fake):
    first = ws.submit_command(_spec())
    fake.requests.clear()
    again = ws.submit_command(_spec())
    assert again.name == first.name
    assert [(r.method, r.path.removeprefix(fake.ws_path)) for r in fake.requests] == [("GET", f"/jobs/{first.name}")]


@pytest.mark.parametrize("drift, published", [(1.0, 1), (0.0, 0)])
def test_the_completion_publishes_the_window_drift_from_the_job_output(ws, fake, settings, tmp_path, drift, published):
    """The job's statistics as shared/drift/job.py computes them, at Azure ML's default output path."""
    from shared.training.baseline_profile import build_profile

    job = ws.submit_command(_spec())
    train = generate(3000, seed=1)
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(build_profile({n: [r[n] for r in train] for n in NUMERIC},
                                                 {n: [r[n] for r in train] for n in CATEGORICAL}, rows=len(train))))
    _collected(tmp_path, "churn-ep", feature_rows(3000, seed=5, drift=drift))
    store = tmp_path / "datastore" / "workspaceblobstore"
    stats = statistics(collected=store / "modelDataCollector" / "churn-ep" / "blue", baseline=baseline,
                       endpoint="churn-ep", deployment="blue", start=START, end=END,
                       thresholds={}, max_rows=10**9)
    out = store / offload.statistics_blob(job.name)
    out.parent.mkdir(parents=True)
    out.write_text(json.dumps(stats))
    fake.finish_job(job.name)
    from shared.local.ledger import SqliteAuditLog, SqliteLedger
    from shared.local.state import SqliteStateStore

    publisher = Published()
    deps = dict(workspace=ws, metrics=ws, ledger=SqliteLedger(tmp_path / "l.db"), audit=SqliteAuditLog(tmp_path / "l.db"),
                notifier=Recording(), settings=settings, clock=utcnow, states=SqliteStateStore(tmp_path / "l.db"),
                publisher=publisher, drift_container=FolderContainer(store))
    for kind in ("Completed", "Completed"):  # RunStatusChanged and RunCompleted both announce it
        run_finished(RunFinished(event_id=f"e-{kind}", job_name=job.name, status=kind), **deps)
    assert len(publisher.events) == published
    if published:
        [(event_type, subject, data, event_id)] = publisher.events
        assert event_type == "MLOps.DriftDetected" and subject == "endpoints/churn-ep/deployments/blue"
        assert event_id == event_id_for(KEY) and data["model"] == "churn-model:3" and data["rows"] == 3000

"""The embedded workspace for real: training subprocesses, Event Grid events, scoring over HTTP, the request log."""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from shared import eventgrid
from shared.domain import JobStatus, ModelSpec, TrainingJobSpec
from shared.errors import Conflict, InvalidPayload, NotFound, PermanentError
from shared.local import wire
from shared.local.churn import feature_rows, write_csv
from shared.local.serving import score
from shared.local.workspace import LocalWorkspace
from shared.messages import DataRegistered, ModelDeployed, ModelRegistered, RunFinished

logger = logging.getLogger(__name__)
ML = "Microsoft.MachineLearningServices."


class Events:
    """A thread-safe emit target: the workspace calls it from its watcher thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: list[dict] = []

    def __call__(self, event: dict) -> None:
        with self._lock:
            self.items.append(event)

    def of(self, run_id: str | None = None) -> list[dict]:
        with self._lock:
            return [e for e in self.items if run_id is None or e["data"].get("runId") == run_id]

    def kinds(self, run_id: str | None = None) -> list[str]:
        out = []
        for e in self.of(run_id):
            kind = e["eventType"].rsplit(".", 1)[-1]
            out.append(f"{kind}:{e['data']['runStatus']}" if "runStatus" in e["data"] else kind)
        return out


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def ws(tmp_path, events):
    workspace = LocalWorkspace(tmp_path / "workspace", emit=events)
    yield workspace
    workspace.close()


def spec(name: str, asset: str = "churn", version: str = "1", *, max_run_seconds: int = 300,
         **tags: str) -> TrainingJobSpec:
    return TrainingJobSpec(name=name, asset=asset, data_version=version, attempt=1, max_run_seconds=max_run_seconds,
                           tags={"mlops_owner": "mlops-automation", "mlops_data_asset": asset, **tags},
                           experiment="churn-exp")


def script(path: Path, body: str) -> str:
    """A stand-in for the Python interpreter the workspace launches: a real executable, so the process is real."""
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def landed(ws: LocalWorkspace, tmp_path: Path, version: str = "1", rows: int = 600, seed: int = 7) -> str:
    source = write_csv(tmp_path / "gen" / f"v{version}.csv", rows=rows, seed=seed)
    event = ws.land("landing", f"churn/{version}/data.csv", source)
    ws.register_data("churn", version, event["data"]["url"])
    return event["data"]["url"]


def trained_model(ws: LocalWorkspace, tmp_path: Path, name: str = "churn-model", version: str = "1"):
    landed(ws, tmp_path)
    ws.submit_training(spec("train-churn-v1-a1"))
    assert ws.wait_for_jobs(60)
    job = ws.get_job("train-churn-v1-a1")
    assert job.status is JobStatus.COMPLETED, job.error
    return ws.register_model(ModelSpec(name=name, version=version, job_name=job.name, tags={"metric_auc": 0.8}))


def logged_requests(ws: LocalWorkspace) -> list[sqlite3.Row]:
    db = sqlite3.connect(ws.root / "workspace.db")  # a second reader, as the monitor reads it
    db.row_factory = sqlite3.Row
    try:
        return db.execute("SELECT * FROM requests ORDER BY id").fetchall()
    finally:
        db.close()


# --- a whole run, end to end ---------------------------------------------------------------------------

def test_a_landed_file_trains_registers_deploys_and_serves_a_ninety_ten_split_exactly(ws, events, tmp_path):
    url = landed(ws, tmp_path, rows=800)
    started = time.perf_counter()
    job = ws.submit_training(spec("train-churn-v1-a1", mlops_attempt="1"))
    assert job.status in (JobStatus.QUEUED, JobStatus.RUNNING)
    assert ws.wait_for_jobs(60)
    wall = time.perf_counter() - started
    done = ws.get_job(job.name)
    assert done.status is JobStatus.COMPLETED and done.error == ""
    assert (Path(done.url) / "job.log").exists()

    # Event Grid events in Azure's order and shape, readable by the real parser.
    assert events.kinds() == ["BlobCreated", "RunStatusChanged:Running", "RunStatusChanged:Completed",
                              "RunCompleted"]
    run_events = events.of(job.name)
    for e in run_events:
        assert e["topic"] == wire.ML_TOPIC and e["subject"].endswith(f"/runs/{job.name}")
        assert e["data"]["runTags"] == job.tags and e["data"]["experimentName"] == "churn-exp"
    parsed = [eventgrid.to_message(e) for e in run_events]
    assert [(type(m), m.job_name, m.status) for m in parsed] == [
        (RunFinished, job.name, "Running"), (RunFinished, job.name, "Completed"), (RunFinished, job.name, "Completed")]
    blob = eventgrid.to_message(events.of()[0])
    assert isinstance(blob, DataRegistered) and (blob.asset, blob.version, blob.path) == ("churn", "1", url)

    metrics = ws.get_run_metrics(job.name)
    assert 0.6 < metrics["auc"] <= 1.0 and metrics["logloss"] > 0

    model = ws.register_model(ModelSpec(name="churn-model", version="1", job_name=job.name,
                                        tags={"metric_auc": round(metrics["auc"], 4), "mlops_job": job.name}))
    assert (Path(model.path) / "MLmodel").exists() and model.tags["metric_auc"] == str(round(metrics["auc"], 4))
    registered = eventgrid.to_message(events.of()[-1])
    assert isinstance(registered, ModelRegistered) and registered.tags == model.tags

    ws.create_deployment("churn-endpoint", "blue", model, {"mlops_owner": "mlops-automation"})
    ws.create_deployment("churn-endpoint", "green", model, {"mlops_owner": "mlops-automation"})
    ws.create_deployment("churn-endpoint", "green", model, {"mlops_owner": "mlops-automation"})  # no change
    deployed = [eventgrid.to_message(e) for e in events.of() if e["eventType"] == ML + "ModelDeployed"]
    assert [(m.endpoint, m.models) for m in deployed if isinstance(m, ModelDeployed)] == [
        ("churn-endpoint", "churn-model:1")] * 2
    endpoint = ws.set_traffic("churn-endpoint", {"blue": 90, "green": 10})
    assert endpoint.scoring_uri == ws.scoring_url("churn-endpoint")
    assert endpoint.scoring_uri.startswith("http://127.0.0.1:")

    rows = feature_rows(5, seed=11)
    served: dict[str, int] = {}
    latencies = []
    with httpx.Client(timeout=30) as client:
        for _ in range(100):
            t = time.perf_counter()
            r = client.post(endpoint.scoring_uri, json={"input_data": {
                "columns": list(rows[0]), "index": list(range(5)), "data": [list(row.values()) for row in rows]}})
            latencies.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200, r.text
            served[r.headers["azureml-model-deployment"]] = served.get(r.headers["azureml-model-deployment"], 0) + 1
            probabilities = r.json()
            assert len(probabilities) == 5 and all(0.0 <= p <= 1.0 for p in probabilities)
    assert served == {"blue": 90, "green": 10}

    logged = logged_requests(ws)
    assert len(logged) == 100 and {r["status"] for r in logged} == {200}
    assert sum(r["deployment"] == "green" for r in logged) == 10
    first = logged[0]
    assert first["endpoint"] == "churn-endpoint" and json.loads(first["inputs"]) == rows
    assert json.loads(first["outputs"]) == pytest.approx(probabilities)
    assert first["latency_ms"] > 0 and first["error"] == ""
    assert first["at"].endswith("+00:00")
    logger.info("job wall %.2f s; scoring p50 %.1f ms over HTTP; split %s", wall, statistics.median(latencies),
                served)


def test_the_deployment_header_targets_one_deployment_even_at_zero_traffic(ws, tmp_path):
    model = trained_model(ws, tmp_path)
    ws.create_deployment("ep", "blue", model, {})
    ws.create_deployment("ep", "green", model, {})
    ws.set_traffic("ep", {"blue": 100})
    rows = feature_rows(3, seed=2)
    assert score(ws, "ep", rows)[0] == "blue"
    deployment, probabilities = score(ws, "ep", rows, deployment="green")
    assert deployment == "green" and len(probabilities) == 3
    # The same model behind both deployments scores the same rows the same way.
    assert score(ws, "ep", rows)[1] == pytest.approx(probabilities)
    with pytest.raises(NotFound):
        score(ws, "ep", rows, deployment="ghost")


def test_scoring_answers_404_and_400_with_json_errors_and_logs_every_request(ws, tmp_path):
    model = trained_model(ws, tmp_path)
    ws.create_deployment("ep", "blue", model, {})
    url = ws.scoring_url("ep")
    base = url.rsplit("/score/", 1)[0]
    row = feature_rows(1, seed=3)[0]
    no_traffic = httpx.post(url, json={"data": [row]})
    assert no_traffic.status_code == 404 and "no traffic" in no_traffic.json()["error"]
    ws.set_traffic("ep", {"blue": 100})
    records = httpx.post(url, json={"data": [row, row]})
    assert records.status_code == 200 and len(records.json()) == 2
    unknown = httpx.post(f"{base}/score/nope", json={"data": [row]})
    assert unknown.status_code == 404 and "nope" in unknown.json()["error"]
    not_json = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
    ragged = httpx.post(url, json={"input_data": {"columns": ["a", "b"], "index": [0], "data": [[1]]}})
    missing = httpx.post(url, json={"data": [{"tenure_months": 3}]})
    for bad in (not_json, ragged, missing):
        assert bad.status_code == 400 and bad.json()["error"], bad.text
    assert "contract" in missing.json()["error"]  # names the columns the model needs
    with pytest.raises(InvalidPayload):
        score(base, "ep", [{"tenure_months": 3}])
    logged = logged_requests(ws)
    assert [(r["endpoint"], r["status"]) for r in logged] == [
        ("ep", 404), ("ep", 200), ("nope", 404), ("ep", 400), ("ep", 400), ("ep", 400), ("ep", 400)]
    assert all(r["error"] for r in logged if r["status"] != 200)


# --- failures ----------------------------------------------------------------------------------------------

def test_a_job_on_bad_data_fails_with_the_trainer_message_and_no_run_completed(ws, events, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("customer_id,tenure_months\nC1,3\nC2,4\n")
    ws.register_data("churn", "9", str(bad))
    ws.submit_training(spec("train-churn-v9-a1", version="9"))
    assert ws.wait_for_jobs(60)
    job = ws.get_job("train-churn-v9-a1")
    assert job.status is JobStatus.FAILED and "churn" in job.error and "cannot train" in job.error
    assert events.kinds(job.name) == ["RunStatusChanged:Running", "RunStatusChanged:Failed"]
    failed = eventgrid.to_message(events.of(job.name)[-1])
    assert failed.status == "Failed" and "cannot train" in failed.error
    with pytest.raises(PermanentError, match="logged no metrics"):
        ws.get_run_metrics(job.name)
    with pytest.raises(Conflict, match="no model output"):
        ws.register_model(ModelSpec(name="m", version="9", job_name=job.name, tags={}))


def test_fail_next_fails_one_job_like_a_preempted_node_without_training(ws, events, tmp_path):
    landed(ws, tmp_path)
    ws.fail_next("Low priority node preempted")
    ws.submit_training(spec("train-churn-v1-a1"))
    ws.submit_training(spec("train-churn-v1-a2"))
    assert ws.wait_for_jobs(60)
    first, second = ws.get_job("train-churn-v1-a1"), ws.get_job("train-churn-v1-a2")
    assert first.status is JobStatus.FAILED and "Low priority node preempted" in first.error
    assert not (Path(first.url) / "job.log").exists(), "a preempted job never ran the trainer"
    assert events.kinds(first.name) == ["RunStatusChanged:Running", "RunStatusChanged:Failed"]
    assert events.of(first.name)[-1]["data"]["runProperties"] == {"error": "Low priority node preempted"}
    assert second.status is JobStatus.COMPLETED, "fail_next applies to one job only"


def test_a_job_over_its_time_limit_is_killed_and_failed_with_timeout(tmp_path, events):
    sleeper = script(tmp_path / "sleeper", "exec sleep 30")
    with LocalWorkspace(tmp_path / "ws", emit=events, python=sleeper) as ws:
        landed(ws, tmp_path)
        started = time.monotonic()
        ws.submit_training(spec("slow", max_run_seconds=1))
        assert ws.wait_for_jobs(20)
        assert time.monotonic() - started < 10
        job = ws.get_job("slow")
        assert job.status is JobStatus.FAILED and "timeout" in job.error
        assert events.kinds("slow") == ["RunStatusChanged:Running", "RunStatusChanged:Failed"]


def test_max_parallel_keeps_extra_jobs_queued_and_cancel_works_queued_or_running(tmp_path, events):
    sleeper = script(tmp_path / "sleeper", f'echo $$ >> "{tmp_path}/pids"; exec sleep 30')
    with LocalWorkspace(tmp_path / "ws", emit=events, python=sleeper, max_parallel=1) as ws:
        landed(ws, tmp_path)
        ws.submit_training(spec("first"))
        ws.submit_training(spec("second"))
        deadline = time.monotonic() + 10
        while ws.get_job("first").status is not JobStatus.RUNNING and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ws.get_job("first").status is JobStatus.RUNNING
        assert ws.get_job("second").status is JobStatus.QUEUED
        assert not ws.wait_for_jobs(0.2), "jobs are still queued or running"
        assert ws.cancel_job("second").status is JobStatus.CANCELED
        assert ws.cancel_job("first").status is JobStatus.CANCELED
        assert ws.wait_for_jobs(5)
        assert events.kinds("first") == ["RunStatusChanged:Running", "RunStatusChanged:Canceled"]
        assert events.kinds("second") == ["RunStatusChanged:Canceled"]
        pids = (tmp_path / "pids").read_text().split()
        assert len(pids) == 1, "the queued job never started a process"
        with pytest.raises(ProcessLookupError):
            os.kill(int(pids[0]), 0)
        with pytest.raises(NotFound):
            ws.cancel_job("no-such-job")


def test_close_kills_running_jobs_and_a_new_instance_sees_them_failed(tmp_path):
    sleeper = script(tmp_path / "sleeper", f'echo $$ >> "{tmp_path}/pids"; exec sleep 30')
    ws = LocalWorkspace(tmp_path / "ws", python=sleeper)
    landed(ws, tmp_path)
    ws.submit_training(spec("long"))
    deadline = time.monotonic() + 10
    while not (tmp_path / "pids").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    ws.close()
    with pytest.raises(ProcessLookupError):
        os.kill(int((tmp_path / "pids").read_text().split()[0]), 0)
    with LocalWorkspace(tmp_path / "ws", python=sleeper) as again:
        job = again.get_job("long")
        assert job.status is JobStatus.FAILED and "interrupted" in job.error


# --- idempotency, the datastore, threads ---------------------------------------------------------------------

def test_the_same_job_name_submitted_twice_even_from_threads_starts_one_process(tmp_path, events):
    counting = script(tmp_path / "python", f'echo "$@" >> "{tmp_path}/calls"; exec "{sys.executable}" "$@"')
    with LocalWorkspace(tmp_path / "ws", emit=events, python=counting) as ws:
        landed(ws, tmp_path)
        with ThreadPoolExecutor(max_workers=6) as pool:
            jobs = list(pool.map(lambda i: ws.submit_training(spec("train-once", mlops_attempt=str(i))), range(6)))
        assert ws.submit_training(spec("train-once")).name == "train-once"
        assert ws.wait_for_jobs(60)
        assert len({j.tags["mlops_attempt"] for j in jobs}) == 1, "every caller got the one job that exists"
        assert ws.get_job("train-once").status is JobStatus.COMPLETED
        calls = (tmp_path / "calls").read_text().splitlines()
        assert len(calls) == 1 and "-m shared.training.train --data" in calls[0]
        assert events.kinds("train-once").count("RunStatusChanged:Running") == 1


def test_blob_urls_map_into_the_local_datastore_and_land_emits_blob_created(ws, events, tmp_path):
    source = write_csv(tmp_path / "src.csv", rows=400, seed=3)
    event = ws.land("landing", "churn/2/part-0.csv", source)
    target = ws.root / "datastore" / "landing" / "churn" / "2" / "part-0.csv"
    assert target.read_bytes() == source.read_bytes()
    assert events.of() == [event]
    assert event["eventType"] == "Microsoft.Storage.BlobCreated" and event["topic"] == wire.STORAGE_TOPIC
    assert event["subject"] == "/blobServices/default/containers/landing/blobs/churn/2/part-0.csv"
    assert event["data"]["api"] == "PutBlob" and event["data"]["contentLength"] == source.stat().st_size
    url = event["data"]["url"]
    assert url == "https://mlopslocaldata.blob.core.windows.net/landing/churn/2/part-0.csv"

    ws.land("landing", "churn/2/part-1.csv", write_csv(tmp_path / "src1.csv", rows=400, seed=4))
    folder = url.rsplit("/", 1)[0] + "/"
    asset = ws.register_data("churn", "2", folder)
    assert asset.path == folder and ws.local_path(folder) == target.parent
    assert ws.register_data("churn", "2", folder) == asset
    with pytest.raises(Conflict):
        ws.register_data("churn", "2", url)
    with pytest.raises(NotFound):
        ws.register_data("churn", "3", "https://mlopslocaldata.blob.core.windows.net/landing/churn/3/none.csv")
    with pytest.raises(NotFound):
        ws.register_data("churn", "4", str(tmp_path / "missing.csv"))
    with pytest.raises(InvalidPayload):
        ws.register_data("churn", "5", "https://mlopslocaldata.blob.core.windows.net/landing/../../etc/passwd")
    with pytest.raises(InvalidPayload):
        ws.land("landing", "../escape.csv", source)
    with pytest.raises(InvalidPayload):
        ws.submit_training(spec("../../escape", version="2"))
    with pytest.raises(InvalidPayload):
        ws.register_model(ModelSpec(name="m", version="../1", job_name="train-folder", tags={}))

    ws.submit_training(spec("train-folder", version="2"))  # a folder version trains on all its files
    assert ws.wait_for_jobs(60)
    assert ws.get_job("train-folder").status is JobStatus.COMPLETED
    assert ws.get_run_metrics("train-folder")["n_train"] + ws.get_run_metrics("train-folder")["n_test"] == 800


def test_concurrent_calls_from_threads_keep_one_consistent_state(ws, tmp_path):
    model = trained_model(ws, tmp_path)
    ws.create_deployment("ep", "blue", model, {})
    ws.create_deployment("ep", "green", model, {})
    ws.set_traffic("ep", {"blue": 90, "green": 10})
    path = str(tmp_path / "gen" / "v1.csv")
    rows = feature_rows(2, seed=5)

    def work(i: int) -> list[str]:
        ws.register_data("other", "1", path)
        ws.register_model(ModelSpec(name="shared-model", version="1", job_name="train-churn-v1-a1", tags={}))
        ws.register_model(ModelSpec(name="mine", version="", job_name="train-churn-v1-a1", tags={}))
        ws.tag_model("churn-model", "1", {f"t{i}": str(i)})
        ws.create_deployment("ep", "blue", model, {})
        ws.set_traffic("ep", {"blue": 90, "green": 10}, deployment_tags={"blue": {f"k{i}": "v"}})
        with httpx.Client() as client:
            return [score(ws, "ep", rows, client=client)[0] for _ in range(25)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        served = [d for batch in pool.map(work, range(4)) for d in batch]
    assert {d: served.count(d) for d in set(served)} == {"blue": 90, "green": 10}
    assert [m.version for m in ws.list_models("shared-model")] == ["1"]
    assert [m.version for m in ws.list_models("mine")] == ["1"], "one job, one version, however many threads ask"
    assert {f"t{i}" for i in range(4)} <= set(ws.get_model("churn-model", "1").tags)
    ep = ws.get_endpoint("ep")
    assert [d.name for d in ep.deployments] == ["blue", "green"]
    assert {f"k{i}" for i in range(4)} <= set(ep.deployment("blue").tags)
    assert len(logged_requests(ws)) == 100

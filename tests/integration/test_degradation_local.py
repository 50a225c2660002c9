"""Degradation end to end on the local backend: a model is trained and served, its predictions are scored over HTTP,
then ground truth lands as `landing/churn-labels/<date>/labels.csv`; the labels are joined with what was served,
live AUC falls far below the training AUC, a model_degraded alert goes out and the drift policy acts on it."""
from __future__ import annotations

import csv
import dataclasses
import time

import httpx
import pytest

from shared import eventgrid
from shared.config import Settings
from shared.local import cli
from shared.local.churn import feature_rows, write_csv
from shared.local.serving import score
from shared.messages import DataRegistered, LabelsLanded
from tests.helpers import Recording

pytestmark = pytest.mark.slow


@pytest.fixture
def served(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLOPS_WORKSPACE", raising=False)
    monkeypatch.setenv("MLOPS_MIN_PRIMARY", "0.6")
    settings = dataclasses.replace(Settings.from_env(), backend="local")
    stack = cli.local_stack(settings, port=0, notifier=Recording())
    yield stack, ["--url", stack.host.url, "--key", stack.host.key]
    stack.close()


def _serving(stack, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ep = stack.runtime.workspace.get_endpoint("churn-endpoint")
        if ep is not None and any(ep.traffic.values()):
            return ep
        time.sleep(0.2)
    raise AssertionError("nothing serves")


def _labels(tmp_path, rows, predictions, *, truth) -> str:
    path = tmp_path / "labels.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["customer_id", "churn"])
        for row, p in zip(rows, predictions, strict=True):
            w.writerow([row["customer_id"], truth(p)])
    return str(path)


def test_a_labels_blob_is_ground_truth_not_training_data():
    event = {"id": "e1", "eventType": "Microsoft.Storage.BlobCreated",
             "subject": "/blobServices/default/containers/landing/blobs/churn-labels/2026-12-02/labels.csv",
             "data": {"api": "PutBlob", "url": "https://acct.blob.core.windows.net/landing/churn-labels/2026-12-02/"
                                                "labels.csv"}}
    message = eventgrid.to_message(event)
    assert isinstance(message, LabelsLanded)
    assert (message.asset, message.version) == ("churn", "2026-12-02") and message.path.endswith("/labels.csv")
    event["subject"] = event["subject"].replace("churn-labels", "churn")
    event["data"]["url"] = event["data"]["url"].replace("churn-labels", "churn")
    assert isinstance(eventgrid.to_message(event), DataRegistered)


def test_labels_that_show_a_worse_model_raise_degradation_and_the_policy_retrains(served, tmp_path):
    stack, args = served
    assert cli.main(["land", "churn", "1", "--rows", "1500", *args]) == 0
    endpoint = _serving(stack)
    [deployment] = [d for d, share in endpoint.traffic.items() if share]
    rows = feature_rows(300, seed=11)
    predictions: list[float] = []
    with httpx.Client() as client:
        for i in range(0, len(rows), 50):
            predictions += score(stack.runtime.workspace, "churn-endpoint", rows[i:i + 50], client=client)[1]
    # newer data exists but no model was trained on it yet (registered without an event): retraining can help
    newer = write_csv(tmp_path / "newer.csv", rows=1500, seed=5)
    stack.runtime.workspace.register_data("churn", "2", str(newer))

    # the world turned out the opposite of what the model said: live AUC near 0
    labels = _labels(tmp_path, rows, predictions, truth=lambda p: 0 if p >= 0.5 else 1)
    assert cli.main(["land", "churn-labels", "2026-12-02", labels, *args]) == 0
    stack.grid.drain(timeout=60)

    trail = stack.runtime.audit.recent(limit=100)
    [landed] = [r for r in trail if r.message == "LabelsLanded"]
    assert landed.decision == "degraded" and landed.facts["id_column"] == "customer_id"
    verdict = landed.facts["deployments"][deployment]
    assert verdict["status"] == "degraded" and verdict["rows"] == 300
    assert verdict["live_auc"] < 0.2 < verdict["train_auc"] - 0.05
    [drift] = [r for r in trail if r.message == "DriftDetected"]
    assert drift.event_id == landed.event_id and drift.facts["signal"]["source"] == "mlops-degradation"
    assert drift.decision == "retrain" and "churn:2" in drift.reason
    alerts = [a for a in stack.runtime.notifier.alerts if a.kind == "model_degraded"]
    assert len(alerts) == 1 and alerts[0].title == f"Model degraded: churn-endpoint/{deployment}"


def test_labels_that_agree_with_the_model_change_nothing(served, tmp_path):
    stack, args = served
    assert cli.main(["land", "churn", "1", "--rows", "1500", *args]) == 0
    _serving(stack)
    rows = feature_rows(300, seed=12)
    with httpx.Client() as client:
        predictions = score(stack.runtime.workspace, "churn-endpoint", rows, client=client)[1]
    labels = _labels(tmp_path, rows, predictions, truth=lambda p: 1 if p >= 0.5 else 0)
    assert cli.main(["land", "churn-labels", "2026-12-03", labels, *args]) == 0
    stack.grid.drain(timeout=60)
    trail = stack.runtime.audit.recent(limit=100)
    [landed] = [r for r in trail if r.message == "LabelsLanded"]
    assert landed.decision == "record" and "healthy" in landed.reason
    assert not [r for r in trail if r.message == "DriftDetected"]
    assert not [r for r in trail if r.message == "DataRegistered" and "labels" in str(r.facts)]

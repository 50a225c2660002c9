"""Ground truth on the azure backend, offline: the labels blob in the landing container and the collector's JSONL in
Azurite Blob (bearer token, as the managed identity), the endpoint and model through the real MLClient against the
fake Azure ML service. The labels handler joins them and hands a degradation to the drift policy."""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from shared.adapters.azureml import build_workspace
from shared.config import Settings
from shared.domain import ModelSpec, TrainingJobSpec
from shared.drift.collected import CollectedData, served_window
from shared.drift.monitor import container_for
from shared.labels import labels_landed
from shared.local.ledger import SqliteAuditLog
from shared.messages import DriftDetected, LabelsLanded
from tests.fakes.azureml_service import FakeCredential as ArmCredential
from tests.helpers import Recording
from tests.integration.azurite import (
    STORAGE_SCOPE,
    StaticTokenCredential,
    unsigned_storage_token,
)

pytestmark = pytest.mark.filterwarnings("ignore::marshmallow.warnings.RemovedInMarshmallow4Warning")

EP, DEP, JOB = "churn-endpoint", "v2-1", "train-churn-v1-a1"
DAY = datetime(2026, 12, 2, tzinfo=timezone.utc)


@pytest.fixture
def azurite(blob_azurite_oauth):
    """This module's Azurite serves blobs (the session's, with bearer tokens)."""
    return blob_azurite_oauth


def _record(kind: str, at: datetime, data, cid: str) -> str:
    return json.dumps({"specversion": "1.0", "id": str(uuid.uuid4()), "type": f"azureml.inference.{kind}",
                       "time": at.strftime("%Y-%m-%dT%H:%M:%SZ"), "data": data, "correlationid": cid,
                       "xrequestid": cid})


class Setup:
    def __init__(self, azurite, fake, tmp_path, *, per_record: int, inverted: bool, keyed_by: str):
        rng = np.random.default_rng(2)
        self.token = StaticTokenCredential(*unsigned_storage_token())
        self.seen: list = []
        service = azurite.blob_service(self.token)
        collected_name, landing_name = "azureml-blobstore-" + uuid.uuid4().hex[:8], "landing" + uuid.uuid4().hex[:8]
        service.create_container(collected_name)
        service.create_container(landing_name)
        container = container_for(f"{azurite.endpoint}/{collected_name}", self.token,
                                  raw_request_hook=lambda r: self.seen.append(r.http_request), **azurite.client_options)
        n = 300
        truth = rng.integers(0, 2, n)
        scores = np.clip(truth * 0.5 + rng.random(n) * 0.5, 0, 1)  # a good model: AUC near 0.9
        lines = {"model_inputs": [], "model_outputs": []}
        label_rows = []
        for i in range(0, n, per_record):
            cid = str(uuid.uuid4())
            at = DAY + timedelta(hours=10, minutes=i % 60)
            idx = range(i, min(i + per_record, n))
            lines["model_inputs"].append(_record("model_inputs", at, [{"customer_id": f"C{j}", "tenure": 3.0}
                                                                      for j in idx], cid))
            lines["model_outputs"].append(_record("model_outputs", at, [{"churn_probability": float(scores[j])}
                                                                        for j in idx], cid))
            for j in idx:
                label = int(1 - truth[j]) if inverted else int(truth[j])
                label_rows.append((cid if keyed_by == "correlationid" else f"C{j}", label))
        for kind, records in lines.items():
            container.upload_blob(f"modelDataCollector/{EP}/{DEP}/{kind}/2026/12/02/10/a.jsonl",
                                  "\n".join(records) + "\n")
        # predictions of another day are not what these labels are about
        container.upload_blob(f"modelDataCollector/{EP}/{DEP}/model_inputs/2026/12/03/10/a.jsonl",
                              _record("model_inputs", DAY + timedelta(days=1, hours=10), [{"customer_id": "C1"}],
                                      "x") + "\n")
        csv = f"{keyed_by},churn\n" + "".join(f"{k},{v}\n" for k, v in label_rows)
        landing = service.get_container_client(landing_name)
        landing.upload_blob("churn-labels/2026-12-02/labels.csv", csv)
        self.labels_url = f"{azurite.endpoint}/{landing_name}/churn-labels/2026-12-02/labels.csv"
        self.seen.clear()
        self.collected = CollectedData(container, self.token, blob_options=dict(azurite.client_options))
        settings = Settings(backend="azure", subscription_id=fake.subscription_id,
                            resource_group=fake.resource_group, workspace=fake.workspace, datastore="landing")
        self.settings = settings
        ws = build_workspace(settings, ArmCredential(), transport=fake)
        ws.register_data("churn", "1", "https://mlopsdata.blob.core.windows.net/landing/churn/1/churn.csv")
        ws.submit_training(TrainingJobSpec(name=JOB, asset="churn", data_version="1", attempt=1, tags={},
                                           compute="cpu-cluster", max_run_seconds=300, experiment="mlops"))
        fake.finish_job(JOB, metrics={"auc": 0.9, "logloss": 0.35})
        model = ws.register_model(ModelSpec(name="churn-model", version="1", job_name=JOB,
                                            tags={"metric_auc": "0.9", "metric_logloss": "0.35"}))
        ws.create_deployment(EP, DEP, model, {})
        self.workspace = ws
        self.notifier = Recording()
        self.audit = SqliteAuditLog(tmp_path / "ledger.db")

    def handle(self):
        msg = LabelsLanded(event_id="evt-labels", asset="churn", version="2026-12-02", path=self.labels_url)
        return labels_landed(msg, workspace=self.workspace, settings=self.settings, notifier=self.notifier,
                             audit=self.audit, clock=lambda: DAY + timedelta(days=2), collected=self.collected)


@pytest.fixture
def setup(azurite, fake, tmp_path):
    made = []

    def make(**kw):
        made.append(Setup(azurite, fake, tmp_path, **kw))
        return made[-1]

    yield make
    for s in made:
        s.workspace.close()
        s.collected.container.close()


def test_labels_that_contradict_the_model_raise_degradation_for_the_policy(setup):
    s = setup(per_record=5, inverted=True, keyed_by="customer_id")
    handled = s.handle()
    assert handled.outcome == "done"
    [follow] = handled.follow_ups
    assert isinstance(follow, DriftDetected) and (follow.endpoint, follow.deployment) == (EP, DEP)
    assert follow.source == follow.rule == "mlops-degradation" and follow.value < 0.2 and follow.threshold == 0.85
    assert handled.data["deployments"][DEP]["rows"] == 300 and handled.data["id_column"] == "customer_id"
    [alert] = s.notifier.alerts
    assert alert.kind == "model_degraded" and dict(alert.facts)["Training AUC"] == "0.900"
    # the storage audience, bearer tokens over https, and only that day's folders listed
    assert s.token.scopes and set(s.token.scopes) == {(STORAGE_SCOPE,)}
    assert all(r.headers["Authorization"].startswith("Bearer ") and r.url.startswith("https://") for r in s.seen)
    listed = [r.url for r in s.seen if "comp=list" in r.url]
    assert listed and all("%2F2026%2F12%2F02%2F" in u for u in listed) and len(listed) == 48


def test_labels_that_agree_with_the_model_hand_nothing_on(setup):
    s = setup(per_record=5, inverted=False, keyed_by="customer_id")
    handled = s.handle()
    assert handled.outcome == "ignored" and not handled.follow_ups and s.notifier.alerts == []
    assert handled.data["deployments"][DEP]["status"] == "healthy"


def test_labels_by_correlation_id_join_single_row_calls(setup):
    s = setup(per_record=1, inverted=True, keyed_by="correlationid")
    handled = s.handle()
    assert handled.outcome == "done" and handled.data["deployments"][DEP]["rows"] == 300
    assert handled.data["id_column"] == "correlationid"


def test_a_labels_folder_named_by_date_covers_that_day_else_the_last_week():
    assert served_window("2026-12-02", DAY) == (DAY, DAY + timedelta(days=1))
    assert served_window("batch-7", DAY) == (DAY - timedelta(days=7), DAY)


def test_the_azure_wiring_joins_ground_truth_only_with_a_collector_container():
    from dataclasses import replace

    from shared.adapters.wiring import build_azure
    from shared.drift.collected import CollectedData
    from tests.integration.azurite import StaticTokenCredential

    base = Settings(backend="azure", subscription_id="00000000-0000-0000-0000-000000000000", resource_group="rg",
                    workspace="mlw", ledger_table_uri="https://mlopsapp.table.core.windows.net/")
    token = StaticTokenCredential("t", 0)
    assert "collected" not in build_azure(base, credential=token)
    url = "https://mlw1.blob.core.windows.net/azureml-blobstore-0a1b"
    deps = build_azure(replace(base, drift=replace(base.drift, container_url=url)), credential=token)
    collected = deps["collected"]
    assert isinstance(collected, CollectedData) and collected.credential is token
    assert collected.container.url == url and token.scopes == [], "nothing is sent before the first labels"

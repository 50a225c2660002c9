"""`mlops` on the azure backend, offline: the same commands read the runtime shared/adapters/wiring.py builds, the
real MLClient answered by the fake Azure ML service, the ledger, audit trail and state records on Azurite, and the
dead-letter container on Azurite Blob."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from shared.local import wire
from shared.opscli import Fail as CliFail
from shared.opscli import app, dead_letter_account_url
from tests.integration.test_azure_backend import ENDPOINT, MODEL, AzureArc

pytestmark = pytest.mark.filterwarnings("ignore::marshmallow.warnings.RemovedInMarshmallow4Warning")


@pytest.fixture(scope="module")
def rolled_back(azurite):
    """Two models trained on Azure, the second rolled back by a drift alert: a story with every hop."""
    arc = AzureArc(azurite)
    try:
        arc.stable_then_canary()
        arc.deliver(wire.custom("MLOps.DriftDetected", f"endpoints/{ENDPOINT}",
                                {"endpoint": ENDPOINT, "metric": "psi", "value": 0.4, "threshold": 0.2}))
        assert arc.traffic() == {"churn-model-v1": 100, "churn-model-v2": 0}
        yield arc
    finally:
        arc.close()
    assert arc.fake.unexpected == [], "something tried to leave the machine"


def mlops(arc, *args: str):
    return CliRunner().invoke(app, list(args), obj=arc.rt, env={"COLUMNS": "200"})


def test_status_reads_the_state_record_from_table_storage(rolled_back):
    r = mlops(rolled_back, "--json", "status", ENDPOINT)
    assert r.exit_code == 0, r.output
    [ep] = json.loads(r.output)["endpoints"]
    state = rolled_back.rt.states.load(ENDPOINT)
    assert ep["rollout"]["phase"] == state.phase.value == "aborted"
    assert ep["rollout"]["stable"] == "churn-model-v1" and ep["rollout"]["rolled_back"] == ["churn-model-v2"]
    assert ep["traffic"] == {"churn-model-v1": 100}
    assert mlops(rolled_back, "status", "other-endpoint").exit_code == 1


def test_lineage_reads_model_tags_the_job_and_the_data_asset_from_azure_ml(rolled_back):
    r = mlops(rolled_back, "--json", "lineage", f"{MODEL}:2")
    assert r.exit_code == 0, r.output
    chain = {link["kind"]: link for link in json.loads(r.output)["chain"]}
    assert chain["data"]["name"] == "churn:2"
    assert chain["data"]["detail"] == "azureml://datastores/landing/paths/churn/2/churn.csv"
    assert chain["job"] == {"kind": "job", "name": "train-churn-v2-a1", "detail": "Completed", "found": True}
    assert chain["deployment"]["name"] == f"{ENDPOINT}/churn-model-v2"
    assert "0% of traffic" in chain["deployment"]["detail"] and "rolled back" in chain["deployment"]["detail"]
    assert chain["approver"]["name"] == "automation"
    assert rolled_back.fake.find("GET", "/jobs/train-churn-v2-a1"), "the job was read from the service"
    assert mlops(rolled_back, "lineage", f"{MODEL}:7").exit_code == 1


def test_audit_reads_the_table_storage_trail_with_filters(rolled_back):
    r = mlops(rolled_back, "--json", "audit", "--endpoint", ENDPOINT, "--decision", "rollback")
    assert r.exit_code == 0, r.output
    [rollback] = json.loads(r.output)
    assert rollback["actor"] == "automation" and rollback["message"] == "DriftDetected"
    everything = json.loads(mlops(rolled_back, "--json", "audit", "--limit", "100").output)
    assert [d["decision"] for d in everything].count("start_training") == 2
    assert len(json.loads(mlops(rolled_back, "--json", "audit", "--limit", "3").output)) == 3


def test_events_lists_the_table_ledger_and_the_dead_letter_blobs(rolled_back, blob_azurite):
    blobs = blob_azurite.blob_service()
    container = blobs.create_container("eventgrid-deadletter")
    lost = [{"id": "ev-lost-1", "eventType": "Microsoft.MachineLearningServices.RunCompleted",
             "deadLetterReason": "MaxDeliveryAttemptsExceeded", "deliveryAttempts": 30}]
    container.upload_blob("MLOPS-TOPIC/RUN-EVENTS/2026/12/2/15/one.json", json.dumps(lost))
    rolled_back.rt.deps["dead_letter_blobs"] = blobs
    try:
        r = mlops(rolled_back, "--json", "events", "--limit", "100")
    finally:
        del rolled_back.rt.deps["dead_letter_blobs"]
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["stats"] == rolled_back.rt.ledger.stats()
    assert {row["event_type"] for row in data["rows"]} >= {"DataRegistered", "RunFinished", "DriftDetected"}
    assert data["dead_letters"] == [{"subscription": "MLOPS-TOPIC/RUN-EVENTS/2026/12/2/15", "id": "ev-lost-1",
                                     "eventType": "Microsoft.MachineLearningServices.RunCompleted",
                                     "reason": "MaxDeliveryAttemptsExceeded",
                                     "file": "eventgrid-deadletter/MLOPS-TOPIC/RUN-EVENTS/2026/12/2/15/one.json"}]


def test_the_dead_letter_account_is_the_ledgers_storage_account():
    assert dead_letter_account_url("https://mlopsapp.table.core.windows.net/") == "https://mlopsapp.blob.core.windows.net"
    with pytest.raises(CliFail):
        dead_letter_account_url("http://127.0.0.1:10002/devstoreaccount1")


def test_replay_is_refused_with_its_reason_on_azure(rolled_back):
    r = mlops(rolled_back, "replay")
    assert r.exit_code == 2 and "outbox_sweep" in r.output


def test_watch_reads_where_each_chain_settled_on_azure(rolled_back):
    deployed = mlops(rolled_back, "--json", "watch", "churn:1", "--timeout", "5")
    assert deployed.exit_code == 0, deployed.output
    assert json.loads(deployed.output)["settled"] == "deployed"
    rolled = mlops(rolled_back, "watch", "churn:2", "--timeout", "5")
    assert rolled.exit_code == 1 and "churn:2: rolled back" in rolled.output
    nothing = mlops(rolled_back, "watch", "churn:9", "--timeout", "1", "--interval", "0.2")
    assert nothing.exit_code == 1 and "did not settle within 1 s" in nothing.output


def test_land_uploads_to_the_landing_container_once_and_never_overwrites(blob_azurite, tmp_path):
    from azure.core.credentials import AzureNamedKeyCredential

    from shared.config import Settings
    from shared.opscli import Session
    from tests.integration.azurite import ACCOUNT, DEV_ACCOUNT_KEY

    blobs = blob_azurite.blob_service()
    landing = blobs.create_container(f"landing{tmp_path.name[-8:].lower().replace('_', '')}")
    settings = Settings(backend="azure", landing_container=landing.container_name, datastore_account=ACCOUNT)

    def land(*args: str):
        session = Session(settings=settings, credential=AzureNamedKeyCredential(ACCOUNT, DEV_ACCOUNT_KEY))
        return CliRunner().invoke(app, ["land", *args, "--account-url", blob_azurite.endpoint], obj=session)

    source = tmp_path / "march.csv"
    source.write_text("customer_id,churn\n1,0\n2,1\n")
    first = land("churn", "2026-03", str(source))
    assert first.exit_code == 0, first.output
    assert landing.download_blob("churn/2026-03/march.csv").readall() == source.read_bytes()
    source.write_text("customer_id,churn\n1,1\n")
    again = land("churn", "2026-03", str(source))
    assert again.exit_code == 1 and "already exists" in again.output and "churn 2026-03-2" in again.output
    assert landing.download_blob("churn/2026-03/march.csv").readall() == b"customer_id,churn\n1,0\n2,1\n"
    assert land("churn", "4", str(tmp_path / "missing.csv")).exit_code == 2
    assert land("bad name!", "4", str(source)).exit_code == 2
    wrong = Session(settings=settings, credential=AzureNamedKeyCredential(ACCOUNT, "d3Jvbmcta2V5"))
    refused = CliRunner().invoke(app, ["land", "churn", "5", str(source), "--account-url", blob_azurite.endpoint],
                                 obj=wrong)
    assert refused.exit_code == 1 and refused.output.startswith("failed: upload ")
    assert refused.exception is None or isinstance(refused.exception, SystemExit)  # no traceback

"""The reflex arc on the azure backend, offline: the real bus and handlers wired by shared/adapters/wiring.py, the
real MLClient answered by the fake Azure ML REST service, and the ledger, audit trail and outbox on Azurite.

The embedded backend's tests prove the decisions; these prove the same loop drives Azure's API: the requests that
reach the service, exactly once over duplicated events, and a rollback that leaves exactly the intended split.
"""
from __future__ import annotations

import uuid

import pytest
from azure.core.pipeline.transport import HttpTransport

from shared import eventgrid
from shared.adapters.azureml import AzureMLWorkspace
from shared.adapters.tables import TableAuditLog, TableLedger, build_stores
from shared.adapters.wiring import build_azure
from shared.bootstrap import Runtime, build
from shared.config import Settings
from shared.local import wire
from shared.local.clock import SimClock
from tests.fakes.azureml_service import FakeAzureML, FakeCredential
from tests.helpers import GeneratedLanding, Recording

pytestmark = pytest.mark.filterwarnings("ignore::marshmallow.warnings.RemovedInMarshmallow4Warning")
ENDPOINT, MODEL = "churn-endpoint", "churn-model"


class AzureArc:
    def __init__(self, azurite, *, table_options: dict | None = None) -> None:
        self.fake = FakeAzureML()
        suffix = uuid.uuid4().hex[:12]
        stores = build_stores(azurite.service(**(table_options or {})), names={"ledger": f"ledger{suffix}", "audit": f"audit{suffix}",
                                                        "outbox": f"outbox{suffix}", "states": f"state{suffix}"})
        self.settings = Settings(
            backend="azure", subscription_id=self.fake.subscription_id, resource_group=self.fake.resource_group,
            workspace=self.fake.workspace, datastore="landing", landing_container="landing",
            ledger_table_uri="https://mlopsapp.table.core.windows.net/").with_policy(min_primary=0.7)
        self.notifier = Recording()
        self.clock = SimClock()
        self.rt = build(self.settings, credential=FakeCredential(), transport=self.fake, notifier=self.notifier,
                        clock=self.clock, landing=GeneratedLanding(), **stores)

    def deliver(self, event: dict) -> list:
        return self.rt.bus.handle(eventgrid.to_message(event, landing_container="landing"))

    def land(self, version: str) -> dict:
        return wire.blob_created("landing", f"churn/{version}/churn.csv", content_length=4096, account="mlopsdata")

    def finish(self, job: str, **metrics: float) -> dict:
        self.fake.finish_job(job, "Completed", metrics=metrics)
        return wire.run_completed(job, experiment="churn", tags=self.rt.workspace.get_job(job).tags)

    def stable_then_canary(self) -> None:
        """v1 trained and promoted, then v2 trained and rolled out as a canary ten minutes ago."""
        self.deliver(self.land("1"))
        self.deliver(self.finish("train-churn-v1-a1", auc=0.80, logloss=0.45))
        self.clock.advance(minutes=30)
        self.deliver(self.land("2"))
        self.deliver(self.finish("train-churn-v2-a1", auc=0.86, logloss=0.40))
        self.clock.advance(minutes=10)

    def puts(self, path_contains: str) -> list:
        return [r for r in self.fake.requests if r.method == "PUT" and path_contains in r.path]

    def traffic(self) -> dict[str, int]:
        return dict(self.rt.workspace.get_endpoint(ENDPOINT).traffic)

    def close(self) -> None:
        self.rt.close()
        self.fake.shutdown()


@pytest.fixture
def arc(azurite):
    a = AzureArc(azurite)
    yield a
    a.close()
    assert a.fake.unexpected == [], "something tried to leave the machine"


def test_the_composition_root_wires_the_azure_adapters(arc):
    assert isinstance(arc.rt.workspace, AzureMLWorkspace) and arc.rt.metrics is arc.rt.workspace
    assert isinstance(arc.rt.ledger, TableLedger) and isinstance(arc.rt.audit, TableAuditLog)
    assert arc.rt.monitor is None and arc.rt.publisher is None  # neither is configured in these settings
    assert arc.fake.requests == [], "building the runtime sends no request"


class ClosingTransport(HttpTransport):
    """A transport that sends nothing and remembers being closed (pipelines close theirs through __exit__)."""

    def __init__(self) -> None:
        self.closed = 0

    def send(self, request, **kwargs):
        raise AssertionError(f"nothing is sent while wiring: {request.url}")

    def open(self) -> None:
        pass

    def close(self) -> None:
        self.closed += 1

    def __enter__(self):
        return self

    def __exit__(self, *args) -> None:
        self.close()


def test_closing_the_runtime_closes_the_table_service_connection_pool():
    transport = ClosingTransport()
    settings = Settings(backend="azure", subscription_id="00000000-0000-0000-0000-000000000000",
                        resource_group="rg", workspace="mlw", ledger_table_uri="https://mlopsapp.table.core.windows.net/")
    # What the wiring made, closed as Runtime.close() closes it (the transport itself is not among the ports).
    deps = build_azure(settings, credential=FakeCredential(), transport=transport)
    Runtime(settings=settings, bus=None, deps=deps).close()
    # The ledger, audit and outbox TableClients share the TableServiceClient's pool and cannot close it themselves.
    assert transport.closed == 1


def test_landed_data_trains_registers_and_rolls_back_on_azure_exactly_once(arc):
    first = arc.land("1")
    results = arc.deliver(first) + arc.deliver(first)  # Event Grid delivers at least once
    assert [r.outcome for r in results] == ["done", "done", "duplicate"]
    [job_put] = arc.puts("/jobs/train-churn-v1-a1")
    body = job_put.json["properties"]
    # the job reads the registered data asset version (lineage in Azure ML), which points at the landed blob
    assert body["inputs"]["data"]["uri"].endswith(f"/workspaces/{arc.fake.workspace}/data/churn/versions/1")
    [data_put] = arc.puts("/data/churn/versions/1")
    assert data_put.json["properties"]["dataUri"] == "azureml://datastores/landing/paths/churn/1/churn.csv"
    assert body["tags"]["mlops_trigger_event"] == first["id"] and body["tags"]["mlops_owner"] == "mlops-automation"
    # the data contract's columns reach train.py as arguments (the job reads no settings of its own)
    assert "--output ${{outputs.output}} --label churn --id-columns customer_id && cp" in body["command"]

    done = arc.finish("train-churn-v1-a1", auc=0.80, logloss=0.45)
    arc.deliver(done)
    assert arc.deliver(done)[0].outcome == "duplicate"
    [model_put] = arc.puts(f"/models/{MODEL}/versions/1")
    assert model_put.json["properties"]["modelType"] == "mlflow_model"
    assert model_put.json["properties"]["tags"]["metric_auc"] == "0.8"
    assert model_put.json["properties"]["tags"]["mlops_job"] == "train-churn-v1-a1"
    assert arc.traffic() == {"churn-model-v1": 100}

    arc.clock.advance(minutes=30)
    arc.deliver(arc.land("2"))
    arc.deliver(arc.finish("train-churn-v2-a1", auc=0.86, logloss=0.40))
    assert arc.traffic() == {"churn-model-v1": 90, "churn-model-v2": 10}

    arc.clock.advance(minutes=10)
    drift = wire.custom("MLOps.DriftDetected", f"endpoints/{ENDPOINT}",
                        {"endpoint": ENDPOINT, "metric": "psi", "value": 0.4, "threshold": 0.2})
    rolled = arc.deliver(drift)
    assert rolled[0].outcome == "done" and rolled[0].data["to"] == "churn-model-v1"
    assert arc.traffic() == {"churn-model-v1": 100, "churn-model-v2": 0}  # exactly the intended split, the 0 included
    assert arc.rt.workspace.get_model(MODEL, "2").tags["mlops_rolled_back"] == "true"
    assert arc.rt.workspace.get_endpoint(ENDPOINT).deployment("churn-model-v2").rolled_back
    assert arc.deliver(drift)[0].outcome == "duplicate"

    # the decisions sit in the Table Storage audit trail, the effects in its ledger
    decisions = [r.decision for r in reversed(arc.rt.audit.recent(limit=100))]
    assert decisions.count("start_training") == 2 and decisions.count("rollback") == 1
    assert arc.rt.audit.recent(subject=ENDPOINT, decisions=["rollback"])[0].facts["from"] == {"churn-model-v1": 90, "churn-model-v2": 10}
    assert arc.rt.ledger.stats()["duplicates"] == 3
    # the endpoint's state record lives in Table Storage too, with its ETag
    state = arc.rt.states.load(ENDPOINT)
    assert state.stable == "churn-model-v1" and "churn-model-v2" in state.rolled_back and state.version
    assert len(arc.puts("/jobs/")) == 2  # one job per data version, whatever was redelivered


def test_a_failed_azure_run_alerts_with_the_service_error_and_starts_nothing(arc):
    arc.deliver(arc.land("1"))
    arc.fake.finish_job("train-churn-v1-a1", "Failed", error="ModuleNotFoundError: No module named 'xgboost'")
    tags = arc.rt.workspace.get_job("train-churn-v1-a1").tags
    result = arc.deliver(wire.run_status_changed("train-churn-v1-a1", "Failed", experiment="churn", tags=tags))
    assert result[0].outcome == "done"
    failed = next(a for a in arc.notifier.alerts if a.kind == "training_failed")
    assert "No module named 'xgboost'" in failed.detail
    assert dict(failed.links)["Open job"].startswith("https://ml.azure.com/runs/train-churn-v1-a1?wsid=/subscriptions/")
    assert len(arc.puts("/jobs/")) == 1 and not arc.puts("/models/")


def test_the_chain_id_reaches_every_azure_resource_and_the_rollback_card_says_why(arc):
    first = arc.land("1")
    arc.deliver(first)
    arc.deliver(arc.finish("train-churn-v1-a1", auc=0.80, logloss=0.45))
    chain = first["id"]
    [data_put] = arc.puts("/data/churn/versions/1")
    [job_put] = arc.puts("/jobs/train-churn-v1-a1")
    [model_put] = arc.puts(f"/models/{MODEL}/versions/1")
    deployment_puts = arc.puts("/deployments/churn-model-v1")
    assert deployment_puts
    for put in (data_put, job_put, model_put, *deployment_puts):
        tags = put.json["properties"].get("tags") or put.json.get("tags")  # deployments: an ARM tracked resource
        assert tags["mlops_correlation"] == chain, put.path

    arc.clock.advance(minutes=30)
    arc.deliver(arc.land("2"))
    arc.deliver(arc.finish("train-churn-v2-a1", auc=0.86, logloss=0.40))
    arc.clock.advance(minutes=10)
    drift = wire.custom("MLOps.DriftDetected", f"endpoints/{ENDPOINT}",
                        {"endpoint": ENDPOINT, "metric": "psi", "value": 0.4, "threshold": 0.2})
    arc.deliver(drift)
    card = next(a for a in arc.notifier.alerts if a.kind == "rollback")
    facts = dict(card.facts)
    assert facts["Signal"].startswith("psi 0.400 (threshold 0.200)")
    assert dict(card.links)["Open endpoint"] == (
        f"https://ml.azure.com/endpoints/realtime/{ENDPOINT}/detail?wsid=/subscriptions/{arc.fake.subscription_id}"
        f"/resourceGroups/{arc.fake.resource_group}/providers/Microsoft.MachineLearningServices/workspaces/"
        f"{arc.fake.workspace}")
    assert dict(card.links)["Open model"].startswith(f"https://ml.azure.com/model/{MODEL}:1/details?wsid=")

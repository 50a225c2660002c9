"""An audit append that stops part-way on Table Storage (issue 11: found by the full-size storm).

TableAuditLog writes a record once per partition: a copy under each subject it names, then its day entry, last.
When the day entry cannot be written the append raises (transient) and the delivery is retried; the retry must
complete that record, not take the subject copy as proof that it was written. Before, a run's verdict was then
missing from the trail (6 of 3,400 runs in the full-size storm), and a rollback's record and its alert were never
written at all."""
from __future__ import annotations

import json

import pytest
from azure.core.exceptions import ServiceRequestError
from azure.core.pipeline.transport import RequestsTransport

from shared.adapters.tables import escape_key
from shared.local import wire
from tests.integration.test_azure_backend import ENDPOINT, MODEL, AzureArc
from tests.reliability.faults import route_table_waits

pytestmark = pytest.mark.filterwarnings("ignore::marshmallow.warnings.RemovedInMarshmallow4Warning")


class RefusesDayEntries(RequestsTransport):
    """Table Storage that refuses the connection for every audit entry ``partition`` matches (by default its day
    entries) while ``refusing`` is set: the copies written before that one land, it does not."""

    refusing = False
    refused = 0

    @staticmethod
    def partition(pk: str) -> bool:
        return pk.startswith("d")

    def sleep(self, duration: float) -> None:
        pass  # the retry policy's waits, not slept

    def send(self, request, **kwargs):
        if self.refusing and request.method == "POST" and "/audit" in request.url:
            body = getattr(request, "content", None) or getattr(request, "body", None) or b"{}"
            if self.partition(json.loads(body).get("PartitionKey", "")):
                self.refused += 1
                raise ServiceRequestError("injected: connection refused")
        return super().send(request, **kwargs)


@pytest.fixture
def arc(azurite, monkeypatch):
    route_table_waits(monkeypatch)
    transport = RefusesDayEntries()
    a = AzureArc(azurite, table_options={"transport": transport})
    a.tables = transport
    yield a
    a.close()


def delivered_despite_one_failure(arc, event: dict) -> None:
    """Deliver with day entries refused (the delivery fails, transient), then again as Event Grid would."""
    arc.tables.refusing = True
    with pytest.raises(Exception) as failed:
        arc.deliver(event)
    assert arc.tables.refused, f"the delivery failed before the refused audit entry: {failed.value!r}"
    arc.tables.refusing = False
    arc.deliver(event)


def test_a_verdict_whose_day_entry_failed_is_completed_by_the_retry(arc):
    arc.deliver(arc.land("1"))
    delivered_despite_one_failure(arc, arc.finish("train-churn-v1-a1", auc=0.80, logloss=0.45))
    verdicts = [r for r in arc.rt.audit.recent(decisions=["approve", "reject"])
                if r.facts.get("job") == "train-churn-v1-a1"]
    assert len(verdicts) == 1  # before: 0, the subject copy was taken for the record
    assert [r.facts.get("job") for r in arc.rt.audit.recent(subject="train-churn-v1-a1",
                                                               decisions=["approve"])] == ["train-churn-v1-a1"]


def test_a_rollback_whose_record_failed_part_way_is_recorded_and_alerted_once(arc):
    arc.stable_then_canary()
    before = len(arc.notifier.alerts)
    delivered_despite_one_failure(arc, wire.custom("MLOps.DriftDetected", f"endpoints/{ENDPOINT}",
                                                   {"endpoint": ENDPOINT, "metric": "psi", "value": 0.4,
                                                    "threshold": 0.2}))
    assert arc.traffic() == {"churn-model-v1": 100, "churn-model-v2": 0}
    assert len(arc.rt.audit.recent(decisions=["rollback"])) == 1  # before: 0
    assert len(arc.rt.audit.recent(subject=ENDPOINT, decisions=["rollback"])) == 1
    assert arc.notifier.kinds()[before:].count("rollback") == 1, arc.notifier.kinds()[before:]  # before: none


@pytest.mark.parametrize("refused", [ENDPOINT, MODEL, "train-churn-v1-a1"])
def test_a_verdict_stopped_at_any_subject_copy_shows_once_under_every_subject(arc, refused):
    """The once-only check reads the run's (job's) partition. Copies were written endpoint, model, asset, job: a
    stop at the model's or the job's copy left copies the check could not see, and the retry wrote the verdict
    again under a new RowKey, so the endpoint's and the model's trails showed two approvals of one run."""
    job = "train-churn-v1-a1"
    arc.deliver(arc.land("1"))
    arc.tables.partition = lambda pk: pk == f"s{escape_key(refused)}"
    delivered_despite_one_failure(arc, arc.finish(job, auc=0.80, logloss=0.45))
    for subject in (ENDPOINT, MODEL, job, None):
        approvals = [r for r in arc.rt.audit.recent(subject=subject, decisions=["approve"], limit=500)
                     if r.facts.get("job") == job]
        assert len(approvals) == 1, (subject, len(approvals))  # before: 2 under the endpoint (and the model)

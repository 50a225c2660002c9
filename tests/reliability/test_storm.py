"""Duplicate / out-of-order storm with transient faults (issue 11, reliability suite).

Many data versions and runs, 30 % duplicates, shuffled, 8 concurrent deliverers through the local host, into the
azure backend (real adapters and SDK clients) whose Azure ML service answers 20 % of requests with a 503 or a 429,
and whose Table Storage (ledger, audit, outbox, endpoint states on Azurite) fails 20 % of requests in the SDK's
transport with a 503, a 429 or a refused connection.
Afterwards the effects are counted: one job per data version, one registered model per approved run, no claim
left processing, zero lost events, and the only 5xx answers are the deliberate transient ones."""
from __future__ import annotations

import os
import random
import uuid

import pytest

from shared.adapters.tables import build_stores, with_app_retries
from shared.bootstrap import build
from shared.config import Settings
from shared.local import wire
from shared.local.host import LocalHost
from tests.fakes.azureml_service import FakeCredential
from tests.helpers import GeneratedLanding, Recording
from tests.reliability.faults import FaultyTransport, route_table_waits
from tests.reliability.storm import FaultyAzureML, blob_events, deliver_storm, size, write_figures

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::marshmallow.warnings.RemovedInMarshmallow4Warning")]
MODEL = "churn-model"


@pytest.fixture
def stack(azurite, monkeypatch):
    route_table_waits(monkeypatch)  # retry waits recorded, not slept
    import function_app

    fake = FaultyAzureML(fault_rate=0.2)
    suffix = uuid.uuid4().hex[:12]
    tables = FaultyTransport(fault_rate=0.0)  # the tables are created without faults, then 20 % of requests fail
    names = {"ledger": f"ledger{suffix}", "audit": f"audit{suffix}", "outbox": f"outbox{suffix}",
             "states": f"state{suffix}"}
    stores = build_stores(with_app_retries(azurite.service(transport=tables)), names=names)
    settings = Settings(
        backend="azure", subscription_id=fake.subscription_id, resource_group=fake.resource_group,
        workspace=fake.workspace, datastore="landing", landing_container="landing",
        ledger_table_uri="https://mlopsapp.table.core.windows.net/").with_policy(min_primary=0.7)
    notifier = Recording()
    runtime = build(settings, credential=FakeCredential(), transport=fake, notifier=notifier,
                    landing=GeneratedLanding(), **stores)
    function_app.use_runtime(runtime)
    host = LocalHost(function_app.app, port=0).start()
    tables.fault_rate = 0.2
    fake.tables = tables
    try:
        yield host, runtime, fake, notifier
    finally:
        host.stop()
        function_app.use_runtime(None)
        runtime.close()
        fake.shutdown()


def job_names(fake) -> set[str]:
    return {r.path.rsplit("/", 1)[-1] for r in fake.find("PUT", "/jobs/") if 200 <= r.status < 300}


def test_a_duplicated_shuffled_concurrent_storm_with_faults_takes_effect_exactly_once(stack):
    host, runtime, fake, notifier = stack
    # Full size: 3,400 versions, so 10,200 distinct events (one BlobCreated, two run events each) before duplicates.
    versions = int(os.environ.get("RELIABILITY_STORM_VERSIONS") or size(12, 3400))

    data = deliver_storm(host.url, host.key, "on_blob_created", blob_events(versions))
    assert data.lost == []
    jobs = job_names(fake)
    assert jobs == {f"train-churn-v{v}-a1" for v in range(1, versions + 1)}  # one job per data version

    rng = random.Random(3)
    run_events = []
    for name in sorted(jobs):
        fake.finish_job(name, "Completed", metrics={"auc": round(rng.uniform(0.72, 0.95), 4), "logloss": 0.4})
        tags = fake.resource("jobs", name)["properties"]["tags"]
        run_events += [wire.run_completed(name, experiment="churn", tags=tags),
                       wire.run_status_changed(name, "Completed", experiment="churn", tags=tags)]
    runs = deliver_storm(host.url, host.key, "on_run_event", run_events, seed=8)
    assert runs.lost == []
    fake.tables.fault_rate = 0.0  # the counting below reads the tables without faults

    models = {r.path.rsplit("/", 1)[-1] for r in fake.find("PUT", f"/models/{MODEL}/versions/")
              if 200 <= r.status < 300}
    approved = [r for r in runtime.audit.recent(limit=100_000, decisions=["approve"])]
    approved_jobs = {r.facts["job"] for r in approved}
    # One registered model per approved run, none registered twice, and one approval record per approved run: a
    # verdict re-decided by a retried delivery is not audited again (AuditLog.append_once).
    assert len(approved_jobs) == len(models) >= 1
    assert len(approved) == len(approved_jobs)
    assert sorted(models) == sorted(r.resources[0].rsplit(":", 1)[-1] for r in approved
                                    if r is next(a for a in approved if a.facts["job"] == r.facts["job"]))
    decided = {r.facts["job"] for r in runtime.audit.recent(limit=100_000, decisions=["approve", "reject"])}
    assert decided == jobs  # every run was gated once: twins and duplicates included
    stats = runtime.ledger.stats()
    assert stats.get("processing", 0) == 0  # no claim left hanging
    assert fake.unexpected == []
    five_xx = data.server_errors + runs.server_errors
    assert {s for s in (*data.answers, *runs.answers) if s >= 500} <= {500, 503}  # transient answers only

    write_figures("storm", {
        "events": data.events + runs.events, "duplicates": data.duplicates + runs.duplicates,
        "deliveries": data.posts + runs.posts, "concurrency": 8, "data_versions": versions,
        "runs": len(jobs), "jobs_created": len(jobs), "jobs_expected": versions,
        "models_registered": len(models), "models_expected": len(approved_jobs),
        "audit_repeats": len(approved) - len(approved_jobs),
        "faults_injected": fake.injected, "fault_rate": fake.fault_rate,
        "table_faults_injected": fake.tables.total_injected, "table_requests": fake.tables.requests,
        "table_faults_by_kind": dict(fake.tables.injected), "lost": len(data.lost) + len(runs.lost),
        "transient_5xx_answers": five_xx, "ledger_duplicates_counted": stats.get("duplicates", 0),
        "seconds": round(data.seconds + runs.seconds, 1)},
        scale=f"{versions} data versions" if os.environ.get("RELIABILITY_STORM_VERSIONS") else None)

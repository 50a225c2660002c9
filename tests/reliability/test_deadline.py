"""One deadline per invocation (issue 11, item 8): a chain of SDK calls cannot outlast it, whatever each service
answers, and a trigger whose deadline is spent answers "retry later" with its claim released.

The SDK clients are the real ones (azure-ai-ml's MLClient, azure-data-tables), on injected transports: the fake Azure
ML service answers every request with a 429 or a 503 carrying a Retry-After, and Table Storage (Azurite) is reached
through a transport that refuses every request with the same. Before the deadline, each call had its own 20 s
budget, so a chain of them ran for as long as it had calls."""
from __future__ import annotations

import threading
import time
import uuid

import httpx
import pytest

from shared import retry
from shared.adapters.azureml import build_workspace
from shared.adapters.tables import build_stores, with_app_retries
from shared.config import Settings
from shared.errors import TransientError
from shared.local import wire
from shared.local.host import LocalHost, index
from tests.fakes.azureml_service import FakeAzureML, FakeCredential
from tests.helpers import GeneratedLanding, Recording
from tests.integration.test_azure_backend import AzureArc
from tests.reliability.faults import FaultyTransport

pytestmark = pytest.mark.filterwarnings("ignore::marshmallow.warnings.RemovedInMarshmallow4Warning")
DEADLINE = 1.5
SLACK = 0.6  # one in-flight request and the bookkeeping grace are allowed to finish past it


def settings_for(fake: FakeAzureML) -> Settings:
    return Settings(backend="azure", subscription_id=fake.subscription_id, resource_group=fake.resource_group,
                    workspace=fake.workspace, datastore="landing", landing_container="landing",
                    ledger_table_uri="https://mlopsapp.table.core.windows.net/")


def test_a_chain_of_throttled_sdk_calls_cannot_outlast_the_deadline(azurite):
    fake = FakeAzureML()
    fake.fail_next(429, retry_after=0.4, times=100_000)  # every Azure ML request: throttled, try again in 0.4 s
    tables = FaultyTransport(fault_rate=0.0, retry_after_ms=400, max_sleep=None)
    stores = build_stores(with_app_retries(azurite.service(transport=tables)),
                          names={k: f"{k}{uuid.uuid4().hex[:10]}" for k in ("ledger", "audit", "outbox", "states")})
    tables.fault_rate = 1.0  # and every Table Storage request from now on
    ws = build_workspace(settings_for(fake), FakeCredential(), transport=fake)
    calls = [lambda: ws.get_job("train-churn-v1-a1"), lambda: ws.get_model("churn-model", "1"),
             lambda: stores["ledger"].claim("k", event_type="X", lease_seconds=60),
             lambda: ws.get_data("churn", "1"), lambda: stores["states"].load("churn-endpoint"),
             lambda: ws.get_endpoint("churn-endpoint"), lambda: ws.list_models("churn-model")] * 3
    errors = []
    try:
        started = time.monotonic()
        with retry.deadline(DEADLINE):
            for call in calls:
                with pytest.raises(TransientError) as caught:
                    call()
                errors.append(caught.value)
            elapsed = time.monotonic() - started
            asked = len(fake.requests), tables.requests
            time.sleep(retry.remaining() + 0.01)
            with pytest.raises(retry.DeadlineExceeded):  # once it is spent, nothing more is even started
                ws.get_job("train-churn-v1-a1")
            with pytest.raises(retry.DeadlineExceeded):
                stores["ledger"].claim("k", event_type="X", lease_seconds=60)
            assert (len(fake.requests), tables.requests) == asked
    finally:
        ws.close()
        fake.shutdown()
    # 21 calls, each of which alone would retry 3 times 0.4 s apart: about 25 s without the shared deadline.
    assert elapsed < DEADLINE + SLACK, f"{elapsed:.2f}s"
    assert len(errors) == len(calls)
    assert sum(fake.slept) < DEADLINE  # no retry sleeps past the deadline: late calls get one try and no wait
    assert fake.find("GET") and tables.requests > 0  # both services were really asked (and throttled) first


def test_a_trigger_whose_deadline_is_spent_asks_for_redelivery_with_its_claim_released(azurite):
    import function_app
    from shared.bootstrap import build

    fake = FakeAzureML()
    suffix = uuid.uuid4().hex[:10]
    stores = build_stores(with_app_retries(azurite.service()),
                          names={k: f"{k}{suffix}" for k in ("ledger", "audit", "outbox", "states")})
    # the landed blob exists nowhere: its contract check reads a generated file (tests/helpers.py)
    runtime = build(settings_for(fake), credential=FakeCredential(), transport=fake, notifier=Recording(),
                    landing=GeneratedLanding(), **stores)
    function_app.use_runtime(runtime)
    entry = next(f.call for f in index(function_app.app) if f.name == "on_blob_created")
    saved, entry.deadline_seconds = entry.deadline_seconds, DEADLINE
    host = LocalHost(function_app.app, port=0).start()
    try:
        outage = fake.fail_next(503, retry_after=0.3, times=100_000)  # Azure ML stays unavailable
        event = wire.blob_created("landing", "churn/1/churn.csv", content_length=4096, account="mlopsdata",
                                  event_id=str(uuid.uuid4()))
        def deliver() -> tuple[int, float]:
            started = time.monotonic()
            answer = httpx.post(f"{host.url}/runtime/webhooks/eventgrid", params={"functionName": "on_blob_created",
                                "code": host.key}, headers={"aeg-event-type": "Notification"}, json=[event],
                                timeout=60)
            return answer.status_code, time.monotonic() - started

        status, elapsed = deliver()
        assert status == 500  # what the Event Grid extension answers a failed function: redeliver
        assert elapsed < DEADLINE + SLACK, f"{elapsed:.2f}s"  # before: 20 s per SDK call, several in a row
        outage.times = 0  # Azure ML is back
        with fake._lock:
            fake._faults.remove(outage)
        # The redelivery is not met with Busy: the claims were released although the deadline was spent.
        status, _ = deliver()
        assert status == 202
        assert [r.status for r in fake.find("PUT", "/jobs/train-churn-v1-a1")][-1] in (200, 201)
    finally:
        host.stop()
        entry.deadline_seconds = saved
        function_app.use_runtime(None)
        runtime.close()
        fake.shutdown()


def pollers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("LROPoller(") and t.is_alive()]


def test_a_long_running_operation_is_left_to_finish_at_the_deadline_without_a_poller(azurite):
    arc = AzureArc(azurite)
    try:
        arc.deliver(arc.land("1"))
        arc.deliver(arc.finish("train-churn-v1-a1", auc=0.80, logloss=0.45))  # the endpoint and v1-1 exist
        arc.clock.advance(minutes=30)
        arc.deliver(arc.land("2"))
        arc.fake.hold_operations = True  # the next deployment stays InProgress for as long as anyone polls
        assert arc.rt.workspace.lro_timeout >= 20  # its own limit is not what stops the wait here
        started = time.monotonic()
        with retry.deadline(DEADLINE), pytest.raises(TransientError):
            arc.deliver(arc.finish("train-churn-v2-a1", auc=0.86, logloss=0.40))
        assert time.monotonic() - started < DEADLINE + SLACK
        until = time.monotonic() + 5
        while pollers() and time.monotonic() < until:
            time.sleep(0.05)
        assert pollers() == []
        # The next delivery, after Azure finished the operation, picks the result up.
        arc.fake.hold_operations = False
        arc.deliver(arc.finish("train-churn-v2-a1", auc=0.86, logloss=0.40))
        assert len(arc.puts("/deployments/")) >= 2
    finally:
        arc.close()


class FlakyLedger:
    """A SqliteLedger whose release/complete answer a transient 503 the first ``failures`` times (per key)."""

    def __init__(self, ledger, failures: int) -> None:
        self._ledger, self.failures, self.seen = ledger, failures, {}

    def _flaky(self, op: str, key: str) -> None:
        n = self.seen[(op, key)] = self.seen.get((op, key), 0) + 1
        if n <= self.failures:
            from shared.errors import Throttled

            raise Throttled(f"{op} {key}: HTTP 503: injected", retry_after=None)

    def release(self, key, **kw):
        self._flaky("release", key)
        return self._ledger.release(key, **kw)

    def complete(self, key, *args, **kw):
        self._flaky("complete", key)
        return self._ledger.complete(key, *args, **kw)

    def __getattr__(self, name):
        return getattr(self._ledger, name)


@pytest.mark.parametrize("failing", ["transient", "done"])
def test_a_claim_is_settled_through_a_transient_fault_of_the_ledger_itself(tmp_path, failing):
    """Before, one 503 on the release (or the completion) of a claim left it held: every redelivery met Busy
    until its lease ran out (5 minutes), and the storm's deliverers gave the event up."""
    from dataclasses import dataclass as _dc

    from shared.bus import Bus, Handled
    from shared.local.ledger import SqliteAuditLog, SqliteLedger
    from shared.messages import Message

    @_dc(frozen=True)
    class Poke(Message):
        pass

    def handler(message):
        if failing == "transient":
            raise TransientError("Azure ML said 503")
        return Handled("done", "ok")

    ledger = FlakyLedger(SqliteLedger(tmp_path / "ledger.db"), failures=1)
    bus = Bus({Poke: handler}, ledger=ledger, audit=SqliteAuditLog(tmp_path / "ledger.db"), notifier=Recording())
    if failing == "transient":
        with pytest.raises(TransientError, match="Azure ML"):
            bus.handle(Poke(event_id="e-1"))
        state = ledger.claim("e-1/Poke", event_type="Poke")  # the redelivery is not Busy
        assert state == "new" and state.attempt == 2
    else:
        [result] = bus.handle(Poke(event_id="e-1"))
        assert result.outcome == "done"
        assert ledger.claim("e-1/Poke", event_type="Poke") == "done"

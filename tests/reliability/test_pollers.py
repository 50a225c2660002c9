"""A long-running operation the adapter stops waiting for leaves no polling thread behind and prints nothing
(issue 11, item 9)."""
from __future__ import annotations

import threading
import time

import pytest

from shared.errors import TransientError
from tests.integration.test_azure_backend import AzureArc

pytestmark = pytest.mark.filterwarnings("ignore::marshmallow.warnings.RemovedInMarshmallow4Warning")


def pollers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("LROPoller(") and t.is_alive()]


def test_an_abandoned_operation_stops_its_poller_and_nothing_reaches_stdout(azurite, capfd):
    arc = AzureArc(azurite)
    try:
        arc.deliver(arc.land("1"))
        arc.deliver(arc.finish("train-churn-v1-a1", auc=0.80, logloss=0.45))  # the endpoint and v1-1 exist
        arc.clock.advance(minutes=30)
        arc.deliver(arc.land("2"))
        capfd.readouterr()
        arc.fake.hold_operations = True  # the next deployment stays InProgress for as long as anyone polls
        arc.rt.workspace.lro_timeout = 0.5
        with pytest.raises(TransientError, match="deployment.*still"):
            arc.deliver(arc.finish("train-churn-v2-a1", auc=0.86, logloss=0.40))
        deadline = time.monotonic() + 5
        while pollers() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pollers() == []  # before: one thread per abandoned operation, polling until the operation ends
        polls = len(arc.fake.find("GET", "mfeOperationsStatus"))
        time.sleep(0.3)
        assert len(arc.fake.find("GET", "mfeOperationsStatus")) == polls  # and nobody polls any more
        out, _ = capfd.readouterr()
        assert out == ""  # before: a dot per poll
    finally:
        arc.close()

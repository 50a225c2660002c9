"""One chain, one correlation id: BlobCreated → data → job → RunCompleted → model → deployment on the local
backend, followed through the tags and through every log line the chain's events produce."""
from __future__ import annotations

import io
import json
import logging

import pytest

from shared import logs
from tests.helpers import Harness

pytestmark = pytest.mark.slow


def test_the_data_event_id_follows_the_chain_to_the_deployment_in_tags_and_logs(tmp_path):
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = logs.setup_local(logging.INFO, stream)
    h = Harness(tmp_path, min_primary=0.6)
    try:
        landed = h.land("1", rows=900, seed=201, label_noise=0.15)
        chain = landed["id"]
        h.deliver(landed)
        h.pump()
        assert h.traffic() == {"churn-model-v1": 100}
        # the tags: data asset, job, model and deployment all name the data event
        assert h.ws.get_data("churn", "1").tags[logs.TAG_CORRELATION] == chain
        assert h.ws.get_job("train-churn-v1-a1").tags[logs.TAG_CORRELATION] == chain
        assert h.ws.get_model("churn-model", "1").tags[logs.TAG_CORRELATION] == chain
        deployment = h.ws.get_endpoint("churn-endpoint").deployment("churn-model-v1")
        assert deployment.tags[logs.TAG_CORRELATION] == chain
        # the logs: every line of every event of the chain carries it, each with its own event id
        events = {e["eventType"].rsplit(".", 1)[-1]: e["id"] for e in h.delivered}
        assert {"BlobCreated", "RunCompleted", "ModelRegistered"} <= set(events), events
        assert len(set(events.values())) == len(events), "each hop is its own event"
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        for hop in ("BlobCreated", "RunCompleted", "ModelRegistered"):
            mine = [line for line in lines if line["event_id"] == events[hop]]
            assert mine, f"no log line for {hop}"
            assert {line["correlation_id"] for line in mine} == {chain}, (hop, mine)
    finally:
        h.close()
        root.removeHandler(handler)
        root.setLevel(level)


def test_a_new_event_outside_any_chain_is_its_own_chain(tmp_path):
    h = Harness(tmp_path)
    try:
        with logs.scope(correlation_id="left-over"):
            seen = []
            h.rt.bus.handlers = {**h.rt.bus.handlers}
            from shared.messages import EventIgnored

            original = h.rt.bus.handlers[EventIgnored]
            h.rt.bus.handlers[EventIgnored] = lambda m: (seen.append(logs.current()), original(m))[1]
            h.rt.bus.handle(EventIgnored(event_id="evt-x", event_type="Other", reason="test"))
        assert seen == [{"invocation_id": "", "event_id": "evt-x", "correlation_id": "evt-x"}]
    finally:
        h.close()

"""Structured logs: JSON lines with the invocation, event and chain ids; Application Insights configured offline."""
from __future__ import annotations

import inspect
import io
import json
import logging
from types import SimpleNamespace

import pytest

from shared import logs


@pytest.fixture
def capture():
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = logs.setup_local(logging.INFO, stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.removeHandler(handler)
    root.setLevel(level)


def test_a_line_is_json_with_time_level_logger_message_and_the_three_ids(capture):
    log = logging.getLogger("shared.test")
    with logs.scope(invocation_id="inv-1", event_id="evt-1", correlation_id="chain-1"):
        log.info("hello %s", "world")
    log.warning("outside")
    inside, outside = capture()
    assert inside["message"] == "hello world" and inside["level"] == "INFO" and inside["logger"] == "shared.test"
    assert (inside["invocation_id"], inside["event_id"], inside["correlation_id"]) == ("inv-1", "evt-1", "chain-1")
    assert inside["time"].endswith("+00:00") and "T" in inside["time"]
    assert (outside["invocation_id"], outside["event_id"], outside["correlation_id"]) == ("", "", "")


def test_an_exception_is_kept_in_its_line(capture):
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("shared.test").exception("failed")
    (line,) = capture()
    assert "ValueError: boom" in line["exception"]


def test_scopes_nest_and_restore():
    with logs.scope(event_id="a", correlation_id="c1"):
        with logs.scope(event_id="b"):
            assert logs.current() == {"invocation_id": "", "event_id": "b", "correlation_id": "c1"}
            logs.adopt({logs.TAG_CORRELATION: "c0"})
            assert logs.correlation() == "c0"
        assert logs.current()["event_id"] == "a" and logs.correlation() == "c1"
    assert logs.current() == {"invocation_id": "", "event_id": "", "correlation_id": ""}


def test_tags_carry_the_source_chain_else_the_current_one():
    with logs.scope(correlation_id="now"):
        assert logs.tag({}, {logs.TAG_CORRELATION: "root"}) == {logs.TAG_CORRELATION: "root"}
        assert logs.tag({"a": "1"}) == {"a": "1", logs.TAG_CORRELATION: "now"}
    assert logs.tag({}) == {}


def test_a_trigger_gets_the_hosts_invocation_id_or_a_local_one():
    seen = []

    @logs.invoked
    def trigger(req: str) -> str:
        seen.append(logs.current()["invocation_id"])
        return req

    assert list(inspect.signature(trigger).parameters) == ["req", "context"]  # the worker passes func.Context
    assert trigger("x", context=SimpleNamespace(invocation_id="6f1c-host")) == "x"
    trigger(req="y")
    assert seen[0] == "6f1c-host" and seen[1].startswith("local-") and logs.current()["invocation_id"] == ""


def test_application_insights_is_off_without_a_connection_string(monkeypatch):
    monkeypatch.setattr(logs, "_azure_done", False)
    calls = []
    assert logs.setup_azure({}, configure=lambda **kw: calls.append(kw)) is False
    assert calls == []


def test_application_insights_gets_the_apps_loggers_with_the_ids(monkeypatch):
    monkeypatch.setattr(logs, "_azure_done", False)
    records: list[logging.LogRecord] = []

    class Exporter(logging.Handler):  # stands in for OpenTelemetry's LoggingHandler: keeps what it would send
        def emit(self, record):
            records.append(record)

    exporter = Exporter()
    calls = []

    def configure(**kwargs):
        calls.append(kwargs)
        logging.getLogger(kwargs["logger_name"]).addHandler(exporter)

    env = {logs.CONNECTION_SETTING: "InstrumentationKey=00000000-0000-0000-0000-000000000000",
           "WEBSITE_INSTANCE_ID": "inst-7"}
    try:
        assert logs.setup_azure(env, configure=configure) is True
        assert logs.setup_azure(env, configure=configure) is True  # once per process
        assert len(calls) == 1
        (call,) = calls
        assert call["connection_string"] == env[logs.CONNECTION_SETTING] and call["logger_name"] == "shared"
        assert call["resource"].attributes["service.name"] == "mlops-reflex"
        assert call["resource"].attributes["service.instance.id"] == "inst-7"
        with logs.scope(invocation_id="inv-9", event_id="evt-9", correlation_id="chain-9"):
            logging.getLogger("shared.handlers").info("from the library")
            logging.getLogger("function_app").info("from a trigger")
        assert [(r.name, r.invocation_id, r.event_id, r.correlation_id) for r in records] == [
            ("shared.handlers", "inv-9", "evt-9", "chain-9"), ("function_app", "inv-9", "evt-9", "chain-9")]
    finally:
        for name in logs.LOGGERS:
            logging.getLogger(name).removeHandler(exporter)


def test_every_trigger_declares_an_unannotated_context_the_worker_can_pass():
    """The Python worker passes func.Context to a function that has a ``context`` parameter; it resolves the other
    annotations with typing.get_type_hints, which must still work through the wrapper."""
    import typing

    import function_app
    from shared.local.host import index

    functions = index(function_app.app)
    assert len(functions) >= 10
    for f in functions:
        params = inspect.signature(f.call).parameters
        assert list(params)[-1] == "context" and f.arg_name in params, f.name
        hints = typing.get_type_hints(f.call)
        assert "context" not in hints and hints[f.arg_name].__module__.startswith("azure.functions"), f.name


def test_local_json_lines_follow_stderr_when_it_is_swapped_and_closed(monkeypatch):
    """A command run in-process (mlops → the local command line, a test runner's capture) swaps sys.stderr and
    closes it afterwards: the process's handler must not keep writing into the closed stream."""
    import io
    import logging

    from shared import logs

    root = logging.getLogger()
    before = list(root.handlers), root.level
    first = io.StringIO()
    monkeypatch.setattr("sys.stderr", first)
    handler = logs.setup_local(logging.INFO)
    try:
        logging.getLogger("shared.test").info("one")
        first.close()
        second = io.StringIO()
        monkeypatch.setattr("sys.stderr", second)
        logging.getLogger("shared.test").info("two")
        text = second.getvalue()
        assert "Logging error" not in text
        lines = [json.loads(line) for line in text.splitlines()]
        assert [line["message"] for line in lines] == ["two"]
    finally:
        root.removeHandler(handler)
        root.handlers[:] = before[0]
        root.setLevel(before[1])

"""Structured logs: every line says which event it serves, which chain it belongs to and which invocation ran it.

    invocation_id   the Functions invocation (func.Context.invocation_id; locally a generated "local-..." id)
    event_id        the event or request being handled (a message's event_id)
    correlation_id  the chain: the event that started it (a data event, a drift alert, a manual request), carried
                    from the data asset to the job, the model and the deployment in the ``mlops_correlation`` tag
                    and read back from each resource a later event is about

Three context variables hold them; ``ContextFilter`` copies them onto every log record. Locally the records are
written as JSON lines (``setup_local``); in Azure, when APPLICATIONINSIGHTS_CONNECTION_STRING is set,
``setup_azure`` sends them to Application Insights through OpenTelemetry (azure-monitor-opentelemetry, imported
only then), where the three ids arrive as custom dimensions. docs/observability.md shows how to query them.
"""
from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import IO, Any

TAG_CORRELATION = "mlops_correlation"  # written on data assets, jobs, models and deployments
CONNECTION_SETTING = "APPLICATIONINSIGHTS_CONNECTION_STRING"
SERVICE_NAME = "mlops-reflex"
LOGGERS = ("shared", "function_app")  # the app's own loggers: what Application Insights gets from us
FIELDS = ("invocation_id", "event_id", "correlation_id")

_invocation: ContextVar[str] = ContextVar("mlops_invocation_id", default="")
_event: ContextVar[str] = ContextVar("mlops_event_id", default="")
_correlation: ContextVar[str] = ContextVar("mlops_correlation_id", default="")
_VARS = {"invocation_id": _invocation, "event_id": _event, "correlation_id": _correlation}


def current() -> dict[str, str]:
    """The ids of the code running now ("" for those not set)."""
    return {name: var.get() for name, var in _VARS.items()}


def correlation() -> str:
    return _correlation.get()


@contextmanager
def scope(**ids: str | None) -> Iterator[None]:
    """Set some of the ids (invocation_id, event_id, correlation_id) for the block; None (or leaving one out) keeps
    it as it is. On exit all three are as they were before, whatever ``adopt`` did inside."""
    unknown = set(ids) - set(_VARS)
    if unknown:
        raise TypeError(f"unknown log ids {sorted(unknown)}")
    tokens = []
    try:
        for name, var in _VARS.items():
            value = ids.get(name)
            tokens.append((var, var.set(var.get() if value is None else str(value))))
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


@contextmanager
def invocation(context: Any = None) -> Iterator[str]:
    """The scope of one Functions invocation: the host's invocation id, or a generated one (local host, tests)."""
    invocation_id = str(getattr(context, "invocation_id", "") or "") or f"local-{uuid.uuid4()}"
    with scope(invocation_id=invocation_id):
        yield invocation_id


def invoked(function: Any) -> Any:
    """A Functions trigger that runs in the scope of its invocation. The wrapper declares a ``context`` parameter,
    so the Functions worker passes the invocation's func.Context (the local host and tests pass none)."""
    signature = inspect.signature(function)
    if "context" in signature.parameters:
        raise TypeError(f"{function.__name__} already takes a context")

    @functools.wraps(function)
    def run(*args: Any, context: Any = None, **kwargs: Any) -> Any:
        with invocation(context):
            return function(*args, **kwargs)

    run.__signature__ = signature.replace(parameters=[  # type: ignore[attr-defined]
        *signature.parameters.values(),
        inspect.Parameter("context", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)])
    return run


def adopt(tags: Mapping[str, str] | None) -> str:
    """Join the chain a resource belongs to: its correlation tag becomes the current correlation id (for the rest
    of the current scope). Returns the correlation id now in force."""
    value = (tags or {}).get(TAG_CORRELATION, "")
    if value:
        _correlation.set(value)
    return _correlation.get()


def tag(tags: dict[str, str], source: Mapping[str, str] | None = None) -> dict[str, str]:
    """``tags`` with the chain's correlation id: the source resource's, else the current one."""
    value = (source or {}).get(TAG_CORRELATION) or _correlation.get()
    if value:
        tags[TAG_CORRELATION] = value
    return tags


class ContextFilter(logging.Filter):
    """Puts the current ids on every record (a record that already has one, from ``extra``, keeps it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _VARS.items():
            if not getattr(record, name, ""):
                setattr(record, name, var.get())
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, the three ids, and the exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            line[name] = getattr(record, name, "") or ""
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class _CurrentStderr(logging.StreamHandler):
    """A StreamHandler bound to the current ``sys.stderr`` rather than the one at construction."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_local(level: int = logging.INFO, stream: IO[str] | None = None) -> logging.Handler:
    """JSON lines on ``stream`` (stderr) for the whole process: the local host and the CLI. Without a ``stream``
    each line goes to whatever ``sys.stderr`` is when it is written, so a stream swapped in and closed again (a
    command run in-process, a test runner) never leaves the handler writing to a closed file."""
    handler = logging.StreamHandler(stream) if stream is not None else _CurrentStderr()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_mlops_json", False)]:
        root.removeHandler(old)
    handler._mlops_json = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    return handler


_azure_lock = threading.Lock()
_azure_done = False


def setup_azure(environ: Mapping[str, str] | None = None, *, configure: Any = None) -> bool:
    """Send the app's logs to Application Insights through OpenTelemetry when a connection string is set.

    Once per process; returns whether it is configured. ``configure`` replaces
    ``azure.monitor.opentelemetry.configure_azure_monitor`` in tests (no network)."""
    global _azure_done
    env = os.environ if environ is None else environ
    connection = env.get(CONNECTION_SETTING, "")
    if not connection:
        return False
    with _azure_lock:
        if _azure_done:
            return True
        if configure is None:
            from azure.monitor.opentelemetry import configure_azure_monitor as configure
        from opentelemetry.sdk.resources import Resource

        resource = Resource.create({"service.name": SERVICE_NAME,
                                    "service.instance.id": env.get("WEBSITE_INSTANCE_ID", "") or "local"})
        configure(connection_string=connection, logger_name=LOGGERS[0], resource=resource)
        first = logging.getLogger(LOGGERS[0])
        exporters = [h for h in first.handlers if not getattr(h, "_mlops_json", False)]
        for name in LOGGERS:
            logger = logging.getLogger(name)
            if logger.level == logging.NOTSET or logger.level > logging.INFO:
                logger.setLevel(logging.INFO)
            for handler in exporters:
                if handler not in logger.handlers:
                    logger.addHandler(handler)
                if not any(isinstance(f, ContextFilter) for f in handler.filters):
                    handler.addFilter(ContextFilter())
        _azure_done = True
        return True

"""Composition root: the only place that knows which adapters exist and constructs clients."""
from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from typing import Any

from shared import handlers
from shared.bus import Bus, HeldClaims
from shared.config import Settings, SettingsError, requirements

logger = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Runtime:
    """Everything one Function App instance holds: the bus and the ports behind it."""

    settings: Settings
    bus: Bus
    deps: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:  # runtime.workspace, runtime.audit, ...
        deps = self.__dict__.get("deps", {})
        if name in deps:
            return deps[name]
        raise AttributeError(name)

    def close(self) -> None:
        for dep in self.deps.values():
            closer = getattr(dep, "close", None)
            if callable(closer) and dep is not self:
                closer()


def _inject(handler: Callable, deps: dict[str, Any]) -> Callable:
    """Bind a handler's keyword parameters by name (cosmicpython's bootstrap); optional ones may be absent."""
    params = inspect.signature(handler).parameters
    bound = {}
    for name, p in params.items():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        if name in deps:
            bound[name] = deps[name]
        elif p.default is inspect.Parameter.empty:
            raise TypeError(f"{handler.__name__} needs {name!r}, which the composition root does not provide")
    return partial(handler, **bound)


def _local(settings: Settings, given: dict[str, Any]) -> dict[str, Any]:
    from shared.local.ledger import SqliteAuditLog, SqliteLedger

    home = settings.home
    deps: dict[str, Any] = {}
    if "workspace" not in given:
        from shared.local.workspace import WORKSPACE_DIR, LocalWorkspace

        deps["workspace"] = LocalWorkspace(home / WORKSPACE_DIR, emit=given.get("emit"))
    if "ledger" not in given:
        deps["ledger"] = SqliteLedger(home / "ledger.db")
    if "audit" not in given:
        deps["audit"] = SqliteAuditLog(home / "ledger.db")
    if "states" not in given:
        from shared.local.state import SqliteStateStore

        deps["states"] = SqliteStateStore(home / "ledger.db")
    if "notifier" not in given:
        from shared.local.outbox import SqliteOutbox
        from shared.notify import build_notifier

        deps["notifier"] = build_notifier(settings, store=SqliteOutbox(home / "outbox.db"),
                                          stream=given.get("alert_stream"))
    if "landing" not in given:
        from shared.datacontract import LocalLandingReader

        resolve = getattr(given.get("workspace") or deps["workspace"], "local_path", None)
        deps["landing"] = LocalLandingReader(resolve) if callable(resolve) else None
    if "monitor" not in given:
        from shared.local.monitor import LocalMonitor

        deps["monitor"] = LocalMonitor(given.get("workspace") or deps["workspace"], emit=given.get("emit"))
    return deps


def _azure(settings: Settings, given: dict[str, Any]) -> dict[str, Any]:
    from shared.adapters.wiring import build_azure

    missing = [p for p in requirements(settings) if p.severity == "error"]
    if missing:  # every missing setting in one message, before any client is made
        raise SettingsError(missing)
    options = {k: given[k] for k in ("credential", "transport") if k in given}
    deps = {k: v for k, v in build_azure(settings, **options).items() if k not in given}
    if "landing" not in given and "landing" not in deps:
        from shared.adapters.landing import BlobLandingReader

        deps["landing"] = BlobLandingReader(deps.get("credential") or given.get("credential"),
                                            **({"transport": given["transport"]} if "transport" in given else {}))
    if "notifier" not in given:
        from shared.notify import build_notifier

        deps["notifier"] = build_notifier(settings, store=deps.get("outbox") or given["outbox"])
    return deps


def build(settings: Settings | None = None, **overrides: Any) -> Runtime:
    """Wire the app for ``settings.backend``; any port can be replaced by keyword (tests, the local host).

    ``build(settings, notifier=Recording())`` is the usual test form. ``emit`` (local only) is where the
    embedded workspace sends the Event Grid events it raises; ``clock`` replaces the wall clock.
    """
    settings = settings or Settings.from_env()
    given = {k: v for k, v in overrides.items() if v is not None}
    made = _local(settings, given) if settings.backend == "local" else _azure(settings, given)
    deps: dict[str, Any] = {**made, **given, "settings": settings}
    deps.setdefault("clock", utcnow)
    deps.setdefault("metrics", deps["workspace"])  # the embedded workspace reads its own run metrics
    deps.setdefault("publisher", None)
    table = {**handlers.EVENT_HANDLERS, **handlers.COMMAND_HANDLERS}
    # Handlers see the ledger through HeldClaims: a claim they take is settled by the bus if they fail.
    handler_deps = {**deps, "ledger": HeldClaims(deps["ledger"])}
    bound = {message_type: _inject(fn, handler_deps) for message_type, fn in table.items()}
    notifier = deps["notifier"]
    flush = getattr(notifier, "flush", None)
    bus = Bus(bound, ledger=deps["ledger"], audit=deps["audit"], notifier=notifier,
              after_commit=flush if callable(flush) else None)
    logger.info("built %s backend", settings.backend)
    return Runtime(settings=settings, bus=bus, deps=deps)

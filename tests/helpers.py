"""Test helpers: a recording notifier and a harness that drives the bus on the embedded backend."""
from __future__ import annotations

import threading
import time
from pathlib import Path

from shared import eventgrid
from shared.bootstrap import build
from shared.config import Settings
from shared.datacontract import Head
from shared.domain import Alert
from shared.errors import InvalidPayload
from shared.local.churn import write_csv
from shared.local.clock import SimClock


class GeneratedLanding:
    """The data contract's reader for landed blobs that exist nowhere (the fake Azure ML service serves Azure ML only):
    every head is a generated churn table. The real blob reader is tested against Azurite
    (tests/integration/test_landing_blob.py)."""

    def head(self, path: str, max_bytes: int = 0) -> Head:
        import csv
        import io

        from shared.local.churn import generate

        out = io.StringIO()
        rows = generate(100, seed=1)
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        data = out.getvalue().encode()
        return Head(name=path.rsplit("/", 1)[-1], data=data, size=len(data))


class Recording:
    """The Notifier port, keeping every alert (a fake of our own one-method port, not a mock)."""

    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def notify(self, alert: Alert) -> None:
        self.alerts.append(alert)

    def kinds(self) -> list[str]:
        return [a.kind for a in self.alerts]


class Harness:
    """The real bus, handlers, SQLite ledger and LocalWorkspace; events the workspace emits are collected and
    delivered by ``pump()`` in Event Grid wire format, optionally twice each."""

    def __init__(self, home: Path, *, env: dict[str, str] | None = None, ports: dict | None = None,
                 notifier=None, **policy) -> None:
        self.home = home
        self.events: list[dict] = []
        self._lock = threading.Lock()
        self.clock = SimClock()
        settings = Settings.from_env({"MLOPS_HOME": str(home), **(env or {})})
        self.settings = settings.with_policy(**policy) if policy else settings
        self.notifier = notifier if notifier is not None else Recording()
        self.rt = build(self.settings, emit=self._emit, notifier=self.notifier, clock=self.clock, **(ports or {}))
        self.ws = self.rt.workspace
        self.delivered: list[dict] = []

    def _emit(self, event: dict) -> None:
        with self._lock:
            self.events.append(event)

    def deliver(self, event: dict):
        try:
            message = eventgrid.to_message(event)
        except InvalidPayload as error:
            return [self.rt.bus.reject(event.get("id", "?"), event.get("eventType", "?"), error)]
        self.delivered.append(event)
        return self.rt.bus.handle(message)

    def pump(self, *, twice: bool = False, timeout: float = 120) -> list:
        results = []
        while True:
            self.ws.wait_for_jobs(timeout=timeout)
            with self._lock:
                batch, self.events = self.events, []
            if not batch:
                self.ws.wait_for_jobs(timeout=timeout)
                with self._lock:
                    if not self.events:
                        return results
                continue
            for event in batch:
                results.extend(self.deliver(event))
                if twice:
                    results.extend(self.deliver(event))

    def land(self, version: str, **gen) -> dict:
        path = write_csv(self.home / "gen" / f"v{version}.csv", **gen)
        return self.ws.land(self.settings.landing_container, f"churn/{version}/data.csv", path)

    def traffic(self) -> dict[str, int]:
        ep = self.ws.get_endpoint("churn-endpoint")
        return {k: v for k, v in ep.traffic.items() if v} if ep else {}

    def decisions(self, decision: str | None = None) -> list:
        return [r for r in self.rt.audit.recent(limit=1000) if decision is None or r.decision == decision]

    def close(self) -> None:
        self.rt.close()


class EpochClock:
    """Epoch seconds shared by the outbox and its store, so a test can jump past a window or a retry time."""

    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Recorder:
    """A channel that records what it was given; ``fail`` scripts exceptions for the next sends."""

    def __init__(self, key: str = "rec", *, fail: list[BaseException] | None = None, pause: float = 0.0,
                 gate: threading.Event | None = None) -> None:
        self.key = self.label = key
        self.sent: list[Alert] = []
        self.fail = list(fail or [])
        self.pause = pause
        self.gate = gate
        self.lock = threading.Lock()

    def send(self, alert: Alert, *, time_left: float | None = None) -> None:
        if self.gate is not None:
            self.gate.wait(5)
        if self.pause:
            time.sleep(self.pause)
        with self.lock:
            if self.fail:
                raise self.fail.pop(0)
            self.sent.append(alert)


def finished_job(ws, name: str, *, asset: str = "churn", version: str = "1", auc: float = 0.8,
                 logloss: float = 0.4) -> str:
    """A Completed training job with a model output and metrics in the embedded workspace, without training: for
    tests of what happens after a run (gate, rollout) that need many models fast. The model folder holds only an
    MLmodel file, so it registers and deploys but cannot score."""
    import json
    from datetime import datetime, timezone

    from shared.domain import OWNER_TAG, OWNER_VALUE, TAG_ASSET, TAG_ATTEMPT, TAG_DATA_VERSION

    out = ws.root / "jobs" / name / "outputs"
    (out / "model").mkdir(parents=True, exist_ok=True)
    (out / "model" / "MLmodel").write_text("flavors: {}\n")
    (out / "metrics.json").write_text(json.dumps({"auc": auc, "logloss": logloss}))
    tags = {OWNER_TAG: OWNER_VALUE, TAG_ASSET: asset, TAG_DATA_VERSION: version, TAG_ATTEMPT: "1"}
    ws._write("INSERT OR IGNORE INTO jobs (name, status, tags, experiment, data_path, max_run_seconds, created_at) "
              "VALUES (?, 'Completed', ?, 'test', '', 60, ?)",
              (name, json.dumps(tags), datetime.now(timezone.utc).isoformat()))
    return name

"""Embedded alert outbox on SQLite (WAL): queued alerts, per-target deliveries, retry times and the incident index."""
from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from shared.domain import Alert

logger = logging.getLogger(__name__)
T = TypeVar("T")

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    kind TEXT NOT NULL,
    severity TEXT NOT NULL,
    incident_key TEXT NOT NULL DEFAULT '',
    alert TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_due ON alerts(status, next_try);
CREATE TABLE IF NOT EXISTS deliveries (
    alert_id INTEGER NOT NULL,
    target TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (alert_id, target)
);
CREATE TABLE IF NOT EXISTS incidents (
    key TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    updated_at REAL NOT NULL
);
"""


def alert_to_json(alert: Alert) -> str:
    return json.dumps(dataclasses.asdict(alert), ensure_ascii=False, sort_keys=True)


def alert_from_json(raw: str) -> Alert:
    """Tolerant of fields added to or removed from Alert since the row was written."""
    data = json.loads(raw)
    known = {f.name for f in dataclasses.fields(Alert)}
    data = {k: v for k, v in data.items() if k in known}
    for pairs in ("facts", "links"):
        if pairs in data:
            data[pairs] = tuple((str(a), str(b)) for a, b in data[pairs])
    return Alert(**data)


def incident_totals(raw_states) -> dict[str, int]:
    """The incident part of a store's stats: repeats held back by dedupe, and incidents still open, from the
    stored incident states (JSON texts); every store keeps them the same way."""
    suppressed = open_ = 0
    for raw in raw_states:
        state = json.loads(raw)
        suppressed += int(state.get("suppressed_total", 0))
        open_ += state.get("state") == "open"
    return {"suppressed": suppressed, "open_incidents": open_}


class _Connection:
    """A thread's connection, closed when the thread's storage lets go of it (sqlite3 connections cannot be
    weakly referenced themselves)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def close(self) -> None:
        try:
            self.conn.close()
        except sqlite3.Error:  # closing from another thread can fail; the process is ending anyway
            pass

    __del__ = close


class SqliteOutbox:
    """The OutboxStore port on SQLite, plus what the Outbox uses when a store offers it: per-target delivery
    records, an incident index updated atomically, and leased claims so two flushers never send one alert twice.

    ``clock`` returns epoch seconds (injectable so tests can jump past a retry time).
    """

    def __init__(self, path: Path | str, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self._local = threading.local()
        # Every open connection, for close(); held weakly, so a thread that ends (the local host serves each
        # client connection on its own thread) takes its connection with it instead of leaking a file handle.
        self._conns: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._conns_lock = threading.Lock()
        self._conn().executescript(_SCHEMA)

    def __repr__(self) -> str:
        return f"SqliteOutbox({str(self.path)!r})"

    def _conn(self) -> sqlite3.Connection:
        owned = getattr(self._local, "conn", None)
        if owned is None:
            # One connection per thread; isolation_level=None so BEGIN IMMEDIATE makes read-modify-write atomic.
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            owned = self._local.conn = _Connection(conn)
            with self._conns_lock:
                self._conns.add(owned)
        return owned.conn

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    # --- OutboxStore -------------------------------------------------------------------------------------

    def add(self, alert: Alert) -> int:
        now = self.clock()
        cur = self._conn().execute(
            "INSERT INTO alerts (created_at, kind, severity, incident_key, alert, next_try, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (now, alert.kind, alert.severity, alert.incident_key, alert_to_json(alert), now, now))
        return int(cur.lastrowid)

    def holds_incident(self, incident_key: str, since: float) -> bool:
        """Whether a card of this incident was queued at or after ``since`` (epoch seconds)."""
        row = self._conn().execute("SELECT 1 FROM alerts WHERE incident_key = ? AND created_at >= ? LIMIT 1",
                                   (incident_key, since)).fetchone()
        return row is not None

    def pending(self, *, limit: int = 100) -> list[tuple[int, Alert, int]]:
        rows = self._conn().execute(
            "SELECT id, alert, attempts FROM alerts WHERE status = ? AND next_try <= ? ORDER BY id LIMIT ?",
            (PENDING, self.clock(), limit)).fetchall()
        return [(r[0], alert_from_json(r[1]), r[2]) for r in rows]

    def mark(self, alert_id: int, *, delivered: bool, error: str = "", retry_in_seconds: float | None = None) -> None:
        now = self.clock()
        if delivered:
            status, next_try = DELIVERED, now
        elif retry_in_seconds is None:
            status, next_try = FAILED, now
        else:
            status, next_try = PENDING, now + max(0.0, retry_in_seconds)
        self._conn().execute(
            "UPDATE alerts SET status = ?, attempts = attempts + 1, next_try = ?, last_error = ?, updated_at = ?"
            " WHERE id = ?", (status, next_try, error[:2000], now, alert_id))

    # --- extensions the Outbox uses when present -----------------------------------------------------------

    def claim_due(self, *, limit: int = 100, lease_seconds: float = 60.0) -> list[tuple[int, Alert, int]]:
        """Like ``pending`` but pushes the returned rows' next try ``lease_seconds`` ahead in the same transaction,
        so a concurrent flusher skips them; a flusher that dies mid-way just lets the lease run out.

        When nothing is due it answers from a plain read, without taking the write lock: the bus calls this after
        every message, and must not queue behind another process's write for nothing."""
        if self._conn().execute("SELECT 1 FROM alerts WHERE status = ? AND next_try <= ? LIMIT 1",
                                (PENDING, self.clock())).fetchone() is None:
            return []

        def work(conn: sqlite3.Connection) -> list[tuple[int, Alert, int]]:
            now = self.clock()
            rows = conn.execute(
                "SELECT id, alert, attempts FROM alerts WHERE status = ? AND next_try <= ? ORDER BY id LIMIT ?",
                (PENDING, now, limit)).fetchall()
            conn.executemany("UPDATE alerts SET next_try = ? WHERE id = ?",
                             [(now + lease_seconds, r[0]) for r in rows])
            return [(r[0], alert_from_json(r[1]), r[2]) for r in rows]
        return self._transaction(work)

    def defer(self, alert_ids: list[int], until: float) -> None:
        """Set the next try of pending alerts without counting an attempt (a lease given back, a paused target)."""
        self._conn().executemany("UPDATE alerts SET next_try = ? WHERE id = ? AND status = ?",
                                 [(until, i, PENDING) for i in alert_ids])

    def delivered_to(self, alert_id: int) -> set[str]:
        """Targets (channel keys, never URLs) that already have this alert."""
        rows = self._conn().execute("SELECT target FROM deliveries WHERE alert_id = ?", (alert_id,))
        return {r[0] for r in rows}

    def record_delivery(self, alert_id: int, target: str) -> None:
        self._conn().execute("INSERT OR IGNORE INTO deliveries (alert_id, target, at) VALUES (?, ?, ?)",
                             (alert_id, target, self.clock()))

    def update_incident(self, key: str, step: Callable[[dict | None], tuple[dict | None, T]]) -> T:
        """Run ``step(current) -> (new, result)`` on the incident's state atomically; returns ``result``."""
        def work(conn: sqlite3.Connection) -> T:
            row = conn.execute("SELECT state FROM incidents WHERE key = ?", (key,)).fetchone()
            new, result = step(json.loads(row[0]) if row else None)
            if new is None:
                conn.execute("DELETE FROM incidents WHERE key = ?", (key,))
            else:
                conn.execute("INSERT INTO incidents (key, state, updated_at) VALUES (?, ?, ?)"
                             " ON CONFLICT(key) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
                             (key, json.dumps(new, sort_keys=True), self.clock()))
            return result
        return self._transaction(work)

    # --- views -------------------------------------------------------------------------------------------

    def history(self) -> list[tuple[int, Alert, str, float, dict[str, float]]]:
        """Every alert: (id, alert, status, queued at, {target: delivered at}), oldest first (epoch seconds)."""
        conn = self._conn()
        times: dict[int, dict[str, float]] = {}
        for alert_id, target, at in conn.execute("SELECT alert_id, target, at FROM deliveries"):
            times.setdefault(alert_id, {})[target] = at
        return [(alert_id, alert_from_json(raw), status, created, times.get(alert_id, {}))
                for alert_id, raw, status, created in
                conn.execute("SELECT id, alert, status, created_at FROM alerts ORDER BY id")]

    def status(self, alert_id: int) -> dict[str, object] | None:
        """Status, attempts, next try (epoch seconds) and last error of one alert; for status views and tests."""
        row = self._conn().execute("SELECT status, attempts, next_try, last_error, kind FROM alerts WHERE id = ?",
                                   (alert_id,)).fetchone()
        if row is None:
            return None
        return {"status": row[0], "attempts": row[1], "next_try": row[2], "error": row[3], "kind": row[4],
                "delivered_to": sorted(self.delivered_to(alert_id))}

    def stats(self) -> dict[str, int]:
        """Alerts by status, plus deliveries made, open incidents and repeats suppressed by dedupe."""
        conn = self._conn()
        out = {PENDING: 0, DELIVERED: 0, FAILED: 0}
        out.update({r[0]: r[1] for r in conn.execute("SELECT status, COUNT(*) FROM alerts GROUP BY status")})
        out["deliveries"] = conn.execute(
            "SELECT COUNT(*) FROM deliveries WHERE target NOT LIKE 'rejected:%'").fetchone()[0]
        out.update(incident_totals(raw for (raw,) in conn.execute("SELECT state FROM incidents")))
        return out

    def close(self) -> None:
        with self._conns_lock:
            for owned in list(self._conns):
                owned.close()
            self._conns.clear()
        self._local = threading.local()

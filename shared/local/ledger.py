"""Embedded ledger and audit trail on SQLite (WAL): each event id takes effect once, every decision is kept."""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from shared.domain import AuditRecord
from shared.errors import Busy
from shared.ports import Claim

logger = logging.getLogger(__name__)

PROCESSING = "processing"
NEW = "new"
# Fact keys whose values name what a decision is about; `recent(subject=...)` searches them.
SUBJECT_KEYS = ("endpoint", "model", "asset", "deployment", "job", "to_deployment", "from_deployment")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS processed (
    key TEXT PRIMARY KEY,
    event_type TEXT NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    lease_until REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 1,
    duplicates INTEGER NOT NULL DEFAULT 0,
    holder TEXT NOT NULL DEFAULT '',
    payload TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    event_id TEXT NOT NULL,
    message TEXT NOT NULL,
    decision TEXT NOT NULL,
    reason TEXT NOT NULL,
    actor TEXT NOT NULL,
    facts TEXT NOT NULL,
    resources TEXT NOT NULL,
    subjects TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_at ON audit(at);
"""


def storable(value: object) -> str:
    """Text SQLite can store: a lone surrogate (valid in a Python str, not in UTF-8) is kept as its escape, so
    the same odd id always maps to the same key instead of failing to bind."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class _Db:
    """One SQLite connection per thread; WAL lets readers and one writer run side by side."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self.connect() as conn:
            conn.executescript(_SCHEMA)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(processed)")}
            for column in ("holder", "payload"):  # a ledger written before claims had fencing and parking
                if column not in columns:
                    conn.execute(f"ALTER TABLE processed ADD COLUMN {column} TEXT NOT NULL DEFAULT ''")

    def connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves so a claim is one atomic step.
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn


class SqliteLedger:
    """The Ledger port on SQLite. ``clock`` returns epoch seconds (injectable for lease tests)."""

    def __init__(self, path: Path, *, clock=time.time) -> None:
        self._db = _Db(path)
        self._clock = clock

    def claim(self, key: str, *, event_type: str, lease_seconds: float = 300.0) -> str:
        key, event_type = storable(key), storable(event_type)
        conn = self._db.connect()
        now = self._clock()
        stamp = _utcnow().isoformat()
        token = uuid.uuid4().hex
        conn.execute("BEGIN IMMEDIATE")  # outside the try: if it fails there is nothing to roll back
        try:
            row = conn.execute("SELECT outcome, lease_until, attempts FROM processed WHERE key = ?",
                               (key,)).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO processed (key, event_type, outcome, lease_until, holder, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (key, event_type, PROCESSING, now + lease_seconds, token, stamp, stamp))
                result = Claim(NEW, token=token, attempt=1)
            elif row[0] != PROCESSING:
                conn.execute("UPDATE processed SET duplicates = duplicates + 1 WHERE key = ?", (key,))
                result = Claim(row[0])
            elif row[1] > now:
                conn.execute("ROLLBACK")
                raise Busy(f"{key} is being processed by another worker")
            else:
                # Released for a retry, or the previous worker died mid-way (its lease ran out): take over, with
                # a new token, so the previous holder can no longer settle the claim.
                conn.execute("UPDATE processed SET lease_until = ?, attempts = attempts + 1, holder = ?,"
                             " updated_at = ? WHERE key = ?", (now + lease_seconds, token, stamp, key))
                result = Claim(NEW, token=token, attempt=int(row[2]) + 1)
            conn.execute("COMMIT")
        except BaseException:
            # Any failure, not only SQLite's (a value SQLite cannot bind, an interrupt): a transaction left open
            # here would hold the write lock for the life of this thread's connection and stall every writer.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    def complete(self, key: str, outcome: str, reason: str = "", *, token: str | None = None) -> bool:
        if outcome == PROCESSING:
            raise ValueError("complete() takes a final outcome")
        sql = "UPDATE processed SET outcome = ?, reason = ?, lease_until = 0, holder = '', updated_at = ? WHERE key = ?"
        args: tuple = (outcome, storable(reason)[:2000], _utcnow().isoformat(), storable(key))
        if token is not None:
            sql += " AND outcome = ? AND holder = ?"
            args += (PROCESSING, token)
        if self._db.connect().execute(sql, args).rowcount == 0 and token is not None:
            logger.warning("refused to complete %s as %s: the claim is no longer this worker's (taken over or "
                           "settled since)", key, outcome)
            return False
        return True

    def release_abandoned(self) -> int:
        """Release every claim still held: called by the local host when it starts, when no worker of this ledger
        can be running, so the claims of a host that crashed (kill -9) do not answer Busy until their lease runs
        out. Their holders cannot settle them any more (fencing); the next delivery takes each over."""
        cur = self._db.connect().execute(
            "UPDATE processed SET lease_until = 0, holder = '', updated_at = ? WHERE outcome = ? AND lease_until > ?",
            (_utcnow().isoformat(), PROCESSING, self._clock()))
        if cur.rowcount:
            logger.warning("released %d claim(s) a previous run of the host left held", cur.rowcount)
        return cur.rowcount

    def release(self, key: str, *, token: str | None = None) -> bool:
        # The row stays, as an expired claim: the next claim takes it over and counts one more attempt.
        sql = "UPDATE processed SET lease_until = 0, holder = '', updated_at = ? WHERE key = ? AND outcome = ?"
        args: tuple = (_utcnow().isoformat(), storable(key), PROCESSING)
        if token is not None:
            sql += " AND holder = ?"
            args += (token,)
        if self._db.connect().execute(sql, args).rowcount == 0 and token is not None:
            logger.warning("refused to release %s: the claim is no longer this worker's (taken over or settled "
                           "since)", key)
            return False
        return True

    def park(self, key: str, payload: str) -> bool:
        """Keep the message of a claim that is waiting for a retry (released, still processing), so the app can
        run it again on its own (``parked``) when nobody redelivers it. False when the key is settled."""
        cur = self._db.connect().execute("UPDATE processed SET payload = ? WHERE key = ? AND outcome = ?",
                                         (storable(payload), storable(key), PROCESSING))
        return cur.rowcount > 0

    def parked(self, *, limit: int = 50) -> list[tuple[str, str, int]]:
        """(key, payload, attempts) of parked claims nobody holds right now, oldest first."""
        rows = self._db.connect().execute(
            "SELECT key, payload, attempts FROM processed WHERE outcome = ? AND payload != '' AND lease_until <= ?"
            " ORDER BY updated_at LIMIT ?", (PROCESSING, self._clock(), limit)).fetchall()
        return [(r[0], r[1], int(r[2])) for r in rows]

    def stats(self) -> dict[str, int]:
        conn = self._db.connect()
        out = {row[0]: row[1] for row in conn.execute("SELECT outcome, COUNT(*) FROM processed GROUP BY outcome")}
        out["duplicates"] = conn.execute("SELECT COALESCE(SUM(duplicates), 0) FROM processed").fetchone()[0]
        return out

    def rows(self, *, limit: int = 50, outcomes: Sequence[str] | None = None) -> list[dict]:
        """The most recently updated keys (for `mlops events`), optionally only those with the given outcomes."""
        sql, args = "SELECT key, event_type, outcome, reason, attempts, duplicates, updated_at FROM processed", []
        if outcomes:
            sql += f" WHERE outcome IN ({','.join('?' * len(outcomes))})"
            args.extend(outcomes)
        sql += " ORDER BY updated_at DESC LIMIT ?"
        args.append(limit)
        return [{"key": r[0], "event_type": r[1], "outcome": r[2], "reason": r[3], "attempts": int(r[4]),
                 "duplicates": int(r[5]), "updated_at": r[6]} for r in self._db.connect().execute(sql, args)]

    def outcome(self, key: str) -> tuple[str, str] | None:
        """(outcome, reason) recorded for a key, or None; for status views and tests."""
        row = self._db.connect().execute("SELECT outcome, reason FROM processed WHERE key = ?",
                                         (storable(key),)).fetchone()
        return (row[0], row[1]) if row else None


class SqliteAuditLog:
    """The AuditLog port on SQLite: append-only, newest first."""

    def __init__(self, path: Path) -> None:
        self._db = _Db(path)

    def append(self, record: AuditRecord) -> None:
        at = record.at or _utcnow()
        subjects = "|" + "|".join(str(record.facts[k]) for k in SUBJECT_KEYS if record.facts.get(k)) + "|"
        self._db.connect().execute(
            "INSERT INTO audit (at, event_id, message, decision, reason, actor, facts, resources, subjects)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (at.isoformat(), storable(record.event_id), storable(record.message), storable(record.decision),
             storable(record.reason), storable(record.actor), json.dumps(record.facts, default=str, sort_keys=True),
             json.dumps(list(record.resources)), storable(subjects)))
        logger.info("decision %s on %s: %s (%s)", record.decision, record.message, record.reason, record.event_id)

    def append_once(self, record: AuditRecord, *, subject: str, same: Callable[[AuditRecord], bool],
                    limit: int = 20) -> bool:
        """One INSERT is all or nothing here: a record found is complete. The check and the insert are one write
        transaction, so two workers deciding the same thing at once (the local host's threads) write it once."""
        conn = self._db.connect()
        conn.execute("BEGIN IMMEDIATE")  # outside the try: if it fails there is nothing to roll back
        try:
            found = any(same(r) for r in self.recent(subject=subject, decisions=[record.decision], limit=limit))
            if not found:
                self.append(record)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return not found

    def recent(self, *, limit: int = 50, subject: str | None = None, since: datetime | None = None,
               decisions: Sequence[str] | None = None) -> list[AuditRecord]:
        sql, args = "SELECT at, event_id, message, decision, reason, actor, facts, resources FROM audit WHERE 1=1", []
        if subject:
            sql += " AND subjects LIKE ?"
            args.append(f"%|{subject}|%")
        if since is not None:
            sql += " AND at >= ?"
            args.append(since.astimezone(timezone.utc).isoformat())
        if decisions:
            sql += f" AND decision IN ({','.join('?' * len(decisions))})"
            args.extend(decisions)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        return [AuditRecord(event_id=r[1], message=r[2], decision=r[3], reason=r[4], actor=r[5],
                            facts=json.loads(r[6]), resources=tuple(json.loads(r[7])),
                            at=datetime.fromisoformat(r[0]))
                for r in self._db.connect().execute(sql, args)]

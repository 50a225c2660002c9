"""Endpoint state records on SQLite: one row per endpoint, a version counter as its ETag."""
from __future__ import annotations

import logging
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from shared.errors import StaleState
from shared.local.ledger import _Db
from shared.rollout import EndpointState

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS endpoint_state (
    endpoint TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_at TEXT NOT NULL
);
"""


class SqliteStateStore:
    """The StateStore port on SQLite (the ledger's database): a commit succeeds only if the version it read is
    still the current one, in one statement, so two workers can never both commit from the same read."""

    def __init__(self, path: Path) -> None:
        self._db = _Db(path)
        self._db.connect().executescript(_SCHEMA)

    def load(self, endpoint: str) -> EndpointState | None:
        row = self._db.connect().execute("SELECT body, version FROM endpoint_state WHERE endpoint = ?",
                                         (endpoint,)).fetchone()
        return EndpointState.from_json(row[0], str(row[1])) if row else None

    def save(self, state: EndpointState) -> EndpointState:
        conn = self._db.connect()
        stamp = datetime.now(timezone.utc).isoformat()
        if not state.version:
            try:
                conn.execute("INSERT INTO endpoint_state (endpoint, body, version, updated_at) VALUES (?, ?, 1, ?)",
                             (state.endpoint, state.to_json(), stamp))
            except sqlite3.IntegrityError:
                raise StaleState(f"state of {state.endpoint} was created by another worker") from None
            return _with_version(state, "1")
        new = int(state.version) + 1
        cur = conn.execute("UPDATE endpoint_state SET body = ?, version = ?, updated_at = ? "
                           "WHERE endpoint = ? AND version = ?",
                           (state.to_json(), new, stamp, state.endpoint, int(state.version)))
        if cur.rowcount != 1:
            raise StaleState(f"state of {state.endpoint} changed since version {state.version} was read")
        return _with_version(state, str(new))

    def endpoints(self) -> list[str]:
        return [r[0] for r in self._db.connect().execute("SELECT endpoint FROM endpoint_state ORDER BY endpoint")]


def _with_version(state: EndpointState, version: str) -> EndpointState:
    from dataclasses import replace

    return replace(state, version=version)

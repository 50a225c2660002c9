"""Ledger, audit trail and alert outbox on Azure Table Storage, with ETag optimistic concurrency (azure-data-tables).

The semantics are SqliteLedger's, SqliteAuditLog's and SqliteOutbox's (shared/local/); where SQLite takes a write
lock, these classes read an entity, decide, and write it back only if its ETag is unchanged
(``MatchConditions.IfNotModified``). A writer that loses the race re-reads and decides again, a bounded number
of times, and then raises Busy (transient: the event is redelivered). Nothing here ever writes unconditionally
over an entity another worker may have changed; the only creates are ``create_entity`` (fails if it exists).

Table partitions (one table per store; every key is escaped with ``escape_key``)::

    ledger   PK = 2 hex digits of sha256(key) (256 buckets)     RK = key
             point reads and writes only; ``stats`` scans the table (a status view, not a hot path)
    audit    PK = "d" + (99999999 - yyyymmdd)  one per UTC day  RK = 16-digit inverted µs time + "-" + nonce
             PK = "s" + subject             one per endpoint,    RK = the same RowKey: a full copy of the record
                                            model, asset, ...
             Table Storage returns a query ordered by PartitionKey then RowKey, so inverting both makes a plain
             range query newest first: recent() is one query over "d" partitions (newest day first), and
             recent(subject=...) one query over a single "s" partition; ``since`` becomes a RowKey bound.
    outbox   PK = "alert"   RK = "q" + id (pending) | "z" + id (delivered or failed): claim_due reads only the
                                 "q" range; finishing an alert moves its row in one entity-group transaction
             PK = "delivery" RK = id + "|" + target     PK = "incident" RK = key     PK = "meta" RK = "next-id"

Limits kept: a string property holds at most 64 KiB of UTF-16, so long texts are split over numbered properties
(``reason``, ``reason_1``, ...; property names may not contain "-"); an entity holds 1 MiB and 255 properties, so
each text has a budget and is cut, with a marker saying how much, beyond it. A 100 KB reason or fact is kept
whole. The ledger keeps 2,000 characters of a reason, like SqliteLedger.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, TableServiceClient, TableTransactionError, UpdateMode

from shared import retry
from shared.adapters.errors import translated
from shared.domain import Alert, AuditRecord
from shared.errors import Busy, InvalidPayload
from shared.local.ledger import NEW, PROCESSING, SUBJECT_KEYS
from shared.local.outbox import DELIVERED, FAILED, PENDING, alert_from_json, alert_to_json, incident_totals
from shared.ports import Claim

logger = logging.getLogger(__name__)
T = TypeVar("T")

# How often a writer that lost an ETag race re-reads and tries again before it yields with Busy. Each retry
# follows a real change by another writer, so 8 means eight other writers got in first: a redelivery is cheaper.
MAX_ATTEMPTS = 8
DEFAULT_TABLES = {"ledger": "mlopsledger", "audit": "mlopsaudit", "outbox": "mlopsoutbox", "states": "mlopsstate"}

# Limits of Table Storage (Understanding the Table service data model): 64 KiB per string property (UTF-16),
# 1 MiB per entity, 255 properties, 1 KiB per key.
CHUNK_UNITS = 32_000  # UTF-16 code units per string property: 64,000 bytes < 64 KiB
MAX_KEY_UNITS = 480  # of the 512 UTF-16 units a 1 KiB key may hold
LEDGER_REASON_CHARS = 2000  # as SqliteLedger
ERROR_CHARS = 2000  # last delivery error, as SqliteOutbox
# Per-record text budgets in UTF-16 units; together well under 1 MiB (2 bytes per unit) with room for the rest.
REASON_UNITS = 128_000
FACTS_UNITS = 160_000
RESOURCES_UNITS = 32_000
ALERT_UNITS = 384_000

_ESCAPE = "!"  # escape character of keys: "!" + two hex digits
# Forbidden in keys: / \ # ? and control characters. "%" and "'" are legal but break some Table APIs and
# Azurite (percent-decoding of the URL, quote doubling), "!" is our escape: all are escaped.
_RESERVED = frozenset("/\\#?%'!")


# --- keys and long texts ------------------------------------------------------------------------------

def _u16(text: str) -> int:
    """Length in UTF-16 code units: how Table Storage measures strings."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def escape_key(value: str) -> str:
    """A PartitionKey/RowKey for any text: forbidden and troublesome characters become ``!XX``. Reversible by
    ``unescape_key`` unless the text is too long for a key, when a readable prefix plus its sha256 is used."""
    out = []
    for ch in str(value):
        code = ord(ch)
        out.append(f"{_ESCAPE}{code:02X}" if ch in _RESERVED or code < 0x20 or 0x7F <= code <= 0x9F else ch)
    key = "".join(out)
    if _u16(key) > MAX_KEY_UNITS:
        digest = hashlib.sha256(str(value).encode("utf-8")).hexdigest()
        prefix = key[:MAX_KEY_UNITS // 2]
        while prefix and (_u16(prefix) > MAX_KEY_UNITS - 70 or prefix[-1] == _ESCAPE):
            prefix = prefix[:-1]
        key = f"{prefix}~{digest}"
    return key


def unescape_key(key: str) -> str:
    out, i = [], 0
    while i < len(key):
        if key[i] == _ESCAPE and _is_hex(key[i + 1:i + 3]):
            out.append(chr(int(key[i + 1:i + 3], 16)))
            i += 3
        else:
            out.append(key[i])
            i += 1
    return "".join(out)


def _is_hex(s: str) -> bool:
    return len(s) == 2 and all(c in "0123456789ABCDEF" for c in s)


def _code(exc: BaseException) -> str:
    """The service's error code (x-ms-error-code) of an azure-core error, as text."""
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or "")


def cut(text: str, units: int) -> str:
    """``text`` if it fits in ``units`` UTF-16 units, else its head plus a marker saying how much was cut."""
    if _u16(text) <= units:
        return text
    marker = f" …[cut: {len(text)} characters, Table Storage keeps {units} units]"
    head = text[:max(0, units - len(marker))]
    while _u16(head) + len(marker) > units:
        head = head[:-max(1, _u16(head) + len(marker) - units)]
    return head + marker


def _split(text: str) -> list[str]:
    """Chunks of at most CHUNK_UNITS UTF-16 units, never splitting a surrogate pair."""
    chunks, start = [], 0
    while start < len(text):
        end = min(len(text), start + CHUNK_UNITS)
        excess = _u16(text[start:end]) - CHUNK_UNITS
        if excess > 0:
            end -= excess  # each character is one or two units, so this one step is enough
        chunks.append(text[start:end])
        start = end
    return chunks or [""]


def _put_text(entity: dict[str, Any], name: str, text: str, units: int) -> None:
    for i, chunk in enumerate(_split(cut(text, units))):
        entity[name if i == 0 else f"{name}_{i}"] = chunk


def _get_text(entity: Mapping[str, Any], name: str) -> str:
    parts, i = [str(entity.get(name, ""))], 1
    while f"{name}_{i}" in entity:
        parts.append(str(entity[f"{name}_{i}"]))
        i += 1
    return "".join(parts)


def _int(value: Any, default: int = 0) -> int:
    value = getattr(value, "value", value)  # Edm.Int64 comes back as an EntityProperty
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _float(value: Any, default: float = 0.0) -> float:
    try:
        return float(getattr(value, "value", value))
    except (TypeError, ValueError):
        return default


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def _pause(attempt: int) -> None:
    """A short jittered wait before re-reading after a lost race, so racers spread out (the app's one policy:
    shared/retry.py; never past the invocation's deadline)."""
    retry.pause(attempt + 1, what="re-read after a lost ETag race")


class _Table:
    """One TableClient plus the few calls the stores make, each through shared.adapters.errors. Expected
    outcomes of a conditional write (exists, modified, gone) come back as values, everything else raises
    the app's error tree."""

    EXISTS, MODIFIED, GONE = "exists", "modified", "gone"

    def __init__(self, client: TableClient) -> None:
        self.client = client
        self.name = client.table_name

    def _what(self, op: str, pk: str, rk: str) -> str:
        return f"{op} {self.name}({pk!r}, {rk!r})"

    def get(self, pk: str, rk: str) -> Any | None:
        with translated(self._what("read", pk, rk)):
            try:
                return self.client.get_entity(pk, rk)
            except ResourceNotFoundError as exc:
                if _code(exc) == "TableNotFound":
                    raise  # a missing table is a deployment problem, not a missing entity
                return None

    def create(self, entity: Mapping[str, Any]) -> str | None:
        with translated(self._what("create", entity["PartitionKey"], entity["RowKey"])):
            try:
                self.client.create_entity(entity)
            except ResourceExistsError:
                return self.EXISTS
        return None

    def replace(self, entity: Mapping[str, Any], etag: str) -> str | None:
        with translated(self._what("update", entity["PartitionKey"], entity["RowKey"])):
            try:
                self.client.update_entity(entity, mode=UpdateMode.REPLACE, etag=etag,
                                          match_condition=MatchConditions.IfNotModified)
            except ResourceModifiedError:
                return self.MODIFIED
            except ResourceNotFoundError:
                return self.GONE
        return None

    def delete(self, pk: str, rk: str, etag: str) -> str | None:
        """Delete if unchanged; an entity already gone counts as deleted (the SDK ignores 404 on delete)."""
        with translated(self._what("delete", pk, rk)):
            try:
                self.client.delete_entity(pk, rk, etag=etag, match_condition=MatchConditions.IfNotModified)
            except ResourceModifiedError:
                return self.MODIFIED
        return None

    def transact(self, what: str, operations: list[tuple]) -> str | None:
        """One entity-group transaction (one partition); a failed precondition in it returns MODIFIED."""
        with translated(f"{what} in {self.name}"):
            try:
                self.client.submit_transaction(operations)
            except TableTransactionError as exc:
                if exc.status_code in (404, 412) or _code(exc) in ("UpdateConditionNotSatisfied", "ResourceNotFound"):
                    return self.MODIFIED
                raise
        return None

    def query(self, what: str, query_filter: str, *, parameters: dict[str, Any] | None = None,
              select: list[str] | None = None, page: int | None = None) -> Iterator[Any]:
        with translated(f"{what} in {self.name}"):
            yield from self.client.query_entities(query_filter, parameters=parameters, select=select,
                                                  results_per_page=page)

    def close(self) -> None:
        self.client.close()


# --- the ledger ----------------------------------------------------------------------------------------

class TableLedger:
    """The Ledger port on Table Storage. ``clock`` returns epoch seconds (injectable for lease tests); leases
    compare this worker's clock with the stored expiry, so workers' clocks must agree to within a lease's slack
    (Azure hosts are NTP-synced; leases are minutes long).

    Duplicates are counted on the key's own entity by an ETag read-modify-write loop: two duplicates racing each
    other both land, one after a re-read. A duplicate that loses MAX_ATTEMPTS races raises Busy without counting,
    so its redelivery counts it once: no increment is lost and none is counted twice.
    """

    def __init__(self, table: TableClient, *, clock: Callable[[], float] = time.time) -> None:
        self._t = _Table(table)
        self._clock = clock

    def __repr__(self) -> str:
        return f"TableLedger({self._t.name!r})"

    @staticmethod
    def keys(key: str) -> tuple[str, str]:
        """(PartitionKey, RowKey) of a ledger key."""
        return hashlib.sha256(key.encode("utf-8")).hexdigest()[:2], escape_key(key)

    def claim(self, key: str, *, event_type: str, lease_seconds: float = 300.0) -> str:
        pk, rk = self.keys(key)
        for attempt in range(MAX_ATTEMPTS):
            now, stamp, token = self._clock(), _now_iso(), uuid.uuid4().hex
            row = self._t.get(pk, rk)
            if row is None:
                fresh = {"PartitionKey": pk, "RowKey": rk, "key": key, "event_type": event_type,
                         "outcome": PROCESSING, "reason": "", "lease_until": float(now + lease_seconds),
                         "attempts": 1, "duplicates": 0, "holder": token, "created_at": stamp, "updated_at": stamp}
                if self._t.create(fresh) is None:
                    return Claim(NEW, token=token, attempt=1)
            elif row.get("outcome") != PROCESSING:
                counted = {**row, "duplicates": _int(row.get("duplicates")) + 1}
                if self._t.replace(counted, row.metadata["etag"]) is None:
                    return Claim(str(row["outcome"]))
            elif _float(row.get("lease_until")) > now:
                raise Busy(f"{key} is being processed by another worker")
            else:
                # Released for a retry, or the previous worker died mid-way (its lease ran out): take over with a
                # new token (the previous holder can no longer settle it), unless someone else just did.
                attempts = _int(row.get("attempts")) + 1
                taken = {**row, "lease_until": float(now + lease_seconds), "attempts": attempts, "holder": token,
                         "updated_at": stamp}
                if self._t.replace(taken, row.metadata["etag"]) is None:
                    logger.info("took over %s (attempt %d)", key, attempts)
                    return Claim(NEW, token=token, attempt=attempts)
            logger.debug("claim of %s lost a race (attempt %d); re-reading", key, attempt + 1)
            _pause(attempt)
        raise Busy(f"{key}: {MAX_ATTEMPTS} concurrent writers got in first; try again later")

    @staticmethod
    def _held_by(row: Mapping[str, Any], token: str | None) -> bool:
        return token is None or (row.get("outcome") == PROCESSING and str(row.get("holder", "")) == token)

    def complete(self, key: str, outcome: str, reason: str = "", *, token: str | None = None) -> bool:
        if outcome == PROCESSING:
            raise ValueError("complete() takes a final outcome")
        pk, rk = self.keys(key)
        for attempt in range(MAX_ATTEMPTS):
            row = self._t.get(pk, rk)
            if row is None:
                logger.warning("complete(%s, %s): no claim recorded for this key; nothing to complete", key, outcome)
                return False
            if not self._held_by(row, token):
                if token and row.get("completed_by") == token and row.get("outcome") == outcome:
                    return True  # our own completion, landed before its reply was lost: a retry finds it done
                logger.warning("refused to complete %s as %s: the claim is no longer this worker's (taken over or "
                               "settled since)", key, outcome)
                return False
            done = {**row, "outcome": outcome, "reason": reason[:LEDGER_REASON_CHARS], "lease_until": 0.0,
                    "holder": "", "completed_by": token or "", "updated_at": _now_iso()}
            if self._t.replace(done, row.metadata["etag"]) is None:
                return True
            _pause(attempt)
        raise Busy(f"complete {key}: {MAX_ATTEMPTS} concurrent writers got in first")

    def release(self, key: str, *, token: str | None = None) -> bool:
        """Expire the claim (the entity stays, so the next claim counts one more attempt)."""
        pk, rk = self.keys(key)
        for attempt in range(MAX_ATTEMPTS):
            row = self._t.get(pk, rk)
            if row is None or row.get("outcome") != PROCESSING:
                return False  # never erase a final outcome
            if not self._held_by(row, token):
                logger.warning("refused to release %s: the claim is no longer this worker's (taken over or "
                               "settled since)", key)
                return False
            expired = {**row, "lease_until": 0.0, "holder": "", "updated_at": _now_iso()}
            if self._t.replace(expired, row.metadata["etag"]) is None:
                return True
            _pause(attempt)  # changed since we read it (completed, counted, taken over): look again
        raise Busy(f"release {key}: {MAX_ATTEMPTS} concurrent writers got in first")

    def park(self, key: str, payload: str) -> bool:
        """As SqliteLedger.park: keep a waiting claim's message for the app's own retry."""
        if _u16(payload) > CHUNK_UNITS:
            logger.warning("not parking %s: its message is larger than one table property", key)
            return False
        pk, rk = self.keys(key)
        for attempt in range(MAX_ATTEMPTS):
            row = self._t.get(pk, rk)
            if row is None or row.get("outcome") != PROCESSING:
                return False
            if self._t.replace({**row, "payload": payload}, row.metadata["etag"]) is None:
                return True
            _pause(attempt)
        raise Busy(f"park {key}: {MAX_ATTEMPTS} concurrent writers got in first")

    def parked(self, *, limit: int = 50) -> list[tuple[str, str, int]]:
        """As SqliteLedger.parked (a filtered scan of the ledger table: run it from a timer, not per event)."""
        rows = self._t.query("parked claims", "outcome eq @processing and payload ne '' and lease_until le @now",
                             parameters={"processing": PROCESSING, "now": float(self._clock())},
                             select=["key", "payload", "attempts", "updated_at"])
        found = sorted(((str(r.get("updated_at", "")), str(r["key"]), str(r["payload"]), _int(r.get("attempts")))
                        for r in rows), key=lambda t: t[0])
        return [(k, p, a) for _, k, p, a in found[:limit]]

    def stats(self) -> dict[str, int]:
        out: dict[str, int] = {}
        duplicates = 0
        for row in self._t.query("ledger stats", "PartitionKey ne ''", select=["outcome", "duplicates"]):
            outcome = str(row.get("outcome", ""))
            out[outcome] = out.get(outcome, 0) + 1
            duplicates += _int(row.get("duplicates"))
        out["duplicates"] = duplicates
        return out

    def rows(self, *, limit: int = 50, outcomes: Sequence[str] | None = None) -> list[dict]:
        """As SqliteLedger.rows (a scan of the ledger table: for the CLI, never per event)."""
        names = list(outcomes or ())
        query = " or ".join(f"outcome eq @o{i}" for i in range(len(names))) or "PartitionKey ne ''"
        found = [{"key": str(r.get("key", "")), "event_type": str(r.get("event_type", "")),
                  "outcome": str(r.get("outcome", "")), "reason": str(r.get("reason", "")),
                  "attempts": _int(r.get("attempts")), "duplicates": _int(r.get("duplicates")),
                  "updated_at": str(r.get("updated_at", ""))}
                 for r in self._t.query("ledger rows", query, parameters={f"o{i}": n for i, n in enumerate(names)},
                                        select=["key", "event_type", "outcome", "reason", "attempts", "duplicates",
                                                "updated_at"])]
        return sorted(found, key=lambda row: row["updated_at"], reverse=True)[:limit]

    def outcome(self, key: str) -> tuple[str, str] | None:
        """(outcome, reason) recorded for a key, or None; for status views and tests."""
        row = self._t.get(*self.keys(key))
        return (str(row["outcome"]), str(row.get("reason", ""))) if row is not None else None

    def close(self) -> None:
        self._t.close()


# --- the audit trail -----------------------------------------------------------------------------------

_US_SPAN = 10 ** 16  # microseconds since the epoch stay below this until the year 2286
_DAY_SPAN = 99_999_999


def _epoch_us(at: datetime) -> int:
    at = at if at.tzinfo else at.replace(tzinfo=timezone.utc)
    delta = at.astimezone(timezone.utc) - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def day_partition(at: datetime) -> str:
    """"d" + the inverted UTC date: a later day sorts first."""
    day = at.astimezone(timezone.utc)
    return f"d{_DAY_SPAN - int(day.strftime('%Y%m%d')):08d}"


def time_row(us: int) -> str:
    """The inverted microsecond time that starts every audit RowKey: a later record sorts first."""
    return f"{_US_SPAN - 1 - us:016d}"


class TableAuditLog:
    """The AuditLog port on Table Storage: append-only (create_entity, never an update), newest first.

    Each record is written to its day partition and, as a full copy, to one partition per subject it names
    (SUBJECT_KEYS facts: endpoint, model, asset, ...), so both kinds of query are a single ordered range query.
    The copies are written first and the day entry last; a failed append raises (transient) and may leave a
    subject copy behind, which a retried append does not duplicate within one call (same RowKey). ``append_once``
    writes the subject it checks first and completes a record it finds part-way written.
    """

    def __init__(self, table: TableClient) -> None:
        self._t = _Table(table)
        self._lock = threading.Lock()
        self._last_us = 0

    def __repr__(self) -> str:
        return f"TableAuditLog({self._t.name!r})"

    def _stamp(self, record: AuditRecord) -> tuple[datetime, int]:
        if record.at is not None:
            at = record.at if record.at.tzinfo else record.at.replace(tzinfo=timezone.utc)
            return at, _epoch_us(at)
        with self._lock:  # strictly increasing within this process, so appends keep their order
            us = max(_epoch_us(datetime.now(timezone.utc)), self._last_us + 1)
            self._last_us = us
        return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=us), us

    def append(self, record: AuditRecord) -> None:
        self._append(record)

    def _append(self, record: AuditRecord, first: str | None = None) -> None:
        """``first``: the subject whose copy is written before the others (``append_once`` checks that one)."""
        at, us = self._stamp(record)
        subjects = list(dict.fromkeys(str(record.facts[k]) for k in SUBJECT_KEYS if record.facts.get(k)))
        if first is not None and first in subjects:
            subjects.remove(first)
            subjects.insert(0, first)
        row_key = f"{time_row(us)}-{uuid.uuid4().hex[:12]}"
        body: dict[str, Any] = {"at": at.isoformat(), "event_id": record.event_id, "message": record.message,
                                "decision": record.decision, "actor": record.actor,
                                "subjects": cut(json.dumps(subjects, ensure_ascii=False), CHUNK_UNITS)}
        _put_text(body, "reason", record.reason, REASON_UNITS)
        _put_text(body, "facts", _facts_json(record.facts), FACTS_UNITS)
        _put_text(body, "resources", json.dumps(list(record.resources), ensure_ascii=False), RESOURCES_UNITS)
        for pk in [*(f"s{escape_key(s)}" for s in subjects), day_partition(at)]:
            # EXISTS means an earlier try of this very append got through (same RowKey): nothing to redo.
            self._t.create({"PartitionKey": pk, "RowKey": row_key, **body})
        logger.info("decision %s on %s: %s (%s)", record.decision, record.message, record.reason, record.event_id)

    def append_once(self, record: AuditRecord, *, subject: str, same: Callable[[AuditRecord], bool],
                    limit: int = 20) -> bool:
        """A record found in the subject's partition may be one an append left part-way: its day entry (written
        last) missing, and maybe other subjects' copies. It is completed under its own RowKey, so it shows once
        everywhere, instead of counting as written: that skipped the day entry for good (a run's verdict missing
        from the trail, 6 in the full-size storm) and, for a rollout transition, its alert."""
        rows = self._t.query("an earlier record", "PartitionKey eq @pk and decision eq @d",
                             parameters={"pk": f"s{escape_key(subject)}", "d": record.decision}, page=limit)
        for n, row in enumerate(rows):
            if n >= limit:
                break
            if same(_record(row)):
                return self._complete(row, subject)
        # The checked subject's copy first: an append that stops part-way then always leaves the copy this check
        # finds, and the retry completes that record. Written in SUBJECT_KEYS order, a stop after the endpoint's or
        # model's copy left one the check cannot see, and the retry wrote the record again under a new RowKey.
        self._append(record, first=subject)
        return True

    def _complete(self, row: Mapping[str, Any], subject: str) -> bool:
        """Write the copies of a found record that are missing, the day entry last as ``append`` does; True when
        the day entry was missing (the append that wrote the rest raised, so nothing after it ran)."""
        at = datetime.fromisoformat(row["at"])
        day, row_key = day_partition(at), row["RowKey"]
        if self._t.get(day, row_key) is not None:
            return False
        try:
            subjects = [str(s) for s in json.loads(row["subjects"])]
        except (ValueError, TypeError):  # cut to fit a property: read them from the facts, which keep them
            facts = _record(row).facts
            subjects = list(dict.fromkeys([subject, *(str(facts[k]) for k in SUBJECT_KEYS if facts.get(k))]))
        body = {k: v for k, v in row.items() if k not in ("PartitionKey", "RowKey")}
        for pk in [*(f"s{escape_key(s)}" for s in subjects), day]:
            self._t.create({"PartitionKey": pk, "RowKey": row_key, **body})  # EXISTS: that copy got through
        logger.info("decision %s on %s: %s (%s), completed: an earlier append stopped part-way", row.get("decision"),
                    row.get("message"), _record(row).reason, row.get("event_id"))
        return True

    def recent(self, *, limit: int = 50, subject: str | None = None, since: datetime | None = None,
               decisions: Sequence[str] | None = None) -> list[AuditRecord]:
        params: dict[str, Any] = {}
        if subject:
            clauses = ["PartitionKey eq @pk"]
            params["pk"] = f"s{escape_key(subject)}"
        else:
            clauses = ["PartitionKey ge @lo", "PartitionKey lt @hi"]
            params.update(lo="d", hi="e")
            if since is not None:
                clauses.append("PartitionKey le @day")
                params["day"] = day_partition(since)
        if since is not None:
            clauses.append("RowKey le @row")
            params["row"] = time_row(_epoch_us(since)) + "~"  # "~" sorts after "-nonce"
        if decisions:
            names = [f"d{i}" for i in range(len(decisions))]
            clauses.append("( " + " or ".join(f"decision eq @{n}" for n in names) + " )")
            params.update(zip(names, decisions, strict=True))
        out: list[AuditRecord] = []
        if limit <= 0:
            return out
        for row in self._t.query("recent decisions", " and ".join(clauses), parameters=params,
                                 page=min(max(limit, 1), 1000)):
            out.append(_record(row))
            if len(out) >= limit:
                break
        return out

    def close(self) -> None:
        self._t.close()


def _facts_json(facts: Mapping[str, object]) -> str:
    """Facts as JSON that fits FACTS_UNITS: whole when it fits, else the longest values cut with a marker."""
    raw = json.dumps(facts, default=str, sort_keys=True, ensure_ascii=False)
    if _u16(raw) <= FACTS_UNITS:
        return raw
    share = max(200, FACTS_UNITS // (len(facts) + 1) - 64)
    trimmed = {k: cut(v if isinstance(v, str) else json.dumps(v, default=str, ensure_ascii=False), share)
               for k, v in facts.items()}
    raw = json.dumps(trimmed, sort_keys=True, ensure_ascii=False)
    if _u16(raw) <= FACTS_UNITS:
        return raw
    kept = {k: facts[k] for k in SUBJECT_KEYS if isinstance(facts.get(k), str) and len(str(facts[k])) < 1000}
    return json.dumps({**kept, "_cut": f"facts too large for one entity ({len(facts)} keys)"}, sort_keys=True,
                      ensure_ascii=False)


def _record(row: Mapping[str, Any]) -> AuditRecord:
    try:
        facts = json.loads(_get_text(row, "facts") or "{}")
    except json.JSONDecodeError:
        facts = {"_unreadable": _get_text(row, "facts")[:200]}
    try:
        resources = tuple(json.loads(_get_text(row, "resources") or "[]"))
    except json.JSONDecodeError:
        resources = ()
    return AuditRecord(event_id=str(row.get("event_id", "")), message=str(row.get("message", "")),
                       decision=str(row.get("decision", "")), reason=_get_text(row, "reason"),
                       actor=str(row.get("actor", "")), facts=facts, resources=resources,
                       at=datetime.fromisoformat(str(row["at"])))


# --- the outbox ----------------------------------------------------------------------------------------

ALERT_PK, DELIVERY_PK, INCIDENT_PK, META_PK = "alert", "delivery", "incident", "meta"
_QUEUED, _DONE = "q", "z"


def _rk(prefix: str, alert_id: int) -> str:
    return f"{prefix}{alert_id:012d}"


class TableOutbox:
    """SqliteOutbox's interface on Table Storage, so ``build_notifier(settings, store=TableOutbox(...))`` keeps
    dedupe, per-target progress and leased claims durable in Azure.

    Ids come from a counter entity advanced by ETag compare-and-swap, so they are 1, 2, 3, ... and "oldest
    first" is RowKey order. ``update_incident`` is a read-modify-write under the incident's ETag: ``step`` may
    run more than once when another worker changed the incident meanwhile, so it must be pure (incident_step is).
    """

    def __init__(self, table: TableClient, *, clock: Callable[[], float] = time.time) -> None:
        self._t = _Table(table)
        self.clock = clock

    def __repr__(self) -> str:
        return f"TableOutbox({self._t.name!r})"

    # --- OutboxStore ---

    def _next_id(self) -> int:
        for attempt in range(MAX_ATTEMPTS):
            row = self._t.get(META_PK, "next-id")
            if row is None:
                if self._t.create({"PartitionKey": META_PK, "RowKey": "next-id", "next": 2}) is None:
                    return 1
            else:
                current = _int(row.get("next"), 1)
                if self._t.replace({**row, "next": current + 1}, row.metadata["etag"]) is None:
                    return current
            _pause(attempt)
        raise Busy(f"{MAX_ATTEMPTS} concurrent writers got an alert id first")

    def add(self, alert: Alert) -> int:
        now = float(self.clock())  # Edm.Double always: Table queries compare a property only with its own type
        alert_id = self._next_id()
        row: dict[str, Any] = {"PartitionKey": ALERT_PK, "RowKey": _rk(_QUEUED, alert_id), "id": alert_id,
                               "created_at": now, "kind": alert.kind, "severity": alert.severity,
                               "incident_key": cut(alert.incident_key, 1000), "status": PENDING, "attempts": 0,
                               "next_try": now, "last_error": "", "updated_at": now}
        _put_text(row, "alert", _alert_json(alert), ALERT_UNITS)
        if self._t.create(row) is not None:
            # EXISTS: either the SDK retried a create whose first try got through (a lost reply), so the row is
            # ours, or only a bug could have reused an id the counter handed out.
            found = self._t.get(ALERT_PK, row["RowKey"])
            if found is None or _get_text(found, "alert") != _get_text(row, "alert") \
                    or _float(found.get("created_at")) != now:
                raise Busy(f"alert id {alert_id} already taken")
        return alert_id

    def holds_incident(self, incident_key: str, since: float) -> bool:
        """Whether a card of this incident was queued at or after ``since`` (epoch seconds). Reads the alert
        partition with a filter: only asked when a card was admitted and never marked queued."""
        rows = self._t.query("an incident's alerts", "PartitionKey eq @pk and incident_key eq @key and created_at ge @t",
                             parameters={"pk": ALERT_PK, "key": cut(incident_key, 1000), "t": float(since)}, page=1)
        return next(iter(rows), None) is not None

    def _due(self, limit: int) -> list[Any]:
        rows = self._t.query("due alerts", "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi and next_try le @now",
                             parameters={"pk": ALERT_PK, "lo": _QUEUED, "hi": chr(ord(_QUEUED) + 1),
                                         "now": float(self.clock())}, page=min(max(limit, 1), 1000))
        out = []
        for row in rows:
            out.append(row)
            if len(out) >= limit:
                break
        return out

    def pending(self, *, limit: int = 100) -> list[tuple[int, Alert, int]]:
        return [(_int(r["id"]), alert_from_json(_get_text(r, "alert")), _int(r.get("attempts")))
                for r in self._due(limit)]

    def mark(self, alert_id: int, *, delivered: bool, error: str = "", retry_in_seconds: float | None = None) -> None:
        for attempt in range(MAX_ATTEMPTS):
            now = float(self.clock())
            row = self._t.get(ALERT_PK, _rk(_QUEUED, alert_id))
            if row is None:
                logger.debug("mark(%s): not pending (finished or unknown); nothing to do", alert_id)
                return
            changed = {**row, "attempts": _int(row.get("attempts")) + 1, "last_error": error[:ERROR_CHARS],
                       "updated_at": now}
            if delivered or retry_in_seconds is None:
                done = {**changed, "RowKey": _rk(_DONE, alert_id), "status": DELIVERED if delivered else FAILED,
                        "next_try": now}
                lost = self._t.transact(f"finish alert {alert_id}", [
                    ("delete", {"PartitionKey": ALERT_PK, "RowKey": row["RowKey"]},
                     {"etag": row.metadata["etag"], "match_condition": MatchConditions.IfNotModified}),
                    ("upsert", done, {"mode": UpdateMode.REPLACE}),
                ])
            else:
                lost = self._t.replace({**changed, "status": PENDING, "next_try": now + max(0.0, retry_in_seconds)},
                                       row.metadata["etag"])
            if lost is None:
                return
            _pause(attempt)
        raise Busy(f"mark alert {alert_id}: {MAX_ATTEMPTS} concurrent writers got in first")

    # --- extensions the Outbox uses ---

    def claim_due(self, *, limit: int = 100, lease_seconds: float = 60.0) -> list[tuple[int, Alert, int]]:
        """Like ``pending``, but each returned alert's next try is pushed ``lease_seconds`` ahead under its ETag:
        an alert another flusher claimed (or finished) first is skipped, never sent twice. Nothing due costs one
        query and no write."""
        claimed = []
        for row in self._due(limit):
            lease = {**row, "next_try": float(self.clock() + lease_seconds)}
            if self._t.replace(lease, row.metadata["etag"]) is None:
                claimed.append((_int(row["id"]), alert_from_json(_get_text(row, "alert")), _int(row.get("attempts"))))
        return claimed

    def defer(self, alert_ids: list[int], until: float) -> None:
        """Set the next try of pending alerts without counting an attempt."""
        for alert_id in alert_ids:
            for attempt in range(MAX_ATTEMPTS):
                row = self._t.get(ALERT_PK, _rk(_QUEUED, alert_id))
                if row is None or self._t.replace({**row, "next_try": float(until)}, row.metadata["etag"]) is None:
                    break
                _pause(attempt)
            else:
                raise Busy(f"defer alert {alert_id}: {MAX_ATTEMPTS} concurrent writers got in first")

    def delivered_to(self, alert_id: int) -> set[str]:
        prefix = f"{alert_id:012d}|"
        rows = self._t.query("deliveries", "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
                             parameters={"pk": DELIVERY_PK, "lo": prefix, "hi": prefix[:-1] + "}"},
                             select=["target"])
        return {str(r["target"]) for r in rows}

    def record_delivery(self, alert_id: int, target: str) -> None:
        self._t.create({"PartitionKey": DELIVERY_PK, "RowKey": f"{alert_id:012d}|{escape_key(target)}",
                        "target": target, "at": float(self.clock())})  # EXISTS: recorded before, keep the first

    def update_incident(self, key: str, step: Callable[[dict | None], tuple[dict | None, T]]) -> T:
        """Run ``step(current) -> (new, result)`` on the incident's state atomically (ETag); returns ``result``."""
        rk = escape_key(key)
        for attempt in range(MAX_ATTEMPTS):
            row = self._t.get(INCIDENT_PK, rk)
            new, result = step(json.loads(row["state"]) if row is not None else None)
            if new is None:
                lost = self._t.delete(INCIDENT_PK, rk, row.metadata["etag"]) if row is not None else None
            else:
                state = {"PartitionKey": INCIDENT_PK, "RowKey": rk, "key": cut(key, 1000),
                         "state": json.dumps(new, sort_keys=True), "updated_at": float(self.clock())}
                lost = self._t.replace(state, row.metadata["etag"]) if row is not None else self._t.create(state)
            if lost is None:
                return result
            logger.debug("incident %s changed under us (attempt %d); stepping again", key, attempt + 1)
            _pause(attempt)
        raise Busy(f"incident {key}: {MAX_ATTEMPTS} concurrent writers got in first")

    # --- views ---

    def status(self, alert_id: int) -> dict[str, object] | None:
        row = self._t.get(ALERT_PK, _rk(_QUEUED, alert_id)) or self._t.get(ALERT_PK, _rk(_DONE, alert_id))
        if row is None:
            return None
        return {"status": str(row["status"]), "attempts": _int(row.get("attempts")),
                "next_try": _float(row.get("next_try")), "error": str(row.get("last_error", "")),
                "kind": str(row.get("kind", "")), "delivered_to": sorted(self.delivered_to(alert_id))}

    def stats(self) -> dict[str, int]:
        out = {PENDING: 0, DELIVERED: 0, FAILED: 0}
        for row in self._t.query("alert stats", "PartitionKey eq @pk", parameters={"pk": ALERT_PK},
                                 select=["status"]):
            out[str(row["status"])] = out.get(str(row["status"]), 0) + 1
        out["deliveries"] = sum(1 for r in self._t.query("delivery stats", "PartitionKey eq @pk",
                                                         parameters={"pk": DELIVERY_PK}, select=["target"])
                                if not str(r["target"]).startswith("rejected:"))
        out.update(incident_totals(row["state"] for row in self._t.query(
            "incident stats", "PartitionKey eq @pk", parameters={"pk": INCIDENT_PK}, select=["state"])))
        return out

    def close(self) -> None:
        self._t.close()


def _alert_json(alert: Alert) -> str:
    """The alert as JSON within ALERT_UNITS: the long ``detail`` is cut first, then the summary."""
    raw = alert_to_json(alert)
    if _u16(raw) <= ALERT_UNITS:
        return raw
    slim = dataclasses.replace(alert, detail=cut(alert.detail, ALERT_UNITS // 4),
                               summary=cut(alert.summary, ALERT_UNITS // 4))
    return alert_to_json(slim)


# --- construction from settings ------------------------------------------------------------------------

# Timeouts of one request; shared/retry.py cuts them further to what is left of the invocation's deadline.
CLIENT_OPTIONS: dict[str, Any] = {"connection_timeout": 5, "read_timeout": 10}


def with_app_retries(service: TableServiceClient) -> TableServiceClient:
    """Make the table clients ``service`` hands out retry by the app's one policy (shared/retry.py: a few quick
    tries, never past the invocation's deadline) instead of the SDK's (10 exponential retries, Retry-After slept in
    full, which can outlast an Event Grid delivery). azure-data-tables builds its TablesRetryPolicy itself and
    takes no ``retry_policy``; get_table_client() passes the service's policy list on, so it is replaced there."""
    from azure.data.tables._policies import TablesRetryPolicy

    policies = service._policies  # noqa: SLF001 - the list get_table_client() builds each TableClient from
    policies[:] = [retry.sdk_policy(base=TablesRetryPolicy) if isinstance(p, TablesRetryPolicy) else p
                   for p in policies]
    return service


def service_client(endpoint: str, credential: Any, **options: Any) -> TableServiceClient:
    """A TableServiceClient for ``endpoint`` (MLOPS_LEDGER__tableServiceUri) with a token credential. A URL
    carrying a SAS or an account key is refused: the app authenticates with its identity only."""
    lowered = endpoint.lower()
    if not endpoint or "sig=" in lowered or "accountkey=" in lowered or "sharedaccesssignature" in lowered:
        raise InvalidPayload("MLOPS_LEDGER__tableServiceUri must be the table endpoint URL without keys or SAS "
                             "(identity-based access)", field="MLOPS_LEDGER__tableServiceUri")
    if not hasattr(credential, "get_token"):
        raise TypeError("the Table clients take a TokenCredential (managed identity), not a key")
    return with_app_retries(TableServiceClient(endpoint, credential=credential, **{**CLIENT_OPTIONS, **options}))


def build_stores(service: TableServiceClient, *, names: Mapping[str, str] | None = None, create: bool = True,
                 clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """{"ledger": TableLedger, "audit": TableAuditLog, "outbox": TableOutbox, "states": TableStateStore} on
    ``service``. ``create`` makes missing tables (one request each per cold start; set it False when the Bicep
    declares them)."""
    from shared.adapters.statestore import TableStateStore

    names = {**DEFAULT_TABLES, **(names or {})}
    if create:
        for name in names.values():
            with translated(f"create table {name}"):
                service.create_table_if_not_exists(name)
    return {"ledger": TableLedger(service.get_table_client(names["ledger"]), clock=clock),
            "audit": TableAuditLog(service.get_table_client(names["audit"])),
            "outbox": TableOutbox(service.get_table_client(names["outbox"]), clock=clock),
            "states": TableStateStore(service.get_table_client(names["states"]))}


"""Azure ML data collector output → drift windows: JSONL streamed from blob storage with bounded memory.

Where the collector writes (Azure ML docs, "Collect production data from models deployed for real-time
inferencing", section "Store collected data in blob storage"): by default under the workspace's default datastore
(``workspaceblobstore``) at ``modelDataCollector/{endpoint}/{deployment}/{collection}/{yyyy}/{MM}/{dd}/{HH}/
{instance_id}.jsonl``. ``collection`` is ``model_inputs`` or ``model_outputs``, and the folders roll hourly. Each
line is one JSON object, and its ``data`` holds the logged rows: a list of records, and the collector may batch
several requests into one object. ``time``, ``correlationid`` and ``xrequestid`` come with it.

A window reads only the hour folders it overlaps, keeps the records whose ``time`` falls inside it, and downloads
each blob in ranged chunks (``max_chunk_get_size`` on the client). Memory holds one chunk and one line, plus the
window's columns: 8 bytes a value for numbers, 4 for categories (dictionary codes).
"""
from __future__ import annotations

import json
import logging
import math
from array import array
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

logger = logging.getLogger(__name__)

ROOT = "modelDataCollector"
INPUTS, OUTPUTS = "model_inputs", "model_outputs"
STORAGE_SCOPE = "https://storage.azure.com/.default"  # the token audience azure-storage-blob asks a credential for


def hour_prefixes(endpoint: str, deployment: str, collection: str, start: datetime, end: datetime, *,
                  root: str = ROOT) -> list[str]:
    """The hourly folders ``{root}/{endpoint}/{deployment}/{collection}/yyyy/MM/dd/HH/`` that [start, end) touches."""
    start, end = _utc(start), _utc(end)
    hour = start.replace(minute=0, second=0, microsecond=0)
    out = []
    while hour < end:
        out.append(f"{root}/{endpoint}/{deployment}/{collection}/{hour:%Y/%m/%d/%H}/")
        hour += timedelta(hours=1)
    return out


def lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The lines of a byte stream that arrives in arbitrary chunks (LF or CRLF; a last line needs no newline)."""
    pending = bytearray()
    for chunk in chunks:
        pending += chunk
        start = 0
        while (cut := pending.find(b"\n", start)) >= 0:
            yield bytes(pending[start:cut]).rstrip(b"\r")
            start = cut + 1
        del pending[:start]
    if pending:
        yield bytes(pending).rstrip(b"\r")


class _Numbers:
    def __init__(self) -> None:
        self.values = array("d")

    def add(self, value) -> None:
        self.values.append(_number(value))

    def build(self):
        import numpy as np

        return np.frombuffer(self.values, dtype=np.float64) if self.values else np.empty(0)


class _Categories:
    def __init__(self) -> None:
        self.codes = array("i")
        self.index: dict[str, int] = {}

    def add(self, value) -> None:
        if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
            self.codes.append(-1)
        else:
            self.codes.append(self.index.setdefault(str(value), len(self.index)))

    def build(self):
        import numpy as np

        from shared.training.baseline_profile import Coded

        return Coded(np.frombuffer(self.codes, dtype=np.int32) if self.codes else np.empty(0, np.int32),
                     list(self.index))


@dataclass
class CollectedWindow:
    """The columns of a window, ready for ``engine.compare(baseline, window.columns, predictions=...)``."""

    start: datetime
    end: datetime
    columns: dict = field(default_factory=dict)
    predictions: object = None  # a float array, or None when no outputs were collected
    rows: int = 0
    records: int = 0  # JSONL objects read (one may batch several requests)
    blobs: int = 0
    skipped_lines: int = 0  # unreadable lines (logged), not counted as rows
    truncated: bool = False  # max_rows reached: the window is larger than this reader computes


class CollectorReader:
    """Reads collected inputs and outputs of one deployment from the container behind ``workspaceblobstore``."""

    def __init__(self, container, *, root: str = ROOT, max_rows: int = 5_000_000) -> None:
        self.container = container  # an azure.storage.blob.ContainerClient
        self.root = root
        self.max_rows = max_rows

    def records(self, endpoint: str, deployment: str, collection: str, start: datetime, end: datetime,
                stats: CollectedWindow | None = None) -> Iterator[dict]:
        """Each collected object of ``collection`` whose ``time`` is in [start, end), blob by blob, line by line."""
        start, end = _utc(start), _utc(end)
        for prefix in hour_prefixes(endpoint, deployment, collection, start, end, root=self.root):
            folder_hour = datetime.strptime(prefix.rstrip("/")[-13:], "%Y/%m/%d/%H").replace(tzinfo=timezone.utc)
            for blob in self.container.list_blobs(name_starts_with=prefix):
                if not blob.name.endswith(".jsonl"):
                    continue
                if stats is not None:
                    stats.blobs += 1
                for line in lines(self.container.download_blob(blob.name).chunks()):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except ValueError:
                        logger.warning("unreadable line in %s skipped", blob.name)
                        if stats is not None:
                            stats.skipped_lines += 1
                        continue
                    if not isinstance(record, dict):
                        continue
                    at = _time(record.get("time")) or folder_hour
                    if start <= at < end:
                        yield record

    def window(self, endpoint: str, deployment: str, profile: Mapping, start: datetime, end: datetime, *,
               prediction_column: str | None = None) -> CollectedWindow:
        """The baseline profile's features (and the predictions) over [start, end): numeric features as float
        arrays (NaN missing), categorical ones dictionary-encoded."""
        out = CollectedWindow(_utc(start), _utc(end))
        builders = {name: (_Numbers() if spec["type"] == "numeric" else _Categories())
                    for name, spec in profile["features"].items()}
        for record in self.records(endpoint, deployment, INPUTS, start, end, out):
            out.records += 1
            for row in _rows(record.get("data")):
                if out.rows >= self.max_rows:
                    out.truncated = True
                    break
                for name, builder in builders.items():
                    builder.add(row.get(name))
                out.rows += 1
            if out.truncated:
                logger.warning("window of %s/%s stopped at %d rows (max_rows)", endpoint, deployment, out.rows)
                break
        scores = _Numbers()
        for record in self.records(endpoint, deployment, OUTPUTS, start, end, out):
            for value in _rows(record.get("data"), scalars=True):
                if len(scores.values) >= self.max_rows:
                    break
                scores.add(_prediction(value, prediction_column))
        out.columns = {name: b.build() for name, b in builders.items()}
        out.predictions = scores.build() if scores.values else None
        return out


def container_client(account_url: str, container: str, credential, **options):
    """A ContainerClient authenticated with a token credential (the Function App's managed identity in Azure):
    azure-storage-blob asks it for ``STORAGE_SCOPE``. Pass ``max_chunk_get_size`` to bound each ranged read."""
    from azure.storage.blob import ContainerClient

    from shared import retry

    # The app's one retry policy and the invocation's deadline, not azure-storage-blob's own ExponentialRetry
    # (15 s and longer between tries, Retry-After ignored), which could sleep far past a timer's deadline.
    options.setdefault("retry_policy", retry.storage_policy())
    options.setdefault("max_single_get_size", 4 * 1024 * 1024)
    options.setdefault("max_chunk_get_size", 4 * 1024 * 1024)
    return ContainerClient(account_url, container, credential=credential, **options)


def _rows(data, *, scalars: bool = False) -> list:
    if isinstance(data, list):
        return [r for r in data if isinstance(r, dict) or (scalars and not isinstance(r, dict))]
    if isinstance(data, dict):
        return [data]
    if scalars and data is not None:
        return [data]
    return []


def _prediction(value, column: str | None) -> float:
    if isinstance(value, dict):
        if column is not None:
            return _number(value.get(column))
        return _number(next(iter(value.values()))) if len(value) == 1 else math.nan
    if isinstance(value, list):
        return _number(value[0]) if len(value) == 1 else math.nan
    return _number(value)


def _number(value) -> float:
    if value is None or value == "" or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _time(value) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return _utc(datetime.fromisoformat(value))
    except ValueError:
        return None


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)

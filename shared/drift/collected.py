"""Ground truth against the collector's data in Azure: the labels file from the landing container and the predictions
each deployment served, both read with the app's managed identity through azure-storage-blob.

Pairing: the collector writes a ``model_inputs`` object and a ``model_outputs`` object per logged call, with the same
``correlationid``; row i of one answers row i of the other. A label keyed by ``correlationid`` is joined only with
an object holding one row (the collector may batch calls, and then the id names the batch, not the row). A label
keyed by the documented id column (``customer_id``) is joined with the input row that carries it.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from shared.drift.collector import INPUTS, OUTPUTS, CollectorReader, _prediction, _rows
from shared.drift.degradation import CORRELATION_ID

logger = logging.getLogger(__name__)

LOOKBACK_DAYS = 7  # labels in a folder that is not a date are joined with the last week's predictions


def served_window(version: str, now: datetime) -> tuple[datetime, datetime]:
    """The predictions a labels folder covers: its UTC day when it is named YYYY-MM-DD, else the last week."""
    try:
        day = datetime.strptime(version, "%Y-%m-%d").replace(tzinfo=timezone.utc)
        return day, day + timedelta(days=1)
    except ValueError:
        now = now.astimezone(timezone.utc)
        return now - timedelta(days=LOOKBACK_DAYS), now


class CollectedData:
    """The ``collected`` dependency of shared/labels.py on the azure backend."""

    def __init__(self, container, credential, *, blob_options: dict | None = None) -> None:
        self.container = container  # ContainerClient on the collector's container (MLOPS_DRIFT_CONTAINER_URL)
        self.credential = credential
        from shared import retry

        # The app's retry policy and deadline, as for every blob read (shared/retry.py).
        self.blob_options = {"retry_policy": retry.storage_policy(), **(blob_options or {})}

    def labels_lines(self, url: str) -> list[str]:
        """The labels file's lines (a landed blob URL, read with the app's identity)."""
        from azure.storage.blob import BlobClient

        from shared.adapters.errors import translated

        with translated(f"read labels {url}"):
            blob = BlobClient.from_blob_url(url, credential=self.credential, **self.blob_options)
            try:
                return blob.download_blob().readall().decode("utf-8-sig").splitlines()
            finally:
                blob.close()

    def served(self, endpoint: str, deployments: list[str], key: str, ids: set[str], start: datetime,
               end: datetime) -> dict[str, tuple[str, float]]:
        """{id: (deployment, prediction)} for the labelled ids the deployments answered in [start, end)."""
        from shared.adapters.errors import translated

        reader = CollectorReader(self.container)
        out: dict[str, tuple[str, float]] = {}
        for deployment in deployments:
            with translated(f"read collected data of {endpoint}/{deployment}"):
                wanted: dict[str, list[str | None]] = {}  # correlationid -> the labelled id of each row
                for record in reader.records(endpoint, deployment, INPUTS, start, end):
                    rows = _rows(record.get("data"))
                    cid = str(record.get("correlationid") or "")
                    if key == CORRELATION_ID:
                        if len(rows) == 1 and cid in ids:
                            wanted[cid] = [cid]
                    else:
                        row_ids = [str(r.get(key)) if str(r.get(key)) in ids else None for r in rows]
                        if cid and any(row_ids):
                            wanted[cid] = row_ids
                if not wanted:
                    continue
                for record in reader.records(endpoint, deployment, OUTPUTS, start, end):
                    row_ids = wanted.get(str(record.get("correlationid") or ""))
                    if not row_ids:
                        continue
                    scores = _rows(record.get("data"), scalars=True)
                    if len(scores) != len(row_ids):
                        continue
                    for ident, score in zip(row_ids, scores, strict=True):
                        value = _prediction(score, None)
                        if ident is not None and value == value:  # not NaN
                            out[ident] = (deployment, value)
        logger.info("joined %d of %d labels with what %s served", len(out), len(ids), endpoint)
        return out

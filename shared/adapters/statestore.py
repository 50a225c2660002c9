"""Endpoint state records on Azure Table Storage: one entity per endpoint, its ETag as the concurrency token.

PartitionKey "endpoint", RowKey = the escaped endpoint name, ``body`` = the record as JSON (a few KiB: far below
the 64 KiB of one string property). A first record is ``create_entity`` (fails if another worker created it); every
later one is ``update_entity(mode=REPLACE, etag=..., match_condition=IfNotModified)``.
"""
from __future__ import annotations

import logging
from dataclasses import replace

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from shared.adapters.errors import translated
from shared.adapters.tables import escape_key, unescape_key
from shared.errors import StaleState
from shared.rollout import EndpointState

logger = logging.getLogger(__name__)
PARTITION = "endpoint"


class TableStateStore:
    """The StateStore port on Table Storage."""

    def __init__(self, table: TableClient) -> None:
        self.table = table

    def load(self, endpoint: str) -> EndpointState | None:
        with translated(f"read state of {endpoint}"):
            try:
                entity = self.table.get_entity(PARTITION, escape_key(endpoint))
            except ResourceNotFoundError:
                return None
        return EndpointState.from_json(entity["body"], entity.metadata["etag"])

    def save(self, state: EndpointState) -> EndpointState:
        entity = {"PartitionKey": PARTITION, "RowKey": escape_key(state.endpoint), "body": state.to_json()}
        with translated(f"write state of {state.endpoint}"):
            try:
                if not state.version:
                    meta = self.table.create_entity(entity)
                else:
                    meta = self.table.update_entity(entity, mode=UpdateMode.REPLACE, etag=state.version,
                                                    match_condition=MatchConditions.IfNotModified)
            except ResourceExistsError:
                raise StaleState(f"state of {state.endpoint} was created by another worker") from None
            except (ResourceModifiedError, ResourceNotFoundError):
                raise StaleState(f"state of {state.endpoint} changed since it was read") from None
        return replace(state, version=meta["etag"])

    def endpoints(self) -> list[str]:
        with translated("list endpoint states"):
            rows = list(self.table.query_entities(f"PartitionKey eq '{PARTITION}'", select=["RowKey"]))
        return sorted(unescape_key(r["RowKey"]) for r in rows)

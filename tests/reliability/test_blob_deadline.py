"""The drift monitor's blob reads follow the app's one retry policy and the invocation's deadline (shared/retry.py).

azure-storage-blob brings its own retry (ExponentialRetry: 15 s, then longer, ignoring Retry-After), which would let
one blob read sleep far past a timer's deadline. Every request here is answered by the transport itself with a
throttling reply, so the policy's choices are all that is measured."""
from __future__ import annotations

import time

import pytest

from shared import retry
from shared.drift.collector import container_client
from tests.integration.azurite import StaticTokenCredential
from tests.reliability.faults import FaultyTransport

DEADLINE = 1.0
SLACK = 0.6


def test_a_throttled_blob_listing_gives_up_at_the_deadline_without_sleeping_past_it():
    transport = FaultyTransport(fault_rate=1.0, retry_after_ms=400, max_sleep=0.05)
    container = container_client("https://mlopsws.blob.core.windows.net", "azureml", StaticTokenCredential("token", int(time.time()) + 3600),
                                 transport=transport)
    started = time.monotonic()
    with retry.deadline(DEADLINE), pytest.raises(Exception):  # noqa: B017  the SDK's own error or DeadlineExceeded
        list(container.list_blobs(name_starts_with="modelDataCollector/"))
    elapsed = time.monotonic() - started
    assert transport.requests >= 2  # it did retry the throttled answer
    assert sum(transport.slept) < DEADLINE, transport.slept  # and never asked to wait past the deadline
    assert elapsed < DEADLINE + SLACK


def test_the_landing_check_gives_up_at_the_deadline_without_sleeping_past_it():
    """The data contract reads a landed blob's head inside on_blob_created, under Event Grid's 25 s deadline."""
    from shared.adapters.landing import BlobLandingReader

    transport = FaultyTransport(fault_rate=1.0, retry_after_ms=400, max_sleep=0.05)
    reader = BlobLandingReader(StaticTokenCredential("token", int(time.time()) + 3600), transport=transport)
    started = time.monotonic()
    with retry.deadline(DEADLINE), pytest.raises(Exception):  # noqa: B017  the SDK's own error or DeadlineExceeded
        reader.head("https://mlopsws.blob.core.windows.net/landing/churn/1/data.csv")
    assert transport.requests >= 2
    assert sum(transport.slept) < DEADLINE, transport.slept
    assert time.monotonic() - started < DEADLINE + SLACK


def test_the_labels_read_gives_up_at_the_deadline_without_sleeping_past_it():
    from shared.drift.collected import CollectedData

    transport = FaultyTransport(fault_rate=1.0, retry_after_ms=400, max_sleep=0.05)
    data = CollectedData(None, StaticTokenCredential("token", int(time.time()) + 3600),
                         blob_options={"transport": transport})
    started = time.monotonic()
    with retry.deadline(DEADLINE), pytest.raises(Exception):  # noqa: B017
        data.labels_lines("https://mlopsws.blob.core.windows.net/landing/churn-labels/2026-12-01/labels.csv")
    assert transport.requests >= 2
    assert sum(transport.slept) < DEADLINE, transport.slept
    assert time.monotonic() - started < DEADLINE + SLACK

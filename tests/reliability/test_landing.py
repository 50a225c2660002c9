"""Landing-path holes (issue 11, item 15), through the real bus and the embedded workspace: scratch files never
train, ``data.url`` must be the blob the subject names, a SAS token never reaches a record, ADLS commits count."""
from __future__ import annotations

import copy

import pytest

from shared import eventgrid
from shared.errors import InvalidPayload, NotFound
from shared.local import wire
from shared.local.churn import write_csv
from shared.messages import DataRegistered, EventIgnored
from tests.helpers import Harness


@pytest.fixture
def h(tmp_path):
    harness = Harness(tmp_path / "mlops")
    yield harness
    harness.close()


def landed(h, blob_path: str) -> dict:
    """Put a real CSV in the local datastore and return the BlobCreated its upload raised (not yet delivered)."""
    source = write_csv(h.home / "gen" / "v.csv", rows=200, seed=3)
    event = h.ws.land("landing", blob_path, source)
    h.events.clear()
    return event


def trained(h) -> list:
    return h.ws.list_jobs()


def test_a_spark_temporary_file_under_the_version_folder_never_starts_training(h):
    event = landed(h, "churn/7/_temporary/0/task_0001/part-00000.csv")
    [result] = h.deliver(event)
    assert result.outcome == "ignored" and trained(h) == []


def test_a_url_that_is_not_the_subjects_blob_is_rejected_and_never_read(h):
    event = landed(h, "churn/7/data.csv")
    event["data"]["url"] = "/etc/passwd"
    [result] = h.deliver(event)
    assert result.outcome == "rejected"
    with pytest.raises(NotFound):
        h.ws.get_data("churn", "7")
    assert trained(h) == []
    text = " ".join(r.reason for r in h.rt.audit.recent(limit=10)) + " ".join(a.summary for a in h.notifier.alerts)
    assert "root:" not in text and "/etc/passwd" not in text


@pytest.mark.parametrize("url", [
    "https://evil.example.com/landing/churn/7/data.csv",
    "https://stmlops.blob.core.windows.net/landing/churn/8/data.csv",  # another version than the subject
    "https://stmlops.blob.core.windows.net/archive/churn/7/data.csv",  # another container
    "http://stmlops.blob.core.windows.net/landing/churn/7/data.csv",
    "file:///landing/churn/7/data.csv",
])
def test_the_url_must_name_the_same_blob_as_the_subject_on_a_storage_endpoint(url):
    event = wire.blob_created("landing", "churn/7/data.csv", content_length=10)
    event["data"]["url"] = url
    with pytest.raises(InvalidPayload) as err:
        eventgrid.to_message(event)
    assert err.value.field == "data.url"


def test_a_sas_token_in_the_url_is_dropped_before_anything_records_it(h):
    event = landed(h, "churn/7/data.csv")
    event["data"]["url"] += "?sv=2024-05-04&sr=b&sp=r&sig=c2VjcmV0LXNpZ25hdHVyZQ%3D%3D"
    h.deliver(event)
    h.pump()
    asset = h.ws.get_data("churn", "7")
    assert "sig=" not in asset.path and "?" not in asset.path
    stored = " ".join(f"{r.reason} {r.facts}" for r in h.rt.audit.recent(limit=50))
    stored += " ".join(f"{a.summary} {a.facts}" for a in h.notifier.alerts)
    assert "c2VjcmV0" not in stored and "sig=" not in stored
    assert len(trained(h)) == 1


def test_an_adls_flush_with_close_on_the_dfs_endpoint_registers_and_trains(h):
    event = landed(h, "churn/7/data.csv")
    dfs = copy.deepcopy(event)
    dfs["data"]["api"] = "FlushWithClose"
    dfs["data"]["url"] = dfs["data"]["url"].replace(".blob.core.", ".dfs.core.")
    [registered, *_] = h.deliver(dfs)
    assert registered.outcome == "done", registered.reason
    assert h.ws.get_data("churn", "7").path.startswith("https://mlopslocaldata.blob.core.windows.net/landing/")
    assert len(trained(h)) == 1


def test_the_captured_adls_event_maps_to_the_blob_endpoint():
    import json
    from pathlib import Path

    raw = json.loads((Path(__file__).parents[1] / "fixtures" / "events" /
                      "storage_blob_created_flushwithclose.json").read_text())
    event = raw[0] if isinstance(raw, list) else raw
    m = eventgrid.to_message(event)
    assert isinstance(m, DataRegistered)
    assert m.path == "https://stmlopsdataprod.blob.core.windows.net/landing/churn/4/data.csv"


@pytest.mark.parametrize("path", ["churn/7/.hidden/part.csv", "churn/7/sub/_SUCCESS", "churn/7/_logs/x.csv"])
def test_hidden_or_scratch_folders_at_any_depth_are_ignored(path):
    assert isinstance(eventgrid.to_message(wire.blob_created("landing", path, content_length=1)), EventIgnored)

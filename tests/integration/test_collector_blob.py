"""The collector reader against Azurite Blob: Azure ML data-collector-shaped JSONL streamed through azure-storage-blob,
with the development key and with a bearer token (the managed-identity path), then through the drift engine."""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from shared.drift import collector
from shared.drift.collector import CollectorReader, container_client, hour_prefixes, lines
from shared.drift.engine import compare
from shared.training.baseline_profile import build_profile
from tests.integration.azurite import (
    STORAGE_SCOPE,
    StaticTokenCredential,
    unsigned_storage_token,
)

T0 = datetime(2026, 12, 2, 13, 0, tzinfo=timezone.utc)
EP, DEP = "churn-endpoint", "v2-1"


def test_hour_prefixes_follow_the_collector_layout_across_midnight():
    start = datetime(2026, 12, 31, 22, 30, tzinfo=timezone.utc)
    assert hour_prefixes("ep", "blue", "model_inputs", start, start + timedelta(hours=2)) == [
        "modelDataCollector/ep/blue/model_inputs/2026/12/31/22/",
        "modelDataCollector/ep/blue/model_inputs/2026/12/31/23/",
        "modelDataCollector/ep/blue/model_inputs/2027/01/01/00/"]


def test_lines_survive_any_chunking():
    text = b'{"a": 1}\r\n{"b": "x\\ny"}\n\n{"c": 3}'
    for size in (1, 2, 3, 7, 100):
        chunks = [text[i:i + size] for i in range(0, len(text), size)]
        assert list(lines(chunks)) == [b'{"a": 1}', b'{"b": "x\\ny"}', b"", b'{"c": 3}']


def _record(kind: str, at: datetime, data) -> str:
    rid = str(uuid.uuid4())
    return json.dumps({"specversion": "1.0", "id": str(uuid.uuid4()), "type": f"azureml.inference.{kind}",
                       "source": f"/subscriptions/s/resourceGroups/rg/providers/Microsoft.MachineLearningServices/"
                                 f"workspaces/ws/onlineEndpoints/{EP}/deployments/{DEP}",
                       "datacontenttype": "application/json", "time": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                       "data": data, "correlationid": rid, "xrequestid": rid, "modelversion": "default",
                       "collectdatatype": "pandas.core.frame.DataFrame", "agent": "azureml-ai-monitoring/0.1.0b4"})


def _rows(rng, n, shift=0.0):
    return [{"tenure": float(t), "plan": str(p)} for t, p in
            zip(rng.normal(24 + shift, 6, n), rng.choice(["monthly", "one-year", "two-year"], n), strict=True)]


def _upload(container, rows, scores, start: datetime, *, per_record=25, minutes=90):
    """Collector-shaped blobs: batched records spread over ``minutes`` from ``start``, hourly folders."""
    blobs: dict[str, list[str]] = {}
    for i in range(0, len(rows), per_record):
        at = start + timedelta(minutes=minutes * i / len(rows))
        for kind, data in (("model_inputs", rows[i:i + per_record]),
                           ("model_outputs", [{"churn_probability": s} for s in scores[i:i + per_record]])):
            name = f"modelDataCollector/{EP}/{DEP}/{kind}/{at:%Y/%m/%d/%H}/instance-a.jsonl"
            blobs.setdefault(name, []).append(_record(kind, at, data))
    for name, records in blobs.items():
        container.upload_blob(name, "\n".join(records) + "\n", overwrite=True)


def _container(azurite, credential=None, **options):
    service = azurite.blob_service(credential, **options)
    name = "azureml-blobstore-" + uuid.uuid4().hex[:12]
    service.create_container(name)
    return service.get_container_client(name)


def test_a_window_reads_only_its_records_in_ranged_chunks(blob_azurite):
    rng = np.random.default_rng(1)
    seen: list = []
    container = _container(blob_azurite, max_single_get_size=1024, max_chunk_get_size=1024,
                           raw_request_hook=lambda r: seen.append(r.http_request))
    rows, scores = _rows(rng, 400), list(rng.beta(2, 5, 400))
    rows[3]["tenure"], rows[4]["plan"] = None, None  # missing values
    _upload(container, rows, scores, T0)
    # outside the window: an hour earlier, a record in the window's last folder but after its end, junk
    container.upload_blob(f"modelDataCollector/{EP}/{DEP}/model_inputs/2026/12/02/12/early.jsonl",
                          _record("model_inputs", T0 - timedelta(minutes=30), _rows(rng, 5)) + "\n")
    container.upload_blob(f"modelDataCollector/{EP}/{DEP}/model_inputs/2026/12/02/14/late.jsonl",
                          _record("model_inputs", T0 + timedelta(minutes=125), _rows(rng, 5)) + "\nnot json\n")
    container.upload_blob(f"modelDataCollector/{EP}/{DEP}/model_inputs/2026/12/02/13/readme.txt", "ignored")
    profile = build_profile({"tenure": [r["tenure"] for r in _rows(rng, 2000)]},
                            {"plan": [r["plan"] for r in _rows(rng, 2000)]}, rows=2000)

    seen.clear()
    window = CollectorReader(container).window(EP, DEP, profile, T0, T0 + timedelta(hours=2))

    assert window.rows == 400 and window.records == 16 and window.skipped_lines == 1 and not window.truncated
    expected = np.array([np.nan if r["tenure"] is None else r["tenure"] for r in rows])
    np.testing.assert_array_equal(window.columns["tenure"], expected)
    plan = window.columns["plan"]
    assert [None if c < 0 else plan.categories[c] for c in plan.codes] == [r["plan"] for r in rows]
    np.testing.assert_allclose(window.predictions, scores)
    # request shapes: one listing per hour folder of each collection, ranged GETs of at most 1 KiB
    listings = [r for r in seen if "comp=list" in r.url]
    assert len(listings) == 4
    assert all("restype=container" in r.url and "prefix=modelDataCollector%2F" in r.url for r in listings)
    gets = [r for r in seen if r.method == "GET" and "comp=list" not in r.url]
    ranges = [r.headers.get("x-ms-range") for r in gets]
    assert all(ranges) and len(gets) > 4, "each blob is read in ranged chunks, not in one go"
    assert all(int(rg.split("-")[1]) - int(rg.split("=")[1].split("-")[0]) < 1024 for rg in ranges)
    assert not any("early.jsonl" in r.url or "readme.txt" in r.url for r in gets)


def test_max_rows_truncates_and_says_so(blob_azurite):
    rng = np.random.default_rng(2)
    container = _container(blob_azurite)
    _upload(container, _rows(rng, 200), list(rng.beta(2, 5, 200)), T0)
    profile = build_profile({"tenure": [1.0, 2.0]}, {"plan": ["monthly"]}, rows=2)
    window = CollectorReader(container, max_rows=120).window(EP, DEP, profile, T0, T0 + timedelta(hours=2))
    assert window.truncated and window.rows == 120 and window.columns["tenure"].size == 120


def test_the_managed_identity_path_sends_a_bearer_token_for_storage(blob_azurite_oauth):
    rng = np.random.default_rng(3)
    setup = _container(blob_azurite_oauth, StaticTokenCredential(*unsigned_storage_token()))
    baseline_rows = _rows(rng, 3000)
    profile = build_profile({"tenure": [r["tenure"] for r in baseline_rows]},
                            {"plan": [r["plan"] for r in baseline_rows]}, rows=3000,
                            prediction=rng.beta(2, 5, 3000))
    _upload(setup, _rows(rng, 500, shift=10.0), list(rng.beta(2, 5, 500)), T0)
    _upload(setup, _rows(rng, 500), list(rng.beta(2, 5, 500)), T0 + timedelta(hours=3))

    token = StaticTokenCredential(*unsigned_storage_token())
    seen: list = []
    container = container_client(blob_azurite_oauth.endpoint, setup.container_name, token,
                                 raw_request_hook=lambda r: seen.append(r.http_request),
                                 **blob_azurite_oauth.client_options)
    reader = CollectorReader(container)
    drifted = reader.window(EP, DEP, profile, T0, T0 + timedelta(hours=2))
    calm = reader.window(EP, DEP, profile, T0 + timedelta(hours=3), T0 + timedelta(hours=5))

    assert token.scopes and all(s == (STORAGE_SCOPE,) for s in token.scopes) and STORAGE_SCOPE == collector.STORAGE_SCOPE
    assert seen and all(r.headers["Authorization"].startswith("Bearer ") for r in seen)
    assert all(r.url.startswith("https://") for r in seen)
    result = compare(profile, drifted.columns, predictions=drifted.predictions)
    assert result.drifted and result.top()[0].name == "tenure" and drifted.rows == 500
    assert compare(profile, calm.columns, predictions=calm.predictions).status == "no_drift"


def test_an_expired_token_is_refused(blob_azurite_oauth):
    from azure.core.exceptions import HttpResponseError

    token = StaticTokenCredential(*unsigned_storage_token(lifetime=-600))
    container = container_client(blob_azurite_oauth.endpoint, "anything", token, **blob_azurite_oauth.client_options)
    with pytest.raises(HttpResponseError):
        list(CollectorReader(container).records(EP, DEP, "model_inputs", T0, T0 + timedelta(hours=1)))

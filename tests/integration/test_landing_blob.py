"""The landing reader against Azurite Blob: one ranged read of a landed blob's head with a bearer token (the managed
identity path), a folder read through its first data blob, and a refusal that names the problem."""
from __future__ import annotations

import uuid

import pytest

from shared.adapters.landing import BlobLandingReader
from shared.datacontract import Contract, ContractViolation, validate
from shared.errors import NotFound
from shared.local.churn import generate
from tests.integration.azurite import (
    STORAGE_SCOPE,
    StaticTokenCredential,
    unsigned_storage_token,
)
from tests.unit.test_datacontract import table


@pytest.fixture
def blob_oauth(blob_azurite_oauth):
    return blob_azurite_oauth


@pytest.fixture
def landing(blob_oauth):
    token = StaticTokenCredential(*unsigned_storage_token())
    service = blob_oauth.blob_service(token, **blob_oauth.client_options)
    name = "landing" + uuid.uuid4().hex[:10]
    service.create_container(name)
    return service.get_container_client(name), token, blob_oauth


def test_the_head_of_a_big_blob_is_one_ranged_read_with_a_storage_token(landing):
    container, token, azurite = landing
    data = table(generate(3000, seed=1))
    container.upload_blob("churn/1/customers.csv", data)
    seen = []
    reader = BlobLandingReader(token, raw_request_hook=lambda r: seen.append(r.http_request),
                               **azurite.client_options)
    head = reader.head(f"{container.url}/churn/1/customers.csv", max_bytes=64 * 1024)
    assert head.size == len(data) and len(head.data) == 64 * 1024 and head.truncated
    assert head.data == data[:64 * 1024] and head.name == "churn/1/customers.csv"
    gets = [r for r in seen if r.method == "GET"]
    assert len(gets) == 1 and gets[0].headers["x-ms-range"] == "bytes=0-65535"
    assert gets[0].headers["Authorization"].startswith("Bearer ")
    assert token.scopes and all(s == (STORAGE_SCOPE,) for s in token.scopes)
    report = validate(head, Contract(), asset="churn", version="1")
    assert report.truncated and 100 < report.rows < 3000


def test_a_folder_is_read_through_its_first_data_blob_and_a_bad_one_is_refused(landing):
    container, token, azurite = landing
    rows = [{**r, "account_id": f"A{i}"} for i, r in enumerate(generate(200, seed=2))]
    container.upload_blob("churn/2/_SUCCESS", b"")
    container.upload_blob("churn/2/part-0001.csv", table(rows))
    container.upload_blob("churn/2/_temporary/part-0000.csv", b"junk")
    head = BlobLandingReader(token, **azurite.client_options).head(f"{container.url}/churn/2/")
    assert head.name == "churn/2/part-0001.csv" and not head.truncated
    with pytest.raises(ContractViolation, match="account_id"):
        validate(head, Contract(), asset="churn", version="2")


def test_a_missing_blob_is_not_found(landing):
    container, token, azurite = landing
    with pytest.raises(NotFound):
        BlobLandingReader(token, **azurite.client_options).head(f"{container.url}/churn/9/none.csv")

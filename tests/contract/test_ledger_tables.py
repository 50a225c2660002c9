"""The ledger contract on Azure Table Storage (Azurite), plus what only Table Storage can get wrong: lost ETag
races, forbidden key characters, property size limits, and the identity (bearer token) path."""
from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from azure.data.tables import TableClient

from shared.adapters.tables import (
    CHUNK_UNITS,
    LEDGER_REASON_CHARS,
    TableAuditLog,
    TableLedger,
    escape_key,
    service_client,
    unescape_key,
)
from shared.domain import AuditRecord
from shared.errors import Busy, InvalidPayload, ServiceRejected
from tests.contract.ledger_contract import AuditContract, LedgerContract
from tests.integration.azurite import (
    AZURITE_TABLE,
    STORAGE_SCOPE,
    StaticTokenCredential,
    start_azurite,
    unsigned_storage_token,
)


class TestTableLedger(LedgerContract):
    @pytest.fixture
    def ledger(self, azurite):
        return TableLedger(azurite.fresh_table())


class TestTableAudit(AuditContract):
    @pytest.fixture
    def audit(self, azurite):
        return TableAuditLog(azurite.fresh_table())


# --- a writer that loses the race -------------------------------------------------------------------------

class Interleaved(TableClient):
    """The real TableClient, except that just before the adapter's next conditional write (update or delete),
    ``rival`` runs: another worker's write lands between the adapter's read and its write (a stale ETag)."""

    rival = None
    rival_runs = 0

    def _interleave(self) -> None:
        rival, self.rival = self.rival, None
        if rival is not None:
            rival()
            self.rival_runs += 1

    def update_entity(self, *args, **kwargs):
        self._interleave()
        return super().update_entity(*args, **kwargs)

    def delete_entity(self, *args, **kwargs):
        self._interleave()
        return super().delete_entity(*args, **kwargs)


@pytest.fixture
def raced(azurite):
    """(TableClient that lets a rival in, plain TableClient on the same table)."""
    plain = azurite.fresh_table()
    return Interleaved(azurite.endpoint, plain.table_name, credential=plain.credential), plain


def bump(plain: TableClient, ledger_key: str, **changes) -> None:
    """Another worker's unconditional write to the ledger entity (what a racing worker's update amounts to)."""
    pk, rk = TableLedger.keys(ledger_key)
    row = plain.get_entity(pk, rk)
    for name, change in changes.items():
        row[name] = change(row.get(name))
    plain.update_entity(row)


def test_a_duplicate_counted_by_a_rival_between_read_and_write_is_not_overwritten(raced):
    client, plain = raced
    ledger = TableLedger(client)
    key = f"evt-{uuid.uuid4()}/DataRegistered"
    ledger.claim(key, event_type="DataRegistered")
    ledger.complete(key, "done")
    client.rival = lambda: bump(plain, key, duplicates=lambda d: d + 1)
    assert ledger.claim(key, event_type="DataRegistered") == "done"
    assert client.rival_runs == 1
    assert ledger.stats()["duplicates"] == 2, "the rival's increment and ours both count: no lost update"


def test_release_never_deletes_an_outcome_completed_between_its_read_and_its_delete(raced):
    client, plain = raced
    ledger = TableLedger(client)
    key = f"evt-{uuid.uuid4()}/RunFinished"
    ledger.claim(key, event_type="RunFinished")
    client.rival = lambda: bump(plain, key, outcome=lambda _: "done", reason=lambda _: "finished by the rival")
    ledger.release(key)
    assert ledger.outcome(key) == ("done", "finished by the rival")
    assert ledger.claim(key, event_type="RunFinished") == "done"


def test_a_takeover_of_an_expired_lease_loses_to_a_rival_that_took_it_first(raced):
    client, plain = raced
    now = [1_000.0]
    ledger = TableLedger(client, clock=lambda: now[0])
    key = f"evt-{uuid.uuid4()}/RunFinished"
    ledger.claim(key, event_type="RunFinished", lease_seconds=10)
    now[0] += 60  # the first worker died; its lease ran out
    client.rival = lambda: bump(plain, key, lease_until=lambda _: now[0] + 300, attempts=lambda a: a + 1)
    with pytest.raises(Busy):
        ledger.claim(key, event_type="RunFinished", lease_seconds=300)
    assert plain.get_entity(*TableLedger.keys(key))["attempts"] == 2, "only the rival took over"


def test_a_writer_that_keeps_losing_gives_up_with_busy_and_counts_nothing(azurite):
    plain = azurite.fresh_table()

    class AlwaysRaced(Interleaved):
        def update_entity(self, *args, **kwargs):
            self.rival = lambda: bump(plain, key, duplicates=lambda d: d + 1)
            return super().update_entity(*args, **kwargs)

    client = AlwaysRaced(azurite.endpoint, plain.table_name, credential=plain.credential)
    ledger = TableLedger(client)
    key = f"evt-{uuid.uuid4()}/X"
    TableLedger(plain).claim(key, event_type="X")
    TableLedger(plain).complete(key, "done")
    with pytest.raises(Busy):
        ledger.claim(key, event_type="X")
    assert TableLedger(plain).stats()["duplicates"] == client.rival_runs, "only the rivals' increments landed"


def test_concurrent_duplicates_are_all_counted(azurite):
    ledger = TableLedger(azurite.fresh_table())
    key = f"evt-{uuid.uuid4()}/X"
    ledger.claim(key, event_type="X")
    ledger.complete(key, "done")
    barrier = threading.Barrier(6)
    results: list[str] = []

    def worker() -> None:
        barrier.wait()
        for _ in range(3):
            try:
                results.append(ledger.claim(key, event_type="X"))
            except Busy:
                results.append("busy")

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ledger.stats()["duplicates"] == results.count("done")
    assert results.count("done") >= 12, results


# --- keys and sizes ----------------------------------------------------------------------------------------

AWKWARD = ["a/b\\c#d?e", "tab\tnew\nline\x00nul\x7f\x9f", "50%'quoted'!bang", "unicodé ✓ 𝄞", "~~~", " spaced "]


@pytest.mark.parametrize("raw", AWKWARD)
def test_escaped_keys_hold_no_forbidden_character_and_come_back(raw):
    key = escape_key(raw)
    assert not any(c in key for c in "/\\#?%'") and not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in key)
    assert unescape_key(key) == raw


def test_keys_with_forbidden_characters_work_end_to_end(azurite):
    ledger = TableLedger(azurite.fresh_table())
    audit = TableAuditLog(azurite.fresh_table())
    for raw in AWKWARD:
        key = f"{raw}/MLOps.DriftDetected"
        assert ledger.claim(key, event_type="X") == "new"
        ledger.release(key)
        assert ledger.claim(key, event_type="X") == "new"
        ledger.complete(key, "done", raw)
        assert ledger.claim(key, event_type="X") == "done"
        assert ledger.outcome(key) == ("done", raw)
        audit.append(AuditRecord(event_id=raw, message="M", decision="hold", reason=raw, actor="a",
                                 facts={"endpoint": raw}))
        got = audit.recent(subject=raw)
        assert [r.event_id for r in got] == [raw] and got[0].facts == {"endpoint": raw}
    assert ledger.stats()["done"] == len(AWKWARD)


def test_a_very_long_key_is_hashed_into_a_valid_key_and_still_unique(azurite):
    ledger = TableLedger(azurite.fresh_table())
    a, b = "e" * 3000 + "/A", "e" * 3000 + "/B"
    assert escape_key(a) != escape_key(b) and len(escape_key(a)) <= 480
    assert ledger.claim(a, event_type="X") == "new"
    assert ledger.claim(b, event_type="X") == "new"
    ledger.complete(a, "done")
    assert ledger.claim(a, event_type="X") == "done"


def test_a_100_kb_reason_and_fact_are_kept_whole_in_the_audit_trail(azurite):
    audit = TableAuditLog(azurite.fresh_table())
    reason = "".join(chr(0x41 + i % 26) for i in range(100_000))
    log = "é𝄞" * 25_000 + "end"  # 50,003 characters, 75,003 UTF-16 units: split across properties
    audit.append(AuditRecord(event_id="big", message="RunFinished", decision="reject", reason=reason,
                             actor="automation", facts={"model": "churn", "error_log": log}))
    got = audit.recent(subject="churn")[0]
    assert got.reason == reason and got.facts["error_log"] == log


def test_a_reason_beyond_the_entity_limit_is_cut_with_a_marker_not_refused(azurite):
    audit = TableAuditLog(azurite.fresh_table())
    audit.append(AuditRecord(event_id="huge", message="M", decision="reject", reason="x" * 1_500_000,
                             actor="automation", facts={"endpoint": "ep", "blob": "y" * 1_500_000}))
    got = audit.recent(subject="ep")[0]
    assert got.reason.startswith("x" * 1000) and "[cut: 1500000 characters" in got.reason
    assert len(got.reason) <= 128_000
    assert got.facts["endpoint"] == "ep" and "[cut: 1500000 characters" in got.facts["blob"]


def test_the_ledger_keeps_2000_characters_of_a_reason_like_sqlite(azurite):
    ledger = TableLedger(azurite.fresh_table())
    ledger.claim("k/X", event_type="X")
    ledger.complete("k/X", "failed", "z" * 100_000)
    assert ledger.outcome("k/X") == ("failed", "z" * LEDGER_REASON_CHARS)
    assert CHUNK_UNITS * 2 < 64 * 1024


# --- audit queries -----------------------------------------------------------------------------------------

def test_recent_spans_days_newest_first_and_since_cuts_by_time(azurite):
    audit = TableAuditLog(azurite.fresh_table())
    now = datetime.now(timezone.utc)
    for days in (40, 3, 1, 0):
        audit.append(AuditRecord(event_id=f"d{days}", message="M", decision="hold", reason="", actor="a",
                                 facts={"endpoint": "ep"}, at=now - timedelta(days=days, minutes=1)))
    assert [r.event_id for r in audit.recent()] == ["d0", "d1", "d3", "d40"]
    assert [r.event_id for r in audit.recent(limit=2)] == ["d0", "d1"]
    assert [r.event_id for r in audit.recent(since=now - timedelta(days=2))] == ["d0", "d1"]
    assert [r.event_id for r in audit.recent(subject="ep", since=now - timedelta(days=5))] == ["d0", "d1", "d3"]
    assert audit.recent(decisions=["rollback"]) == []


def test_appends_in_one_process_keep_their_order_even_within_a_microsecond(azurite):
    audit = TableAuditLog(azurite.fresh_table())
    for i in range(20):
        audit.append(AuditRecord(event_id=str(i), message="M", decision="hold", reason="", actor="a"))
    assert [r.event_id for r in audit.recent(limit=20)] == [str(i) for i in reversed(range(20))]


# --- identity: the managed-identity path (bearer token over HTTPS) -----------------------------------------

@pytest.fixture(scope="module")
def azurite_oauth(tmp_path_factory):
    if not AZURITE_TABLE.exists():
        pytest.skip("Azurite is not installed: run `make setup`")
    instance = start_azurite(tmp_path_factory.mktemp("azurite-oauth"), oauth=True)
    yield instance
    instance.stop()


def test_the_ledger_works_with_a_bearer_token_and_no_key(azurite_oauth):
    token = StaticTokenCredential(*unsigned_storage_token())
    service = service_client(azurite_oauth.endpoint, token, **azurite_oauth.client_options)
    service.create_table("identityledger")
    ledger = TableLedger(service.get_table_client("identityledger"))
    assert ledger.claim("evt/X", event_type="X") == "new"
    ledger.complete("evt/X", "done")
    assert ledger.claim("evt/X", event_type="X") == "done"
    assert token.scopes and all(s == (STORAGE_SCOPE,) for s in token.scopes)


def test_an_expired_token_is_refused_as_a_permanent_error(azurite_oauth):
    token = StaticTokenCredential(*unsigned_storage_token(lifetime=-600))
    service = service_client(azurite_oauth.endpoint, token, **azurite_oauth.client_options)
    ledger = TableLedger(service.get_table_client("nosuchtable"))
    with pytest.raises(ServiceRejected) as caught:
        ledger.claim("evt/X", event_type="X")
    assert "not authorised" in str(caught.value) or "403" in str(caught.value)


@pytest.mark.parametrize("uri", ["https://acct.table.core.windows.net/?sv=2024&sig=abc",
                                 "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=abc", ""])
def test_keys_and_sas_in_the_table_uri_are_refused(uri):
    with pytest.raises(InvalidPayload):
        service_client(uri, StaticTokenCredential("t", 0))


def test_a_key_credential_is_refused():
    from azure.core.credentials import AzureNamedKeyCredential

    with pytest.raises(TypeError):
        service_client("https://acct.table.core.windows.net", AzureNamedKeyCredential("a", "a2V5"))


# --- a write that commits but whose reply is lost ---------------------------------------------------------

class LosesReply(TableClient):
    """The real TableClient, except that its next update commits on the server and then fails as if the reply had
    been lost on the way back (a timeout or a dropped connection after the write)."""

    lose_next = False

    def update_entity(self, *args, **kwargs):
        result = super().update_entity(*args, **kwargs)
        if self.lose_next:
            self.lose_next = False
            from azure.core.exceptions import ServiceResponseError

            raise ServiceResponseError("injected: the reply was lost after the write committed")
        return result


def test_completing_again_after_a_lost_reply_finds_its_own_completion(azurite):
    """The bus retries settling a claim (retry.call): the retry must see that the first try landed, or the failure
    it was settling is never audited or alerted ("no longer ours")."""
    from shared.errors import TransientError

    plain = azurite.fresh_table()
    client = LosesReply(azurite.endpoint, plain.table_name, credential=plain.credential)
    ledger = TableLedger(client)
    key = f"evt-{uuid.uuid4()}/RunFinished"
    token = ledger.claim(key, event_type="RunFinished").token
    client.lose_next = True
    try:  # retried inside (the SDK's policy, the adapter's loop) or raised as transient for the bus to retry
        first = ledger.complete(key, "failed", "boom", token=token)
    except TransientError:
        first = None
    assert first in (True, None), "its own completion, found again after the lost reply, is not 'someone else's'"
    assert ledger.outcome(key) == ("failed", "boom")  # it did land
    assert ledger.complete(key, "failed", "boom", token=token) is True  # and the retry knows it was its own
    other = ledger.claim(f"evt-{uuid.uuid4()}/RunFinished", event_type="RunFinished").token
    assert ledger.complete(key, "failed", "boom", token=other) is False  # someone else's token: not theirs

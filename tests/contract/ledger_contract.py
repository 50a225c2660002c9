"""Behavioural contract of the Ledger and AuditLog ports, run against every backend (SQLite, Table Storage).

A backend's test module subclasses LedgerContract / AuditContract and provides the fixtures
``ledger`` (a fresh, empty Ledger whose leases are ``lease_seconds`` long) and ``audit``.
"""
from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from shared.domain import AuditRecord
from shared.errors import Busy


def _key() -> str:
    return f"evt-{uuid.uuid4()}"


class LedgerContract:
    def test_first_claim_is_new_and_a_completed_key_reports_its_outcome(self, ledger):
        key = _key()
        assert ledger.claim(key, event_type="RunFinished") == "new"
        ledger.complete(key, "done", "registered model churn-model:1.1")
        assert ledger.claim(key, event_type="RunFinished") == "done"

    def test_duplicates_are_counted(self, ledger):
        key = _key()
        ledger.claim(key, event_type="DataRegistered")
        ledger.complete(key, "ignored", "not ours")
        before = ledger.stats().get("duplicates", 0)
        ledger.claim(key, event_type="DataRegistered")
        ledger.claim(key, event_type="DataRegistered")
        stats = ledger.stats()
        assert stats["duplicates"] == before + 2
        assert stats.get("ignored", 0) >= 1

    def test_a_live_claim_makes_a_second_worker_busy(self, ledger):
        key = _key()
        assert ledger.claim(key, event_type="X", lease_seconds=60) == "new"
        with pytest.raises(Busy):
            ledger.claim(key, event_type="X", lease_seconds=60)

    def test_a_released_claim_can_be_taken_again(self, ledger):
        key = _key()
        ledger.claim(key, event_type="X")
        ledger.release(key)
        assert ledger.claim(key, event_type="X") == "new"

    def test_release_never_erases_a_final_outcome(self, ledger):
        key = _key()
        ledger.claim(key, event_type="X")
        ledger.complete(key, "failed", "bad payload")
        ledger.release(key)
        assert ledger.claim(key, event_type="X") == "failed"

    def test_an_expired_lease_is_taken_over(self, ledger):
        key = _key()
        ledger.claim(key, event_type="X", lease_seconds=0.2)
        time.sleep(0.5)
        assert ledger.claim(key, event_type="X", lease_seconds=60) == "new"

    def test_concurrent_claims_of_one_key_let_exactly_one_worker_in(self, ledger):
        key = _key()
        results: list[str] = []
        barrier = threading.Barrier(8)

        def worker() -> None:
            barrier.wait()
            try:
                results.append(ledger.claim(key, event_type="X", lease_seconds=60))
            except Busy:
                results.append("busy")

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results.count("new") == 1
        assert results.count("busy") == 7

    def test_concurrent_claims_of_many_keys_all_succeed(self, ledger):
        keys = [_key() for _ in range(40)]
        results: dict[str, str] = {}
        lock = threading.Lock()

        def worker(chunk: list[str]) -> None:
            for k in chunk:
                r = ledger.claim(k, event_type="X")
                ledger.complete(k, "done")
                with lock:
                    results[k] = r

        threads = [threading.Thread(target=worker, args=(keys[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert set(results.values()) == {"new"} and len(results) == 40
        assert all(ledger.claim(k, event_type="X") == "done" for k in keys)


    # --- fencing: a stale holder cannot settle a claim it no longer holds ---------------------------------------

    def test_each_holding_gets_its_own_token_and_a_release_counts_an_attempt(self, ledger):
        key = _key()
        first = ledger.claim(key, event_type="X")
        assert (first, first.attempt) == ("new", 1) and first.token
        assert ledger.release(key, token=first.token) is True
        second = ledger.claim(key, event_type="X")
        assert (second, second.attempt) == ("new", 2) and second.token != first.token

    def test_a_stale_holder_cannot_release_the_claim_of_the_worker_that_took_over(self, ledger):
        key = _key()
        stale = ledger.claim(key, event_type="X", lease_seconds=0.2)
        time.sleep(0.5)  # the first worker stalls past its lease
        current = ledger.claim(key, event_type="X", lease_seconds=60)
        assert current == "new" and current.attempt == 2
        assert ledger.release(key, token=stale.token) is False
        with pytest.raises(Busy):  # the new holder's claim is still live: the stale release changed nothing
            ledger.claim(key, event_type="X", lease_seconds=60)

    def test_a_stale_holder_cannot_overwrite_the_outcome_of_the_worker_that_took_over(self, ledger):
        key = _key()
        stale = ledger.claim(key, event_type="X", lease_seconds=0.2)
        time.sleep(0.5)
        current = ledger.claim(key, event_type="X", lease_seconds=60)
        assert ledger.complete(key, "done", "stale worker's view", token=stale.token) is False
        assert ledger.complete(key, "failed", "current worker's outcome", token=current.token) is True
        assert ledger.complete(key, "done", "late stale worker", token=stale.token) is False
        assert ledger.outcome(key) == ("failed", "current worker's outcome")

    def test_a_settled_claim_cannot_be_settled_again_by_its_own_token(self, ledger):
        key = _key()
        held = ledger.claim(key, event_type="X")
        assert ledger.complete(key, "done", "first", token=held.token) is True
        assert ledger.release(key, token=held.token) is False
        assert ledger.complete(key, "failed", "second", token=held.token) is False
        assert ledger.claim(key, event_type="X") == "done"


    # --- parking: the app's own retry of a message nobody redelivers ----------------------------------------------

    def test_a_parked_claim_is_listed_only_while_nobody_holds_it_and_until_it_is_settled(self, ledger):
        key = _key()
        held = ledger.claim(key, event_type="DriftDetected")
        assert ledger.park(key, '{"endpoint": "e"}') is True
        assert key not in [k for k, _, _ in ledger.parked()]  # its holder's lease is live
        ledger.release(key, token=held.token)
        assert (key, '{"endpoint": "e"}', 1) in ledger.parked()
        retry = ledger.claim(key, event_type="DriftDetected")
        assert key not in [k for k, _, _ in ledger.parked()]
        ledger.complete(key, "done", token=retry.token)
        assert key not in [k for k, _, _ in ledger.parked()]
        assert ledger.park(key, "{}") is False  # a settled key is never parked again


class AuditContract:
    def test_records_come_back_newest_first_with_their_facts(self, audit):
        tag = uuid.uuid4().hex[:8]
        for i in range(3):
            audit.append(AuditRecord(event_id=f"e{i}", message="DriftDetected", decision="rollback",
                                     reason=f"r{i}", actor="automation",
                                     facts={"endpoint": f"ep-{tag}", "psi": 0.3 + i}, resources=(f"dep{i}",)))
        got = audit.recent(subject=f"ep-{tag}")
        assert [r.event_id for r in got] == ["e2", "e1", "e0"]
        assert got[0].facts["psi"] == pytest.approx(2.3)
        assert got[0].resources == ("dep2",)
        assert got[0].at is not None

    def test_filters_by_subject_decision_and_time(self, audit):
        tag = uuid.uuid4().hex[:8]
        old = datetime.now(timezone.utc) - timedelta(hours=5)
        audit.append(AuditRecord(event_id="a", message="M", decision="rollback", reason="", actor="automation",
                                 facts={"endpoint": f"ep-{tag}"}, at=old))
        audit.append(AuditRecord(event_id="b", message="M", decision="retrain", reason="", actor="alice",
                                 facts={"endpoint": f"ep-{tag}"}))
        audit.append(AuditRecord(event_id="c", message="M", decision="rollback", reason="", actor="automation",
                                 facts={"endpoint": f"other-{tag}"}))
        assert [r.event_id for r in audit.recent(subject=f"ep-{tag}", decisions=["rollback"])] == ["a"]
        since = datetime.now(timezone.utc) - timedelta(hours=1)
        assert [r.event_id for r in audit.recent(subject=f"ep-{tag}", since=since)] == ["b"]
        assert audit.recent(subject=f"ep-{tag}")[0].actor == "alice"

    def test_append_once_writes_a_record_once_and_says_whether_it_did(self, audit):
        tag = uuid.uuid4().hex[:8]
        job = f"train-{tag}-v1-a1"

        def verdict(event_id: str) -> AuditRecord:
            return AuditRecord(event_id=event_id, message="RunFinished", decision="approve", reason="auc 0.9",
                               actor="automation", facts={"job": job, "endpoint": f"ep-{tag}"})

        assert audit.append_once(verdict("e1"), subject=job, same=lambda r: r.facts.get("job") == job) is True
        assert audit.append_once(verdict("e2"), subject=job, same=lambda r: r.facts.get("job") == job) is False
        assert [r.event_id for r in audit.recent(subject=job)] == ["e1"]
        assert [r.event_id for r in audit.recent(subject=f"ep-{tag}")] == ["e1"]
        # another decision, or a record ``same`` does not accept, is a record of its own
        other = AuditRecord(event_id="e3", message="RunFinished", decision="reject", reason="", actor="automation",
                            facts={"job": job})
        assert audit.append_once(other, subject=job, same=lambda r: r.facts.get("job") == job) is True
        assert audit.append_once(verdict("e4"), subject=job, same=lambda r: r.event_id == "e4") is True
        assert [r.event_id for r in audit.recent(subject=job)] == ["e4", "e3", "e1"]

"""The ledger contract on the embedded SQLite backend."""
import pytest

from shared.local.ledger import SqliteAuditLog, SqliteLedger
from tests.contract.ledger_contract import AuditContract, LedgerContract


class TestSqliteLedger(LedgerContract):
    @pytest.fixture
    def ledger(self, tmp_path):
        return SqliteLedger(tmp_path / "ledger.db")


class TestSqliteAudit(AuditContract):
    @pytest.fixture
    def audit(self, tmp_path):
        return SqliteAuditLog(tmp_path / "ledger.db")


def test_workers_deciding_the_same_verdict_at_once_write_it_once(tmp_path):
    """The local host runs deliveries on threads: two of them redecide a run's verdict together. The check and the
    insert were separate statements, so both could find nothing and both write."""
    import threading
    import time

    from shared.domain import AuditRecord

    audit = SqliteAuditLog(tmp_path / "ledger.db")
    job = "train-churn-v1-a1"
    start = threading.Barrier(4)
    wrote: list[bool] = []

    def slow_check(record: AuditRecord) -> bool:
        time.sleep(0.02)  # the window between reading and writing, made wide enough to be met every run
        return record.event_id != "e0"  # any verdict on this run but the earlier, unrelated record

    def worker(n: int) -> None:
        record = AuditRecord(event_id=f"w{n}", message="RunFinished", decision="approve", reason="auc 0.9",
                             actor="automation", facts={"job": job, "endpoint": "churn-endpoint"})
        start.wait()
        wrote.append(audit.append_once(record, subject=job, same=slow_check))

    # A record under the run the check reads first and passes over, so every worker's check takes the slow path.
    audit.append(AuditRecord(event_id="e0", message="Earlier", decision="approve", reason="", actor="automation",
                             facts={"job": job}))
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(wrote) == [False, False, False, True]
    assert sorted(r.event_id for r in audit.recent(subject=job, decisions=["approve"]))[:-1] == ["e0"]
    assert len(audit.recent(subject=job, decisions=["approve"])) == 2

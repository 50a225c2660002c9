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

"""GET /api/status's read model never shows a credential, whatever a decision's reason quoted."""
from shared.domain import AuditRecord
from shared.local.ledger import SqliteAuditLog, SqliteLedger
from shared.views import status
from tests.integration.test_local_host import EmptyWorkspace

SECRET = "c2VjcmV0LXNpZ25hdHVyZS12YWx1ZQ"


def test_status_masks_a_signature_a_reason_quoted(tmp_path):
    audit = SqliteAuditLog(tmp_path / "ledger.db")
    audit.append(AuditRecord(event_id="e1", message="RollBack", decision="failed", actor="http:bob",
                             reason=f"endpoint 'churn/1/data.csv?sv=2024&sig={SECRET}' does not exist"))
    view = status(EmptyWorkspace(), audit, SqliteLedger(tmp_path / "ledger.db"))
    [decision] = view["recent_decisions"]
    assert SECRET not in decision["reason"] and "sig=" in decision["reason"]

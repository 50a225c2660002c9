"""A junk event's id may quote a SAS URL: the bus records the rejection without the signature, so neither the audit
trail (and GET /api/status) nor the alert shows it."""
from shared.errors import InvalidPayload
from tests.helpers import Harness

SECRET = "c2VjcmV0LXNpZ25hdHVyZQ"


def test_a_rejected_events_id_and_type_are_stored_without_a_signature(tmp_path):
    h = Harness(tmp_path)
    try:
        result = h.rt.bus.reject(f"https://a.blob.core.windows.net/landing/x.csv?sv=2024&sig={SECRET}",
                                 f"type?sig={SECRET}", InvalidPayload("event.id is missing"))
        assert result.outcome == "rejected" and SECRET not in result.event_id
        [record] = h.rt.audit.recent(limit=5)
        assert "sig=REDACTED" in record.event_id and SECRET not in record.event_id + record.message
        assert all(SECRET not in f"{a.summary} {a.facts} {a.title}" for a in h.notifier.alerts)
    finally:
        h.close()

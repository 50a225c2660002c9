"""The landing path refuses a file that breaks the data contract before its version is registered: through the real
bus and the embedded workspace, the refusal is recorded, audited and alerted, and no job starts. A file that keeps
a configured contract trains with it (label, id and feature columns reach train.py)."""
from __future__ import annotations

import json

import pytest

from shared.errors import NotFound
from shared.local.churn import generate, write_rows
from tests.helpers import Harness


@pytest.fixture
def h(tmp_path):
    harness = Harness(tmp_path / "mlops")
    yield harness
    harness.close()


def land(h, rows, version="3", name="data.csv") -> list:
    source = write_rows(h.home / "gen" / name, rows)
    event = h.ws.land("landing", f"churn/{version}/{name}", source)
    h.events.clear()
    return h.deliver(event)


def test_an_id_like_column_is_refused_before_registration_and_the_refusal_is_recorded_and_alerted(h):
    rows = [{**r, "account_id": f"A-{i:05d}"} for i, r in enumerate(generate(300, seed=1))]
    [result] = land(h, rows)
    assert result.outcome == "rejected" and "account_id" in result.reason
    with pytest.raises(NotFound):
        h.ws.get_data("churn", "3")
    assert h.ws.list_jobs() == []
    [record] = [r for r in h.rt.audit.recent(limit=10) if r.decision == "rejected"]
    assert "MLOPS_ID_COLUMNS" in record.reason and "land the fixed file as churn/4/data.csv" in record.reason
    [alert] = [a for a in h.notifier.alerts if a.kind == "event_rejected"]
    assert "id-like" in alert.summary


def test_a_latin1_file_is_refused_with_a_message_not_a_traceback(h):
    text = "customer_id,city,churn\n" + "".join(f"c{i},{'Zürich' if i == 3 else 'Bern'},{i % 2}\n" for i in range(40))
    source = h.home / "latin.csv"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(text.encode("latin-1"))
    event = h.ws.land("landing", "churn/2026-03/latin.csv", source)
    [result] = h.deliver(event)
    assert result.outcome == "rejected" and "not UTF-8" in result.reason and "churn/2026-03.1/latin.csv" in result.reason
    assert "Traceback" not in result.reason and h.ws.list_jobs() == []


def test_the_next_version_named_is_after_the_newest_registered_one(h):
    assert land(h, generate(200, seed=2), version="7")[0].outcome == "done"
    h.ws.wait_for_jobs(timeout=120)
    [result] = land(h, [{**r, "churn": 0} for r in generate(50, seed=2)], version="2", name="again.csv")
    assert result.outcome == "rejected" and "churn/8/again.csv" in result.reason


@pytest.mark.slow
def test_a_configured_contract_trains_on_its_label_and_leaves_out_its_ids(tmp_path):
    h = Harness(tmp_path / "mlops", env={"MLOPS_LABEL_COLUMN": "left", "MLOPS_ID_COLUMNS": "customer_id,account_id"})
    try:
        rows = [{**{("left" if k == "churn" else k): v for k, v in r.items()}, "account_id": f"A{i}"}
                for i, r in enumerate(generate(400, seed=3))]
        results = land(h, rows, version="1")
        assert [r.outcome for r in results] == ["done", "done"]  # registered, training started
        assert h.ws.wait_for_jobs(timeout=120)
        [job] = h.ws.list_jobs()
        assert job.status.value == "Completed", (h.ws.root / "jobs" / job.name / "job.log").read_text()[-2000:]
        encoding = json.loads(next((h.ws.root / "jobs" / job.name).rglob("encoding.json")).read_text())
        assert encoding["target"] == "left"
        used = set(encoding["numeric"]) | set(encoding["categorical"])
        assert "account_id" not in used and "customer_id" not in used and "left" not in used and "contract" in used
    finally:
        h.close()

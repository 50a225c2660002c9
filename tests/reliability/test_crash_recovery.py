"""After the host stops or crashes mid-run, interrupted local jobs are retried as their next attempt or alerted,
never silently dropped (issue 11, item 14)."""
from __future__ import annotations

import sqlite3
import time

import pytest

from shared.domain import JobStatus
from tests.helpers import Harness

pytestmark = pytest.mark.slow


def wait_running(h, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while h.ws.get_job(name).status is not JobStatus.RUNNING and time.monotonic() < deadline:
        time.sleep(0.02)
    assert h.ws.get_job(name).status is JobStatus.RUNNING


def test_a_job_running_when_the_host_stops_is_retried_as_its_next_attempt_after_restart(tmp_path):
    first = Harness(tmp_path, min_primary=0.6)
    first.land("1", rows=900, seed=201, label_noise=0.15)
    [blob] = first.events
    first.events.clear()
    first.deliver(blob)  # registered, job a1 submitted
    wait_running(first, "train-churn-v1-a1")
    first.close()  # the host goes down mid-run

    again = Harness(tmp_path, min_primary=0.6)  # restart on the same state
    try:
        again.pump()
        interrupted = again.ws.get_job("train-churn-v1-a1")
        assert interrupted.status is JobStatus.FAILED and "interrupted" in interrupted.error
        retried = again.ws.get_job("train-churn-v1-a2")
        assert retried.status is JobStatus.COMPLETED
        assert [m.version for m in again.ws.list_models("churn-model")] == ["1"]
        assert any(a.kind == "training_failed" and "new attempt" in a.summary for a in again.notifier.alerts)
        assert any(r.decision == "retry" for r in again.decisions())
    finally:
        again.close()


def test_a_crash_on_the_last_attempt_is_alerted_not_dropped(tmp_path):
    first = Harness(tmp_path, min_primary=0.6, max_attempts=1)
    first.land("1", rows=900, seed=201, label_noise=0.15)
    [blob] = first.events
    first.events.clear()
    first.deliver(blob)
    wait_running(first, "train-churn-v1-a1")
    first.close()
    db = sqlite3.connect(tmp_path / "workspace" / "workspace.db")  # as a kill -9 leaves it: still Running
    assert db.execute("SELECT status FROM jobs WHERE name = 'train-churn-v1-a1'").fetchone()[0] == "Running"
    db.close()

    again = Harness(tmp_path, min_primary=0.6, max_attempts=1)
    try:
        again.pump()
        assert [j.name for j in again.ws.list_jobs()] == ["train-churn-v1-a1"]
        [alert] = [a for a in again.notifier.alerts if a.kind == "training_failed"]
        assert alert.severity == "error" and "was the last" in alert.summary
        assert any(r.decision == "give_up" for r in again.decisions())
    finally:
        again.close()

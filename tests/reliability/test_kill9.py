"""Process kill (issue 11, crash injection): the served local host (`python -m shared.local serve`, the real
function_app, SQLite ledger, embedded workspace training real xgboost jobs) is killed with SIGKILL mid-storm,
together with the training processes it started (a host going down takes its children with it). It is restarted
on the same MLOPS_HOME and everything is delivered again, as Event Grid would: every BlobCreated, and the run events
of every job that ended. Afterwards: one job per data version (an attempt the kill interrupted is retried as the
next attempt), one model per approved run, no event lost, no effect twice, no claim left held."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import httpx
import pytest

from shared.domain import TAG_DATA_VERSION
from shared.local import wire
from shared.local.churn import write_csv
from shared.local.workspace import WORKSPACE_DIR, upload
from tests.reliability.storm import deliver_storm, size, write_figures

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
KEY = "kill9-test-key-0123456789abcdef"
ENDED = ("Completed", "Failed", "Canceled")


class Served:
    """One `python -m shared.local serve` process in its own process group."""

    def __init__(self, home: Path, log: Path) -> None:
        self.home = home
        (home / "local-host.json").unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}
        env.update(MLOPS_HOME=str(home), MLOPS_BACKEND="local", MLOPS_MIN_PRIMARY="0.6", PYTHONUNBUFFERED="1")
        self.log = open(log, "ab")  # noqa: SIM115 - closed in stop()/kill()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shared.local", "serve", "--port", "0", "--key", KEY, "--tick-every", "0",
             "--drift-every", "0"], cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.url = self._wait_ready()

    def _wait_ready(self, timeout: float = 60) -> str:
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            assert self.proc.poll() is None, f"serve exited with {self.proc.returncode}"
            try:
                url = json.loads((self.home / "local-host.json").read_text())["url"]
                if httpx.get(f"{url}/api/status", params={"code": KEY}, timeout=5).status_code == 200:
                    return url
            except (OSError, ValueError, KeyError, httpx.HTTPError):
                pass
            time.sleep(0.1)
        raise AssertionError("serve did not come up")

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)  # the host and every training process it started
        self.proc.wait(timeout=10)
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log.close()


def query(db: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute(sql).fetchall()
    except sqlite3.OperationalError:  # the table is not there yet
        return []
    finally:
        con.close()


def jobs(home: Path) -> list[tuple[str, str, str, str, str]]:
    return query(home / WORKSPACE_DIR / "workspace.db", "SELECT name, status, error, tags, experiment FROM jobs")


def wait_quiet(home: Path, *, settle: float = 3.0, timeout: float = 300) -> None:
    """Until no job is queued or running and nothing changed for ``settle`` seconds."""
    until, last, since = time.monotonic() + timeout, None, time.monotonic()
    while time.monotonic() < until:
        now = (jobs(home), query(home / "ledger.db", "SELECT count(*), max(updated_at) FROM processed"))
        busy = any(status not in ENDED for _, status, *_ in now[0])
        if now != last or busy:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= settle:
            return
        time.sleep(0.25)
    raise AssertionError("the host did not settle")


def run_events(home: Path) -> list[dict]:
    """What Event Grid would still redeliver for the jobs that ended: their RunCompleted / RunStatusChanged."""
    out = []
    for name, status, _, tags, experiment in jobs(home):
        if status not in ENDED:
            continue
        tags = json.loads(tags)
        if status == "Completed":
            out.append(wire.run_completed(name, experiment=experiment, tags=tags))
        out.append(wire.run_status_changed(name, status, experiment=experiment, tags=tags))
    return out


def test_kill_9_mid_storm_then_restart_and_redeliver_converges(tmp_path):
    versions = size(3, 12)
    home = tmp_path / "home"
    blobs = []
    for v in range(1, versions + 1):
        data = write_csv(tmp_path / "gen" / f"v{v}.csv", rows=600, seed=300 + v, label_noise=0.1)
        blobs.append(upload(home / WORKSPACE_DIR, "landing", f"churn/{v}/data.csv", data))
    log = tmp_path / "serve.log"
    started = time.monotonic()

    served = Served(home, log)
    first: dict = {}
    storm = threading.Thread(target=lambda: first.update(report=deliver_storm(
        served.url, KEY, "on_blob_created", blobs, deliverers=4, patience=0.5, seed=21)))  # gives up soon on the killed host
    storm.start()
    # Mid-storm: once the first training job is running (its registration, submit and claims are in flight).
    until = time.monotonic() + 60
    while not any(status == "Running" for _, status, *_ in jobs(home)) and time.monotonic() < until:
        time.sleep(0.02)
    served.kill()
    killed_with = [(name, status) for name, status, *_ in jobs(home)]
    storm.join()

    served = Served(home, log)  # the same MLOPS_HOME
    try:
        again = deliver_storm(served.url, KEY, "on_blob_created", blobs, deliverers=4, seed=22)
        assert again.lost == [], again.answers
        runs_delivered, lost_runs = 0, []
        for _ in range(4):  # interrupted attempts are retried; deliver the run events of every ended job again
            wait_quiet(home)
            events = run_events(home)
            report = deliver_storm(served.url, KEY, "on_run_event", events, deliverers=4, seed=23)
            runs_delivered += report.events
            lost_runs += report.lost
            before = jobs(home)
            wait_quiet(home)
            if jobs(home) == before:
                break
    finally:
        served.stop()
    seconds = round(time.monotonic() - started, 1)

    assert lost_runs == []
    by_version: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for name, status, error, tags, _ in jobs(home):
        by_version[json.loads(tags)[TAG_DATA_VERSION]].append((name, status, error))
    assert sorted(by_version, key=int) == [str(v) for v in range(1, versions + 1)]
    for version, attempts in by_version.items():
        # One job per data version: besides attempts the kill interrupted, exactly one, and it completed.
        kept = [a for a in attempts if "interrupted" not in a[2]]
        assert len(kept) == 1 and kept[0][1] == "Completed", (version, attempts)
    interrupted = sum(len(a) - 1 for a in by_version.values())

    models = query(home / WORKSPACE_DIR / "workspace.db", "SELECT name, version, job_name FROM models")
    approved = {json.loads(f)["job"] for (f,) in query(home / "ledger.db",
                                                       "SELECT facts FROM audit WHERE decision = 'approve'")}
    assert len({job for _, _, job in models}) == len(models), "a run's model registered twice"
    assert {job for _, _, job in models} == approved, "one model per approved run"
    deployments = query(home / WORKSPACE_DIR / "workspace.db", "SELECT model_name, model_version FROM deployments")
    assert len(set(deployments)) == len(deployments), "a model deployed twice"
    held = query(home / "ledger.db", f"SELECT key FROM processed WHERE outcome = 'processing' AND lease_until > "
                                     f"{time.time()}")
    assert held == [], "a claim is still held"

    write_figures("kill9", {
        "data_versions": versions, "killed_with_jobs": len(killed_with),
        "running_at_kill": sum(1 for _, s in killed_with if s == "Running"),
        "interrupted_attempts_retried": interrupted, "blob_deliveries": first["report"].posts + again.posts,
        "acked_before_kill": first["report"].events - len(first["report"].lost), "lost": len(again.lost),
        "run_events_redelivered": runs_delivered, "jobs_completed": len(by_version), "models": len(models),
        "approved": len(approved), "seconds": seconds})


def test_a_restarted_local_host_releases_the_claims_a_crashed_run_left(tmp_path):
    from shared.config import Settings
    from shared.local.cli import local_stack
    from shared.local.ledger import SqliteLedger

    home = tmp_path / "home"
    home.mkdir()
    crashed = SqliteLedger(home / "ledger.db")
    assert crashed.claim("e1/BlobCreated", event_type="BlobCreated") == "new"  # its host was killed holding it
    with local_stack(Settings.from_env({"MLOPS_HOME": str(home)}), subscriptions=[]) as stack:
        state = stack.runtime.ledger.claim("e1/BlobCreated", event_type="BlobCreated")
        assert state == "new" and state.attempt == 2  # before: Busy for the rest of the 5-minute lease

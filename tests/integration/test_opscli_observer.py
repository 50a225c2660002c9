"""`mlops` reads the local stack while the served app runs: as an observer it must not take the app's jobs over.

A LocalWorkspace that opens a root fails the jobs it finds Running (their process died with the last instance), so a
second, ordinary instance opened by the CLI next to a live app would fail the app's running training job."""
from __future__ import annotations

import json
import time

from typer.testing import CliRunner

from shared.domain import JobStatus
from shared.local.workspace import WORKSPACE_DIR, LocalWorkspace
from shared.opscli import app
from tests.integration.test_local_workspace import landed, script, spec


def test_status_while_a_job_runs_leaves_the_job_running_and_starts_no_scoring_server(tmp_path):
    home = tmp_path / "home"
    sleeper = script(tmp_path / "sleeper", f'echo $$ >> "{tmp_path}/pids"; exec sleep 30')
    served = LocalWorkspace(home / WORKSPACE_DIR, python=sleeper)
    try:
        landed(served, tmp_path)
        served.submit_training(spec("long"))
        deadline = time.monotonic() + 10
        while not (tmp_path / "pids").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert served.get_job("long").status is JobStatus.RUNNING
        r = CliRunner().invoke(app, ["--json", "status"], env={"MLOPS_HOME": str(home), "MLOPS_BACKEND": "local",
                                                               "MLOPS_WORKSPACE": ""})
        assert r.exit_code == 0, r.output
        assert [j["name"] for j in json.loads(r.output)["running_jobs"]] == ["long"]
        assert served.get_job("long").status is JobStatus.RUNNING, "the observer failed the app's running job"
        observer = LocalWorkspace(home / WORKSPACE_DIR, readonly=True)
        try:
            assert observer.scoring_url("any-endpoint") == "" and observer._server is None
        finally:
            observer.close()
    finally:
        served.close()

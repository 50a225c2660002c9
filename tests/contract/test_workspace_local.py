"""The Workspace contract against the embedded backend: real xgboost runs in subprocesses, real SQLite."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.domain import JobStatus
from shared.local.workspace import LocalWorkspace
from tests.contract.workspace_contract import WorkspaceContract


class TestLocalWorkspace(WorkspaceContract):
    @pytest.fixture
    def workspace(self, tmp_path):
        ws = LocalWorkspace(tmp_path / "workspace")
        yield ws
        ws.close()

    def finish_job(self, workspace, name: str, metrics: dict[str, float]) -> dict[str, float]:
        # The embedded backend cannot be told which metrics to log: it waits for the real run and reports what
        # the run wrote, read straight from the job's output folder rather than through the port under test.
        assert workspace.wait_for_jobs(timeout=60), "the training run did not finish within 60 s"
        job = workspace.get_job(name)
        assert job.status is JobStatus.COMPLETED, f"{name} ended {job.status.value}: {job.error}"
        return json.loads((Path(job.url) / "outputs" / "metrics.json").read_text())

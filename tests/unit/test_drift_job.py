"""shared/drift/job.py runs on the training cluster with numpy alone, and reads only inside its input folder."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from azure.core.exceptions import ResourceNotFoundError

from shared.drift.job import FolderContainer
from shared.local.churn import feature_rows, generate
from shared.training.baseline_profile import build_profile

ROOT = Path(__file__).resolve().parents[2]
GUARD = """
import builtins, sys
real = builtins.__import__
def guard(name, *a, **k):
    if name.split('.')[0] in ('azure', 'pandas', 'scipy', 'xgboost', 'mlflow', 'httpx', 'sklearn'):
        raise ImportError('not on the job: ' + name)
    return real(name, *a, **k)
builtins.__import__ = guard
from shared.drift.job import main
sys.exit(main(sys.argv[1:]))
"""


def test_the_job_computes_a_window_with_numpy_alone(tmp_path):
    train = generate(2000, seed=1)
    (tmp_path / "baseline.json").write_text(json.dumps(build_profile(
        {"tenure_months": [r["tenure_months"] for r in train]}, {"contract": [r["contract"] for r in train]},
        rows=len(train))))
    hour = tmp_path / "in" / "model_inputs" / "2026" / "12" / "02" / "11"
    hour.mkdir(parents=True)
    rows = feature_rows(1500, seed=3, drift=1.0)
    (hour / "a.jsonl").write_text("".join(json.dumps({"time": "2026-12-02T11:10:00Z", "data": rows[i:i + 100]}) + "\n"
                                          for i in range(0, len(rows), 100)))
    done = subprocess.run([sys.executable, "-c", GUARD, "--collected", str(tmp_path / "in"), "--baseline",
                           str(tmp_path / "baseline.json"), "--endpoint", "ep", "--deployment", "d",
                           "--start", "2026-12-02T11:00:00+00:00", "--end", "2026-12-02T12:00:00+00:00",
                           "--thresholds", "{}", "--output", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    stats = json.loads((tmp_path / "out" / "statistics.json").read_text())
    assert stats["rows"] == 1500 and stats["drifted"] is True and stats["top"]
    assert set(stats["results"]) == {"tenure_months", "contract"}


def test_the_folder_container_reads_nothing_outside_its_folder(tmp_path):
    (tmp_path / "inside").mkdir()
    (tmp_path / "secret.txt").write_text("x")
    container = FolderContainer(tmp_path / "inside", prefix="p/")
    with pytest.raises((FileNotFoundError, ResourceNotFoundError)) as err:
        container.download_blob("p/../secret.txt")
    assert "secret.txt" in str(err.value)
    assert list(container.list_blobs(name_starts_with="other/")) == []

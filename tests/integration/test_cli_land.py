"""`python -m shared.local land` against a served app: a landed file becomes a trained, deployed model, through
the local Event Grid and the local Functions host over HTTP, exactly as an upload to the landing container would."""
from __future__ import annotations

import dataclasses
import time

import httpx
import pytest

from shared.config import Settings
from shared.local import cli
from shared.local.churn import feature_rows, generate, write_csv, write_rows
from shared.local.serving import score

pytestmark = pytest.mark.slow


@pytest.fixture
def served(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLOPS_WORKSPACE", raising=False)
    monkeypatch.setenv("MLOPS_MIN_PRIMARY", "0.6")
    settings = dataclasses.replace(Settings.from_env(), backend="local")
    stack = cli.local_stack(settings, port=0)
    args = ["--url", stack.host.url, "--key", stack.host.key]
    yield stack, args
    stack.close()


def _status(stack) -> dict:
    r = httpx.get(f"{stack.host.url}/api/status", headers={"x-functions-key": stack.host.key}, timeout=30)
    r.raise_for_status()
    return r.json()


def _wait_for_traffic(stack, timeout: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        endpoints = _status(stack)["endpoints"]
        if endpoints and endpoints[0].get("traffic"):
            return endpoints[0]
        time.sleep(0.2)
    raise AssertionError(f"no deployment serves after {timeout} s: {_status(stack)}")


def test_a_generated_table_lands_and_ends_up_deployed(served, capsys):
    stack, args = served
    assert cli.main(["land", "churn", "1", "--rows", "1500", *args]) == 0
    assert "landed landing/churn/1/customers.csv -> data-landed; delivered 1, dead-lettered 0" in capsys.readouterr().out
    endpoint = _wait_for_traffic(stack)
    assert endpoint["name"] == "churn-endpoint" and endpoint["traffic"] == {"churn-model-v1": 100}
    data = stack.runtime.workspace.get_data("churn", "1")
    assert data.path.endswith("/landing/churn/1/customers.csv")


def test_a_given_file_lands_under_its_own_name_and_a_missing_one_is_an_error(served, tmp_path, capsys):
    stack, args = served
    source = write_csv(tmp_path / "march.csv", rows=1200, seed=3)
    assert cli.main(["land", "churn", "2026-03", str(source), *args]) == 0
    assert stack.runtime.workspace.get_data("churn", "2026-03").path.endswith("/churn/2026-03/march.csv")
    assert cli.main(["land", "churn", "4", str(tmp_path / "nope.csv"), *args]) == 2
    assert "no such file" in capsys.readouterr().err


def test_the_served_monitor_turns_drifted_traffic_into_a_drift_decision(served):
    stack, args = served
    assert cli.main(["land", "churn", "1", "--rows", "1500", *args]) == 0
    _wait_for_traffic(stack)
    with httpx.Client() as client:
        for i in range(12):
            score(stack.runtime.workspace, "churn-endpoint", feature_rows(5, seed=i, drift=1.0), client=client)
    [report] = cli.check_drift(stack.runtime)
    assert report.requests == 60 and report.value > 0.2 and report.event is not None
    stack.grid.drain(timeout=30)
    drift = [r for r in stack.runtime.audit.recent(limit=50) if r.message == "DriftDetected"]
    assert drift and drift[0].event_id == report.event["id"]
    assert drift[0].facts["endpoint"] == "churn-endpoint"
    assert drift[0].facts["signal"]["value"] == report.event["data"]["value"]
    assert drift[0].facts["signal"]["metric"] == report.result.top()[0].signal(report.result.thresholds)[0]


def test_serve_stops_cleanly_on_sigterm_and_forgets_its_url_and_key(tmp_path):
    import os
    import subprocess
    import sys

    home = tmp_path / "home"
    env = {**os.environ, "MLOPS_HOME": str(home), "MLOPS_BACKEND": "local"}
    proc = subprocess.Popen([sys.executable, "-m", "shared.local", "serve", "--port", "0", "--drift-every", "0"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    recorded = home / cli.RUNTIME_FILE
    deadline = time.monotonic() + 30
    while not recorded.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert recorded.exists(), proc.stdout.read() if proc.poll() is not None else "serve did not start in 30 s"
    proc.terminate()
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "stopping: finishing deliveries in flight" in out
    assert not recorded.exists()


def test_a_file_that_breaks_the_contract_is_refused_before_upload_and_exits_1(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLOPS_WORKSPACE", raising=False)
    rows = [{**r, "account_id": f"A{i}"} for i, r in enumerate(generate(200, seed=1))]
    source = write_rows(tmp_path / "accounts.csv", rows)
    # no host runs at this URL: the refusal comes before anything is uploaded or sent
    assert cli.main(["land", "churn", "5", str(source), "--url", "http://127.0.0.1:9", "--key", "k"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("refused: churn:5 (accounts.csv) does not keep the data contract") and "account_id" in err
    assert "land the fixed file as churn/6/accounts.csv" in err
    assert not (tmp_path / "home" / "workspace" / "datastore").exists()


def test_a_conflicting_second_file_for_a_registered_version_exits_1_with_the_apps_reason(served, tmp_path, capsys):
    stack, args = served
    assert cli.main(["land", "churn", "1", str(write_csv(tmp_path / "a.csv", rows=300, seed=1)), *args]) == 0
    assert "checked 300 rows, 9 features (ignored id columns: customer_id)" in capsys.readouterr().out
    assert cli.main(["land", "churn", "1", str(write_csv(tmp_path / "b.csv", rows=300, seed=2)), *args]) == 1
    err = said(capsys.readouterr().err)
    assert err.startswith("failed: data churn:1 already points at") and "register" in err
    # a refused file's next version counts the versions already registered: 0 → 2, since 1 is taken
    rows = [{**r, "account_id": f"A{i}"} for i, r in enumerate(generate(100, seed=1))]
    assert cli.main(["land", "churn", "0", str(write_rows(tmp_path / "ids.csv", rows)), *args]) == 1
    assert "land the fixed file as churn/2/ids.csv" in capsys.readouterr().err


def said(stderr: str) -> str:
    """What the command itself wrote to stderr, without the JSON log lines the process also writes there."""
    return "\n".join(line for line in stderr.splitlines() if not line.startswith('{"time": '))

"""`python -m shared.local land` against a served app: a landed file becomes a trained, deployed model, through
the local Event Grid and the local Functions host over HTTP, exactly as an upload to the landing container would."""
from __future__ import annotations

import dataclasses
import time

import httpx
import pytest

from shared.config import Settings
from shared.local import cli
from shared.local.churn import write_csv

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
    assert endpoint["name"] == "churn-endpoint" and endpoint["traffic"] == {"v1-1": 100}
    data = stack.runtime.workspace.get_data("churn", "1")
    assert data.path.endswith("/landing/churn/1/customers.csv")


def test_a_given_file_lands_under_its_own_name_and_a_missing_one_is_an_error(served, tmp_path, capsys):
    stack, args = served
    source = write_csv(tmp_path / "march.csv", rows=1200, seed=3)
    assert cli.main(["land", "churn", "2026-03", str(source), *args]) == 0
    assert stack.runtime.workspace.get_data("churn", "2026-03").path.endswith("/churn/2026-03/march.csv")
    assert cli.main(["land", "churn", "4", str(tmp_path / "nope.csv"), *args]) == 2
    assert "no such file" in capsys.readouterr().err

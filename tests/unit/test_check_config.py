"""Settings problems come out all at once: from_env, check(), the azure backend's requirements at build, the
check-config command (exit 2), the Function App (one logged error, a 503 naming the problems) and `serve` on a
busy port (one line)."""
from __future__ import annotations

import json
import logging
import socket

import azure.functions as func
import pytest

import function_app
from shared.bootstrap import build
from shared.config import Settings, SettingsError, check
from shared.local import cli
from shared.local.host import index

BAD = {"MLOPS_FREEZE": "maybe", "MLOPS_BAKE_MINUTES": "ten", "MLOPS_ROLLOUT_STEPS": "10,50",
       "MLOPS_PRIMARY_METRIC": "logloss", "MLOPS_APPROVAL_AUTH": "perhaps"}


def test_every_invalid_setting_is_named_in_one_error():
    with pytest.raises(SettingsError) as err:
        Settings.from_env(BAD)
    named = {p.setting for p in err.value.problems}
    assert named == set(BAD)
    text = str(err.value)
    assert text.startswith("5 settings are missing or invalid:") and all(name in text for name in BAD)
    assert "name it in MLOPS_GUARD_METRICS instead" in text


def test_the_primary_metric_is_normalised_or_refused_against_what_training_logs():
    assert Settings.from_env({"MLOPS_PRIMARY_METRIC": "AUC"}).policy.primary_metric == "auc"
    assert Settings.from_env({"MLOPS_PRIMARY_METRIC": " F1 "}).policy.primary_metric == "f1"
    with pytest.raises(SettingsError, match="not 'roc'"):
        Settings.from_env({"MLOPS_PRIMARY_METRIC": "roc"})


def test_check_lists_the_azure_backends_missing_settings_together_errors_first():
    problems = check({"MLOPS_WORKSPACE": "mlw", "MLOPS_FREEZE": "on"})
    errors = [p.setting for p in problems if p.severity == "error"]
    assert errors == ["MLOPS_SUBSCRIPTION_ID", "MLOPS_RESOURCE_GROUP", "MLOPS_LEDGER__tableServiceUri"]
    assert [p.severity for p in problems] == sorted((p.severity for p in problems), key=lambda s: s != "error")
    assert "MLOPS_EVENTS__topicEndpointUri" in {p.setting for p in problems if p.severity == "warning"}
    assert check({}) == []  # the local backend needs nothing
    assert {p.setting for p in check({"MLOPS_APPROVAL_AUTH": "entra"})} == {"MLOPS_ENTRA_TENANT_ID",
                                                                           "MLOPS_ENTRA_AUDIENCE"}


def test_contract_settings_are_read_and_checked():
    s = Settings.from_env({"MLOPS_LABEL_COLUMN": "left", "MLOPS_ID_COLUMNS": "customer_id, account_id",
                           "MLOPS_FEATURE_COLUMNS": "tenure,plan", "MLOPS_MIN_ROWS": "50"})
    assert (s.contract.label, s.contract.id_columns, s.contract.features, s.contract.min_rows) == (
        "left", ("customer_id", "account_id"), ("tenure", "plan"), 50)
    assert Settings.from_env({"MLOPS_ID_COLUMNS": "-"}).contract.id_columns == ()
    assert {p.setting for p in check({"MLOPS_ID_COLUMNS": "churn", "MLOPS_FEATURE_COLUMNS": "churn,x",
                                      "MLOPS_MIN_ROWS": "1"})} == {"MLOPS_ID_COLUMNS", "MLOPS_FEATURE_COLUMNS",
                                                                   "MLOPS_MIN_ROWS"}


def test_building_the_azure_backend_names_every_missing_setting_before_any_client():
    with pytest.raises(SettingsError) as err:
        build(Settings(backend="azure", workspace="mlw"))
    assert [p.setting for p in err.value.problems] == ["MLOPS_SUBSCRIPTION_ID", "MLOPS_RESOURCE_GROUP",
                                                       "MLOPS_LEDGER__tableServiceUri"]


def test_check_config_prints_every_problem_and_exits_2(monkeypatch, capsys):
    for name, value in BAD.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["check-config"]) == 2
    err = capsys.readouterr().err
    assert all(name in err for name in BAD) and "5 setting(s) must be fixed" in err and "Traceback" not in err
    for name in BAD:
        monkeypatch.delenv(name)
    monkeypatch.delenv("MLOPS_WORKSPACE", raising=False)
    monkeypatch.delenv("MLOPS_BACKEND", raising=False)
    assert cli.main(["check-config"]) == 0
    assert "settings OK" in capsys.readouterr().out


def test_the_function_app_logs_one_error_and_answers_503_naming_the_problems(monkeypatch, caplog):
    functions = {f.name: f.call for f in index(function_app.app)}
    for name, value in {"MLOPS_WORKSPACE": "mlw", "MLOPS_FREEZE": "maybe"}.items():
        monkeypatch.setenv(name, value)
    function_app.use_runtime(None)
    try:
        req = func.HttpRequest(method="GET", url="http://localhost/api/status", body=b"", headers={})
        with caplog.at_level(logging.ERROR, logger="function_app"):
            answers = [functions["status"](req) for _ in range(3)]
        assert {a.status_code for a in answers} == {503} and answers[0].headers["Retry-After"]
        body = json.loads(answers[0].get_body())
        assert body["error"] == "the app is not configured" and body["problems"][0] == (
            "MLOPS_FREEZE must be true or false, not 'maybe'")
        # the invalid value and what the azure backend still lacks, in one answer
        assert [p.split(" ")[0] for p in body["problems"][1:]] == [
            "MLOPS_SUBSCRIPTION_ID", "MLOPS_RESOURCE_GROUP", "MLOPS_LEDGER__tableServiceUri"]
        logged = [r for r in caplog.records if r.name == "function_app"]
        assert len(logged) == 1 and logged[0].exc_info is None and "MLOPS_FREEZE" in logged[0].getMessage()
        monkeypatch.delenv("MLOPS_FREEZE")
        function_app.use_runtime(None)  # a settings change restarts the worker
        body = json.loads(functions["status"](req).get_body())
        assert [p.split(" ")[0] for p in body["problems"]] == ["MLOPS_SUBSCRIPTION_ID", "MLOPS_RESOURCE_GROUP",
                                                                "MLOPS_LEDGER__tableServiceUri"]
        with pytest.raises(function_app.NotConfigured):  # an Event Grid trigger fails, so the event comes back
            function_app.runtime()
    finally:
        function_app.use_runtime(None)


def test_serve_on_a_busy_port_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLOPS_WORKSPACE", raising=False)
    monkeypatch.delenv("MLOPS_BACKEND", raising=False)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli.main(["serve", "--port", str(port), "--tick-every", "0", "--drift-every", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"cannot listen on 127.0.0.1:{port}" in err and f"make serve PORT={port + 1}" in err


def test_values_the_adapters_read_in_their_own_shape_are_reported_with_the_rest(monkeypatch):
    """A Log Analytics id, a metrics endpoint, a topic URL and a Teams routing table are checked by the adapters
    that read them; check() and the Function App name them together instead of one per restart."""
    bad = {"MLOPS_LOG_ANALYTICS_WORKSPACE_ID": "my-workspace", "MLOPS_METRICS_ENDPOINT": "https://example.com",
           "MLOPS_EVENTS__topicEndpointUri": "http://topic.example", "MLOPS_TEAMS_ROUTES": "{not json"}
    assert {p.setting for p in check(bad) if p.severity == "error"} == set(bad)
    functions = {f.name: f.call for f in index(function_app.app)}
    for name, value in bad.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MLOPS_WORKSPACE", raising=False)
    monkeypatch.delenv("MLOPS_BACKEND", raising=False)
    monkeypatch.setenv("MLOPS_HOME", str(__import__("tempfile").mkdtemp()))
    function_app.use_runtime(None)
    try:
        req = func.HttpRequest(method="GET", url="http://localhost/api/status", body=b"", headers={})
        answer = functions["status"](req)
        assert answer.status_code == 503
        named = {p.split(" ")[0] for p in json.loads(answer.get_body())["problems"]}
        assert named == set(bad)
    finally:
        function_app.use_runtime(None)

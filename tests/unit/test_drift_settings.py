"""The drift monitor's settings (MLOPS_DRIFT_*): defaults, the thresholds they make, and bad values refused by name."""
import pytest

from shared.config import Settings
from shared.domain import Model
from shared.drift.monitor import baseline_blob
from shared.errors import InvalidPayload, NotFound


def test_defaults_give_the_engine_defaults_with_the_policy_psi():
    s = Settings.from_env({})
    assert (s.drift.interval_minutes, s.drift.container_url, s.drift.min_rows) == (60, "", 100)
    t = s.drift.thresholds(s.policy.drift_psi_threshold)
    assert (t.psi, t.ks, t.wasserstein, t.js, t.chi2_p, t.min_rows) == (0.2, 0.1, 0.1, 0.1, 0.001, 100)


def test_settings_reach_the_thresholds():
    s = Settings.from_env({"MLOPS_DRIFT_INTERVAL_MINUTES": "30", "MLOPS_DRIFT_MIN_ROWS": "500",
                           "MLOPS_DRIFT_KS_THRESHOLD": "0.05", "MLOPS_DRIFT_WASSERSTEIN_THRESHOLD": "0.2",
                           "MLOPS_DRIFT_JS_THRESHOLD": "0.15", "MLOPS_DRIFT_CHI2_P": "0.01",
                           "MLOPS_DRIFT_PSI_THRESHOLD": "0.3", "MLOPS_DRIFT_MAX_ROWS": "100000",
                           "MLOPS_DRIFT_CONTAINER_URL": "https://st.blob.core.windows.net/azureml-blobstore-1/"})
    t = s.drift.thresholds(s.policy.drift_psi_threshold)
    assert (t.psi, t.ks, t.wasserstein, t.js, t.chi2_p, t.min_rows) == (0.3, 0.05, 0.2, 0.15, 0.01, 500)
    assert s.drift.interval_minutes == 30 and s.drift.max_rows == 100000
    assert Settings.from_env({"MLOPS_DEGRADATION_TOLERANCE": "0.1"}).drift.degradation_tolerance == 0.1
    assert Settings.from_env({}).drift.degradation_tolerance == 0.05
    assert s.drift.container_url == "https://st.blob.core.windows.net/azureml-blobstore-1"


def test_the_offload_line_is_a_setting_with_a_default():
    assert Settings.from_env({}).drift.offload_mb == 256
    assert Settings.from_env({"MLOPS_DRIFT_OFFLOAD_MB": "1024"}).drift.offload_mb == 1024


@pytest.mark.parametrize("name,value", [
    ("MLOPS_DRIFT_INTERVAL_MINUTES", "7"), ("MLOPS_DRIFT_INTERVAL_MINUTES", "50"),
    ("MLOPS_DRIFT_INTERVAL_MINUTES", "2880"), ("MLOPS_DRIFT_MIN_ROWS", "0"), ("MLOPS_DRIFT_KS_THRESHOLD", "1.5"),
    ("MLOPS_DRIFT_JS_THRESHOLD", "nan"), ("MLOPS_DEGRADATION_TOLERANCE", "2"), ("MLOPS_DRIFT_CHI2_P", "-0.1"), ("MLOPS_DRIFT_MAX_ROWS", "10"),
    ("MLOPS_DRIFT_OFFLOAD_MB", "0"), ("MLOPS_DRIFT_OFFLOAD_MB", "1.5"),
    ("MLOPS_DRIFT_CONTAINER_URL", "http://st.blob.core.windows.net/c"),
    ("MLOPS_DRIFT_CONTAINER_URL", "https://st.blob.core.windows.net/c?sv=2024&sig=x"),
])
def test_bad_values_are_refused_naming_the_setting(name, value):
    with pytest.raises(InvalidPayload) as err:
        Settings.from_env({name: value})
    assert err.value.field == name


@pytest.mark.parametrize("path,tags,expected", [
    ("azureml://jobs/train-a1/outputs/model", {}, "azureml/train-a1/model/baseline.json"),
    ("azureml://jobs/train-a1/outputs/output/paths/model/", {}, "azureml/train-a1/output/model/baseline.json"),
    ("azureml://subscriptions/s/resourcegroups/rg/workspaces/w/datastores/workspaceblobstore/paths/azureml/j/model/",
     {}, "azureml/j/model/baseline.json"),
    ("", {"mlops_job": "train-b2"}, "azureml/train-b2/model/baseline.json"),
])
def test_the_baseline_is_found_next_to_the_registered_model(path, tags, expected):
    assert baseline_blob(Model(name="m", version="1", path=path, tags=tags)) == expected


def test_a_model_with_no_path_and_no_job_has_no_baseline_to_find():
    with pytest.raises(NotFound):
        baseline_blob(Model(name="m", version="1", path="https://elsewhere/x"))


def test_the_timer_runs_the_monitor_only_when_it_is_configured(tmp_path, caplog):
    from dataclasses import replace

    from shared.bootstrap import Runtime
    from shared.drift.monitor import DriftMonitor, run_tick
    from shared.local.ledger import SqliteLedger
    from shared.local.state import SqliteStateStore
    from shared.rollout import EndpointState
    from tests.integration.azurite import StaticTokenCredential

    states = SqliteStateStore(tmp_path / "ledger.db")
    states.save(EndpointState(endpoint="ep"))  # no traffic yet: nothing to check
    deps = {"states": states, "ledger": SqliteLedger(tmp_path / "ledger.db"), "workspace": object(),
            "publisher": object(),
            "credential": StaticTokenCredential("t", 0)}
    local = Runtime(settings=Settings(), bus=None, deps=dict(deps))
    assert run_tick(local) == [] and "drift_monitor" not in local.deps
    unset = Runtime(settings=Settings(backend="azure"), bus=None, deps=dict(deps))
    assert run_tick(unset) == [] and "drift_monitor" not in unset.deps
    assert "drift monitor off" in caplog.text
    s = Settings(backend="azure")
    s = replace(s, drift=replace(s.drift, container_url="https://st.blob.core.windows.net/azureml-blobstore-1"))
    rt = Runtime(settings=s, bus=None, deps=dict(deps))
    assert run_tick(rt) == []
    made = rt.deps["drift_monitor"]
    assert isinstance(made, DriftMonitor) and made.container.container_name == "azureml-blobstore-1"
    assert made.container.account_name == "st"
    run_tick(rt)
    assert rt.deps["drift_monitor"] is made, "one monitor per worker (its baseline cache and connection pool)"


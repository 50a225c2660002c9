"""Settings.from_env: defaults, backend choice, typed values with errors that name the setting."""
import pytest

from shared.config import SETTING_NAMES, Settings
from shared.errors import InvalidPayload


def test_defaults_to_the_embedded_backend_without_a_workspace():
    s = Settings.from_env({})
    assert s.backend == "local" and s.policy.rollout_steps == (10, 50, 100) and s.policy.primary_metric == "auc"


def test_a_configured_workspace_selects_azure():
    assert Settings.from_env({"MLOPS_WORKSPACE": "ws"}).backend == "azure"
    assert Settings.from_env({"MLOPS_WORKSPACE": "ws", "MLOPS_BACKEND": "local"}).backend == "local"


def test_values_are_parsed():
    s = Settings.from_env({"MLOPS_FREEZE": "yes", "MLOPS_ROLLOUT_STEPS": "25,100", "MLOPS_MIN_PRIMARY": "0.8",
                           "MLOPS_GUARD_METRICS": "logloss, , brier", "MLOPS_LOW_PRIORITY": "true"})
    assert s.policy.freeze and s.policy.rollout_steps == (25, 100) and s.policy.min_primary == 0.8
    assert s.policy.guard_metrics == ("logloss", "brier")
    assert s.low_priority
    assert Settings.from_env({}).azure_cloud == "AzureCloud"
    assert Settings.from_env({"MLOPS_AZURE_CLOUD": "AzureUSGovernment"}).azure_cloud == "AzureUSGovernment"


@pytest.mark.parametrize("name, value", [
    ("MLOPS_BACKEND", "gcp"), ("MLOPS_FREEZE", "maybe"), ("MLOPS_ROLLOUT_STEPS", "0,100"),
    ("MLOPS_ROLLOUT_STEPS", "ten"), ("MLOPS_ROLLOUT_STEPS", "50,10,100"), ("MLOPS_ROLLOUT_STEPS", "10,50"),
    ("MLOPS_ANALYSIS_ERROR_TOLERANCE", "nan"), ("MLOPS_ANALYSIS_LATENCY_TOLERANCE", "-1"),
    ("MLOPS_APPROVAL", "sometimes"), ("MLOPS_APPROVAL", "churn-endpoint=maybe"), ("MLOPS_APPROVAL_AUTH", "perhaps"), ("MLOPS_MIN_PRIMARY", "high"), ("MLOPS_MAX_RUN_SECONDS", "5"),
    ("MLOPS_AZURE_CLOUD", "AzureGermanCloud"),
])
def test_bad_values_name_the_setting(name, value):
    with pytest.raises(InvalidPayload) as err:
        Settings.from_env({name: value})
    assert err.value.field == name


def test_names_are_templated_per_asset():
    s = Settings.from_env({})
    assert s.model_for("churn") == "churn-model" and s.endpoint_for("churn") == "churn-endpoint"
    assert Settings.from_env({"MLOPS_ENDPOINT_NAME": "fixed"}).endpoint_for("churn") == "fixed"


def test_every_setting_read_is_listed(monkeypatch):
    # from_env must read nothing that SETTING_NAMES (used by the infra checks and README) does not list.
    seen = set()

    class Spy(dict):
        def get(self, key, default=None):
            seen.add(key)
            return super().get(key, default)

    Settings.from_env(Spy())
    assert seen == set(SETTING_NAMES)


def test_approval_takes_a_default_and_per_endpoint_overrides():
    p = Settings.from_env({"MLOPS_APPROVAL": "auto; churn-endpoint=manual"}).policy
    assert p.approval_for("churn-endpoint") == "manual" and p.approval_for("other") == "auto"
    assert Settings.from_env({"MLOPS_APPROVAL": "manual"}).policy.approval_for("any") == "manual"
    s = Settings.from_env({"MLOPS_APPROVERS": "ana@contoso.com, group:1234, role:MLOps.Approver",
                           "MLOPS_APPROVAL_AUTH": "Entra", "MLOPS_ENTRA_TENANT_ID": "t", "MLOPS_ENTRA_AUDIENCE": "api://a"})
    assert s.approvers == ("ana@contoso.com", "group:1234", "role:MLOps.Approver") and s.approval_auth == "entra"

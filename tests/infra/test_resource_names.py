"""Every resource name the templates produce fits Azure's documented limits, for the longest environment name
main.bicep accepts and the longest values of every other parameter that names something (infra/main.bicep's
@maxLength, an existing workspace's and storage account's own limits). The names are worked out from the Bicep
itself (tests/infra/bicep_names.py), so a new resource or a longer prefix is checked without touching this test."""
from __future__ import annotations

import pytest

pytest.importorskip("pycep", reason="pycep-parser is not installed (it is in pyproject's dev extras)")

from tests.infra import bicep_checks as c  # noqa: E402
from tests.infra import bicep_names as bn  # noqa: E402

# azd environment names may hold letters, digits, '-', '_', '.', '(' and ')': the longest main.bicep accepts, in
# plain and in awkward spellings.
LONGEST = int(next(d["argument"] for d in c.parse_file(c.INFRA / "main.bicep")["parameters"]["environmentName"]
                   ["decorators"] if d.get("type") == "max_length"))
ENV_NAMES = ["e" * LONGEST, ("My_Env.(prod)-" * 4)[:LONGEST], "x", "ab-"]
# An existing workspace and storage account can have names up to their own limits.
EXISTING = {"existingWorkspaceName": ["w" * 33], "existingDatastoreAccountName": ["s" * 24]}
# Names this check cannot work out before deployment, and why each is safe.
UNKNOWN_OK = {
    "app/storage.bicep:ledgerTables (tableName)": "loop over the literal table names of ledgerTableNames",
    "app/network.bicep:zones (zone)": "loop over the literal private DNS zone names of dnsZones",
}
# The types whose names derive from the environment name: each must have been checked.
MUST_CHECK = {"Microsoft.MachineLearningServices/workspaces", "Microsoft.EventGrid/topics",
              "Microsoft.EventGrid/systemTopics", "Microsoft.Web/sites", "Microsoft.Web/serverfarms",
              "Microsoft.KeyVault/vaults", "Microsoft.Storage/storageAccounts", "Microsoft.Resources/resourceGroups",
              "Microsoft.ManagedIdentity/userAssignedIdentities", "Microsoft.OperationalInsights/workspaces",
              "Microsoft.Network/virtualNetworks", "Microsoft.Network/privateEndpoints",
              "Microsoft.MachineLearningServices/workspaces/computes"}


@pytest.fixture(scope="module")
def docs():
    return c.load_all()


def _names(docs, env_name: str, *, unknown: list[str] | None = None) -> list[bn.Name]:
    given = bn.worst_case_parameters(docs["main.bicep"], environmentName=[env_name], location=["westeurope"],
                                     **EXISTING)
    return bn.names(docs, given, unknown=unknown)


@pytest.mark.parametrize("env_name", ENV_NAMES)
def test_every_name_fits_its_documented_limit(docs, env_name):
    unknown: list[str] = []
    found = _names(docs, env_name, unknown=unknown)
    assert bn.violations(found) == []
    assert set(unknown) <= set(UNKNOWN_OK), sorted(set(unknown) - set(UNKNOWN_OK))
    assert MUST_CHECK <= {n.type for n in found}


def test_the_longest_environment_name_is_what_main_bicep_accepts(docs):
    assert LONGEST == 40
    names = {n.symbol: n.value for n in _names(docs, "e" * LONGEST) if n.path == "app/workspace.bicep"}
    assert len(names["workspace"]) == 33  # exactly at the limit: 'mlw-' + 15 + '-' + 13


def test_the_check_reports_the_old_workspace_and_topic_names(docs):
    # The names before this fix: the whole environment name inside 'mlw-<env>-<token>' and 'evgt-<env>-<token>'.
    text = (c.INFRA / "main.bicep").read_text()
    old = text.replace("var workspaceName = useExistingWorkspace ? existingWorkspaceName : 'mlw-${stem}-${token}'",
                       "var workspaceName = useExistingWorkspace ? existingWorkspaceName : 'mlw-${environmentName}-${token}'"
                       ).replace("name: 'evgt-${stem}-${token}'", "name: 'evgt-${environmentName}-${token}'")
    assert old.count("${environmentName}-${token}") == 2
    mutated = dict(docs, **{"main.bicep": c.parse_text(old)})
    problems = bn.violations(_names(mutated, "e" * LONGEST))
    assert "app/workspace.bicep:workspace: 'mlw-" + "e" * 40 + "-abcdefghij0kl' has 58 characters; " \
           "Microsoft.MachineLearningServices/workspaces allows 3-33" in problems
    assert any(p.startswith("app/eventgrid-topic.bicep:topic:") and "allows 3-50" in p for p in problems)
    # 16 characters is already too long for the old workspace name.
    assert any("Microsoft.MachineLearningServices/workspaces allows 3-33" in p
               for p in bn.violations(_names(mutated, "e" * 16)))


def test_the_check_reports_characters_a_resource_type_refuses(docs):
    # Without the stem's clean-up an underscore or a period reaches the Event Grid topic, which allows neither.
    text = (c.INFRA / "main.bicep").read_text()
    raw = text.replace("name: 'evgt-${stem}-${token}'", "name: 'evgt-${take(environmentName, 15)}-${token}'")
    assert raw != text
    mutated = dict(docs, **{"main.bicep": c.parse_text(raw)})
    problems = bn.violations(_names(mutated, "My_Env.prod"))
    assert problems == ["app/eventgrid-topic.bicep:topic: 'evgt-My_Env.prod-abcdefghij0kl' breaks "
                        "Microsoft.EventGrid/topics's rule: alphanumerics and -"]


def test_the_compute_name_parameter_is_held_to_azure_mls_limit(docs):
    param = docs["main.bicep"]["parameters"]["computeName"]
    limits = {d["type"]: d["argument"] for d in param["decorators"] if d.get("type") in ("min_length", "max_length")}
    assert limits == {"min_length": 2, "max_length": 16}

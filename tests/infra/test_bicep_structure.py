"""The Bicep says what the app needs, and only that. Each check also runs on a mutated snippet to show it can fail."""
from __future__ import annotations

import copy
import re

import pytest

pytest.importorskip("pycep", reason="pycep-parser is not installed (it is in pyproject's dev extras)")

from shared.config import SETTING_NAMES  # noqa: E402
from tests.infra import bicep_checks as c  # noqa: E402


@pytest.fixture(scope="module")
def docs():
    return c.load_all()


@pytest.fixture(scope="module")
def config():
    return c.subscriptions_config()


# ------------------------------------------------------------------------------------------------- the real thing

def test_every_template_parses(docs):
    assert set(docs) >= {"main.bicep", "app/functionapp.bicep", "app/eventgrid-subscriptions.bicep", "app/postdeploy.bicep"}


def test_every_event_grid_function_has_its_subscription(docs, config):
    assert c.check_event_grid(docs, config, c.event_grid_functions()) == []


def test_storage_subscription_filters_the_landing_container(docs, config):
    assert c.check_landing_filter(docs, config) == []


def test_app_settings_are_exactly_ones_the_code_reads(docs):
    assert c.check_app_settings(docs, SETTING_NAMES) == []


def test_function_app_is_flex_python_311_with_user_assigned_identity(docs):
    assert c.check_function_app(docs) == []


def test_no_output_or_setting_carries_a_key_or_secret(docs):
    assert c.check_no_secret_outputs(docs) == []


def test_teams_secrets_go_from_secure_parameters_through_key_vault_to_key_vault_references(docs):
    # MLOPS_TEAMS_WEBHOOK_URL and MLOPS_TEAMS_ROUTES: @secure parameter → Key Vault secret → Key Vault reference,
    # and the app identity may read each of those secrets (and only by a per-secret role assignment).
    assert c.check_teams_secrets(docs) == []


def test_every_role_assignment_is_for_the_app_identity(docs):
    assert c.check_role_assignments(docs) == []


def test_app_and_cluster_identities_write_only_in_the_default_blob_container(docs):
    # Shared keys are off on the workspace storage: the app uploads code snapshots and jobs write outputs with their
    # identities, each holding Storage Blob Data Contributor on azureml-blobstore-<workspaceId> alone.
    assert c.check_artifact_writers(docs) == []
    assert c.artifact_containers(docs, "app/roles-artifacts.bicep") == {"artifacts"}


def test_storage_accounts_disable_shared_keys_and_public_blobs(docs):
    assert c.check_storage_accounts(docs) == []


def test_key_vaults_use_rbac(docs):
    assert c.check_key_vaults(docs) == []


def test_role_guids_are_named_in_comments():
    for path in c.bicep_files():
        lines = path.read_text().splitlines()
        comments = [ln for ln in lines if ln.strip().startswith("//")]
        for guid in {g for ln in lines if not ln.strip().startswith("//")
                     for g in re.findall(r"'([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})'", ln)}:
            if "roleAssignments" not in path.read_text():
                continue
            name = c.ROLE_NAMES.get(guid, "?")
            assert any(guid in ln and name in ln for ln in comments), f"{path.name}: role {guid} has no '// {name}: {guid}' comment"


def test_training_cluster_scales_to_zero_and_its_identity_reads_the_datastore_account(docs):
    assert c.check_training_cluster(docs) == []


def test_the_datastore_mlops_datastore_names_is_identity_based_over_the_landing_container(docs):
    assert c.check_landing_datastore(docs) == []


def test_policy_assignment_is_the_builtin_ml_public_access_policy(docs):
    doc = docs["app/policy.bicep"]
    definition = c.render(doc["variables"]["definitionId"]["value"])
    assert "438c38d2-3772-465a-a9cc-7a6666a275ce" in definition
    (_, res), = c.resources(doc, "Microsoft.Authorization/policyAssignments")
    assert c.render(c.body(res)["properties"]["parameters"]["effect"]["value"]) == "effect"


def test_isolated_workspace_uses_managed_network_and_no_public_access(docs):
    (_, ws), = c.resources(docs["app/workspace.bicep"], "Microsoft.MachineLearningServices/workspaces")
    props = c.body(ws)["properties"]
    assert c.render(props["managedNetwork"]).startswith("conditional(isolate, {isolationMode: AllowOnlyApprovedOutbound")
    assert "Disabled" in c.render(props["publicNetworkAccess"])
    assert any(r["type"] == "Microsoft.Network/privateEndpoints" for _, r in c.resources(docs["app/workspace.bicep"]))


# ------------------------------------------------------------------------------------------ each check can fail

STORAGE = """
resource st 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: 'x'
  properties: {
    allowSharedKeyAccess: %s
    allowBlobPublicAccess: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
  }
}
"""


def test_storage_check_reports_shared_keys():
    assert c.check_storage_accounts({"s.bicep": c.parse_text(STORAGE % "false")}) == []
    problems = c.check_storage_accounts({"s.bicep": c.parse_text(STORAGE % "true")})
    assert any("allowSharedKeyAccess" in p for p in problems)


def test_key_vault_check_reports_access_policies_mode():
    text = "resource kv 'Microsoft.KeyVault/vaults@2023-07-01' = {\n  name: 'kv'\n  properties: {\n    enableRbacAuthorization: false\n  }\n}\n"
    assert c.check_key_vaults({"k.bicep": c.parse_text(text)})


def test_role_check_reports_another_principal_and_a_broad_role():
    text = (
        "param principalId string\nparam someoneElse string\n"
        "resource ra 'Microsoft.Authorization/roleAssignments@2022-04-01' = {\n  name: 'x'\n  properties: {\n"
        "    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', 'b24988ac-6180-42a0-ab88-20f7382dd24c')\n"
        "    principalId: someoneElse\n    principalType: 'User'\n  }\n}\n"
    )
    problems = c.check_role_assignments({"r.bicep": c.parse_text(text)})
    assert any("principalId must be" in p for p in problems)
    assert any("ServicePrincipal" in p for p in problems)
    assert any("b24988ac" in p for p in problems)  # Contributor is not allowed


def test_role_check_reports_a_module_given_another_principal(docs):
    mutated = copy.deepcopy(docs)
    mutated["main.bicep"]["modules"]["roles"]["config"]["params"]["principalId"] = "deployer"
    assert any("roles" in p for p in c.check_role_assignments(mutated))


def test_secret_check_reports_list_keys_and_secret_outputs():
    text = (
        "@secure()\nparam hook string\n"
        "output storageKey string = st.listKeys().keys[0].value\n"
        "output conn string = 'DefaultEndpointsProtocol=https;AccountName=x;AccountKey=${k}'\n"
        "output url string = hook\n"
    )
    problems = c.check_no_secret_outputs({"o.bicep": c.parse_text(text)})
    assert any("storageKey is named like" in p for p in problems)
    assert any("carries a key" in p for p in problems)
    assert any("secure parameter hook" in p for p in problems)


def _main_settings(docs) -> dict:
    """The object literal of MLOPS_* settings main.bicep passes (the first one inside its union())."""
    return c.setting_objects(docs["main.bicep"]["modules"]["app"]["config"]["params"]["settings"])[0]


def test_settings_check_reports_unknown_missing_and_forbidden(docs):
    mutated = copy.deepcopy(docs)
    settings = _main_settings(mutated)
    settings["MLOPS_TYPO"] = "x"
    settings["FUNCTIONS_WORKER_RUNTIME"] = "python"
    del settings["MLOPS_EVENTS__topicEndpointUri"]
    settings["MLOPS_TEAMS_WEBHOOK_URL"] = "https://example.invalid/hook"
    problems = "\n".join(c.check_app_settings(mutated, SETTING_NAMES))
    assert "MLOPS_TYPO" in problems
    assert "FUNCTIONS_WORKER_RUNTIME" in problems
    assert "MLOPS_EVENTS__topicEndpointUri is not set" in problems
    assert "Key Vault reference" in problems


def test_settings_check_reports_a_plain_teams_routes_or_any_plain_teams_setting(docs):
    for name, value in (("MLOPS_TEAMS_ROUTES", '{"default": ["https://example.invalid/hook"]}'),
                        ("MLOPS_TEAMS_FAILURES_ONLY", "true")):
        mutated = copy.deepcopy(docs)
        _main_settings(mutated)[name] = value
        assert f"{name} must be a Key Vault reference" in "\n".join(c.check_app_settings(mutated, SETTING_NAMES))


def test_teams_check_reports_a_routes_setting_that_bypasses_key_vault(docs):
    path = c.INFRA / "main.bicep"
    text = path.read_text()
    plain = re.sub(r"MLOPS_TEAMS_ROUTES: '[^']*'", "MLOPS_TEAMS_ROUTES: teamsRoutesBase64", text)
    assert plain != text
    problems = c.check_teams_secrets(dict(docs, **{"main.bicep": c.parse_text(plain)}))
    assert any(p.startswith("MLOPS_TEAMS_ROUTES must be") for p in problems)
    # Without any MLOPS_TEAMS_ROUTES setting (the template before this check), the chain is reported missing.
    gone = re.sub(r", hasTeamsRoutes \? \{\s*MLOPS_TEAMS_ROUTES: '[^']*'\s*\} : \{\}", ", {}", text)
    assert gone != text
    problems = c.check_teams_secrets(dict(docs, **{"main.bicep": c.parse_text(gone)}))
    assert problems == ["MLOPS_TEAMS_ROUTES is not set (as a Key Vault reference)"]


def test_teams_check_reports_a_secret_from_a_plain_parameter_or_without_its_role(docs):
    vault = (c.INFRA / "app" / "keyvault.bicep").read_text()
    unsecured = vault.replace("@secure()\n@description('MLOPS_TEAMS_ROUTES", "@description('MLOPS_TEAMS_ROUTES")
    assert unsecured != vault
    problems = c.check_teams_secrets(dict(docs, **{"app/keyvault.bicep": c.parse_text(unsecured)}))
    assert any("teamsRoutesSecret: the secret value must come from a @secure parameter" in p for p in problems)
    roles = (c.INFRA / "app" / "roles.bicep").read_text()
    ungranted = re.sub(r"resource routesSecretUser .*?\n}\n", "", roles, flags=re.S)
    assert ungranted != roles
    problems = c.check_teams_secrets(dict(docs, **{"app/roles.bicep": c.parse_text(ungranted)}))
    assert problems == ["MLOPS_TEAMS_ROUTES: no Key Vault Secrets User assignment scoped to the secret teamsRoutesSecret"]


def test_event_grid_check_reports_a_function_without_subscription(docs, config):
    source = "@app.event_grid_trigger(arg_name='event')\ndef on_something_new(event) -> None:\n    pass\n"
    functions = c.event_grid_functions(source)
    assert "on_something_new" in functions
    problems = c.check_event_grid(docs, config, functions)
    assert problems == ["Event Grid function on_something_new has no subscription in subscriptions.json"]


def test_event_grid_check_reports_wrong_event_types_and_unknown_functions(docs, config):
    mutated = copy.deepcopy(config)
    mutated["subscriptions"][0]["includedEventTypes"] = ["Microsoft.MachineLearningServices.RunCompleted"]
    mutated["subscriptions"][1]["function"] = "on_nothing"
    problems = "\n".join(c.check_event_grid(docs, mutated, c.event_grid_functions()))
    assert "is not an event of source storage" in problems
    assert "on_nothing is not an Event Grid-triggered function" in problems
    assert "on_run_event has no subscription" in problems


def test_event_grid_check_reports_a_filter_not_taken_from_the_json(docs, config):
    path = c.INFRA / "app" / "eventgrid-subscriptions.bicep"
    text = path.read_text().replace("subjectBeginsWith: s.subjectBeginsWith", "subjectBeginsWith: ''")
    assert text != path.read_text()
    mutated = dict(docs, **{"app/eventgrid-subscriptions.bicep": c.parse_text(text)})
    assert any("subjectBeginsWith" in p for p in c.check_event_grid(mutated, config, c.event_grid_functions()))


def test_event_grid_check_reports_a_source_postdeploy_forgets(docs, config):
    path = c.INFRA / "app" / "postdeploy.bicep"
    text = re.sub(r"module customSubscriptions .*?\n}\n", "", path.read_text(), flags=re.S)
    mutated = dict(docs, **{"app/postdeploy.bicep": c.parse_text(text)})
    assert "no eventgrid-subscriptions module for source custom" in "\n".join(
        c.check_event_grid(mutated, config, c.event_grid_functions()))


def test_function_name_override_is_honoured():
    source = ('@app.function_name(name="renamed")\n@app.event_grid_trigger(arg_name="e")\n'
              'def handler(e):\n    pass\n\n@app.route(route="x")\ndef not_eg(req):\n    pass\n')
    names = c.event_grid_functions(source)
    assert "renamed" in names and "handler" not in names and "not_eg" not in names


def test_storage_declares_exactly_the_tables_the_ledger_adapter_uses():
    from shared.adapters.tables import DEFAULT_TABLES

    text = (c.INFRA / "app" / "storage.bicep").read_text()
    declared = re.search(r"var ledgerTableNames = \[([^\]]*)\]", text)
    assert declared, "storage.bicep no longer declares ledgerTableNames"
    assert sorted(re.findall(r"'([^']+)'", declared.group(1))) == sorted(DEFAULT_TABLES.values())
    assert "tableServices/tables@" in text and "for tableName in ledgerTableNames" in text


def _with_workspace(docs, text: str) -> dict:
    return dict(docs, **{"app/workspace.bicep": c.parse_text(text)})


def test_cluster_check_reports_no_identity_no_role_and_idle_nodes(docs):
    text = (c.INFRA / "app" / "workspace.bicep").read_text()
    no_role = re.sub(r"resource computeDataWriter .*?\n}\n", "", text, flags=re.S).replace(
        "  dependsOn: [\n    computeDataWriter\n  ]\n", "")
    assert no_role != text
    assert c.check_training_cluster(_with_workspace(docs, no_role)) == [
        "app/workspace.bicep:cluster: the cluster identity needs blob data access (Storage Blob Data Reader or "
        "Contributor) on the datastore account"]
    no_identity = re.sub(r"(resource cluster .*?\n)  identity: \{.*?\n  \}\n", r"\1", text, flags=re.S)
    assert no_identity != text
    assert "the cluster needs a managed identity" in "\n".join(c.check_training_cluster(_with_workspace(docs, no_identity)))
    idle = text.replace("minNodeCount: 0", "minNodeCount: 1").replace("maxNodeCount: computeMaxNodes", "maxNodeCount: 4")
    problems = "\n".join(c.check_training_cluster(_with_workspace(docs, idle)))
    assert "minNodeCount must be 0" in problems and "maxNodeCount must be a parameter" in problems


def test_role_check_holds_the_cluster_identity_to_blob_roles_on_a_storage_account(docs):
    text = (c.INFRA / "app" / "workspace.bicep").read_text()
    # The cluster may not get an app-only role such as AzureML Data Scientist ...
    contributor = "var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'"
    assert contributor in text
    scientist = text.replace(contributor, "var storageBlobDataContributor = 'f6c7c914-8db3-469d-8ca1-694a8f32e121'")
    assert any("f6c7c914" in p for p in c.check_role_assignments(_with_workspace(docs, scientist)))
    # ... nor its blob role anywhere but on a storage account (here: the whole resource group).
    unscoped = re.sub(r"(resource computeDataWriter .*?)  scope: datastoreAccount\n", r"\1", text, flags=re.S)
    assert unscoped != text
    assert "app/workspace.bicep:computeDataWriter: the cluster identity's role must be scoped to a storage account" \
        in c.check_role_assignments(_with_workspace(docs, unscoped))


def test_datastore_check_reports_stored_credentials_or_a_missing_datastore(docs):
    text = (c.INFRA / "app" / "workspace.bicep").read_text()
    keyed = text.replace("credentialsType: 'None'", "credentialsType: 'AccountKey'")
    assert keyed != text
    assert "credentials must be None" in "\n".join(c.check_landing_datastore(_with_workspace(docs, keyed)))
    gone = re.sub(r"resource landingDatastore .*?\n}\n", "", text, flags=re.S)
    assert gone != text
    assert c.check_landing_datastore(_with_workspace(docs, gone)) == ["app/workspace.bicep: expected one datastore, found 0"]


def _with(docs, path: str, text: str) -> dict:
    return dict(docs, **{path: c.parse_text(text)})


ARTIFACTS = "app/roles-artifacts.bicep"


def _contributor_problems(problems: list[str]) -> list[str]:
    return [p for p in problems if "Storage Blob Data Contributor" in p]


def test_role_check_refuses_the_app_blob_data_contributor_on_the_whole_datastore_account(docs):
    text = (c.INFRA / "app" / "roles-artifacts.bicep").read_text()
    account = text.replace("scope: artifacts", "scope: datastoreAccount")
    assert account.count("scope: datastoreAccount") == 1
    expected = [f"{ARTIFACTS}:appArtifactWriter: Storage Blob Data Contributor (ba92f5b4-2d11-453d-a403-e96b0029c9fe) "
                "for the app only on the workspace's default blob container (azureml-blobstore-<workspaceId>), not on "
                "datastoreAccount"]
    assert _contributor_problems(c.check_role_assignments(_with(docs, ARTIFACTS, account))) == expected
    # An ABAC condition does not make the account scope acceptable: the rule is the container scope.
    conditioned = account.replace("    principalType: 'ServicePrincipal'\n",
                                  "    principalType: 'ServicePrincipal'\n    conditionVersion: '2.0'\n"
                                  "    condition: '((!(ActionMatches{\\'Microsoft.Storage/storageAccounts/blobServices/"
                                  "containers/blobs/write\\'})) OR (@Resource[Microsoft.Storage/storageAccounts/"
                                  "blobServices/containers:name] StringNotEquals \\'landing\\'))'\n")
    assert conditioned.count("conditionVersion") == 1
    assert len(_contributor_problems(c.check_role_assignments(_with(docs, ARTIFACTS, conditioned)))) == 1
    # Without a scope, the assignment would cover the whole resource group: refused as well.
    unscoped = text.replace("  scope: artifacts\n", "")
    assert len(_contributor_problems(c.check_role_assignments(_with(docs, ARTIFACTS, unscoped)))) == 1
    # Nor the app's write access on the landing container.
    roles = (c.INFRA / "app" / "roles-datastore.bicep").read_text()
    landing = roles.replace("var storageBlobDataReader = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'",
                            "var storageBlobDataReader = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'")
    assert landing != roles
    assert _contributor_problems(c.check_role_assignments(_with(docs, "app/roles-datastore.bicep", landing))) == [
        "app/roles-datastore.bicep:landingReader: Storage Blob Data Contributor (ba92f5b4-2d11-453d-a403-e96b0029c9fe)"
        " for the app only on the workspace's default blob container (azureml-blobstore-<workspaceId>), not on landing"]


def test_role_check_refuses_a_container_not_named_after_the_workspace_id(docs):
    text = (c.INFRA / "app" / "workspace.bicep").read_text()
    passed = "artifactContainerName: 'azureml-blobstore-${workspace.properties.workspaceId}'"
    assert passed in text
    for other in ("artifactContainerName: landing.name", "artifactContainerName: landingContainer",
                  "artifactContainerName: 'azureml-blobstore-${token}'"):
        mutated = _with_workspace(docs, text.replace(passed, other))
        assert c.artifact_containers(mutated, ARTIFACTS) == set()
        assert len(_contributor_problems(c.check_role_assignments(mutated))) == 1, other
        assert len(c.check_artifact_writers(mutated)) == 1, other


def test_artifact_writer_check_reports_a_missing_writer(docs):
    text = (c.INFRA / "app" / "roles-artifacts.bicep").read_text()
    no_app = re.sub(r"resource appArtifactWriter .*?\n}\n", "", text, flags=re.S)
    assert no_app != text
    assert c.check_artifact_writers(_with(docs, ARTIFACTS, no_app)) == [
        "app/workspace.bicep: the app identity needs Storage Blob Data Contributor on the default blob container "
        "(it uploads each job's code snapshot there)"]
    ws = (c.INFRA / "app" / "workspace.bicep").read_text()
    # The cluster's write access held on the default blob container only (the old template) misses the MLflow
    # artifacts in workspaceartifactstore: reported.
    container_only = re.sub(r"(resource computeDataWriter .*?)  scope: datastoreAccount\n", r"\1  scope: landing\n",
                            ws, flags=re.S)
    assert container_only != ws
    assert c.check_artifact_writers(_with_workspace(docs, container_only)) == [
        "app/workspace.bicep: the cluster identity needs Storage Blob Data Contributor on the storage account (jobs "
        "write their outputs and MLflow artifacts there)"]


def test_role_check_reports_a_nested_module_given_another_principal(docs):
    text = (c.INFRA / "app" / "workspace.bicep").read_text()
    swapped = text.replace("    principalId: principalId\n    datastoreAccountName:",
                           "    principalId: computeIdentity.properties.principalId\n    datastoreAccountName:")
    assert swapped != text
    problems = c.check_role_assignments(_with_workspace(docs, swapped))
    assert "app/workspace.bicep:artifactWriters: principalId must be the app identity's (its own principalId " \
           "parameter), not computeIdentity.properties.principalId" in problems


def test_role_check_holds_the_policy_identity_to_its_definitions_roles(docs):
    text = (c.INFRA / "app" / "endpoint-logs.bicep").read_text()
    owner = text.replace("var logAnalyticsContributor = '92aaf0da-9dab-42b6-94a3-d43ce8d16293'",
                         "var logAnalyticsContributor = '8e3af657-a8ff-443c-a75c-2fe8c4bcb635'")
    assert owner != text
    assert c.check_role_assignments(_with(docs, "app/endpoint-logs.bicep", owner)) == [
        "app/endpoint-logs.bicep:remediator: role 8e3af657-a8ff-443c-a75c-2fe8c4bcb635 is not one of the policy's "
        "allowed least-privilege roles"]
    # And the policy definition names exactly that role for its remediation.
    import json

    policy = json.loads((c.INFRA / "app" / "endpoint-logs-policy.json").read_text())
    assert policy["policyRule"]["then"]["details"]["roleDefinitionIds"] == [
        f"/providers/Microsoft.Authorization/roleDefinitions/{g}" for g in c.POLICY_ROLES]


def test_the_app_is_told_which_cloud_it_was_deployed_to(docs):
    assert "MLOPS_AZURE_CLOUD" in dict(c.app_setting_pairs(docs))
    # pycep renders a property of a function call without the property, so the source is checked as text
    assert re.search(r"^\s*MLOPS_AZURE_CLOUD:\s*environment\(\)\.name\b", (c.INFRA / "main.bicep").read_text(), re.M)

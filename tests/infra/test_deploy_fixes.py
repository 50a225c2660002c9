"""The defects of issue 12 that make `azd up` fail, or leave a deployment that cannot do its job, each checked on the
Bicep (pycep) and each check shown failing on the template as it was."""
from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("pycep", reason="pycep-parser is not installed (it is in pyproject's dev extras)")

from tests.infra import bicep_checks as c  # noqa: E402

MONITORING_READER = "43d0d8ad-25c7-4714-9337-8ba259a9fe05"
STORAGE_BLOB_DATA_READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"


@pytest.fixture(scope="module")
def docs():
    return c.load_all()


def _text(path: str) -> str:
    return (c.INFRA / path).read_text()


def _with(docs, path: str, text: str) -> dict:
    return dict(docs, **{path: c.parse_text(text)})


def _module(docs, target: str, main: str = "main.bicep") -> tuple[str, dict]:
    (name, mod), = [(n, m) for n, m in docs[main]["modules"].items() if c.module_target(main, m) == target]
    return name, mod


# --- Key Vault references wait for the roles that let the app read them -----------------------------------------

def check_app_waits_for_secret_roles(docs, main: str = "main.bicep") -> list[str]:
    """main.bicep's Function App module depends on every module that grants Key Vault Secrets User (a reference that
    cannot resolve is cached as the literal string for up to 24 hours) and on the app-identity role modules."""
    main_doc = docs[main]
    app_name, app = _module(docs, "app/functionapp.bicep", main)
    depends = set(c.body(app).get("dependsOn") or [])
    problems = []
    for name, mod in main_doc["modules"].items():
        target = docs.get(c.module_target(main, mod), {})
        grants = [r for _n, r in c.resources(target, "Microsoft.Authorization/roleAssignments")
                  if c._role_guid(target, c.body(r).get("properties", {})) == c.KEY_VAULT_SECRETS_USER]
        if grants and name not in depends:
            problems.append(f"{main}:{app_name} must depend on {name}, which grants Key Vault Secrets User")
    return problems


def test_the_app_waits_for_the_roles_its_key_vault_references_need(docs):
    assert check_app_waits_for_secret_roles(docs) == []
    depends = set(c.body(_module(docs, "app/functionapp.bicep")[1])["dependsOn"])
    assert {"roles", "workspaceRoles", "datastoreRoles", "subscriptionRoles"} <= depends


def test_the_dependency_check_reports_the_template_without_depends_on(docs):
    text = _text("main.bicep")
    start = text.index("  // Key Vault references resolve when the app starts")
    old = text[:start] + text[text.index("}\n", start):]
    assert "subscriptionRoles\n  ]\n}" not in old.split("module app ")[1].split("\n}\n")[0]
    assert check_app_waits_for_secret_roles(_with(docs, "main.bicep", old)) == [
        "main.bicep:app must depend on roles, which grants Key Vault Secrets User"]


# --- Monitoring Reader on the subscription (metrics:getBatch) ---------------------------------------------------

def monitoring_reader_scopes(docs, main: str = "main.bicep") -> set[str]:
    """Where the app identity holds Monitoring Reader: 'subscription' for an assignment in a targetScope='subscription'
    module that main.bicep deploys without another scope."""
    scopes = set()
    for mod in docs[main]["modules"].values():
        target = c.module_target(main, mod)
        doc = docs.get(target, {})
        for _rname, r in c.resources(doc, "Microsoft.Authorization/roleAssignments"):
            if c._role_guid(doc, c.body(r).get("properties", {})) != MONITORING_READER:
                continue
            at_subscription = (doc.get("globals", {}).get("scope", {}).get("value") == "subscription"
                               and "scope" not in c.body(mod) and "scope" not in c.body(r))
            scopes.add("subscription" if at_subscription else f"{target}:{c.render(c.body(r).get('scope'))}")
    return scopes


def test_monitoring_reader_is_granted_on_the_subscription(docs):
    assert monitoring_reader_scopes(docs) == {"subscription"}
    assert c.render(c.body(_module(docs, "app/roles-subscription.bicep")[1])["params"]["principalId"]) == \
        "identity.outputs.principalId"


def test_the_scope_check_reports_monitoring_reader_on_the_workspace_only(docs):
    # The template as it was: Monitoring Reader scoped to the workspace, which metrics:getBatch answers with 401.
    old = _text("app/roles-workspace.bicep").replace("resource mlRole", """resource metricsReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, principalId, '43d0d8ad-25c7-4714-9337-8ba259a9fe05')
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '43d0d8ad-25c7-4714-9337-8ba259a9fe05')
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource mlRole""")
    mutated = _with(docs, "app/roles-workspace.bicep", old)
    mutated = dict(mutated, **{"app/roles-subscription.bicep": c.parse_text("targetScope = 'subscription'\n")})
    assert monitoring_reader_scopes(mutated) == {"app/roles-workspace.bicep:workspace"}


# --- the metrics endpoint is in the workspace's region ----------------------------------------------------------

def test_the_metrics_endpoint_is_in_the_workspaces_region(docs):
    value = c.render(c.app_settings(docs)["MLOPS_METRICS_ENDPOINT"])
    ml_topic, _ = next((n, m) for n, m in docs["main.bicep"]["modules"].items()
                       if c.module_target("main.bicep", m) == "app/system-topic.bicep"
                       and c.body(m)["params"]["source"] == "ml")
    assert value == f"https://${{{ml_topic}.outputs.sourceLocation}}.metrics.monitor.azure.com"
    output = c.render(docs["app/system-topic.bicep"]["outputs"]["sourceLocation"]["value"])
    assert output == "conditional(equals(source, ml), workspace.location, account.location)"
    # The app's own region, as it was, is refused.
    old = _text("main.bicep").replace("${mlSystemTopic.outputs.sourceLocation}", "${location}")
    assert c.render(c.app_settings(_with(docs, "main.bicep", old))["MLOPS_METRICS_ENDPOINT"]) != value


# --- system topics: reuse an existing one ------------------------------------------------------------------------

def test_a_system_topic_is_created_only_when_the_source_has_none(docs):
    doc = docs["app/system-topic.bicep"]
    (_, topic), = c.resources(doc, "Microsoft.EventGrid/systemTopics")
    assert c.render(topic["config"]["condition"]) == "create"
    assert c.render(doc["variables"]["create"]["value"]) == "empty(existingTopicName)"
    assert c.render(doc["outputs"]["topicName"]["value"]) == \
        "conditional(create, evgst-${sourceName}, existingTopicName)"
    # main.bicep passes each source's existing topic, which the preprovision hook finds (main.parameters.json).
    params = json.loads((c.INFRA / "main.parameters.json").read_text())["parameters"]
    for source, param, env in (("ml", "existingMlSystemTopicName", "MLOPS_EXISTING_ML_SYSTEM_TOPIC"),
                               ("storage", "existingStorageSystemTopicName", "MLOPS_EXISTING_STORAGE_SYSTEM_TOPIC")):
        mod = next(m for m in docs["main.bicep"]["modules"].values()
                   if c.module_target("main.bicep", m) == "app/system-topic.bicep"
                   and c.body(m)["params"]["source"] == source)
        assert c.render(c.body(mod)["params"]["existingTopicName"]) == param
        assert params[param]["value"] == f"${{{env}=}}"
    # The storage topic lives in the datastore account's resource group, which may differ from the workspace's.
    storage_mod = docs["main.bicep"]["modules"]["storageSystemTopic"]
    assert c.render(c.body(storage_mod)["scope"]) == "datastoreRg"


def test_subscriptions_on_a_reused_topic_dead_letter_without_the_topic_identity(docs):
    post = docs["app/postdeploy.bicep"]
    for name, flag in (("mlSubscriptions", "mlSystemTopicCreated"), ("storageSubscriptions", "storageSystemTopicCreated")):
        assert c.render(c.body(post["modules"][name])["params"]["deadLetterWithIdentity"]) == flag
    props = docs["app/eventgrid-subscriptions.bicep"]["variables"]["properties"]["value"]["config"]
    assert c.render(props["deadLetterWithResourceIdentity"]).startswith("conditional(deadLetterWithIdentity, {identity")
    assert c.render(props["deadLetterDestination"]).startswith("conditional(deadLetterWithIdentity, null, {endpointType")
    hook = _text("hooks/postdeploy.sh")
    assert '"mlSystemTopicCreated": e.get("AZURE_ML_SYSTEM_TOPIC_CREATED"' in hook
    assert "output AZURE_ML_SYSTEM_TOPIC_CREATED bool = mlSystemTopic.outputs.created" in _text("main.bicep")


# --- Key Vault names vs soft delete --------------------------------------------------------------------------------

def check_vaults_purgeable(docs) -> list[str]:
    """A vault whose name is fixed per environment must be purgeable, or `azd down` then `azd up` collides with the
    soft-deleted vault for the whole retention period."""
    problems = []
    for path, doc in docs.items():
        for name, res in c.resources(doc, "Microsoft.KeyVault/vaults"):
            if c.is_true(c.body(res).get("properties", {}).get("enablePurgeProtection")):
                problems.append(f"{path}:{name}: purge protection on a vault with a fixed name")
    return problems


def test_vaults_can_be_purged_so_their_names_can_be_reused(docs):
    assert check_vaults_purgeable(docs) == []
    for path in ("app/keyvault.bicep", "app/workspace.bicep"):
        old = _text(path).replace("enablePurgeProtection: false", "enablePurgeProtection: true")
        assert check_vaults_purgeable(_with(docs, path, old)) != []


# --- online endpoint traffic logs ----------------------------------------------------------------------------------

def test_a_policy_sends_every_online_endpoints_traffic_log_to_the_apps_log_analytics(docs):
    policy = json.loads((c.INFRA / "app" / "endpoint-logs-policy.json").read_text())
    rule = policy["policyRule"]
    assert rule["if"] == {"field": "type", "equals": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints"}
    details = rule["then"]["details"]
    assert rule["then"]["effect"] == "DeployIfNotExists" and details["type"] == "Microsoft.Insights/diagnosticSettings"
    (resource,) = details["deployment"]["properties"]["template"]["resources"]
    logs = {entry["category"]: entry["enabled"] for entry in resource["properties"]["logs"]}
    assert logs["AmlOnlineEndpointTrafficLog"] is True
    assert resource["properties"]["workspaceId"] == "[parameters('logAnalytics')]"
    # The existence condition looks for exactly the traffic log to that workspace, so a setting is deployed where
    # either is missing.
    condition = json.dumps(details["existenceCondition"])
    assert "AmlOnlineEndpointTrafficLog" in condition and "[parameters('logAnalytics')]" in condition
    # main.bicep defines it from that file and assigns it on the workspace's resource group, pointing at the
    # monitoring module's workspace: the one whose customer id is MLOPS_LOG_ANALYTICS_WORKSPACE_ID.
    main = docs["main.bicep"]
    (_, definition), = c.resources(main, "Microsoft.Authorization/policyDefinitions")
    assert c.render(c.body(definition)["properties"]) == "load_json_content(app/endpoint-logs-policy.json, null, null)"
    _, logs_mod = _module(docs, "app/endpoint-logs.bicep")
    assert c.render(c.body(logs_mod)["scope"]) == "workspaceRg"
    assert c.render(c.body(logs_mod)["params"]["logAnalyticsId"]) == "monitoring.outputs.logAnalyticsId"
    assert c.render(c.app_settings(docs)["MLOPS_LOG_ANALYTICS_WORKSPACE_ID"]) == \
        "monitoring.outputs.logAnalyticsCustomerId"
    # The assignment's identity can remediate: the role the definition names, on the resource group and on the
    # Log Analytics workspace (roles-policy.bicep, given the assignment's principal).
    doc = docs["app/endpoint-logs.bicep"]
    (_, assignment), = c.resources(doc, "Microsoft.Authorization/policyAssignments")
    assert c.body(assignment)["identity"]["type"] == "SystemAssigned"
    assert c.render(c.body(assignment)["properties"]["parameters"]["logAnalytics"]["value"]) == "logAnalyticsId"
    _, roles_mod = _module(docs, "app/roles-policy.bicep")
    assert c.render(c.body(roles_mod)["params"]["policyPrincipalId"]) == "endpointLogs.outputs.principalId"
    for path in ("app/endpoint-logs.bicep", "app/roles-policy.bicep"):
        (_, ra), = c.resources(docs[path], "Microsoft.Authorization/roleAssignments")
        assert c._role_guid(docs[path], c.body(ra)["properties"]) == c.LOG_ANALYTICS_CONTRIBUTOR


# --- isolated workspace: outbound rules for the training environment's packages ----------------------------------

CONDA_YAML = c.ROOT / "shared" / "training" / "conda.yaml"


def package_hosts(conda_yaml: str) -> set[str]:
    """Hosts an environment build downloads from: conda channels (conda-forge and defaults) and PyPI for pip."""
    import yaml

    env = yaml.safe_load(conda_yaml)
    hosts = set()
    for channel in env.get("channels") or []:
        hosts.add("repo.anaconda.com" if channel == "defaults" else "conda.anaconda.org")
    if any(isinstance(d, dict) and d.get("pip") for d in env.get("dependencies") or []):
        hosts |= {"pypi.org", "files.pythonhosted.org"}
    return hosts


def outbound_hosts(docs) -> set[str]:
    (_, ws), = c.resources(docs["app/workspace.bicep"], "Microsoft.MachineLearningServices/workspaces")
    network = c.body(ws)["properties"]["managedNetwork"]["operator"]["operands"]["true_value"]
    assert network["isolationMode"] == "AllowOnlyApprovedOutbound"
    return {rule["destination"] for rule in (network.get("outboundRules") or {}).values() if rule.get("type") == "FQDN"}


def test_an_isolated_workspace_can_reach_the_package_indexes_its_environment_needs(docs):
    pytest.importorskip("yaml")
    needed = package_hosts(CONDA_YAML.read_text())
    assert needed == {"conda.anaconda.org", "pypi.org", "files.pythonhosted.org"}
    assert needed <= outbound_hosts(docs)
    # The template as it was (no outbound rules) is reported.
    text = _text("app/workspace.bicep")
    start = text.index("      // What the training environment")
    old = text[:start] + text[text.index("    } : {", start):]
    assert needed - outbound_hosts(_with(docs, "app/workspace.bicep", old)) == needed


# --- blob read of collected inference data for the drift monitor ---------------------------------------------------

def test_the_app_reads_the_workspaces_default_blob_container_where_collected_data_lands(docs):
    doc = docs["app/roles-workspace.bicep"]
    mod = doc["modules"]["collectedData"]
    assert c.module_target("app/roles-workspace.bicep", mod) == "app/roles-collected-data.bicep"
    params = c.body(mod)["params"]
    assert c.render(params["containerName"]) == "azureml-blobstore-${workspace.properties.workspaceId}"
    assert c.render(params["storageAccountName"]) == "last(split(workspace.properties.storageAccount, /))"
    target = docs["app/roles-collected-data.bicep"]
    (_, ra), = c.resources(target, "Microsoft.Authorization/roleAssignments")
    assert c._role_guid(target, c.body(ra)["properties"]) == STORAGE_BLOB_DATA_READER  # read only
    assert c.render(c.body(ra)["scope"]) == "collected"  # the container, not the account
    (_, container), = [(n, r) for n, r in c.resources(target, "Microsoft.Storage/storageAccounts/blobServices/containers",
                                                      include_existing=True)]
    assert c.render(c.body(container)["name"]) == "containerName"


# --- the compute cluster is optional: serverless compute -----------------------------------------------------------

def test_serverless_compute_creates_no_cluster_and_its_low_priority_is_the_job_tier(docs):
    _, ws_mod = _module(docs, "app/workspace.bicep")
    assert c.render(c.body(ws_mod)["params"]["createCluster"]) == "not(useServerless)"
    assert c.render(docs["main.bicep"]["variables"]["useServerless"]["value"]) == "equals(computeName, serverless)"
    (_, cluster), = c.resources(docs["app/workspace.bicep"], "Microsoft.MachineLearningServices/workspaces/computes")
    assert c.render(cluster["config"]["condition"]) == "createCluster"
    assert c.render(c.app_settings(docs)["MLOPS_LOW_PRIORITY"]) == \
        "conditional(and(useServerless, computeLowPriority), true, false)"


def test_with_an_alerts_app_registration_the_action_group_uses_the_secure_webhook_without_a_key():
    INFRA = c.INFRA
    text = (INFRA / "app" / "postdeploy.bicep").read_text()
    secure = re.search(r"secureWebhook \? \{(.*?)\} : \{(.*?)\}", text, re.S)
    assert secure, "the receiver is chosen by secureWebhook"
    on, off = secure.group(1), secure.group(2)
    for line in ("serviceUri: alertSecureWebhookUrl", "useAadAuth: true", "objectId: alertAppObjectId",
                 "identifierUri: alertAppIdentifierUri", "tenantId: tenant().tenantId"):
        assert line in on, line
    assert "alertWebhookUrl" not in on and "useAadAuth: false" in off
    main = (INFRA / "main.bicep").read_text()
    app_side = re.search(r"secureAlerts \? \{(.*?)\} : \{\}", main, re.S).group(1)
    assert "MLOPS_ALERT_AUTH: 'entra'" in app_side and "MLOPS_ALERT_ROLE: alertAppRole" in app_side

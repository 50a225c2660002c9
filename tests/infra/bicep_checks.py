"""Structural checks over the Bicep templates, parsed with pycep-parser. Each check returns a list of problems.

The checks take parsed documents (dicts from ``BicepParser.parse``) so the tests can feed them mutated snippets and
see each one fail. pycep renders identifiers and string literals alike as plain strings; ``render`` turns its
expression trees back into approximate Bicep text (``identity.outputs.principalId``, ``listKeys(...)``).
"""
from __future__ import annotations

import json
import posixpath
import re
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
SUBSCRIPTIONS_JSON = INFRA / "subscriptions.json"
FUNCTION_APP = ROOT / "function_app.py"

# The Event Grid-triggered functions of function_app.py (the brief's list); the file itself is parsed as well.
EVENT_GRID_FUNCTIONS = frozenset({"on_blob_created", "on_run_event", "on_model_event", "on_dataset_drift", "on_custom_event"})

# Settings the Functions host and the Azure SDKs read (not MLOPS_*): identity-based host storage, telemetry,
# the client id DefaultAzureCredential uses.
HOST_SETTINGS = frozenset({
    "AzureWebJobsStorage__accountName", "AzureWebJobsStorage__credential", "AzureWebJobsStorage__clientId",
    "AzureWebJobsStorage__blobServiceUri", "AzureWebJobsStorage__queueServiceUri", "AzureWebJobsStorage__tableServiceUri",
    "APPLICATIONINSIGHTS_CONNECTION_STRING", "APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "AZURE_CLIENT_ID",
})
# Flex Consumption rejects these (runtime and package location live in functionAppConfig); AzureWebJobsStorage
# alone would be a connection string.
FORBIDDEN_SETTINGS = frozenset({
    "FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION", "WEBSITE_RUN_FROM_PACKAGE", "WEBSITE_CONTENTSHARE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING", "AzureWebJobsStorage",
})
REQUIRED_IN_AZURE = frozenset({
    "MLOPS_BACKEND", "MLOPS_SUBSCRIPTION_ID", "MLOPS_RESOURCE_GROUP", "MLOPS_WORKSPACE",
    "MLOPS_LEDGER__tableServiceUri", "MLOPS_EVENTS__topicEndpointUri", "MLOPS_TEAMS_WEBHOOK_URL",
    "MLOPS_LOG_ANALYTICS_WORKSPACE_ID",
})

# Built-in roles the app may hold, by role definition GUID. Anything else (Owner, Contributor, ...) fails.
ALLOWED_ROLES = {
    "f6c7c914-8db3-469d-8ca1-694a8f32e121": "AzureML Data Scientist",
    "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1": "Storage Blob Data Reader",
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "d5a91429-5739-47e2-a06b-3470a27159e7": "EventGrid Data Sender",
    "43d0d8ad-25c7-4714-9337-8ba259a9fe05": "Monitoring Reader",
    "73c42c96-874c-492b-b04d-ab87d138a893": "Log Analytics Reader",
    "4633458b-17de-408a-b874-0445c86b69e6": "Key Vault Secrets User",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
    "ba92f5b4-2d11-453d-a403-e96b0029c9fe": "Storage Blob Data Contributor",
}

KEY_VAULT_REFERENCE = "@Microsoft.KeyVault(SecretUri="

# The training cluster's identity reads its input through identity-based datastores and writes its outputs and MLflow
# artifacts on the workspace's storage account (Azure ML documents Storage Blob Data Contributor on the account for a
# compute identity when shared keys are off), nothing else.
COMPUTE_ROLES = {
    "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1": "Storage Blob Data Reader",
    "ba92f5b4-2d11-453d-a403-e96b0029c9fe": "Storage Blob Data Contributor",
}

# The endpoint traffic-log policy's identity (a DeployIfNotExists assignment) may hold exactly the roles its
# definition's roleDefinitionIds name: endpoint-logs-policy.json.
LOG_ANALYTICS_CONTRIBUTOR = "92aaf0da-9dab-42b6-94a3-d43ce8d16293"
POLICY_ROLES = {LOG_ANALYTICS_CONTRIBUTOR: "Log Analytics Contributor"}
# A role assignment whose role is this module parameter gets the app's Azure ML role: the custom role of main.bicep or
# AzureML Data Scientist (tests/infra/test_custom_role.py checks what main passes).
ML_ROLE_PARAMETER = "mlRoleDefinitionId"
ROLE_NAMES = {**ALLOWED_ROLES, **POLICY_ROLES}

# The app identity writes blobs only in the workspace's default blob container (workspaceblobstore), named after the
# workspace's immutable id. The datastore account also holds `landing`, where a new blob starts training, so this role
# for the app on the account (or on any other container) fails the role check, with or without an ABAC condition.
STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
STORAGE_BLOB_DATA_READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"
ARTIFACT_CONTAINER_NAME = re.compile(r"'?azureml-blobstore-\$\{(\w+)\.properties\.workspaceId\}'?")

SOURCE_PREFIX = {"ml": "Microsoft.MachineLearningServices.", "storage": "Microsoft.Storage."}

_SECRET_NAME = re.compile(r"key|secret|password|passwd|connectionstring|sas|token|credential", re.I)
_SECRET_NAME_OK = re.compile(r"(name|uri|url|id|endpoint)$|keyvault|key_vault", re.I)
_SECRET_VALUE = re.compile(
    r"\blist[A-Za-z]*\(|AccountKey=|SharedAccessKey|\.getSecret\(|primaryKey|secondaryKey|primaryConnectionString"
    r"|primaryMasterKey|\bkeys\[|masterKey|default_key|functionKeys", re.I)


# ---------------------------------------------------------------------------------------------------------- parsing

@lru_cache(maxsize=1)
def _parser():
    from pycep import BicepParser

    return BicepParser()


def parse_text(text: str) -> dict[str, Any]:
    return _parser().parse(text=text)


@cache
def parse_file(path: Path) -> dict[str, Any]:
    return _parser().parse(file_path=path)


def bicep_files() -> list[Path]:
    return sorted(INFRA.rglob("*.bicep"))


def load_all() -> dict[str, dict[str, Any]]:
    """Every template under infra/, keyed by its path relative to infra/ (``main.bicep``, ``app/roles.bicep``)."""
    return {p.relative_to(INFRA).as_posix(): parse_file(p) for p in bicep_files()}


def subscriptions_config() -> dict[str, Any]:
    return json.loads(SUBSCRIPTIONS_JSON.read_text())


def event_grid_functions(source: str | None = None) -> set[str]:
    """Event Grid-triggered function names: the known list plus any found in function_app.py."""
    names = set(EVENT_GRID_FUNCTIONS)
    text = source if source is not None else (FUNCTION_APP.read_text() if FUNCTION_APP.exists() else "")
    # A decorator block (one or more @... lines) followed by `def name(`; the block must hold event_grid_trigger.
    for block, name in re.findall(r"((?:^[ \t]*@[^\n]*\n(?:[ \t]+[^\n]*\n)*)+)[ \t]*(?:async[ \t]+)?def[ \t]+(\w+)[ \t]*\(",
                                  text, re.M):
        if "event_grid_trigger" in block:
            override = re.search(r"function_name\(\s*(?:name\s*=\s*)?[\"']([^\"']+)[\"']", block)
            names.add(override.group(1) if override else name)
    return names


# ------------------------------------------------------------------------------------------------------ expressions

def render(node: Any) -> str:
    """Approximate Bicep text of a pycep expression (enough for name and pattern checks)."""
    if node is None:
        return "null"
    if isinstance(node, bool):
        return "true" if node else "false"
    if isinstance(node, (int, float, str)):
        return str(node)
    if isinstance(node, list):
        return "[" + ", ".join(render(n) for n in node) + "]"
    if not isinstance(node, dict):
        return str(node)
    if "operator" in node and isinstance(node["operator"], dict):
        op = node["operator"]
        kind, ops = op.get("type"), op.get("operands", {})
        if kind == "property_accessor":
            return f"{render(ops.get('operand_1'))}.{render(ops.get('operand_2'))}"
        if kind == "index_accessor":
            return f"{render(ops.get('operand_1'))}[{render(ops.get('operand_2'))}]"
        if kind == "function_accessor":
            return f"{render(ops.get('operand_1'))}.{ops.get('func_name')}()"
        return f"{kind}(" + ", ".join(render(v) for v in ops.values()) + ")"
    if "function" in node and isinstance(node["function"], dict):
        fn = node["function"]
        name = fn.get("type", "")
        if name == "list_func":
            name = "list"
        params = fn.get("parameters") or {}
        args = params.values() if isinstance(params, dict) else params
        return f"{name}(" + ", ".join(render(a) for a in args) + ")"
    if "loop_type" in node:
        return "[for ...: " + render(node.get("config")) + "]"
    return "{" + ", ".join(f"{k}: {render(v)}" for k, v in node.items()) + "}"


def walk(node: Any):
    """Every dict, list and scalar in a parsed tree."""
    yield node
    if isinstance(node, dict):
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def uses_list_function(node: Any) -> bool:
    for n in walk(node):
        if isinstance(n, dict):
            op = n.get("operator")
            if isinstance(op, dict) and op.get("type") == "function_accessor" and str(op["operands"].get("func_name", "")).lower().startswith("list"):
                return True
            fn = n.get("function")
            if isinstance(fn, dict) and fn.get("type") == "list_func":
                return True
    return False


def _value(decl: dict[str, Any]) -> Any:
    """The value of a var / output / param default declaration."""
    return decl.get("value", decl.get("default"))


def resources(doc: dict[str, Any], rtype: str | None = None, *, include_existing: bool = False):
    for name, res in (doc.get("resources") or {}).items():
        if rtype and res.get("type", "").lower() != rtype.lower():
            continue
        if res.get("existing") and not include_existing:
            continue
        yield name, res


def body(res: dict[str, Any]) -> dict[str, Any]:
    """A resource's object body, through a loop or a deploy condition."""
    cfg = res.get("config", {})
    while isinstance(cfg, dict) and "config" in cfg and ("loop_type" in cfg or "condition" in cfg):
        cfg = cfg["config"]
    return cfg if isinstance(cfg, dict) else {}


def is_false(v: Any) -> bool:
    return v is False or (isinstance(v, str) and v.lower() == "false")


def is_true(v: Any) -> bool:
    return v is True or (isinstance(v, str) and v.lower() == "true")


# ----------------------------------------------------------------------------------------------------------- checks

def check_storage_accounts(docs: dict[str, dict]) -> list[str]:
    problems = []
    for path, doc in docs.items():
        for name, res in resources(doc, "Microsoft.Storage/storageAccounts"):
            props = body(res).get("properties", {})
            where = f"{path}:{name}"
            if not is_false(props.get("allowSharedKeyAccess")):
                problems.append(f"{where}: allowSharedKeyAccess must be false")
            if not is_false(props.get("allowBlobPublicAccess")):
                problems.append(f"{where}: allowBlobPublicAccess must be false")
            if props.get("minimumTlsVersion") != "TLS1_2":
                problems.append(f"{where}: minimumTlsVersion must be TLS1_2")
            if not is_true(props.get("supportsHttpsTrafficOnly")):
                problems.append(f"{where}: supportsHttpsTrafficOnly must be true")
        for name, res in resources(doc, "Microsoft.Storage/storageAccounts/blobServices/containers"):
            access = body(res).get("properties", {}).get("publicAccess", "None")
            if access != "None":
                problems.append(f"{path}:{name}: container publicAccess must be None")
    return problems


def check_key_vaults(docs: dict[str, dict]) -> list[str]:
    problems = []
    for path, doc in docs.items():
        for name, res in resources(doc, "Microsoft.KeyVault/vaults"):
            props = body(res).get("properties", {})
            if not is_true(props.get("enableRbacAuthorization")):
                problems.append(f"{path}:{name}: Key Vault must use RBAC (enableRbacAuthorization: true)")
            if props.get("accessPolicies"):
                problems.append(f"{path}:{name}: Key Vault must not use access policies")
    return problems


def compute_identities(doc: dict[str, Any]) -> dict[str, str]:
    """principalId expression → AmlCompute symbol, for each managed identity of a compute cluster in this file: a
    user-assigned identity declared here and attached to the cluster, or the cluster's system-assigned identity."""
    uamis = {n for n, _ in resources(doc, "Microsoft.ManagedIdentity/userAssignedIdentities")}
    found: dict[str, str] = {}
    for name, res in resources(doc, "Microsoft.MachineLearningServices/workspaces/computes"):
        cfg = body(res)
        if cfg.get("properties", {}).get("computeType") != "AmlCompute":
            continue
        ident = cfg.get("identity") or {}
        if "SystemAssigned" in str(ident.get("type", "")):
            found[f"{name}.identity.principalId"] = name
        for key in ident.get("userAssignedIdentities") or {}:
            ref = re.fullmatch(r"'?\$\{(\w+)\.id\}'?", str(key))  # pycep keeps the quotes of a key
            if ref and ref.group(1) in uamis:
                found[f"{ref.group(1)}.properties.principalId"] = name
    return found


def module_target(caller: str, mod: dict[str, Any]) -> str:
    """Path (relative to infra/) of the template a module declaration in ``caller`` deploys."""
    return posixpath.normpath(posixpath.join(posixpath.dirname(caller), mod.get("detail", {}).get("path", "")))


def module_calls(docs: dict[str, dict], target: str):
    """(caller path, module symbol, params) of every module declaration, in any template, that deploys ``target``."""
    for path, doc in docs.items():
        for name, mod in (doc.get("modules") or {}).items():
            if module_target(path, mod) == target:
                yield path, name, body(mod).get("params", {})


def compute_principals(docs: dict[str, dict], path: str) -> set[str]:
    """principalId expressions in ``path`` that stand for a training cluster's identity: one declared there
    (compute_identities) or a parameter every caller of the template passes a cluster identity's principalId."""
    found = set(compute_identities(docs.get(path, {})))
    calls = list(module_calls(docs, path))
    for param in (docs.get(path, {}).get("parameters") or {}):
        if calls and all(render(params.get(param)) in compute_identities(docs.get(caller, {}))
                         for caller, _, params in calls):
            found.add(param)
    return found


def artifact_containers(docs: dict[str, dict], path: str) -> set[str]:
    """Container symbols in ``path`` that are a workspace's default blob container: an existing container named by a
    parameter that every caller sets to 'azureml-blobstore-${<workspace>.properties.workspaceId}', <workspace> being a
    Microsoft.MachineLearningServices/workspaces resource of the caller."""
    calls = list(module_calls(docs, path))
    found = set()
    for name, res in resources(docs.get(path, {}), "Microsoft.Storage/storageAccounts/blobServices/containers",
                               include_existing=True):
        param = render(body(res).get("name"))
        if not calls or param not in (docs.get(path, {}).get("parameters") or {}):
            continue
        ok = True
        for caller, _, params in calls:
            match = ARTIFACT_CONTAINER_NAME.fullmatch(render(params.get(param)))
            workspaces = {n for n, _ in resources(docs.get(caller, {}), "Microsoft.MachineLearningServices/workspaces",
                                                  include_existing=True)}
            ok = ok and match is not None and match.group(1) in workspaces
        if ok:
            found.add(name)
    return found


def policy_principals(doc: dict[str, Any]) -> set[str]:
    """principalId expressions in a template that stand for a policy assignment's managed identity: the identity of a
    policyAssignments resource declared there, or the parameter policyPrincipalId (main.bicep passes it the
    endpoint-logs module's output, a test checks)."""
    found = {f"{n}.identity.principalId" for n, _ in resources(doc, "Microsoft.Authorization/policyAssignments")}
    if "policyPrincipalId" in (doc.get("parameters") or {}):
        found.add("policyPrincipalId")
    return found


def check_role_assignments(docs: dict[str, dict], main: str = "main.bicep") -> list[str]:
    """Every role assignment's principal is the app identity (any role on ALLOWED_ROLES, or the Azure ML role passed as
    mlRoleDefinitionId), a training cluster's identity (only COMPUTE_ROLES, only on a storage account) or a policy
    assignment's identity (only POLICY_ROLES); Storage Blob Data Contributor for the app only on the workspace's default
    blob container (never the account, where `landing` is); every role is named in a comment (a separate test)."""
    problems = []
    for path, doc in docs.items():
        variables = {k: render(_value(v)) for k, v in (doc.get("variables") or {}).items()}
        params = doc.get("parameters") or {}
        computes = compute_principals(docs, path)
        policies = policy_principals(doc)
        storage = {n for n, _ in resources(doc, "Microsoft.Storage/storageAccounts", include_existing=True)}
        artifacts = artifact_containers(docs, path)
        for name, res in resources(doc, "Microsoft.Authorization/roleAssignments"):
            props = body(res).get("properties", {})
            where = f"{path}:{name}"
            principal = render(props.get("principalId"))
            scope = render(body(res).get("scope")) if "scope" in body(res) else "the deployment's scope"
            for_compute, for_policy = principal in computes, principal in policies
            if not (for_compute or for_policy) and (principal != "principalId" or "principalId" not in params):
                problems.append(f"{where}: principalId must be the module parameter principalId (the app identity), "
                                f"a compute cluster's identity or a policy assignment's, not {principal}")
            if props.get("principalType") != "ServicePrincipal":
                problems.append(f"{where}: principalType must be ServicePrincipal")
            role = render(props.get("roleDefinitionId"))
            if role == ML_ROLE_PARAMETER and ML_ROLE_PARAMETER in params and not (for_compute or for_policy):
                continue  # the app's Azure ML role, chosen by main.bicep
            guid = next((g for g in re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", role)), None)
            if guid is None:  # subscriptionResourceId('...roleDefinitions', someVar): look the variable up
                args = [render(a) for a in walk(props.get("roleDefinitionId")) if isinstance(a, str)]
                guid = next((variables[a] for a in args if a in variables), "")
            allowed = COMPUTE_ROLES if for_compute else POLICY_ROLES if for_policy else ALLOWED_ROLES
            if guid not in allowed:
                who = "the compute cluster's" if for_compute else "the policy's" if for_policy else "the app's"
                problems.append(f"{where}: role {guid or role} is not one of {who} allowed least-privilege roles")
            elif for_compute:
                if scope not in storage:
                    problems.append(f"{where}: the cluster identity's role must be scoped to a storage account")
            elif guid == STORAGE_BLOB_DATA_CONTRIBUTOR and scope not in artifacts:
                problems.append(f"{where}: Storage Blob Data Contributor ({guid}) for the app only on the workspace's "
                                f"default blob container (azureml-blobstore-<workspaceId>), not on {scope}")
    # Modules that take principalId must get the app identity's principalId: from main.bicep, the identity module's
    # output; from any other template, its own principalId parameter (which its caller checked in turn).
    identity_modules = {n for n, m in (docs.get(main, {}).get("modules") or {}).items()
                        if module_target(main, m) == "app/identity.bicep"}
    for path, doc in docs.items():
        for name, mod in (doc.get("modules") or {}).items():
            params = body(mod).get("params", {})
            if "principalId" not in params:
                continue
            got = render(params["principalId"])
            if path == main:
                ok = any(got == f"{m}.outputs.principalId" for m in identity_modules)
                want = "identity.outputs.principalId"
            else:
                ok = got == "principalId" and "principalId" in (doc.get("parameters") or {})
                want = "its own principalId parameter"
            if not ok:
                problems.append(f"{path}:{name}: principalId must be the app identity's ({want}), not {got}")
    return problems


def check_artifact_writers(docs: dict[str, dict], workspace: str = "app/workspace.bicep") -> list[str]:
    """With shared keys off, the two identities that write to the new workspace's storage can: the app identity holds
    Storage Blob Data Contributor on the default blob container (each job's code snapshot, uploaded on submission),
    through a module the workspace template deploys with the container's name built from the workspace's immutable id;
    the training cluster's identity holds it on the storage account (job outputs in workspaceblobstore, MLflow artifacts
    in workspaceartifactstore), as Azure ML documents."""
    wdoc = docs.get(workspace, {})
    cluster_principals = set(compute_identities(wdoc))
    accounts = {n for n, r in resources(wdoc, "Microsoft.Storage/storageAccounts", include_existing=True)
                if render(body(r).get("name")) == "datastoreAccountName"}
    cluster = any(render(body(r).get("properties", {}).get("principalId")) in cluster_principals
                  and render(body(r).get("scope")) in accounts
                  and _role_guid(wdoc, body(r).get("properties", {})) == STORAGE_BLOB_DATA_CONTRIBUTOR
                  for _n, r in resources(wdoc, "Microsoft.Authorization/roleAssignments"))
    app = False
    for mod in (wdoc.get("modules") or {}).values():
        target = module_target(workspace, mod)
        tdoc, params = docs.get(target, {}), body(mod).get("params", {})
        containers = artifact_containers(docs, target)
        for _n, ra in resources(tdoc, "Microsoft.Authorization/roleAssignments"):
            props = body(ra).get("properties", {})
            if _role_guid(tdoc, props) != STORAGE_BLOB_DATA_CONTRIBUTOR or render(body(ra).get("scope")) not in containers:
                continue
            passed = render(params.get(render(props.get("principalId"))))
            app = app or (passed == "principalId" and "principalId" in (wdoc.get("parameters") or {}))
    problems = []
    if not app:
        problems.append(f"{workspace}: the app identity needs Storage Blob Data Contributor on the default blob "
                        "container (it uploads each job's code snapshot there)")
    if not cluster:
        problems.append(f"{workspace}: the cluster identity needs Storage Blob Data Contributor on the storage "
                        "account (jobs write their outputs and MLflow artifacts there)")
    return problems


def check_no_secret_outputs(docs: dict[str, dict]) -> list[str]:
    """No output named like a key or secret, no output value built from list*() or a key, no secure param leaked."""
    problems = []
    for path, doc in docs.items():
        secure = {k for k, p in (doc.get("parameters") or {}).items()
                  if any(d.get("type") == "secure" for d in p.get("decorators", []) if isinstance(d, dict))}
        for name, out in (doc.get("outputs") or {}).items():
            text = render(_value(out))
            if _SECRET_NAME.search(name) and not _SECRET_NAME_OK.search(name):
                problems.append(f"{path}: output {name} is named like a key or secret")
            if uses_list_function(_value(out)) or _SECRET_VALUE.search(text):
                problems.append(f"{path}: output {name} carries a key ({text[:80]})")
            for p in secure:
                if re.search(rf"(?<![\w.]){re.escape(p)}(?![\w])", text):
                    problems.append(f"{path}: output {name} exposes the secure parameter {p}")
            if any(d.get("type") == "secure" for d in out.get("decorators", []) if isinstance(d, dict)):
                problems.append(f"{path}: output {name} is a secure output")
        # Nothing anywhere reads keys: no listKeys(), no AccountKey connection strings.
        if uses_list_function(doc):
            problems.append(f"{path}: calls a list*() function (keys); use Microsoft Entra ID instead")
        for n in walk(doc):
            if isinstance(n, str) and re.search(r"AccountKey=|SharedAccessKey=", n):
                problems.append(f"{path}: contains a key-based connection string")
    return problems


def setting_objects(node: Any, variables: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The object literals a settings expression is built from: the object itself, every argument of ``union()``,
    both branches of a ternary (a conditional setting counts as set), and variables holding any of those."""
    variables = variables or {}
    if isinstance(node, str) and node in variables:
        return setting_objects(_value(variables[node]), {k: v for k, v in variables.items() if k != node})
    if not isinstance(node, dict):
        return []
    fn = node.get("function")
    if isinstance(fn, dict):
        if fn.get("type") != "union":
            return []
        params = fn.get("parameters") or {}
        return [o for arg in (params.values() if isinstance(params, dict) else params)
                for o in setting_objects(arg, variables)]
    op = node.get("operator")
    if isinstance(op, dict):
        if op.get("type") != "conditional":
            return []
        ops = op.get("operands", {})
        return setting_objects(ops.get("true_value"), variables) + setting_objects(ops.get("false_value"), variables)
    return [node]


def app_setting_pairs(docs: dict[str, dict], main: str = "main.bicep",
                      app: str = "app/functionapp.bicep") -> list[tuple[str, Any]]:
    """(name, value) of every app setting the Function App gets: the host's (functionapp.bicep) and the MLOPS_*
    ones main.bicep passes in ``settings``, plus any literal object merged into the appsettings resource. A setting
    set under a condition (a ternary inside ``union()``) is included, and one set in several places appears once
    per place, so that every value it can take is checked."""
    pairs: list[tuple[str, Any]] = []
    app_doc = docs.get(app, {})
    for _name, res in resources(app_doc, "Microsoft.Web/sites/config"):
        if body(res).get("name") != "appsettings":
            continue
        for part in setting_objects(body(res).get("properties"), app_doc.get("variables") or {}):
            pairs += [(k, v) for k, v in part.items() if k != "settings"]
    for _name, res in resources(app_doc, "Microsoft.Web/sites"):
        for item in body(res).get("properties", {}).get("siteConfig", {}).get("appSettings", []) or []:
            if isinstance(item, dict) and "name" in item:
                pairs.append((item["name"], item.get("value")))
    main_doc = docs.get(main, {})
    for _name, mod in (main_doc.get("modules") or {}).items():
        if mod.get("detail", {}).get("path") == app:
            for part in setting_objects(body(mod).get("params", {}).get("settings"), main_doc.get("variables") or {}):
                pairs += list(part.items())
    return pairs


def app_settings(docs: dict[str, dict], main: str = "main.bicep", app: str = "app/functionapp.bicep") -> dict[str, Any]:
    """Name → value of every app setting (see app_setting_pairs; for a setting set in several places, the last)."""
    return dict(app_setting_pairs(docs, main, app))


def check_app_settings(docs: dict[str, dict], setting_names: tuple[str, ...] | frozenset[str]) -> list[str]:
    problems = []
    pairs = app_setting_pairs(docs)
    settings = dict(pairs)
    if not settings:
        return ["no app settings found on the Function App"]
    known = set(setting_names) | HOST_SETTINGS
    for name, value in pairs:
        if name in FORBIDDEN_SETTINGS:
            problems.append(f"app setting {name} must not be set (Flex Consumption / key-based)")
        elif name not in known:
            problems.append(f"app setting {name} is neither in shared.config.SETTING_NAMES nor a host setting")
        text = render(value)
        if uses_list_function(value) or _SECRET_VALUE.search(text) or re.search(r"AccountKey|SharedAccessKey", text):
            problems.append(f"app setting {name} carries a key")
    for name in sorted(REQUIRED_IN_AZURE - settings.keys()):
        problems.append(f"required app setting {name} is not set")
    if "MLOPS_BACKEND" in settings and settings["MLOPS_BACKEND"] != "azure":
        problems.append("MLOPS_BACKEND must be 'azure'")
    # Teams settings carry webhook URLs (secrets): any MLOPS_TEAMS_* setting with a value is a Key Vault reference.
    # This fails closed: a new MLOPS_TEAMS_* setting, even a plain flag, needs a deliberate exemption here.
    for name, value in sorted((n, render(v).strip()) for n, v in pairs if n.startswith("MLOPS_TEAMS_")):
        if value and not value.startswith(KEY_VAULT_REFERENCE):
            problems.append(f"{name} must be a Key Vault reference ({KEY_VAULT_REFERENCE}...), not a plain value")
    for name in settings:
        if name.endswith("__credential") and settings[name] != "managedidentity":
            problems.append(f"{name} must be managedidentity")
    return problems


def check_function_app(docs: dict[str, dict], app: str = "app/functionapp.bicep") -> list[str]:
    problems = []
    sites = list(resources(docs.get(app, {}), "Microsoft.Web/sites"))
    if len(sites) != 1:
        return [f"{app}: expected one Microsoft.Web/sites, found {len(sites)}"]
    name, site = sites[0]
    cfg = body(site)
    props = cfg.get("properties", {})
    ident = cfg.get("identity", {})
    if ident.get("type") != "UserAssigned":
        problems.append("the Function App must run as a user-assigned identity")
    if not props.get("keyVaultReferenceIdentity"):
        problems.append("keyVaultReferenceIdentity must be the user-assigned identity")
    if not is_true(props.get("httpsOnly")):
        problems.append("httpsOnly must be true")
    fac = props.get("functionAppConfig", {})
    runtime = fac.get("runtime", {})
    if runtime.get("name") != "python" or str(runtime.get("version")) != "3.11":
        problems.append("functionAppConfig.runtime must be python 3.11")
    auth = fac.get("deployment", {}).get("storage", {}).get("authentication", {})
    if auth.get("type") != "UserAssignedIdentity":
        problems.append("the deployment package container must be read with the user-assigned identity")
    plans = [body(r) for _, r in resources(docs.get(app, {}), "Microsoft.Web/serverfarms")]
    if not plans or plans[0].get("sku", {}).get("tier") != "FlexConsumption":
        problems.append("the plan must be Flex Consumption (FC1)")
    return problems


def check_event_grid(docs: dict[str, dict], config: dict[str, Any], functions: set[str],
                     module: str = "app/eventgrid-subscriptions.bicep", postdeploy: str = "app/postdeploy.bicep") -> list[str]:
    """subscriptions.json covers every Event Grid function, and the Bicep deploys exactly that list."""
    problems = []
    subs = config.get("subscriptions", [])
    by_function: dict[str, list[dict]] = {}
    for s in subs:
        by_function.setdefault(s.get("function"), []).append(s)
        src = s.get("source")
        if src not in ("ml", "storage", "custom"):
            problems.append(f"subscription {s.get('name')}: unknown source {src}")
        types = s.get("includedEventTypes") or []
        if not types:
            problems.append(f"subscription {s.get('name')}: no includedEventTypes")
        prefix = SOURCE_PREFIX.get(src)
        for t in types:
            if prefix and not t.startswith(prefix):
                problems.append(f"subscription {s.get('name')}: {t} is not an event of source {src}")
            if src == "custom" and t.startswith("Microsoft."):
                problems.append(f"subscription {s.get('name')}: {t} is a system event on the custom topic")
        if s.get("function") not in functions:
            problems.append(f"subscription {s.get('name')}: {s.get('function')} is not an Event Grid-triggered function")
        if not re.fullmatch(r"[A-Za-z0-9-]{3,64}", s.get("name", "")):
            problems.append(f"subscription name {s.get('name')!r} is not a valid Event Grid subscription name")
        dl = s.get("deadLetterContainer")
        if dl and dl != config.get("defaults", {}).get("deadLetterContainer"):
            problems.append(f"subscription {s.get('name')}: dead-letter container {dl} is not created by storage.bicep")
    for fn in sorted(functions - by_function.keys()):
        problems.append(f"Event Grid function {fn} has no subscription in subscriptions.json")
    if len({s.get('name') for s in subs}) != len(subs):
        problems.append("subscription names are not unique")

    doc = docs.get(module)
    if doc is None:
        return problems + [f"{module} is missing"]
    variables = doc.get("variables") or {}
    loaded = {k for k, v in variables.items() if render(_value(v)).startswith("load_json_content(../subscriptions.json")}
    if not loaded:
        problems.append(f"{module}: must read subscriptions.json with loadJsonContent")
    list_vars = {k for k, v in variables.items() if any(render(_value(v)) == f"{c}.subscriptions" for c in loaded)}
    list_vars |= {f"{c}.subscriptions" for c in loaded}
    # The per-subscription properties, computed in a var loop over the list, or inline in the resource loop.
    prop_loops = {k: _value(v) for k, v in variables.items()
                  if isinstance(_value(v), dict) and "loop_type" in _value(v)
                  and _value(v)["loop_type"]["detail"].get("array_name") in list_vars}
    sub_resources = [(n, r) for n, r in resources(doc) if r.get("type", "").endswith("/eventSubscriptions")]
    if {r["type"] for _, r in sub_resources} != {"Microsoft.EventGrid/systemTopics/eventSubscriptions",
                                                 "Microsoft.EventGrid/topics/eventSubscriptions"}:
        problems.append(f"{module}: needs subscription loops on both system topics and the custom topic")
    for name, res in sub_resources:
        loop = res.get("config", {})
        if "loop_type" not in loop or loop["loop_type"]["detail"].get("array_name") not in list_vars:
            problems.append(f"{module}:{name}: must loop over subscriptions.json's subscriptions")
            continue
        cfg = body(res)
        if render(cfg.get("name")) != f"{loop['loop_type']['detail']['item_name']}.name":
            problems.append(f"{module}:{name}: subscription name must come from subscriptions.json")
        props = cfg.get("properties")
        rendered = render(props)
        if isinstance(props, dict) and "operator" in props:
            ref = render(props).split("[")[0]
            props = prop_loops.get(ref, {}).get("config") if ref in prop_loops else None
            item = prop_loops.get(ref, {}).get("loop_type", {}).get("detail", {}).get("item_name", "s")
        else:
            item = loop["loop_type"]["detail"]["item_name"]
        if not isinstance(props, dict):
            problems.append(f"{module}:{name}: cannot find the subscription properties ({rendered[:60]})")
            continue
        flt = props.get("filter", {})
        for field in ("includedEventTypes", "subjectBeginsWith", "subjectEndsWith", "advancedFilters"):
            if render(flt.get(field)) != f"{item}.{field}":
                problems.append(f"{module}:{name}: filter.{field} must be {item}.{field} from subscriptions.json")
        dest = props.get("destination", {})
        target = render(dest.get("properties", {}).get("resourceId", ""))
        if dest.get("endpointType") == "AzureFunction":
            if "/functions/${" + item + ".function}" not in target:
                problems.append(f"{module}:{name}: destination must be the subscription's function")
        elif dest.get("endpointType") == "WebHook":
            url = render(dest.get("properties", {}).get("endpointUrl", ""))
            if "functionName=${" + item + ".function}" not in url:
                problems.append(f"{module}:{name}: webhook must name the subscription's function")
        else:
            problems.append(f"{module}:{name}: destination must be AzureFunction or WebHook")
        if "retryPolicy" not in props:
            problems.append(f"{module}:{name}: retryPolicy missing")
        # Dead-lettering: with the topic's user-assigned identity, or (a reused topic, which may not carry it) without
        # one; a ternary between the two counts when each branch is one of them.
        with_identity = [o for o in setting_objects(props.get("deadLetterWithResourceIdentity")) if o]
        without = [o for o in setting_objects(props.get("deadLetterDestination")) if o]
        if not with_identity and not without:
            problems.append(f"{module}:{name}: dead-letter destination missing")
        if any(o.get("identity", {}).get("type") != "UserAssigned" for o in with_identity):
            problems.append(f"{module}:{name}: dead-lettering must use the user-assigned identity")
    # postdeploy.bicep must deploy the module for every source used in subscriptions.json.
    pdoc = docs.get(postdeploy, {})
    deployed_sources = {body(m).get("params", {}).get("source") for m in (pdoc.get("modules") or {}).values()
                        if m.get("detail", {}).get("path") == Path(module).name}
    for src in sorted({s.get("source") for s in subs} - deployed_sources):
        problems.append(f"{postdeploy}: no eventgrid-subscriptions module for source {src}")
    return problems


def check_landing_filter(docs: dict[str, dict], config: dict[str, Any], main: str = "main.bicep") -> list[str]:
    """The storage subscription's subject filter names the landing container the Bicep creates."""
    landing = render(_value((docs.get(main, {}).get("variables") or {}).get("landingContainer", {})))
    problems = []
    for s in config.get("subscriptions", []):
        if s.get("source") == "storage" and f"/containers/{landing}/" not in s.get("subjectBeginsWith", ""):
            problems.append(f"subscription {s['name']}: subjectBeginsWith does not name the landing container {landing!r}")
    return problems


# Settings whose values are Teams webhook URLs (or hold them): each lives in Key Vault, never in app settings.
TEAMS_SECRET_SETTINGS = ("MLOPS_TEAMS_WEBHOOK_URL", "MLOPS_TEAMS_ROUTES")
KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"


def _secure_params(doc: dict[str, Any]) -> set[str]:
    return {k for k, p in (doc.get("parameters") or {}).items()
            if any(d.get("type") == "secure" for d in p.get("decorators", []) if isinstance(d, dict))}


def _mentions(text: str, name: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(name)}(?![\w])", text) is not None


def _role_guid(doc: dict[str, Any], props: dict[str, Any]) -> str:
    variables = {k: render(_value(v)) for k, v in (doc.get("variables") or {}).items()}
    role = render(props.get("roleDefinitionId"))
    found = re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", role)
    if found:
        return found[0]
    args = [a for a in walk(props.get("roleDefinitionId")) if isinstance(a, str)]
    return next((variables[a] for a in args if a in variables), "")


def check_teams_secrets(docs: dict[str, dict], main: str = "main.bicep", vault: str = "app/keyvault.bicep") -> list[str]:
    """Each Teams secret setting follows the whole chain: a @secure parameter of main.bicep → a Key Vault secret
    (keyvault.bicep) → the app setting, a Key Vault reference to that secret's URI → a Key Vault Secrets User
    assignment for the app identity scoped to that one secret."""
    problems: list[str] = []
    main_doc, vault_doc = docs.get(main, {}), docs.get(vault, {})
    modules = main_doc.get("modules") or {}
    vault_modules = {n for n, m in modules.items() if m.get("detail", {}).get("path") == vault}
    if not vault_modules:
        return [f"{main}: no module deploys {vault}"]
    main_secure, vault_secure = _secure_params(main_doc), _secure_params(vault_doc)
    secrets = dict(resources(vault_doc, "Microsoft.KeyVault/vaults/secrets"))
    outputs = {k: render(_value(v)) for k, v in (vault_doc.get("outputs") or {}).items()}
    settings = app_settings(docs)
    used: dict[str, str] = {}
    for setting in TEAMS_SECRET_SETTINGS:
        if setting not in settings:
            problems.append(f"{setting} is not set (as a Key Vault reference)")
            continue
        text = render(settings[setting])
        ref = re.fullmatch(re.escape(KEY_VAULT_REFERENCE) + r"\$\{(\w+)\.outputs\.(\w+)\}\)", text)
        if not ref or ref.group(1) not in vault_modules:
            problems.append(f"{setting} must be {KEY_VAULT_REFERENCE}${{<{vault} module>.outputs.<secret uri>}}), not {text[:80]}")
            continue
        out = outputs.get(ref.group(2), "")
        # The output names its secret by symbol (teamsSecret.properties.secretUri) or by the secret's name.
        secret = next((s for s, r in secrets.items() if out == f"{s}.properties.secretUri"
                       or f"secrets/${{{render(body(r).get('name'))}}}" in out), None)
        if secret is None:
            problems.append(f"{setting}: {vault} output {ref.group(2)} is not the URI of a secret it creates")
            continue
        if secret in used.values():
            problems.append(f"{setting} shares its secret {secret} with another setting")
        used[setting] = secret
        value = render(body(secrets[secret]).get("properties", {}).get("value"))
        params = [p for p in vault_secure if _mentions(value, p)]
        if not params:
            problems.append(f"{vault}:{secret}: the secret value must come from a @secure parameter, not {value[:60]}")
        for p in params:
            passed = [render(body(modules[m]).get("params", {}).get(p)) for m in vault_modules]
            if not all(any(_mentions(v, s) for s in main_secure) for v in passed):
                problems.append(f"{main}: {vault} parameter {p} must come from a @secure parameter of {main}")
        # The app identity may read exactly this secret: a module gets the secret's name from the vault module's
        # output and assigns Key Vault Secrets User on an existing secret of that name.
        name_outputs = {k for k, v in outputs.items()
                        if v in (f"{secret}.name", render(body(secrets[secret]).get("name")))}
        granted = False
        for mod in modules.values():
            path = mod.get("detail", {}).get("path", "")
            mdoc = docs.get(path, {})
            for pname, pval in (body(mod).get("params") or {}).items():
                if not any(render(pval) == f"{v}.outputs.{o}" for v in vault_modules for o in name_outputs):
                    continue
                scopes = {s for s, r in resources(mdoc, "Microsoft.KeyVault/vaults/secrets", include_existing=True)
                          if r.get("existing") and render(body(r).get("name")) == pname}
                for _n, ra in resources(mdoc, "Microsoft.Authorization/roleAssignments"):
                    props = body(ra).get("properties", {})
                    if render(body(ra).get("scope")) in scopes and _role_guid(mdoc, props) == KEY_VAULT_SECRETS_USER:
                        granted = True
        if not granted:
            problems.append(f"{setting}: no Key Vault Secrets User assignment scoped to the secret {secret}")
    return problems


def _workspace_module(docs: dict[str, dict], main: str, workspace: str) -> dict[str, Any] | None:
    return next((body(m).get("params", {}) for m in (docs.get(main, {}).get("modules") or {}).values()
                 if m.get("detail", {}).get("path") == workspace), None)


def check_training_cluster(docs: dict[str, dict], main: str = "main.bicep", workspace: str = "app/workspace.bicep") -> list[str]:
    """The new workspace's training cluster: AmlCompute named by MLOPS_COMPUTE, scale-to-zero with an idle
    scale-down, maximum nodes and low priority as parameters, local auth off, and a managed identity holding
    Storage Blob Data Reader on the datastore account (shared keys are off there: identity is the only way in)."""
    problems: list[str] = []
    doc = docs.get(workspace, {})
    params = doc.get("parameters") or {}
    clusters = [(n, r) for n, r in resources(doc, "Microsoft.MachineLearningServices/workspaces/computes")
                if body(r).get("properties", {}).get("computeType") == "AmlCompute"]
    if len(clusters) != 1:
        return [f"{workspace}: expected one AmlCompute cluster, found {len(clusters)}"]
    name, res = clusters[0]
    cfg = body(res)
    where = f"{workspace}:{name}"
    props = cfg.get("properties", {})
    inner = props.get("properties", {})
    scale = inner.get("scaleSettings", {})
    if str(scale.get("minNodeCount")) != "0":
        problems.append(f"{where}: minNodeCount must be 0 (no idle nodes)")
    if not scale.get("nodeIdleTimeBeforeScaleDown"):
        problems.append(f"{where}: nodeIdleTimeBeforeScaleDown must be set (idle scale-down)")
    if render(scale.get("maxNodeCount")) not in params:
        problems.append(f"{where}: maxNodeCount must be a parameter, not {render(scale.get('maxNodeCount'))}")
    priority = render(inner.get("vmPriority"))
    if not (priority in params or ("LowPriority" in priority and any(_mentions(priority, p) for p in params))):
        problems.append(f"{where}: vmPriority (low priority) must follow a parameter, not {priority}")
    if not is_true(props.get("disableLocalAuth")):
        problems.append(f"{where}: disableLocalAuth must be true")
    # Named by MLOPS_COMPUTE: main passes the same value as the cluster name and as the app setting.
    compute_param = render(cfg.get("name"))
    passed = _workspace_module(docs, main, workspace)
    setting = app_settings(docs).get("MLOPS_COMPUTE")
    if compute_param not in params or passed is None or setting is None \
            or render(passed.get(compute_param)) != render(setting):
        problems.append(f"{where}: the cluster's name and the app setting MLOPS_COMPUTE must be the same value in {main}")
    # Its identity reads the datastore account.
    principals = {p for p, c in compute_identities(doc).items() if c == name}
    if not principals:
        problems.append(f"{where}: the cluster needs a managed identity (identity-based datastores use it)")
    accounts = {n for n, r in resources(doc, "Microsoft.Storage/storageAccounts", include_existing=True)
                if render(body(r).get("name")) == "datastoreAccountName"}
    readers = [n for n, r in resources(doc, "Microsoft.Authorization/roleAssignments")
               if render(body(r).get("properties", {}).get("principalId")) in principals
               and render(body(r).get("scope")) in accounts
               and _role_guid(doc, body(r).get("properties", {})) in COMPUTE_ROLES]
    if principals and not readers:
        problems.append(f"{where}: the cluster identity needs blob data access (Storage Blob Data Reader or "
                        "Contributor) on the datastore account")
    return problems


def check_landing_datastore(docs: dict[str, dict], main: str = "main.bicep", workspace: str = "app/workspace.bicep") -> list[str]:
    """The datastore MLOPS_DATASTORE names exists in the new workspace: AzureBlob over the landing container of the
    datastore account, identity-based (credentials None: no key or SAS stored)."""
    problems: list[str] = []
    doc = docs.get(workspace, {})
    stores = list(resources(doc, "Microsoft.MachineLearningServices/workspaces/datastores"))
    if len(stores) != 1:
        return [f"{workspace}: expected one datastore, found {len(stores)}"]
    name, res = stores[0]
    where = f"{workspace}:{name}"
    cfg = body(res)
    props = cfg.get("properties", {})
    workspaces = {n for n, _ in resources(doc, "Microsoft.MachineLearningServices/workspaces")}
    if render(cfg.get("parent")) not in workspaces:
        problems.append(f"{where}: must belong to the workspace created here")
    if props.get("datastoreType") != "AzureBlob":
        problems.append(f"{where}: datastoreType must be AzureBlob")
    if props.get("credentials", {}).get("credentialsType") != "None":
        problems.append(f"{where}: credentials must be None (identity-based access, no key or SAS)")
    accounts = {n for n, r in resources(doc, "Microsoft.Storage/storageAccounts")
                if render(body(r).get("name")) == "datastoreAccountName"}
    if render(props.get("accountName")) not in {f"{a}.name" for a in accounts}:
        problems.append(f"{where}: accountName must be the datastore account created here")
    containers = {n for n, r in resources(doc, "Microsoft.Storage/storageAccounts/blobServices/containers")
                  if render(body(r).get("name")) == "landingContainer"}
    if render(props.get("containerName")) not in {f"{c}.name" for c in containers}:
        problems.append(f"{where}: containerName must be the landing container created here")
    # The same names the app reads: MLOPS_DATASTORE and MLOPS_LANDING_CONTAINER.
    passed = _workspace_module(docs, main, workspace) or {}
    settings = app_settings(docs)
    for param, setting in ((render(cfg.get("name")), "MLOPS_DATASTORE"), ("landingContainer", "MLOPS_LANDING_CONTAINER")):
        if param not in passed or setting not in settings or render(passed[param]) != render(settings[setting]):
            problems.append(f"{where}: {main} must pass {setting}'s value as the module's {param}")
    return problems

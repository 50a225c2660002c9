"""The app's custom Azure ML role (infra/app-role.json, defined by main.bicep) allows every operation the Azure ML
adapter makes, and nothing it does not.

The operations are not listed by hand: the adapter's own tests (the Workspace contract and the request-by-request
tests) run in a child pytest with tests/infra/arm_recorder.py, which writes down every request the fake Azure ML
service answers. Each request maps to the RBAC action Azure checks for it (ARM: the resource type path plus read,
write, delete or <name>/action; the MLflow and RunHistory data plane: Azure ML's documented experiments/runs actions).
A new adapter call therefore fails this test until the role allows it, and an action the adapter stops using fails it
until the role drops it.
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.infra import bicep_checks as c

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "infra" / "app-role.json"
ADAPTER_TESTS = ("tests/contract/test_workspace_azure.py", "tests/integration/test_azureml_requests.py")
PROVIDER = "Microsoft.MachineLearningServices"
_ARM = re.compile(r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.MachineLearningServices/(.+)$",
                  re.IGNORECASE)
_WORKSPACE_PREFIX = re.compile(r"^/(mlflow|history)/v1\.0/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
                               r"Microsoft\.MachineLearningServices/workspaces/[^/]+(/.*)$", re.IGNORECASE)
# Data-plane calls (on <region>.api.azureml.ms) and the Azure ML action that authorizes each, from "Manage access to
# Azure Machine Learning workspaces", MLflow operations: reading a run, its metrics' history -> experiments/runs/read.
_DATA_PLANE = {
    ("mlflow", "GET", "/api/2.0/mlflow/runs/get"): "workspaces/experiments/runs/read",
    ("mlflow", "GET", "/api/2.0/mlflow/metrics/get-history"): "workspaces/experiments/runs/read",
    ("history", "GET", "/runs/*"): "workspaces/experiments/runs/read",
}
# Operations the adapter is gaining while this test is written (the rollout controller, being added to
# shared/adapters/azureml.py): retiring a deployment. Listed so the role carries them from the first deployment; once
# the adapter's tests make them, they are recorded like every other request.
PLANNED = [
    ("DELETE", "management.azure.com", "/subscriptions/s/resourceGroups/g/providers/Microsoft.MachineLearningServices"
                                       "/workspaces/w/onlineEndpoints/e/deployments/d"),
]
# Actions the adapter never sends as a request but Azure checks on its behalf (see app-role.json's notes).
SERVICE_SIDE = {"workspaces/environments/build/action", "workspaces/experiments/runs/submit/action"}


class UnmappedRequest(Exception):
    pass


def action_for(method: str, host: str, path: str) -> str | None:
    """The RBAC action Azure checks for one request; None for requests RBAC does not authorize (the anonymous
    discovery document, blob uploads through the SAS the service handed out)."""
    method = method.upper()
    if host in ("127.0.0.1", "localhost"):
        return None  # the loopback blob server of the fake: a SAS-authorized code upload, not an RBAC operation
    if host == "management.azure.com":
        m = _ARM.match(path)
        if not m:
            raise UnmappedRequest(f"{method} {path}: not a {PROVIDER} resource")
        segs = [s for s in m.group(1).split("/") if s]
        if method == "POST" and len(segs) % 2 == 1:  # .../{type}/{name}/{verb}: an action on a resource
            return f"{PROVIDER}/" + "/".join(segs[0:-1:2]) + f"/{segs[-1]}/action"
        verb = {"GET": "read", "HEAD": "read", "PUT": "write", "PATCH": "write", "DELETE": "delete"}.get(method)
        if verb is None:
            raise UnmappedRequest(f"{method} {path}: no RBAC verb for {method}")
        return f"{PROVIDER}/" + "/".join(segs[0::2]) + f"/{verb}"
    if host.endswith(".api.azureml.ms"):
        if path == "/discovery":
            return None  # the workspace's service discovery document, served without authorization
        m = _WORKSPACE_PREFIX.match(path)
        if m:
            for (service, verb, pattern), action in _DATA_PLANE.items():
                if service == m.group(1).lower() and verb == method and fnmatch.fnmatchcase(m.group(2), pattern):
                    return f"{PROVIDER}/{action}"
    raise UnmappedRequest(f"{method} {host}{path}: no known RBAC action; add it to tests/infra/test_custom_role.py")


def allows(actions: list[str], action: str) -> bool:
    """RBAC semantics: case-insensitive, '*' matches any run of characters (slashes included)."""
    return any(fnmatch.fnmatch(action.lower(), a.lower()) for a in actions)


@pytest.fixture(scope="module")
def role() -> dict:
    return json.loads(ROLE.read_text())


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> list[tuple[str, str, str]]:
    out = tmp_path_factory.mktemp("arm") / "requests.jsonl"
    env = {**os.environ, "MLOPS_ARM_RECORD": str(out)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           "-p", "tests.infra.arm_recorder", *ADAPTER_TESTS],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"the adapter's tests failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}"
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) > 100, "the recorder saw almost nothing: is tests.infra.arm_recorder still hooked in?"
    # Injected faults (429, 500, ...) still name an operation the adapter attempted, so every request counts.
    return sorted({(r["method"], r["host"], r["path"]) for r in rows})


def test_every_operation_the_adapter_makes_is_allowed_by_the_role(role, recorded):
    unmapped, denied = [], []
    for method, host, path in recorded + PLANNED:
        try:
            action = action_for(method, host, path)
        except UnmappedRequest as error:
            unmapped.append(str(error))
            continue
        if action is not None and not allows(role["actions"], action):
            denied.append(f"{action}  ({method} {host}{path})")
    assert unmapped == []
    assert denied == []


def test_the_role_holds_no_action_the_adapter_does_not_use(role, recorded):
    used = {action_for(*r) for r in recorded + PLANNED} - {None}
    service_side = {f"{PROVIDER}/{a}" for a in SERVICE_SIDE}
    unused = [a for a in role["actions"] if a not in service_side and not any(allows([a], u) for u in used)]
    assert unused == []
    # Each action Azure checks without a request of ours is explained in the file.
    assert sorted(a for a in role["actions"] if a in service_side) == sorted(service_side)
    assert service_side <= set(role["notes"])


def test_the_role_cannot_manage_the_workspace_its_computes_or_read_secrets(role):
    assert not any("*" in a for a in role["actions"]), "no wildcards: the role lists exactly what the app does"
    for forbidden in (f"{PROVIDER}/workspaces/write", f"{PROVIDER}/workspaces/delete",
                      f"{PROVIDER}/workspaces/computes/write", f"{PROVIDER}/workspaces/computes/delete",
                      f"{PROVIDER}/workspaces/listKeys/action", f"{PROVIDER}/workspaces/datastores/listsecrets/action",
                      f"{PROVIDER}/workspaces/onlineEndpoints/listKeys/action", f"{PROVIDER}/workspaces/models/delete",
                      f"{PROVIDER}/workspaces/jobs/delete", "Microsoft.Authorization/roleAssignments/write"):
        assert not allows(role["actions"], forbidden), forbidden


def test_requests_map_to_the_actions_azure_checks():
    arm = "/subscriptions/s/resourceGroups/g/providers/Microsoft.MachineLearningServices"
    assert action_for("GET", "management.azure.com", f"{arm}/workspaces/w") == f"{PROVIDER}/workspaces/read"
    assert action_for("PUT", "management.azure.com", f"{arm}/workspaces/w/jobs/j") == f"{PROVIDER}/workspaces/jobs/write"
    assert action_for("GET", "management.azure.com", f"{arm}/workspaces/w/codes/c/versions") == \
        f"{PROVIDER}/workspaces/codes/versions/read"
    assert action_for("POST", "management.azure.com", f"{arm}/workspaces/w/codes/c/versions/1/startPendingUpload") == \
        f"{PROVIDER}/workspaces/codes/versions/startPendingUpload/action"
    assert action_for("DELETE", "management.azure.com", f"{arm}/workspaces/w/onlineEndpoints/e/deployments/d") == \
        f"{PROVIDER}/workspaces/onlineEndpoints/deployments/delete"
    assert action_for("GET", "management.azure.com", f"{arm}/locations/westeurope/mfeOperationsStatus/op") == \
        f"{PROVIDER}/locations/mfeOperationsStatus/read"
    ws = "/subscriptions/s/resourceGroups/g/providers/Microsoft.MachineLearningServices/workspaces/w"
    assert action_for("GET", "westeurope.api.azureml.ms", f"/mlflow/v1.0{ws}/api/2.0/mlflow/runs/get") == \
        f"{PROVIDER}/workspaces/experiments/runs/read"
    assert action_for("GET", "westeurope.api.azureml.ms", "/discovery") is None
    with pytest.raises(UnmappedRequest):
        action_for("POST", "westeurope.api.azureml.ms", f"/mlflow/v1.0{ws}/api/2.0/mlflow/runs/delete")
    # And the check itself: a role without the deployment delete would be reported.
    assert not allows([f"{PROVIDER}/workspaces/onlineEndpoints/deployments/write"],
                      f"{PROVIDER}/workspaces/onlineEndpoints/deployments/delete")
    assert allows([f"{PROVIDER}/workspaces/onlineEndpoints/*"], f"{PROVIDER}/workspaces/onlineEndpoints/deployments/delete")


# --------------------------------------------------------------------------------------- the role in the Bicep

def test_main_bicep_defines_the_role_from_the_json_and_assigns_it_on_the_workspace():
    docs = c.load_all()
    main = docs["main.bicep"]
    text = (c.INFRA / "main.bicep").read_text()
    assert re.search(r"loadJsonContent\('app-role\.json'\)", text), "main.bicep must load infra/app-role.json"
    (name, res), = c.resources(main, "Microsoft.Authorization/roleDefinitions")
    props = c.body(res)["properties"]
    assert props["type"] == "CustomRole"
    assert c.render(props["permissions"][0]["actions"]) == "appRole.actions"
    assert c.render(props["assignableScopes"]) == "[workspaceRg.id]"
    # The workspace role assignment gets the custom role (or, with useCustomRole=false, AzureML Data Scientist).
    passed = c.render(c.body(main["modules"]["workspaceRoles"])["params"]["mlRoleDefinitionId"])
    assert passed.startswith("conditional(useCustomRole") and f"{name}.id" in passed
    assert passed.endswith("subscription_resource_id(Microsoft.Authorization/roleDefinitions, azureMLDataScientist, "
                           "null, null))")
    assert c.render(main["variables"]["azureMLDataScientist"]["value"]) == "f6c7c914-8db3-469d-8ca1-694a8f32e121"

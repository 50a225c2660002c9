"""The azd hooks (infra/hooks/*.sh), run for real under sh with fake `az`, `azd` and `sleep` commands on PATH that
write down every call and answer like the real ones (no Azure, no network)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOOKS = ROOT / "infra" / "hooks"

pytestmark = pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")

# The fake az: each call is appended to calls.jsonl; answers depend on the call and on state files, e.g. the function
# list shows only WarmUp until a trigger sync was requested (what Flex Consumption does, azure-functions-host#10169).
FAKE_AZ = r'''
import json, os, sys
from pathlib import Path
state = Path(os.environ["FAKE_STATE"])
args = sys.argv[1:]
with open(state / "calls.jsonl", "a") as f:
    f.write(json.dumps(args) + "\n")
def has(*words):
    return all(w in args for w in words)
functions = json.loads((state / "functions.json").read_text()) if (state / "functions.json").exists() else []
if has("functionapp", "show"):
    print("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/sites/func")
elif has("rest") and any(a.endswith("/host/default/sync?api-version=2024-04-01") for a in args):
    (state / "synced").write_text("yes")
elif has("functionapp", "function", "keys", "list"):
    print("fake-function-key")
elif has("functionapp", "function", "list"):
    names = functions if (state / "synced").exists() else ["WarmUp"]
    print("\n".join(f"func/{n}" for n in names))
elif has("deployment", "group", "create"):
    params = args[args.index("--parameters") + 1].lstrip("@")
    (state / "postdeploy-parameters.json").write_text(Path(params).read_text())
    print("Succeeded")
elif has("ml", "workspace", "show"):
    print("/subscriptions/s/resourceGroups/rg-ml/providers/Microsoft.MachineLearningServices/workspaces/mlw")
elif has("storage", "account", "show"):
    print("/subscriptions/s/resourceGroups/rg-data/providers/Microsoft.Storage/storageAccounts/stdata")
elif has("eventgrid", "system-topic", "list"):
    topics = json.loads((state / "topics.json").read_text()) if (state / "topics.json").exists() else {}
    query = args[args.index("--query") + 1]
    source = query.split("source=='", 1)[1].split("'", 1)[0]
    print(topics.get(source, ""))
elif has("account", "set"):
    pass
else:
    sys.exit(f"fake az: unexpected call {args}")
'''
FAKE_AZD = r'''
import json, os, sys
from pathlib import Path
with open(Path(os.environ["FAKE_STATE"]) / "azd.jsonl", "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\n")
'''


@pytest.fixture
def fake(tmp_path):
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    for name, source in (("az", FAKE_AZ), ("azd", FAKE_AZD)):
        script = bin_dir / name
        script.write_text(f"#!{sys.executable}\n{source}")
        script.chmod(0o755)
    sleep = bin_dir / "sleep"  # no real waiting in tests
    sleep.write_text("#!/bin/sh\nexit 0\n")
    sleep.chmod(0o755)
    return bin_dir, state


def run(hook: Path, fake, env: dict[str, str]) -> subprocess.CompletedProcess:
    bin_dir, state = fake
    base = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_STATE": str(state), "HOME": str(state)}
    return subprocess.run(["sh", str(hook)], env={**base, **env}, capture_output=True, text=True, timeout=120)


def calls(state: Path, name: str = "calls.jsonl") -> list[list[str]]:
    path = state / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# --- postdeploy: the trigger sync -----------------------------------------------------------------------------------

POSTDEPLOY_ENV = {
    "AZURE_RESOURCE_GROUP": "rg", "AZURE_FUNCTION_APP_NAME": "func", "AZURE_FUNCTION_APP_HOSTNAME": "func.example",
    "AZURE_APP_IDENTITY_NAME": "id", "AZURE_APP_STORAGE_NAME": "st", "AZURE_EVENTGRID_TOPIC_NAME": "evgt",
    "AZURE_ML_SYSTEM_TOPIC_NAME": "evgst-ml", "AZURE_STORAGE_SYSTEM_TOPIC_NAME": "Defender-topic",
    "AZURE_ML_RESOURCE_GROUP": "rg-ml", "AZURE_STORAGE_SYSTEM_TOPIC_RESOURCE_GROUP": "rg-data",
    "AZURE_ML_SYSTEM_TOPIC_CREATED": "true", "AZURE_STORAGE_SYSTEM_TOPIC_CREATED": "false",
}
FUNCTIONS = ["on_blob_created", "on_run_event", "on_model_event", "on_dataset_drift", "on_custom_event",
             "monitor_alert", "status"]


def test_postdeploy_syncs_the_triggers_so_a_flex_app_lists_its_functions(fake):
    _, state = fake
    (state / "functions.json").write_text(json.dumps(FUNCTIONS))
    proc = run(HOOKS / "postdeploy.sh", fake, POSTDEPLOY_ENV)
    assert proc.returncode == 0, proc.stderr
    made = calls(state)
    sync = next(i for i, c in enumerate(made) if "rest" in c)
    assert made[sync][:4] == ["rest", "--method", "post", "--url"]
    assert made[sync][4] == ("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/sites/func"
                             "/host/default/sync?api-version=2024-04-01")
    first_list = next(i for i, c in enumerate(made) if c[:3] == ["functionapp", "function", "list"])
    assert sync < first_list  # asked for before the first wait
    # The postdeploy deployment gets the reuse facts of the system topics, and the storage topic's resource group.
    params = json.loads((state / "postdeploy-parameters.json").read_text())["parameters"]
    assert params["storageSystemTopicResourceGroup"]["value"] == "rg-data"
    assert params["mlSystemTopicCreated"]["value"] is True
    assert params["storageSystemTopicCreated"]["value"] is False


def test_without_a_sync_the_wait_times_out_which_is_what_the_hook_did_before(fake):
    # The hook as it was (no sync request) against the same Flex behaviour: it waits out every attempt and fails.
    _, state = fake
    (state / "functions.json").write_text(json.dumps(FUNCTIONS))
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    added = subprocess.run(["git", "log", "--format=%H", "--reverse", "-S", "host/default/sync", "--",
                            "infra/hooks/postdeploy.sh"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    old = subprocess.run(["git", "show", f"{added[0]}~1:infra/hooks/postdeploy.sh"], cwd=ROOT, capture_output=True,
                         text=True) if added else None
    if old is None or old.returncode != 0:
        pytest.skip("the pre-fix hook is not in this checkout's history")
    hook = state / "old-postdeploy.sh"
    hook.write_text(old.stdout.replace('here=$(cd "$(dirname "$0")" && pwd)', f'here="{HOOKS}"'))
    proc = run(hook, fake, POSTDEPLOY_ENV)
    assert proc.returncode == 1 and "functions not indexed" in proc.stderr
    assert not any("rest" in c for c in calls(state))


def test_postdeploy_asks_again_while_the_functions_are_missing(fake):
    # A sync sent while the host is still starting can be lost: with a function list that never fills, the hook
    # repeats the request (every third attempt) and finally gives up with the missing names.
    _, state = fake
    (state / "functions.json").write_text(json.dumps(["on_blob_created"]))
    proc = run(HOOKS / "postdeploy.sh", fake, POSTDEPLOY_ENV)
    assert proc.returncode == 1
    assert "functions not indexed after 30 attempts" in proc.stderr and "monitor_alert" in proc.stderr
    assert sum("rest" in c for c in calls(state)) == 1 + len(range(3, 30, 3))  # before the wait, then attempts 3..27


# --- preprovision: existing-workspace checks and system topic reuse ------------------------------------------------

def test_preprovision_does_nothing_for_a_new_workspace(fake):
    _, state = fake
    proc = run(HOOKS / "preprovision.sh", fake, {"AZURE_ENV_NAME": "dev"})
    assert proc.returncode == 0, proc.stderr
    assert calls(state) == [] and calls(state, "azd.jsonl") == []


def test_preprovision_refuses_an_existing_workspace_without_its_datastore_account(fake):
    _, state = fake
    proc = run(HOOKS / "preprovision.sh", fake, {"AZURE_ENV_NAME": "dev", "MLOPS_EXISTING_WORKSPACE": "mlw"})
    assert proc.returncode == 1
    assert "MLOPS_EXISTING_DATASTORE_ACCOUNT is not" in proc.stderr
    assert calls(state) == []


def test_preprovision_finds_existing_system_topics_and_records_them_for_reuse(fake):
    _, state = fake
    (state / "topics.json").write_text(json.dumps({
        "/subscriptions/s/resourceGroups/rg-data/providers/Microsoft.Storage/storageAccounts/stdata": "Defender-topic"}))
    env = {"AZURE_ENV_NAME": "dev", "MLOPS_EXISTING_WORKSPACE": "mlw", "MLOPS_EXISTING_WORKSPACE_RESOURCE_GROUP": "rg-ml",
           "MLOPS_EXISTING_DATASTORE_ACCOUNT": "stdata", "MLOPS_EXISTING_DATASTORE_ACCOUNT_RESOURCE_GROUP": "rg-data"}
    proc = run(HOOKS / "preprovision.sh", fake, env)
    assert proc.returncode == 0, proc.stderr
    # The storage account has a topic (reused); the workspace has none (one is created).
    assert calls(state, "azd.jsonl") == [["env", "set", "MLOPS_EXISTING_STORAGE_SYSTEM_TOPIC", "Defender-topic"]]
    lookups = [c for c in calls(state) if c[:3] == ["eventgrid", "system-topic", "list"]]
    assert [c[c.index("-g") + 1] for c in lookups] == ["rg-ml", "rg-data"]
    # A topic named by hand is kept as given, without a lookup.
    (state / "calls.jsonl").unlink()
    (state / "azd.jsonl").unlink()
    proc = run(HOOKS / "preprovision.sh", fake, {**env, "MLOPS_EXISTING_STORAGE_SYSTEM_TOPIC": "mine"})
    assert proc.returncode == 0
    assert calls(state, "azd.jsonl") == []
    assert len([c for c in calls(state) if c[:2] == ["eventgrid", "system-topic"]]) == 1


def test_azure_yaml_runs_both_hooks():
    import yaml

    hooks = yaml.safe_load((ROOT / "azure.yaml").read_text())["hooks"]
    assert hooks["preprovision"]["posix"]["run"] == "./infra/hooks/preprovision.sh"
    assert hooks["postdeploy"]["posix"]["run"] == "./infra/hooks/postdeploy.sh"
    assert not hooks["preprovision"]["posix"]["continueOnError"]


def test_postdeploy_with_an_alerts_app_registration_sends_no_function_key_anywhere(fake):
    _, state = fake
    (state / "functions.json").write_text(json.dumps(FUNCTIONS))
    env = {**POSTDEPLOY_ENV, "MLOPS_ALERT_APP_OBJECT_ID": "00000000-0000-0000-0000-0000000000aa",
           "MLOPS_ALERT_APP_IDENTIFIER_URI": "api://mlops-alerts"}
    proc = run(HOOKS / "postdeploy.sh", fake, env)
    assert proc.returncode == 0, proc.stderr
    assert not any(c[:4] == ["functionapp", "function", "keys", "list"] for c in calls(state)), "no key is read"
    params = json.loads((state / "postdeploy-parameters.json").read_text())["parameters"]
    assert "alertWebhookUrl" not in params
    assert params["alertSecureWebhookUrl"]["value"] == "https://func.example/api/alerts/secure"
    assert params["alertAppObjectId"]["value"] == "00000000-0000-0000-0000-0000000000aa"
    assert params["alertAppIdentifierUri"]["value"] == "api://mlops-alerts"


def test_postdeploy_without_one_keeps_the_keyed_webhook(fake):
    _, state = fake
    (state / "functions.json").write_text(json.dumps(FUNCTIONS))
    assert run(HOOKS / "postdeploy.sh", fake, POSTDEPLOY_ENV).returncode == 0
    params = json.loads((state / "postdeploy-parameters.json").read_text())["parameters"]
    assert params["alertWebhookUrl"]["value"] == "https://func.example/api/alerts?code=fake-function-key"
    assert "alertSecureWebhookUrl" not in params

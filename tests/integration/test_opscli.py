"""`mlops` against the local stack: the real app served over HTTP, a real SQLite ledger and the embedded workspace
training real models. Data lands, a person approves through the app, and every command reads what really happened.

One stack serves the module (training is the slow part); the tests run in file order and say what they rely on.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from shared.config import Settings
from shared.local import cli
from shared.local.churn import write_csv
from shared.opscli import app

pytestmark = pytest.mark.slow
ENDPOINT = "churn-endpoint"
ANA = "ana@contoso.example"
HOSTILE = "<script>document.title='pwned'</script><img src=x onerror=alert(1)> & \"quotes\""


@dataclasses.dataclass
class Served:
    stack: cli.Stack
    env: dict[str, str]
    home: Path
    target: list[str]
    outputs: dict[str, object] = dataclasses.field(default_factory=dict)

    def mlops(self, *args: str, env: dict[str, str] | None = None):
        return CliRunner().invoke(app, list(args), env={**self.env, **(env or {})})

    @property
    def url(self) -> str:
        return self.stack.host.url


def _env(home: Path) -> dict[str, str]:
    return {"MLOPS_HOME": str(home), "MLOPS_BACKEND": "local", "MLOPS_WORKSPACE": "", "MLOPS_MIN_PRIMARY": "0.6",
            "MLOPS_APPROVAL": f"auto;{ENDPOINT}=manual", "MLOPS_APPROVERS": ANA, "MLOPS_APPROVAL_AUTH": "easyauth",
            "COLUMNS": "200"}  # rich fits tables to the terminal: wide enough to read whole cells


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    home = tmp_path_factory.mktemp("opscli") / "home"
    env = _env(home)
    settings = Settings.from_env(env)
    stack = cli.local_stack(settings, port=0, easy_auth=True, max_attempts=1, backoff=0.01)
    s = Served(stack=stack, env=env, home=home, target=["--url", stack.host.url, "--key", stack.host.key])
    try:
        s.outputs["land"] = s.mlops("land", "churn", "1", "--rows", "1500", "--seed", "7", *s.target)
        s.outputs["watch_waiting"] = s.mlops("watch", "churn:1", "--timeout", "180", "--interval", "0.2")
        s.outputs["approve_anonymous"] = s.mlops("approve", ENDPOINT, "--reason", "no name", "--url", s.url)
        s.outputs["approve"] = s.mlops("approve", ENDPOINT, "--reason", "metrics look right", "--url", s.url,
                                       "--user", ANA)
        s.outputs["watch_deployed"] = s.mlops("watch", "churn:1", "--timeout", "120", "--interval", "0.2")
        yield s
    finally:
        stack.close()


def test_land_then_watch_follows_the_chain_until_it_waits_for_a_person(served):
    land, watch = served.outputs["land"], served.outputs["watch_waiting"]
    assert land.exit_code == 0, land.output
    assert "landed landing/churn/1/customers.csv" in land.output and "mlops watch churn:1" in land.output
    assert watch.exit_code == 0, watch.output
    assert "train-churn-v1-a1 Completed" in watch.output and "churn-model:1 gate approved" in watch.output
    assert "settled: awaiting approval" in watch.output


def test_approve_goes_through_the_app_as_a_named_person_and_the_chain_then_settles_deployed(served):
    anonymous = served.outputs["approve_anonymous"]
    assert anonymous.exit_code == 1 and "approve refused (401)" in anonymous.output
    assert served.outputs["approve"].exit_code == 0, served.outputs["approve"].output
    watch = served.outputs["watch_deployed"]
    assert watch.exit_code == 0 and "settled: deployed" in watch.output, watch.output
    assert served.stack.runtime.workspace.get_model("churn-model", "1").tags["approved_by"] == f"user:{ANA}"


def test_status_shows_the_state_record_and_exits_1_for_an_unknown_endpoint(served):
    r = served.mlops("--json", "status", ENDPOINT)
    assert r.exit_code == 0, r.output
    snap = json.loads(r.output)
    [ep] = snap["endpoints"]
    live = served.stack.runtime.states.load(ENDPOINT)
    assert ep["rollout"]["phase"] == live.phase.value == "promoted"
    assert ep["rollout"]["stable"] == live.stable == "churn-model-v1" and ep["traffic"] == {"churn-model-v1": 100}
    assert ep["pending"] == ""
    table = served.mlops("status")
    assert table.exit_code == 0 and "churn-endpoint" in table.output and "churn-model-v1 100%" in table.output
    missing = served.mlops("status", "nope-endpoint")
    assert missing.exit_code == 1 and "nope-endpoint is unknown" in missing.output


def test_lineage_follows_data_job_model_deployment_and_approver(served):
    r = served.mlops("--json", "lineage", "churn-model:1")
    assert r.exit_code == 0, r.output
    chain = {link["kind"]: link for link in json.loads(r.output)["chain"]}
    assert chain["data"]["name"] == "churn:1" and chain["data"]["detail"].endswith("/churn/1/customers.csv")
    assert chain["job"]["name"] == "train-churn-v1-a1" and chain["job"]["detail"] == "Completed"
    assert chain["deployment"]["name"] == "churn-endpoint/churn-model-v1"
    assert chain["approver"]["name"] == f"user:{ANA}"
    newest = served.mlops("lineage", "churn-model")  # no version: the newest
    assert newest.exit_code == 0 and "train-churn-v1-a1" in newest.output and f"user:{ANA}" in newest.output
    assert served.mlops("lineage", "churn-model:99").exit_code == 1
    assert served.mlops("lineage", ":3").exit_code == 2


def test_audit_filters_by_endpoint_since_and_limit(served):
    everything = json.loads(served.mlops("--json", "audit", "--limit", "100").output)
    about = json.loads(served.mlops("--json", "audit", "--endpoint", ENDPOINT, "--limit", "100").output)
    assert {r["decision"] for r in everything} >= {"register_data", "start_training", "await_approval",
                                                   "approve_deploy"}
    assert about and len(about) < len(everything)
    assert all(r["decision"] != "register_data" for r in about)  # data registration names the asset, not the endpoint
    [approved] = [r for r in about if r["decision"] == "approve_deploy"]
    assert approved["actor"] == f"user:{ANA}"
    assert len(json.loads(served.mlops("--json", "audit", "--limit", "2").output)) == 2
    assert json.loads(served.mlops("--json", "audit", "--since", "2099-01-01T00:00:00").output) == []
    assert len(json.loads(served.mlops("--json", "audit", "--since", "1h", "--limit", "100").output)) == len(everything)
    bad = served.mlops("audit", "--since", "yesterday")
    assert bad.exit_code == 2 and "--since takes" in bad.output


def test_events_lists_the_ledger_and_a_dead_letter_that_replay_then_delivers(served, tmp_path):
    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "events"
    wrong = ["--url", served.url, "--key", "wrong-key"]
    posted = served.mlops  # keep the env: post-event reads MLOPS_HOME for its dead-letter folder
    assert cli.main(["post-event", str(fixtures / "ml_model_registered.json"), "--max-attempts", "1",
                     "--dead-letter-dir", str(served.home / "deadletter"), *wrong], configure_logging=False) == 1
    before = json.loads(posted("--json", "events").output)
    assert len(before["dead_letters"]) == 1 and before["dead_letters"][0]["eventType"].endswith("ModelRegistered")
    assert before["stats"]["done"] >= 3 and any(r["event_type"] == "RunFinished" for r in before["rows"])
    replayed = served.mlops("replay", *served.target)
    assert replayed.exit_code == 0, replayed.output
    assert "replayed 1 of 1 dead letters" in replayed.output
    assert json.loads(served.mlops("--json", "events").output)["dead_letters"] == []
    table = served.mlops("events", "--outcome", "done", "--limit", "3")
    assert table.exit_code == 0 and "dead letters: 0" in table.output


def test_status_api_honours_limit_and_endpoint(served):
    headers = {"x-functions-key": served.stack.host.key}
    one = httpx.get(f"{served.url}/api/status", params={"limit": "1"}, headers=headers, timeout=30).json()
    assert len(one["recent_decisions"]) == 1
    many = httpx.get(f"{served.url}/api/status", params={"limit": "50"}, headers=headers, timeout=30).json()
    assert len(many["recent_decisions"]) > 3
    other = httpx.get(f"{served.url}/api/status", params={"endpoint": "other-endpoint"}, headers=headers,
                      timeout=30).json()
    assert other["endpoints"] == [] and other["recent_decisions"] == []
    mine = httpx.get(f"{served.url}/api/status", params={"endpoint": ENDPOINT, "limit": "50"}, headers=headers,
                     timeout=30).json()
    assert [e["name"] for e in mine["endpoints"]] == [ENDPOINT]
    assert all(d["decision"] != "register_data" for d in mine["recent_decisions"])
    bad = httpx.get(f"{served.url}/api/status", params={"limit": "zero"}, headers=headers, timeout=30)
    assert bad.status_code == 400 and bad.json()["field"] == "limit"


def test_reject_refuses_an_unlisted_person_and_records_a_listed_ones_reason(served, tmp_path):
    source = write_csv(tmp_path / "v2.csv", rows=1500, seed=11)
    assert served.mlops("land", "churn", "2", str(source), *served.target).exit_code == 0
    assert served.mlops("watch", "churn:2", "--timeout", "180", "--interval", "0.2").exit_code == 0
    bob = served.mlops("reject", ENDPOINT, "--reason", "no", "--url", served.url, "--user", "bob@contoso.example")
    assert bob.exit_code == 1 and "(403)" in bob.output and "not on the approvers list" in bob.output
    r = served.mlops("reject", ENDPOINT, "--reason", HOSTILE, "--url", served.url, "--user", ANA)
    assert r.exit_code == 0, r.output
    assert served.stack.runtime.states.load(ENDPOINT).candidate is None
    nothing = served.mlops("approve", ENDPOINT, "--reason", "late", "--url", served.url, "--user", ANA)
    assert nothing.exit_code == 1 and "nothing on churn-endpoint waits for approval" in nothing.output
    [rejected] = [r for r in json.loads(served.mlops("--json", "audit", "--decision", "reject_model").output)
                  if r["actor"] == f"user:{ANA}"]
    assert rejected["reason"].endswith(HOSTILE)


def test_the_endpoint_page_needs_a_signed_in_person(served):
    url = f"{served.url}/api/endpoints/{ENDPOINT}/page"
    anonymous = httpx.get(url, timeout=30)
    assert anonymous.status_code == 401 and "churn-model" not in anonymous.text
    forged = httpx.get(url, headers={"X-MS-CLIENT-PRINCIPAL-NAME": ANA}, timeout=30)
    assert forged.status_code == 401, "the platform drops principal headers a client wrote"
    page = httpx.get(url, headers={"X-Local-User": ANA}, timeout=30)
    assert page.status_code == 200 and "churn-model:1" in page.text
    assert "script-src" not in page.headers["content-security-policy"]
    assert "<script" not in page.text and "&lt;script&gt;" in page.text
    assert httpx.get(f"{served.url}/api/endpoints/nope/page", headers={"X-Local-User": ANA},
                     timeout=30).status_code == 404


def test_commands_without_a_local_stack_or_with_bad_settings_exit_2(tmp_path):
    runner = CliRunner()
    nothing = runner.invoke(app, ["status"], env={"MLOPS_HOME": str(tmp_path / "none"), "MLOPS_WORKSPACE": "",
                                                 "MLOPS_BACKEND": "local"})
    assert nothing.exit_code == 2 and "no local stack" in nothing.output
    bad = runner.invoke(app, ["status"], env={"MLOPS_BACKEND": "cloud"})
    assert bad.exit_code == 2 and "MLOPS_BACKEND must be one of local, azure" in bad.output
    usage = runner.invoke(app, ["watch", "churn"], env={"MLOPS_HOME": str(tmp_path), "MLOPS_BACKEND": "local"})
    assert usage.exit_code == 2 and "ASSET:VERSION" in usage.output


def test_check_config_names_every_problem_at_once(monkeypatch):
    for name in [k for k in __import__("os").environ if k.startswith("MLOPS_")]:
        monkeypatch.delenv(name)
    runner = CliRunner()
    r = runner.invoke(app, ["check-config"], env={"MLOPS_BACKEND": "azure", "MLOPS_MIN_PRIMARY": "high",
                                                  "MLOPS_FREEZE": "maybe", "MLOPS_PRIMARY_METRC": "auc",
                                                  "MLOPS_WORKSPACE": "mlw"})
    assert r.exit_code == 2
    listed = re.findall(r"^  - (.*)$", r.output, flags=re.M)
    assert any("MLOPS_MIN_PRIMARY" in p for p in listed) and any("MLOPS_FREEZE" in p for p in listed)
    assert any("warning: MLOPS_PRIMARY_METRC is not a setting" in p for p in listed)
    assert {p.split()[0] for p in listed if "the azure backend needs" in p} == {
        "MLOPS_SUBSCRIPTION_ID", "MLOPS_RESOURCE_GROUP", "MLOPS_LEDGER__tableServiceUri"}
    ok = runner.invoke(app, ["check-config"], env={"MLOPS_MIN_PRIMARY": "0.8"})
    assert ok.exit_code == 0 and "settings ok (backend local)" in ok.output

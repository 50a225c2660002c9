"""Deployment waits for CI: no deploying job can start before the test job succeeded on a push to main, and it signs
in with OpenID Connect only. Each check also runs on a mutated workflow to show it can fail."""
from __future__ import annotations

import copy

import pytest

pytest.importorskip("yaml", reason="PyYAML is not installed (checkov, in pyproject's dev extras, depends on it)")

from tests.infra import workflow_checks as w  # noqa: E402


@pytest.fixture(scope="module")
def workflows():
    return w.load_all()


def _deploy(workflows) -> dict:
    return workflows["deploy.yml"]


# ------------------------------------------------------------------------------------------------- the real thing

def test_ci_runs_the_tests_on_every_push_and_cannot_fail_silently(workflows):
    assert w.check_test_job(workflows) == []


def test_deploy_starts_only_after_ci_succeeded_for_a_push_to_main(workflows):
    assert w.check_deploy_gated_on_ci(workflows) == []


def test_deploy_signs_in_with_oidc_and_reads_no_azure_secret(workflows):
    assert w.check_oidc_only(workflows) == []


def test_deploy_is_triggered_by_the_ci_workflow_by_its_real_name(workflows):
    # workflow_run matches the triggering workflow's `name:`, not its file name; a typo would never deploy.
    ci_names = {wf.get("name") for wf in workflows.values() if any(w.runs_tests(j) for j in wf["jobs"].values())}
    assert set(w.triggers(_deploy(workflows))["workflow_run"]["workflows"]) == ci_names == {"ci"}


# ------------------------------------------------------------------------------------------ each check can fail

def test_gate_check_reports_a_deploy_on_push_to_main(workflows):
    # The workflow as it was: deploy on every push to main (and on demand) without waiting for ci.
    mutated = copy.deepcopy(workflows)
    wf = _deploy(mutated)
    wf.pop(True, None)
    wf.pop("on", None)
    wf["on"] = {"workflow_dispatch": None, "push": {"branches": ["main"]}}
    problems = "\n".join(w.check_deploy_gated_on_ci(mutated))
    assert "without needing the test job" in problems


def test_gate_check_reports_a_missing_conclusion_or_event_check(workflows):
    for dropped, expected in (("conclusion == 'success'", "conclusion == 'success'"),
                              ("event == 'push'", "event == 'push'")):
        mutated = copy.deepcopy(workflows)
        job = _deploy(mutated)["jobs"]["deploy"]
        clauses = [c for c in job["if"].split("&&") if dropped not in c]
        assert len(clauses) < len(job["if"].split("&&"))
        job["if"] = " && ".join(c.strip() for c in clauses)
        assert any(expected in p for p in w.check_deploy_gated_on_ci(mutated))
    mutated = copy.deepcopy(workflows)
    job = _deploy(mutated)["jobs"]["deploy"]
    job["if"] = job["if"].replace("&&", "||", 1)
    assert any("conclusion == 'success'" in p for p in w.check_deploy_gated_on_ci(mutated))


def test_gate_check_reports_extra_triggers_other_workflows_and_an_untested_checkout(workflows):
    mutated = copy.deepcopy(workflows)
    on = w.triggers(_deploy(mutated))
    on["workflow_dispatch"] = None
    on["workflow_run"]["workflows"] = ["CI"]
    on["workflow_run"]["types"] = ["completed", "requested"]
    _deploy(mutated).pop(True, None)
    _deploy(mutated)["on"] = on
    for step in _deploy(mutated)["jobs"]["deploy"]["steps"]:
        step.pop("with", None) if step.get("uses", "").startswith("actions/checkout@") else None
    problems = "\n".join(w.check_deploy_gated_on_ci(mutated))
    assert "also triggered by ['workflow_dispatch']" in problems
    assert "must name only the CI workflow(s) ['ci'], not ['CI']" in problems
    assert "types must be [completed]" in problems
    assert "must check out the commit CI tested" in problems


def test_gate_check_accepts_needs_in_one_workflow_and_reports_always(workflows):
    # The other accepted shape: the deploy job inside ci.yml, after the test job.
    mutated = copy.deepcopy(workflows)
    deploy = copy.deepcopy(_deploy(mutated)["jobs"]["deploy"])
    deploy.pop("if")
    for step in deploy["steps"]:
        step.pop("with", None) if step.get("uses", "").startswith("actions/checkout@") else None
    del mutated["deploy.yml"]
    ci = mutated["ci.yml"]
    ci["jobs"]["deploy"] = dict(deploy, needs="test", permissions={"id-token": "write", "contents": "read"},
                                **{"if": "github.event_name == 'push' && github.ref == 'refs/heads/main'"})
    assert w.check_deploy_gated_on_ci(mutated) == []
    assert w.check_oidc_only(mutated) == []
    ci["jobs"]["deploy"]["if"] = "always() && github.event_name == 'push' && github.ref == 'refs/heads/main'"
    assert any("lets it run after a failed" in p for p in w.check_deploy_gated_on_ci(mutated))
    del ci["jobs"]["deploy"]["needs"]
    ci["jobs"]["deploy"]["if"] = "github.event_name == 'push'"
    problems = "\n".join(w.check_deploy_gated_on_ci(mutated))
    assert "without needing the test job" in problems and "restrict it to a push to main" in problems


def test_test_job_check_reports_continue_on_error_and_no_push(workflows):
    mutated = copy.deepcopy(workflows)
    mutated["ci.yml"]["jobs"]["test"]["continue-on-error"] = True
    mutated["ci.yml"].pop(True, None)
    mutated["ci.yml"]["on"] = {"pull_request": None}
    problems = "\n".join(w.check_test_job(mutated))
    assert "continue-on-error" in problems and "must run on push" in problems


def test_oidc_check_reports_a_client_secret_and_missing_id_token(workflows):
    mutated = copy.deepcopy(workflows)
    wf = _deploy(mutated)
    wf["permissions"] = {"contents": "read"}
    login = next(s for s in wf["jobs"]["deploy"]["steps"] if s.get("uses", "").startswith("azure/login@"))
    login["with"]["creds"] = "${{ secrets.AZURE_CREDENTIALS }}"
    problems = "\n".join(w.check_oidc_only(mutated))
    assert "id-token: write" in problems
    assert "secrets.AZURE_CREDENTIALS" in problems
    assert "azure/login with ['creds']" in problems


# ------------------------------------------------------------------------------------------------- what-if preview

def test_ci_previews_the_template_with_what_if_only_where_credentials_exist(workflows):
    assert w.check_what_if(workflows) == []
    job = workflows["ci.yml"]["jobs"]["what-if"]
    assert job["needs"] == "test" and job["permissions"]["id-token"] == "write"
    # It is not a deploying job, so the deploy gate does not apply to it, and nothing in ci.yml reads a secret.
    assert not w.deploys(job) and w.signs_in(job)
    assert "secrets." not in str(workflows["ci.yml"])


def test_what_if_check_reports_a_job_that_would_run_without_credentials_or_for_forks(workflows):
    mutated = copy.deepcopy(workflows)
    del mutated["ci.yml"]["jobs"]["what-if"]["if"]
    problems = "\n".join(w.check_what_if(mutated))
    for var in w.SIGN_IN_VARIABLES:
        assert f"must require vars.{var} != ''" in problems
    assert "must skip pull requests from forks" in problems
    mutated = copy.deepcopy(workflows)
    job = mutated["ci.yml"]["jobs"]["what-if"]
    job["if"] = job["if"].replace("vars.AZURE_CLIENT_ID != '' &&", "vars.AZURE_CLIENT_ID != '' ||")
    assert any("must be a conjunction" in p for p in w.check_what_if(mutated))


def test_what_if_check_reports_a_deploy_in_its_place_and_a_missing_preview(workflows):
    mutated = copy.deepcopy(workflows)
    step = next(s for s in mutated["ci.yml"]["jobs"]["what-if"]["steps"] if "what-if" in str(s.get("run", "")))
    step["run"] = step["run"].replace("az deployment sub what-if", "az deployment sub create")
    assert w.check_what_if(mutated) == ["no job runs `az deployment sub what-if --template-file infra/main.bicep`"]
    # As a deploying job in ci.yml it now falls under the deploy gate, which it does not meet.
    assert any(p.startswith("ci.yml:what-if:") for p in w.check_deploy_gated_on_ci(mutated))
    unsigned = copy.deepcopy(workflows)
    unsigned["ci.yml"]["jobs"]["what-if"]["steps"] = [
        s for s in unsigned["ci.yml"]["jobs"]["what-if"]["steps"] if not str(s.get("uses", "")).startswith("azure/login")]
    assert "ci.yml:what-if: must sign in (azure/login with OIDC) before the what-if" in w.check_what_if(unsigned)

"""Checks over the GitHub Actions workflows, parsed with PyYAML: nothing deploys to Azure unless CI passed on main,
and the deployment signs in with OpenID Connect only. Each check returns a list of problems and takes parsed
documents, so the tests can feed it mutated workflows and see it fail.

A deploying job is accepted in one of two shapes:

* its workflow is triggered only by ``workflow_run`` on the CI workflow(s), ``types: [completed]``, ``branches:
  [main]``, and the job's ``if`` requires that run's conclusion to be ``success`` for a ``push`` to this
  repository (a fork's pull request can have a branch called main too); it checks out the tested ``head_sha``;
* or it sits in the CI workflow itself and ``needs`` (directly or through other jobs) the job that runs the tests,
  without ``always()`` / ``failure()`` / ``cancelled()`` in its ``if`` (which would let it run after a failed test
  job), and its ``if`` restricts it to a push to main.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"

# Commands that run the whole test suite (make test runs ruff and every test, including tests/infra).
TEST_COMMANDS = (re.compile(r"(^|\s)make\s+test(\s|$)"),)
# A step deploys if it runs azd provision/deploy/up or an ARM deployment; `az deployment ... what-if` only previews.
_DEPLOY_RUN = re.compile(r"\bazd\s+(up|deploy|provision)\b|\baz\s+deployment\s+(?!(sub|group|mg|tenant)\s+what-if\b)\S+")
_WHAT_IF = re.compile(r"\baz\s+deployment\s+sub\s+what-if\b[^\n]*?--template-file\s+infra/main\.bicep")
# The variables the OIDC sign-in needs; a job that signs in only when they are set is skipped where they are not.
SIGN_IN_VARIABLES = ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_SUBSCRIPTION_ID")
_AZURE_LOGIN = re.compile(r"^azure/login@", re.I)
# Secrets a deploying workflow may read: values that end up in Key Vault. No Azure credential is ever a secret.
ALLOWED_SECRETS = frozenset({"MLOPS_TEAMS_WEBHOOK_URL", "MLOPS_TEAMS_ROUTES"})
_SECRET_REF = re.compile(r"secrets\.([A-Za-z_][A-Za-z0-9_]*)")
_FORBIDDEN_LOGIN_INPUTS = frozenset({"creds", "client-secret", "password"})
_RUNS_DESPITE_FAILURE = re.compile(r"\b(always|failure|cancelled)\s*\(")


def load(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text())


def load_all() -> dict[str, dict[str, Any]]:
    """Every workflow under .github/workflows, keyed by file name."""
    return {p.name: load(p) for p in sorted(WORKFLOWS.glob("*.y*ml"))}


def triggers(workflow: dict[str, Any]) -> dict[str, Any]:
    """The ``on:`` mapping (YAML 1.1 reads the bare key ``on`` as True), normalised to a dict."""
    on = workflow.get("on", workflow.get(True))
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        return {t: None for t in on}
    return dict(on or {})


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in job.get("steps") or [] if isinstance(s, dict)]


def runs_tests(job: dict[str, Any]) -> bool:
    return any(rx.search(str(s.get("run", ""))) for s in _steps(job) for rx in TEST_COMMANDS)


def deploys(job: dict[str, Any]) -> bool:
    """The job changes Azure: azd up/provision/deploy or an ARM deployment (not a what-if preview)."""
    return any(_DEPLOY_RUN.search(" ".join(str(s.get("run", "")).split())) for s in _steps(job))


def signs_in(job: dict[str, Any]) -> bool:
    return any(_AZURE_LOGIN.match(str(s.get("uses", ""))) or re.search(r"\bazd\s+auth\s+login\b", str(s.get("run", "")))
               for s in _steps(job))


def _condition(job: dict[str, Any]) -> str:
    text = str(job.get("if", "") or "")
    text = re.sub(r"^\s*\$\{\{\s*|\s*\}\}\s*$", "", text)
    return " ".join(text.split())


def _requires(condition: str, left: str, value: str) -> bool:
    """The condition is a conjunction that contains ``left == 'value'`` (either order)."""
    if "||" in condition:
        return False
    quoted = rf"'{re.escape(value)}'"
    return re.search(rf"(^|&&|\()\s*{re.escape(left)}\s*==\s*{quoted}\s*(\)|&&|$)", condition) is not None or \
        re.search(rf"(^|&&|\()\s*{quoted}\s*==\s*{re.escape(left)}\s*(\)|&&|$)", condition) is not None


def _needs_closure(jobs: dict[str, Any], name: str) -> set[str]:
    seen: set[str] = set()
    todo = list(_as_list(jobs.get(name, {}).get("needs")))
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo += _as_list(jobs.get(n, {}).get("needs"))
    return seen


def check_test_job(workflows: dict[str, dict[str, Any]]) -> list[str]:
    """Some workflow runs the test suite on every push (so also on main) in a job that cannot fail silently."""
    problems = []
    found = False
    for fname, wf in workflows.items():
        push = triggers(wf).get("push", False)
        for jname, job in (wf.get("jobs") or {}).items():
            if not runs_tests(job):
                continue
            found = True
            where = f"{fname}:{jname}"
            if push is False:
                problems.append(f"{where}: the test workflow must run on push (main's commits are what deploys)")
            elif isinstance(push, dict) and push.get("branches") and "main" not in push["branches"]:
                problems.append(f"{where}: the test workflow's push trigger must include main")
            if job.get("continue-on-error") or any(s.get("continue-on-error") for s in _steps(job)):
                problems.append(f"{where}: continue-on-error would let a failed test count as success")
            if job.get("if"):
                problems.append(f"{where}: the test job must not be conditional (a skipped job counts as success)")
    if not found:
        problems.append("no workflow job runs the test suite (make test)")
    return problems


def check_deploy_gated_on_ci(workflows: dict[str, dict[str, Any]]) -> list[str]:
    """Every deploying job runs only after the tests passed for a push to main (see the module docstring)."""
    problems: list[str] = []
    test_workflows = {wf.get("name", fname) for fname, wf in workflows.items()
                      if any(runs_tests(j) for j in (wf.get("jobs") or {}).values())}
    deploying = [(f, wf, j, job) for f, wf in workflows.items() for j, job in (wf.get("jobs") or {}).items()
                 if deploys(job)]
    if not deploying:
        return ["no workflow deploys to Azure"]
    for fname, wf, jname, job in deploying:
        where = f"{fname}:{jname}"
        on = triggers(wf)
        jobs = wf.get("jobs") or {}
        condition = _condition(job)
        if "workflow_run" in on:
            extra = sorted(set(on) - {"workflow_run"})
            if extra:
                problems.append(f"{where}: also triggered by {extra}, which deploy without waiting for CI")
            run = on["workflow_run"] or {}
            named = set(_as_list(run.get("workflows")))
            if not named or not named <= test_workflows:
                problems.append(f"{where}: workflow_run must name only the CI workflow(s) {sorted(test_workflows)}, "
                                f"not {sorted(named)}")
            if _as_list(run.get("types")) != ["completed"]:
                problems.append(f"{where}: workflow_run types must be [completed]")
            if _as_list(run.get("branches")) != ["main"]:
                problems.append(f"{where}: workflow_run branches must be [main]")
            event = "github.event.workflow_run"
            for left, value, why in ((f"{event}.conclusion", "success", "CI must have succeeded"),
                                     (f"{event}.event", "push", "only a push to main, not a pull request")):
                if not _requires(condition, left, value):
                    problems.append(f"{where}: its if must require {left} == '{value}' ({why})")
            if not re.search(rf"{re.escape(event)}\.head_repository\.full_name\s*==\s*github\.repository", condition):
                problems.append(f"{where}: its if must require the tested commit to come from this repository "
                                f"({event}.head_repository.full_name == github.repository)")
            refs = [str((s.get("with") or {}).get("ref", "")) for s in _steps(job)
                    if str(s.get("uses", "")).startswith("actions/checkout@")]
            if not refs or not all(re.search(rf"{re.escape(event)}\.head_sha", r) for r in refs):
                problems.append(f"{where}: must check out the commit CI tested ({event}.head_sha), not the "
                                "default branch's latest")
        else:
            tests = {n for n, j in jobs.items() if runs_tests(j)}
            if not tests & _needs_closure(jobs, jname):
                problems.append(f"{where}: deploys on {sorted(on)} without needing the test job "
                                f"(needs: {sorted(tests) or 'a job running make test'})")
            if _RUNS_DESPITE_FAILURE.search(condition):
                problems.append(f"{where}: its if ({condition}) lets it run after a failed or cancelled test job")
            if not (_requires(condition, "github.event_name", "push")
                    and _requires(condition, "github.ref", "refs/heads/main")):
                problems.append(f"{where}: its if must restrict it to a push to main "
                                "(github.event_name == 'push' && github.ref == 'refs/heads/main')")
    return problems


def check_oidc_only(workflows: dict[str, dict[str, Any]]) -> list[str]:
    """Deploying workflows sign in with OpenID Connect (id-token: write) and read no Azure credential secret."""
    problems: list[str] = []
    for fname, wf in workflows.items():
        jobs = wf.get("jobs") or {}
        deploying = {n: j for n, j in jobs.items() if deploys(j) or signs_in(j)}
        if not deploying:
            continue
        for ref in sorted(set(_SECRET_REF.findall(str(wf))) - ALLOWED_SECRETS):
            problems.append(f"{fname}: reads secrets.{ref}; Azure sign-in is OIDC only and other secrets are not allowed")
        for jname, job in deploying.items():
            where = f"{fname}:{jname}"
            perms = job.get("permissions", wf.get("permissions")) or {}
            if not isinstance(perms, dict) or perms.get("id-token") != "write":
                problems.append(f"{where}: needs permissions id-token: write (OIDC)")
            for step in _steps(job):
                if _AZURE_LOGIN.match(str(step.get("uses", ""))):
                    bad = sorted(_FORBIDDEN_LOGIN_INPUTS & set(step.get("with") or {}))
                    if bad:
                        problems.append(f"{where}: azure/login with {bad}; use client-id/tenant-id/subscription-id (OIDC)")
                run = str(step.get("run", ""))
                if re.search(r"\bazd\s+auth\s+login\b", run) and "--federated-credential-provider" not in run:
                    problems.append(f"{where}: azd auth login must use --federated-credential-provider github")
                if re.search(r"--client-secret|--client-certificate|AZURE_CLIENT_SECRET", run):
                    problems.append(f"{where}: signs in with a client secret or certificate")
    return problems


def check_what_if(workflows: dict[str, dict[str, Any]]) -> list[str]:
    """A CI job previews main.bicep with `az deployment sub what-if` when Azure sign-in is configured, and is skipped
    otherwise: its ``if`` requires every sign-in variable to be non-empty and excludes pull requests from forks (which
    get no OIDC token). It signs in with OIDC and deploys nothing."""
    found = [(f, n, j) for f, wf in workflows.items() for n, j in (wf.get("jobs") or {}).items()
             if any(_WHAT_IF.search(" ".join(str(s.get("run", "")).split())) for s in _steps(j))]
    if not found:
        return ["no job runs `az deployment sub what-if --template-file infra/main.bicep`"]
    problems = []
    for fname, jname, job in found:
        where = f"{fname}:{jname}"
        condition = _condition(job)
        if "||" in condition.replace("github.event_name != 'pull_request' ||", ""):
            problems.append(f"{where}: its if must be a conjunction (an || could run it without credentials)")
        for var in SIGN_IN_VARIABLES:
            if not re.search(rf"vars\.{var}\s*!=\s*''", condition):
                problems.append(f"{where}: its if must require vars.{var} != '' (skip the job without credentials)")
        if "github.event.pull_request.head.repo.full_name == github.repository" not in condition:
            problems.append(f"{where}: its if must skip pull requests from forks (they get no OIDC token)")
        if deploys(job):
            problems.append(f"{where}: a what-if job must not deploy")
        if not signs_in(job):
            problems.append(f"{where}: must sign in (azure/login with OIDC) before the what-if")
        if job.get("continue-on-error"):
            problems.append(f"{where}: continue-on-error would hide a template Azure refuses")
    return problems

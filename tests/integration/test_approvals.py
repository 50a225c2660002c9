"""Approval by a named person, over real HTTP through the local Functions host.

Entra ID: tokens are signed with a key made here and checked by the app against a JWKS document served on
loopback, as the tenant's discovery keys would be. Easy Auth: the local host's simulation (``easy_auth=True``)
writes the X-MS-CLIENT-PRINCIPAL headers as App Service Authentication does and drops any the client sends.
"""
from __future__ import annotations

import dataclasses
import html
import json
import re
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shared import approvals
from shared.approvals import encode_principal
from shared.config import Settings
from shared.local import cli
from shared.local.churn import write_csv

pytestmark = pytest.mark.slow
TENANT = "11111111-2222-3333-4444-555555555555"
AUDIENCE = "api://mlops-approvals"
ENDPOINT = "churn-endpoint"


class Keys:
    """An RSA signing key with its JWKS document served on loopback (the tenant's discovery keys, locally)."""

    def __init__(self) -> None:
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        body = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/{TENANT}/discovery/v2.0/keys"

    def token(self, who: str, *, key=None, aud: str = AUDIENCE, iss: str | None = None, minutes: int = 30,
              roles: tuple[str, ...] = (), kid: str = "k1") -> str:
        now = datetime.now(timezone.utc)
        claims = {"aud": aud, "iss": iss or f"https://login.microsoftonline.com/{TENANT}/v2.0", "tid": TENANT,
                  "iat": now - timedelta(minutes=1), "nbf": now - timedelta(minutes=1),
                  "exp": now + timedelta(minutes=minutes), "preferred_username": who, "oid": f"oid-{who}",
                  "roles": list(roles)}
        pem = (key or self.private).private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption())
        return jwt.encode(claims, pem, algorithm="RS256", headers={"kid": kid})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _stack(tmp_path, monkeypatch, **settings_changes):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLOPS_WORKSPACE", raising=False)
    monkeypatch.setenv("MLOPS_MIN_PRIMARY", "0.6")
    monkeypatch.setenv("MLOPS_APPROVAL", f"auto;{ENDPOINT}=manual")
    monkeypatch.setenv("MLOPS_APPROVERS", "ana@contoso.example,role:MLOps.Approver")
    settings = dataclasses.replace(Settings.from_env(), backend="local", **settings_changes)
    stack = cli.local_stack(settings, port=0, easy_auth=settings.approval_auth == "easyauth")
    path = write_csv(tmp_path / "v1.csv", rows=1500, seed=7)
    stack.runtime.workspace.land("landing", "churn/1/customers.csv", path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        stack.grid.drain(timeout=5)
        stack.runtime.workspace.wait_for_jobs(timeout=5)
        state = stack.runtime.states.load(ENDPOINT)
        if state is not None and state.candidate is not None:
            return stack, state.candidate.approval_id
        time.sleep(0.1)
    stack.close()
    raise AssertionError("the model never reached awaiting_approval")


@pytest.fixture
def keys():
    k = Keys()
    yield k
    k.close()


def test_an_entra_token_of_a_listed_person_approves_once_and_nothing_else_does(tmp_path, monkeypatch, keys):
    stack, approval = _stack(tmp_path, monkeypatch, approval_auth="entra", entra_tenant_id=TENANT,
                             entra_audience=AUDIENCE, entra_jwks_url=keys.url)
    url = f"{stack.host.url}/api/approvals/{approval}"
    body = {"decision": "approve", "reason": "metrics reviewed"}
    try:
        ws = stack.runtime.workspace
        assert ws.get_endpoint(ENDPOINT) is None, "nothing is deployed before the approval"
        status = httpx.get(f"{stack.host.url}/api/status", headers={"x-functions-key": stack.host.key}).json()
        [waiting] = [e["rollout"] for e in status["endpoints"] if e["name"] == ENDPOINT]
        assert waiting["phase"] == "awaiting_approval" and waiting["awaiting_approval"]["model"] == "churn-model:1"
        assert approval not in json.dumps(status), "the status view never shows the approval link's secret"
        page = httpx.get(url, timeout=30)
        assert page.status_code == 200 and "Approve churn-model:1 for churn-endpoint" in page.text
        assert "az account get-access-token --resource api://mlops-approvals" in page.text
        assert "train-churn-v1-a1" in page.text, "the page shows the lineage"

        def post(**headers):
            return httpx.post(url, json=body, headers=headers, timeout=60)

        assert post(**{"x-functions-key": stack.host.key}).status_code == 401, "a function key alone never approves"
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        refused = {
            "signed by another key": keys.token("ana@contoso.example", key=other),
            "expired": keys.token("ana@contoso.example", minutes=-5),
            "for another audience": keys.token("ana@contoso.example", aud="api://something-else"),
            "from another issuer": keys.token("ana@contoso.example", iss="https://login.microsoftonline.com/x/v2.0"),
        }
        for why, token in refused.items():
            r = post(Authorization=f"Bearer {token}")
            assert r.status_code == 401, why
            assert token not in r.text, "a refused token is never echoed"
        assert post(Authorization=f"Bearer {keys.token('eve@contoso.example')}").status_code == 403
        assert ws.get_endpoint(ENDPOINT) is None, "none of those deployed anything"

        ok = post(Authorization=f"Bearer {keys.token('ana@contoso.example')}")
        assert ok.status_code == 202, ok.text
        assert ws.get_endpoint(ENDPOINT).traffic == {"churn-model-v1": 100}
        assert ws.get_model("churn-model", "1").tags["approved_by"] == "user:ana@contoso.example"
        assert ws.get_endpoint(ENDPOINT).deployment("churn-model-v1").tags["mlops_approved_by"] == \
            "user:ana@contoso.example"
        status = httpx.get(f"{stack.host.url}/api/status", headers={"x-functions-key": stack.host.key}).json()
        [after] = [e["rollout"] for e in status["endpoints"] if e["name"] == ENDPOINT]
        assert after["phase"] == "promoted" and after["stable"] == "churn-model-v1"
        [record] = stack.runtime.audit.recent(decisions=["approve_deploy"])
        assert record.actor == "user:ana@contoso.example" and "metrics reviewed" in record.reason

        again = post(Authorization=f"Bearer {keys.token('bob@contoso.example', roles=('MLOps.Approver',))}")
        assert again.status_code == 409, "an approval is single-use"
    finally:
        stack.close()


def test_an_app_role_on_the_allow_list_may_reject_with_a_reason(tmp_path, monkeypatch, keys):
    stack, approval = _stack(tmp_path, monkeypatch, approval_auth="entra", entra_tenant_id=TENANT,
                             entra_audience=AUDIENCE, entra_jwks_url=keys.url)
    try:
        token = keys.token("bob@contoso.example", roles=("MLOps.Approver",))
        url = f"{stack.host.url}/api/approvals/{approval}"
        missing = httpx.post(url, json={"decision": "reject"}, headers={"Authorization": f"Bearer {token}"})
        assert missing.status_code == 400 and missing.json()["field"] == "reason"
        r = httpx.post(url, json={"decision": "reject", "reason": "trained on last week's broken export"},
                       headers={"Authorization": f"Bearer {token}"}, timeout=60)
        assert r.status_code == 202
        ws = stack.runtime.workspace
        assert ws.get_endpoint(ENDPOINT) is None
        assert ws.get_model("churn-model", "1").tags["rejected_by"] == "user:bob@contoso.example"
        assert stack.runtime.states.load(ENDPOINT).candidate is None
    finally:
        stack.close()


def _form(page: str) -> str:
    return re.search(r"name='token' value='([0-9a-f]+)'", page).group(1)


def test_simulated_easy_auth_names_the_approver_and_client_written_headers_are_dropped(tmp_path, monkeypatch):
    stack, approval = _stack(tmp_path, monkeypatch, approval_auth="easyauth")
    url = f"{stack.host.url}/api/approvals/{approval}"
    try:
        ana = {"X-Local-User": "ana@contoso.example"}
        page = httpx.get(url, headers=ana, timeout=30)
        token = _form(page.text)
        forged = {"X-MS-CLIENT-PRINCIPAL-NAME": "ana@contoso.example",
                  "X-MS-CLIENT-PRINCIPAL": encode_principal("ana@contoso.example"), "Referer": url}
        r = httpx.post(url, data={"decision": "approve", "reason": "forged", "token": token}, headers=forged,
                       timeout=60)
        assert r.status_code == 401, "the platform drops principal headers a client wrote"
        r = httpx.post(url, data={"decision": "approve", "reason": "looks right", "token": token},
                       headers={**ana, "Referer": url}, timeout=60)
        assert r.status_code == 202
        assert stack.runtime.workspace.get_model("churn-model", "1").tags["approved_by"] == "user:ana@contoso.example"
    finally:
        stack.close()


def test_a_form_posted_from_another_site_or_without_the_pages_token_is_refused(tmp_path, monkeypatch):
    stack, approval = _stack(tmp_path, monkeypatch, approval_auth="easyauth")
    url = f"{stack.host.url}/api/approvals/{approval}"
    try:
        ana = {"X-Local-User": "ana@contoso.example"}
        token = _form(httpx.get(url, headers=ana, timeout=30).text)
        bob_token = _form(httpx.get(url, headers={"X-Local-User": "bob@contoso.example",
                                                   "X-Local-Roles": "MLOps.Approver"}, timeout=30).text)
        tries = {
            "no Origin, a foreign Referer": ({**ana, "Referer": "https://evil.example/"}, token),
            "a foreign Origin": ({**ana, "Origin": "https://evil.example"}, token),
            "neither Origin nor Referer": (ana, token),
            "no token": ({**ana, "Referer": url}, ""),
            "another person's token": ({**ana, "Referer": url}, bob_token),
        }
        for why, (headers, t) in tries.items():
            r = httpx.post(url, data={"decision": "approve", "reason": "csrf", "token": t}, headers=headers,
                           timeout=60)
            assert r.status_code == 403, why
        assert stack.runtime.workspace.get_endpoint(ENDPOINT) is None, "none of those deployed anything"
    finally:
        stack.close()


def test_the_pages_approval_command_is_safe_to_paste_whatever_the_link_carried(tmp_path, monkeypatch, keys):
    stack, approval = _stack(tmp_path, monkeypatch, approval_auth="entra", entra_tenant_id=TENANT,
                             entra_audience=AUDIENCE, entra_jwks_url=keys.url)
    marker = tmp_path / "pwned"
    try:
        page = httpx.get(f"{stack.host.url}/api/approvals/{approval}", timeout=30,
                         params={"x": f"';touch {marker};'"})
        command = html.unescape(re.search(r"<pre id='command'>(.*?)</pre>", page.text, re.S).group(1))
        assert "touch" not in command and f"/api/approvals/{approval}" in command
        subprocess.run(["bash", "-c", "curl(){ :; }; az(){ :; }; " + command], check=False, capture_output=True)
        assert not marker.exists()
    finally:
        stack.close()


def test_principal_headers_are_ignored_unless_easy_auth_is_declared():
    headers = {"X-MS-CLIENT-PRINCIPAL-NAME": "ana@contoso.example",
               "X-MS-CLIENT-PRINCIPAL": encode_principal("ana@contoso.example", roles=("MLOps.Approver",))}
    assert approvals.principal_from(headers, Settings()) is None
    assert approvals.principal_from(headers, Settings(approval_auth="entra", entra_tenant_id=TENANT,
                                                      entra_audience=AUDIENCE)) is None
    who = approvals.principal_from(headers, Settings(approval_auth="easyauth"))
    assert who.name == "ana@contoso.example" and who.roles == ("MLOps.Approver",)
    assert approvals.may_approve(who, ("role:MLOps.Approver",)) and not approvals.may_approve(who, ())
    assert not approvals.may_approve(who, ("group:abc", "bob@contoso.example"))


def test_the_secure_alert_route_takes_only_a_token_with_the_alerts_role(tmp_path, monkeypatch, keys):
    """Azure Monitor's secure webhook: no function key in the action group, an Entra ID token with the app role
    assigned to the action group's service principal instead (MLOPS_ALERT_AUTH=entra)."""
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLOPS_WORKSPACE", raising=False)
    settings = dataclasses.replace(Settings.from_env(), backend="local", alert_auth="entra", entra_tenant_id=TENANT,
                                   alert_audience="api://mlops-alerts", alert_role="Alerts.Send",
                                   entra_jwks_url=keys.url)
    stack = cli.local_stack(settings, port=0)
    url = f"{stack.host.url}/api/alerts/secure"
    from shared.local.demo import common_alert

    try:
        def post(**headers):
            return httpx.post(url, json=common_alert(ENDPOINT), headers=headers, timeout=60)

        assert post(**{"x-functions-key": stack.host.key}).status_code == 401, "a key is not what this route takes"
        wrong_aud = keys.token("azns", aud=AUDIENCE, roles=("Alerts.Send",))
        assert post(Authorization=f"Bearer {wrong_aud}").status_code == 401
        no_role = keys.token("azns", aud="api://mlops-alerts", roles=("Something.Else",))
        assert post(Authorization=f"Bearer {no_role}").status_code == 403
        ok = post(Authorization=f"Bearer {keys.token('azns', aud='api://mlops-alerts', roles=('Alerts.Send',))}")
        assert ok.status_code == 202, ok.text
        assert stack.runtime.audit.recent(limit=5)[0].message == "DriftDetected"
    finally:
        stack.close()


def test_the_secure_alert_route_is_off_unless_configured(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLOPS_WORKSPACE", raising=False)
    stack = cli.local_stack(dataclasses.replace(Settings.from_env(), backend="local"), port=0)
    try:
        r = httpx.post(f"{stack.host.url}/api/alerts/secure", json={}, timeout=30)
        assert r.status_code == 404 and "MLOPS_ALERT_AUTH" in r.json()["error"]
    finally:
        stack.close()

"""`mlops approve` and the endpoint page with MLOPS_APPROVAL_AUTH=entra: an Entra ID access token (signed by a key the
test serves as the tenant's JWKS) names the person; the app checks it exactly as for any other caller."""
from __future__ import annotations

import httpx
import pytest
from typer.testing import CliRunner

from shared.opscli import app
from tests.integration.test_approvals import AUDIENCE, ENDPOINT, TENANT, Keys, _stack

pytestmark = pytest.mark.slow


@pytest.fixture
def keys():
    k = Keys()
    yield k
    k.close()


def test_approve_with_an_entra_token_and_read_the_page_with_it(tmp_path, monkeypatch, keys):
    stack, _ = _stack(tmp_path, monkeypatch, approval_auth="entra", entra_tenant_id=TENANT, entra_audience=AUDIENCE,
                      entra_jwks_url=keys.url)
    env = {"MLOPS_APPROVAL_AUTH": "entra", "MLOPS_ENTRA_TENANT_ID": TENANT, "MLOPS_ENTRA_AUDIENCE": AUDIENCE,
           "MLOPS_ENTRA_JWKS_URL": keys.url, "COLUMNS": "200"}
    try:
        def mlops(*args: str, **extra: str):
            return CliRunner().invoke(app, list(args), env={**env, **extra})

        forged = keys.token("ana@contoso.example", aud="api://someone-else")
        wrong = mlops("approve", ENDPOINT, "--reason", "ok", "--url", stack.host.url, "--token", forged)
        assert wrong.exit_code == 1 and "(401)" in wrong.output
        token = keys.token("ana@contoso.example")
        r = mlops("approve", ENDPOINT, "--reason", "metrics reviewed", "--url", stack.host.url, MLOPS_TOKEN=token)
        assert r.exit_code == 0, r.output
        assert stack.runtime.workspace.get_model("churn-model", "1").tags["approved_by"] == "user:ana@contoso.example"
        page = f"{stack.host.url}/api/endpoints/{ENDPOINT}/page"
        anonymous = httpx.get(page, timeout=30)
        assert anonymous.status_code == 401 and AUDIENCE in anonymous.text and "churn-model" not in anonymous.text
        signed = httpx.get(page, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert signed.status_code == 200 and "user:ana@contoso.example" in signed.text
    finally:
        stack.close()

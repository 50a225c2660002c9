"""The endpoint page's pure parts: who may read it, its address for cards, and escaping of everything it shows."""
from __future__ import annotations

import dataclasses
import tomllib
from datetime import datetime, timezone
from pathlib import Path

import pytest

from shared.approvals import encode_principal
from shared.config import Settings
from shared.domain import Deployment, Endpoint
from shared.lineage import EndpointStory, Lineage, Link, parse_ref, parse_since
from shared.pages import Refused, page_url, reader, render

ROOT = Path(__file__).resolve().parents[2]
EVIL = "<script>alert(1)</script>\"'&"


def test_page_url_is_the_public_url_with_the_endpoint_quoted_and_no_key():
    s = Settings(public_url="https://app.example.net")
    assert page_url(s, "churn-endpoint") == "https://app.example.net/api/endpoints/churn-endpoint/page"
    assert page_url(s, "a/b c") == "https://app.example.net/api/endpoints/a%2Fb%20c/page"
    assert page_url(Settings(), "churn-endpoint") == "", "no public URL: no link rather than a wrong one"


def test_the_page_is_off_without_an_identity_scheme_and_needs_a_person_with_one():
    with pytest.raises(Refused) as off:
        reader({"X-MS-CLIENT-PRINCIPAL-NAME": "ana"}, Settings(approval_auth="none"))
    assert off.value.status == 403 and "MLOPS_APPROVAL_AUTH=easyauth" in str(off.value)
    easy = Settings(approval_auth="easyauth")
    with pytest.raises(Refused) as anonymous:
        reader({}, easy)
    assert anonymous.value.status == 401
    assert reader({"X-MS-CLIENT-PRINCIPAL": encode_principal("ana@contoso.example")}, easy) == "ana@contoso.example"
    with pytest.raises(Refused) as no_token:
        reader({}, Settings(approval_auth="entra", entra_tenant_id="t", entra_audience="api://mlops"))
    assert no_token.value.status == 401 and "api://mlops" in str(no_token.value)


def _story(name: str) -> EndpointStory:
    ln = Lineage(model=name, version="1", links=(Link("data", f"{name}:1", EVIL), Link("job", name),
                                                 Link("model", f"{name}:1"), Link("deployment", f"ep/{name}"),
                                                 Link("approver", f"user:{name}")), metrics={"auc": 0.9})
    ep = Endpoint(name=name, deployments=(Deployment(name=name, model_name=name, model_version="1"),),
                  traffic={name: 100})
    return EndpointStory(name=name, endpoint=ep, state={"phase": "promoted", "stable": name},
                         lineages=[ln], traffic_history=[{"at": "t", "traffic": {name: 100}, "decision": EVIL,
                                                          "actor": EVIL}],
                         timeline=[{"at": "t", "decision": EVIL, "message": EVIL, "actor": EVIL, "reason": EVIL}],
                         drift=[{"at": "t", "decision": "hold", "metric": EVIL, "value": 0.4, "threshold": 0.2,
                                 "rule": "", "source": "", "reason": EVIL}])


def test_every_value_on_the_page_is_escaped_and_nothing_loads_from_elsewhere():
    page = render(_story(EVIL), reader_name=EVIL)
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#x27;&amp;" in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    assert "<link" not in page and "@import" not in page and "url(" not in page.replace("url(#arrow)", "")


def test_the_drift_section_appears_only_with_drift_findings():
    story = _story("churn")
    assert "id='drift'" in render(story)
    assert "id='drift'" not in render(dataclasses.replace(story, drift=[]))


def test_model_refs_and_since_parse_or_say_what_is_expected():
    assert parse_ref("churn-model:3") == ("churn-model", "3") and parse_ref("churn-model") == ("churn-model", "")
    with pytest.raises(ValueError):
        parse_ref(":3")
    now = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)
    assert parse_since("2h", now) == datetime(2026, 12, 2, 10, 0, tzinfo=timezone.utc)
    assert parse_since("2026-12-01T08:00:00", now) == datetime(2026, 12, 1, 8, 0, tzinfo=timezone.utc)
    with pytest.raises(ValueError, match="--since takes"):
        parse_since("yesterday", now)


def test_pyproject_declares_the_mlops_console_script():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["mlops"] == "shared.opscli:main"


def test_the_approver_comes_from_the_audit_trail_when_the_model_tag_is_missing(tmp_path):
    from shared.domain import AuditRecord, Model
    from shared.lineage import approved_by
    from shared.local.ledger import SqliteAuditLog

    audit = SqliteAuditLog(tmp_path / "ledger.db")
    audit.append(AuditRecord(event_id="e1", message="DecideApproval", decision="approve_deploy", reason="ok",
                             actor="user:ana", facts={"endpoint": "ep", "model": "m:2", "approver": "user:ana"}))
    audit.append(AuditRecord(event_id="e2", message="DecideApproval", decision="approve_deploy", reason="ok",
                             actor="user:bob", facts={"endpoint": "ep", "model": "m:3", "approver": "user:bob"}))
    assert approved_by(audit, Model(name="m", version="2"))[0] == "user:ana"
    assert approved_by(audit, Model(name="m", version="2", tags={"approved_by": "user:zoe"}))[0] == "user:zoe"
    assert approved_by(audit, Model(name="m", version="4", tags={"mlops_gate": "approved"}))[0] == "automation"
    assert approved_by(audit, Model(name="m", version="5", tags={"mlops_gate": "rejected"}))[0] == ""

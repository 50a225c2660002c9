"""Approval by a named person: who is calling (App Service Authentication), may they approve, and the page.

App Service Authentication ("Easy Auth") signs the caller in before the request reaches the app and passes who
they are in ``X-MS-CLIENT-PRINCIPAL`` (base64 JSON with the token's claims) and ``X-MS-CLIENT-PRINCIPAL-NAME``;
the platform removes those headers from what a client sends. Without Easy Auth in front of the app a client could
write them itself, so they are trusted only when ``MLOPS_EASY_AUTH`` says the app runs behind it. A function key
alone never approves: the approval routes are anonymous at the Functions level and need a principal.
"""
from __future__ import annotations

import base64
import binascii
import html
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from shared.config import Settings
from shared.rollout import EndpointState

OID_CLAIM = "http://schemas.microsoft.com/identity/claims/objectidentifier"


@dataclass(frozen=True)
class Principal:
    name: str
    object_id: str = ""
    groups: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()


def principal_from(headers: Mapping[str, str], settings: Settings) -> Principal | None:
    """The signed-in caller, or None: no Easy Auth in front of the app (headers not trusted), or not signed in."""
    if not settings.easy_auth:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    name = (lowered.get("x-ms-client-principal-name") or "").strip()
    raw = lowered.get("x-ms-client-principal") or ""
    claims: list[dict] = []
    if raw:
        try:
            body = json.loads(base64.b64decode(raw + "=" * (-len(raw) % 4)).decode("utf-8"))
            claims = [c for c in body.get("claims") or [] if isinstance(c, dict)]
        except (binascii.Error, UnicodeDecodeError, ValueError, AttributeError):
            claims = []
    role_typ = "roles"
    values = [(str(c.get("typ", "")), str(c.get("val", ""))) for c in claims]
    if not name:
        name = next((v for t, v in values if t in ("name", "preferred_username")), "")
    if not name:
        return None
    return Principal(name=name[:200], object_id=next((v for t, v in values if t in (OID_CLAIM, "oid")), ""),
                     groups=tuple(v for t, v in values if t == "groups"),
                     roles=tuple(v for t, v in values if t in (role_typ, "http://schemas.microsoft.com/ws/2008/06/identity/claims/role")))


def may_approve(who: Principal, approvers: tuple[str, ...]) -> bool:
    """On the allow-list by user name or object id, by group ("group:<object id>") or app role ("role:<name>").
    An empty allow-list lets nobody approve."""
    for entry in approvers:
        kind, _, value = entry.partition(":")
        if kind == "group" and value:
            if value in who.groups:
                return True
        elif kind == "role" and value:
            if value in who.roles:
                return True
        elif entry.lower() in (who.name.lower(), who.object_id.lower()):
            return True
    return False


def encode_principal(name: str, *, groups: tuple[str, ...] = (), roles: tuple[str, ...] = ()) -> str:
    """X-MS-CLIENT-PRINCIPAL as Easy Auth writes it (the local host's simulation and tests)."""
    claims = [{"typ": "name", "val": name}, *({"typ": "groups", "val": g} for g in groups),
              *({"typ": "roles", "val": r} for r in roles)]
    body = {"auth_typ": "aad", "name_typ": "name", "role_typ": "roles", "claims": claims}
    return base64.b64encode(json.dumps(body).encode("utf-8")).decode("ascii")


def find(states, approval_id: str) -> EndpointState | None:
    """The endpoint whose waiting candidate has this approval id."""
    for name in states.endpoints():
        state = states.load(name)
        if state is not None and state.candidate is not None and state.candidate.approval_id == approval_id:
            return state
    return None


def _metrics_rows(candidate: Mapping[str, str], stable: Mapping[str, str]) -> str:
    names = sorted({k[len("metric_"):] for k in (*candidate, *stable) if k.startswith("metric_")})
    rows = []
    for n in names:
        c, s = candidate.get(f"metric_{n}", "—"), stable.get(f"metric_{n}", "—")
        rows.append(f"<tr><th>{html.escape(n)}</th><td data-role='candidate'>{html.escape(_short(c))}</td>"
                    f"<td data-role='stable'>{html.escape(_short(s))}</td></tr>")
    return "".join(rows)


def _short(value: str) -> str:
    try:
        return f"{float(value):.4f}"
    except ValueError:
        return value


def render_page(state: EndpointState, candidate_tags: Mapping[str, str], stable_tags: Mapping[str, str], *,
                who: Principal | None, allowed: bool, easy_auth: bool, now: datetime, message: str = "") -> str:
    """One self-contained page: the candidate against the stable (metrics, data, lineage) and the decision form."""
    c = state.candidate
    assert c is not None
    lineage = [("Model", f"{c.model}:{c.version}"), ("Deployment", c.deployment),
               ("Data version", candidate_tags.get("mlops_data_asset", "") + ":" + c.data_version),
               ("Training job", candidate_tags.get("mlops_job", "")), ("Code version",
                                                                       candidate_tags.get("mlops_code_version", "")),
               ("Trigger event", candidate_tags.get("mlops_trigger_event", "")), ("Gate", c.gate_reason),
               ("Stable now", f"{state.stable or 'none'} ({state.stable_model or '—'})"),
               ("Requested", f"{c.requested_at:%Y-%m-%d %H:%M} UTC"), ("Expires", f"{c.expires_at:%Y-%m-%d %H:%M} UTC")]
    facts = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in lineage)
    if not easy_auth:
        form = ("<p id='status'>Approvals need App Service Authentication in front of the app "
                "(MLOPS_EASY_AUTH=true); this deployment does not have it, so nobody can approve here.</p>")
    elif who is None:
        form = "<p id='status'>Sign in to approve or reject.</p>"
    elif not allowed:
        form = f"<p id='status'>{html.escape(who.name)} is not on the approvers list (MLOPS_APPROVERS).</p>"
    elif now >= c.expires_at:
        form = "<p id='status'>This approval has expired.</p>"
    else:
        form = (f"<form method='post' id='decide'><p>Signed in as <b id='who'>{html.escape(who.name)}</b></p>"
                "<label for='reason'>Reason (required)</label><br>"
                "<textarea id='reason' name='reason' required maxlength='500' rows='3' cols='60'></textarea><br>"
                "<button name='decision' value='approve' id='approve'>Approve and deploy</button> "
                "<button name='decision' value='reject' id='reject'>Reject</button></form>")
    note = f"<p id='message'>{html.escape(message)}</p>" if message else ""
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>Approve {html.escape(c.model)}:{html.escape(c.version)} for {html.escape(state.endpoint)}</title>"
            "<style>body{font-family:system-ui,sans-serif;margin:2rem;max-width:60rem}table{border-collapse:collapse}"
            "th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}button{margin-top:.5rem}</style>"
            f"</head><body><h1>Approve {html.escape(c.model)}:{html.escape(c.version)} for "
            f"{html.escape(state.endpoint)}?</h1>{note}"
            "<h2>Metrics</h2><table id='metrics'><tr><th>metric</th><th>candidate</th><th>stable</th></tr>"
            f"{_metrics_rows(candidate_tags, stable_tags)}</table>"
            f"<h2>Lineage</h2><table id='lineage'>{facts}</table><h2>Decision</h2>{form}</body></html>")

"""Approval by a named person: who is calling, may they approve, and the approval page.

Two ways to know who is calling, chosen by ``MLOPS_APPROVAL_AUTH``; a function key alone never approves (the
approval routes are anonymous at the Functions level and need one of these):

- ``entra``: the caller sends ``Authorization: Bearer <token>``, an Entra ID access token for the app registration
  named by ``MLOPS_ENTRA_AUDIENCE``. The app checks its signature against the tenant's published signing keys
  (PyJWT's JWKS client), its issuer (the tenant, v1 or v2 endpoint), audience and lifetime. This works on every
  hosting plan, Flex Consumption included, which does not support App Service Authentication.
- ``easyauth``: App Service Authentication signs the caller in before the request reaches the app and passes who
  they are in ``X-MS-CLIENT-PRINCIPAL`` (base64 JSON of the token's claims) and ``X-MS-CLIENT-PRINCIPAL-NAME``,
  removing those headers from what a client sends. Without it in front of the app a client could write them itself,
  so they are read only in this mode: set it only where App Service Authentication really runs (not on Flex).
- ``none`` (default): nobody can approve; a model under manual approval waits until its link expires.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import json
import logging
import shlex
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from shared.config import Settings
from shared.rollout import EndpointState

logger = logging.getLogger(__name__)
OID_CLAIM = "http://schemas.microsoft.com/identity/claims/objectidentifier"
ROLE_CLAIM = "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"
LOGIN_HOSTS = {"AzureCloud": "login.microsoftonline.com", "AzureUSGovernment": "login.microsoftonline.us",
               "AzureChinaCloud": "login.chinacloudapi.cn"}
LEEWAY_SECONDS = 60  # clock skew allowed on exp / nbf


class Unauthenticated(Exception):
    """No usable identity: the reason says why (never echoes the token)."""


@dataclass(frozen=True)
class Principal:
    name: str
    object_id: str = ""
    groups: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()


def principal_from(headers: Mapping[str, str], settings: Settings) -> Principal | None:
    """The caller, or None when the request carries no identity. A bearer token that fails validation raises
    Unauthenticated with the reason."""
    lowered = {k.lower(): v for k, v in headers.items()}
    if settings.approval_auth == "entra":
        auth = lowered.get("authorization") or ""
        if not auth.lower().startswith("bearer "):
            return None
        return _entra(auth[7:].strip(), settings)
    if settings.approval_auth == "easyauth":
        return _easy_auth(lowered)
    return None


def _easy_auth(lowered: Mapping[str, str]) -> Principal | None:
    name = (lowered.get("x-ms-client-principal-name") or "").strip()
    raw = lowered.get("x-ms-client-principal") or ""
    claims: list[dict] = []
    if raw:
        try:
            body = json.loads(base64.b64decode(raw + "=" * (-len(raw) % 4)).decode("utf-8"))
            claims = [c for c in body.get("claims") or [] if isinstance(c, dict)]
        except (binascii.Error, UnicodeDecodeError, ValueError, AttributeError):
            claims = []
    values = [(str(c.get("typ", "")), str(c.get("val", ""))) for c in claims]
    if not name:
        name = next((v for t, v in values if t in ("name", "preferred_username")), "")
    if not name:
        return None
    return Principal(name=name[:200], object_id=next((v for t, v in values if t in (OID_CLAIM, "oid")), ""),
                     groups=tuple(v for t, v in values if t == "groups"),
                     roles=tuple(v for t, v in values if t in ("roles", ROLE_CLAIM)))


_jwks_clients: dict[str, object] = {}
_jwks_lock = threading.Lock()


def jwks_url(settings: Settings) -> str:
    if settings.entra_jwks_url:
        return settings.entra_jwks_url
    host = LOGIN_HOSTS.get(settings.azure_cloud, LOGIN_HOSTS["AzureCloud"])
    return f"https://{host}/{settings.entra_tenant_id}/discovery/v2.0/keys"


def _jwks_client(url: str):
    import jwt

    with _jwks_lock:  # one client per key set: it caches the keys and refetches on an unknown kid
        if url not in _jwks_clients:
            _jwks_clients[url] = jwt.PyJWKClient(url, cache_keys=True, lifespan=3600, timeout=10)
        return _jwks_clients[url]


def _entra(token: str, settings: Settings) -> Principal:
    if not (settings.entra_tenant_id and settings.entra_audience):
        raise Unauthenticated("MLOPS_ENTRA_TENANT_ID and MLOPS_ENTRA_AUDIENCE must be set to check tokens")
    claims = verify_entra(token, settings, settings.entra_audience)
    name = str(claims.get("preferred_username") or claims.get("upn") or claims.get("unique_name")
               or claims.get("name") or claims.get("oid") or "")
    if not name:
        raise Unauthenticated("token refused: it names nobody (no preferred_username, upn or oid)")
    groups = claims.get("groups") or []
    roles = claims.get("roles") or []
    return Principal(name=name[:200], object_id=str(claims.get("oid", "")),
                     groups=tuple(str(g) for g in groups if isinstance(groups, list)),
                     roles=tuple(str(r) for r in roles if isinstance(roles, list)))


def alert_sender(headers: Mapping[str, str], settings: Settings) -> str:
    """Who sent an alert to the secure route: an Azure Monitor action group's secure webhook brings an Entra ID
    token for the alerts app registration (MLOPS_ALERT_AUDIENCE) carrying the app role assigned to the action
    group's service principal (MLOPS_ALERT_ROLE). Raises Unauthenticated (no valid token) or Forbidden (no role)."""
    if not (settings.entra_tenant_id and settings.alert_audience and settings.alert_role):
        raise Unauthenticated("MLOPS_ENTRA_TENANT_ID, MLOPS_ALERT_AUDIENCE and MLOPS_ALERT_ROLE must be set")
    auth = {k.lower(): v for k, v in headers.items()}.get("authorization") or ""
    if not auth.lower().startswith("bearer "):
        raise Unauthenticated("the secure alert route needs an Entra ID bearer token (an action group secure webhook)")
    claims = verify_entra(auth[7:].strip(), settings, settings.alert_audience)
    roles = claims.get("roles") if isinstance(claims.get("roles"), list) else []
    if settings.alert_role not in roles:
        raise Forbidden(f"the token does not carry the app role {settings.alert_role!r}")
    return f"action-group:{claims.get('oid') or claims.get('appid') or claims.get('azp') or 'unknown'}"


class Forbidden(Exception):
    """A valid identity without the right to do this."""


def verify_entra(token: str, settings: Settings, audience: str) -> dict:
    """The claims of an Entra ID access token for ``audience``, after checking its signature against the tenant's
    signing keys, its issuer (the tenant, v1 or v2 endpoint), audience and lifetime. Raises Unauthenticated."""
    import jwt

    host = LOGIN_HOSTS.get(settings.azure_cloud, LOGIN_HOSTS["AzureCloud"])
    tenant = settings.entra_tenant_id
    issuers = [f"https://{host}/{tenant}/v2.0", f"https://sts.windows.net/{tenant}/"]
    if settings.azure_cloud != "AzureCloud":
        issuers.append(f"https://{host}/{tenant}/")
    try:
        key = _jwks_client(jwks_url(settings)).get_signing_key_from_jwt(token)
        claims = jwt.decode(token, key.key, algorithms=["RS256"], audience=audience, issuer=issuers,
                            leeway=LEEWAY_SECONDS, options={"require": ["exp", "iat", "iss", "aud"]})
    except jwt.PyJWKClientConnectionError as error:
        logger.warning("could not read the tenant's signing keys: %s", error)
        raise Unauthenticated("the tenant's signing keys could not be read; try again") from None
    except jwt.PyJWTError as error:
        raise Unauthenticated(f"token refused: {type(error).__name__}: {error}") from None
    if claims.get("tid") and claims["tid"] != tenant:
        raise Unauthenticated("token refused: issued for another tenant")
    return claims


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


def form_token(state: EndpointState, who: Principal) -> str:
    """The approval form's anti-forgery token: bound to the candidate (its secret never leaves the state record)
    and to the person, so a page read by one person cannot be replayed as another's, and a form posted from another
    site, which cannot read the page, carries none."""
    c = state.candidate
    secret = (c.form_secret if c is not None else "") or ""
    return hmac.new(secret.encode(), f"{c.approval_id if c else ''}|{who.name.lower()}".encode(),
                    hashlib.sha256).hexdigest()


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
                who: Principal | None, allowed: bool, settings: Settings, url: str, now: datetime,
                message: str = "") -> str:
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
    if settings.approval_auth == "none":
        form = ("<p id='status'>Approvals are off here (MLOPS_APPROVAL_AUTH=none): nobody can approve. Set it to "
                "entra (an Entra ID token checked by the app) or easyauth (App Service Authentication).</p>")
    elif settings.approval_auth == "entra" and who is None:
        # Quoted for the shell: the approver pastes this, so nothing in it may run as code.
        token_cmd = (f"$(az account get-access-token --resource {shlex.quote(settings.entra_audience)} "
                     "--query accessToken -o tsv)")
        command = (f"curl -X POST {shlex.quote(url)} -H \"Authorization: Bearer {token_cmd}\" "
                   "-H 'Content-Type: application/json' -d '{\"decision\": \"approve\", \"reason\": \"...\"}'")
        form = ("<p id='status'>Approve or reject with your Entra ID identity (decision approve or reject, and a "
                f"reason):</p><pre id='command'>{html.escape(command)}</pre>")
    elif who is None:
        form = "<p id='status'>Sign in to approve or reject.</p>"
    elif not allowed:
        form = f"<p id='status'>{html.escape(who.name)} is not on the approvers list (MLOPS_APPROVERS).</p>"
    elif now >= c.expires_at:
        form = "<p id='status'>This approval has expired.</p>"
    else:
        form = (f"<form method='post' id='decide'><p>Signed in as <b id='who'>{html.escape(who.name)}</b></p>"
                f"<input type='hidden' name='token' value='{form_token(state, who)}'>"
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

"""The endpoint page: one self-contained HTML page per endpoint (lineage graph, rollout state and traffic history,
audit timeline, drift findings), who may read it, and its address for cards.

Self-contained: inline CSS and inline SVG, no script, no font or image from elsewhere; served with a CSP that allows
nothing else. Every value from the workspace or the audit trail is HTML-escaped (names come from whoever registers
a model or lands data).

Who may read it (docs/cli.md): the route is anonymous at the Functions level, because a link in a Teams card cannot
carry a function key; the app itself requires a named person, the same identity the approval routes use
(MLOPS_APPROVAL_AUTH). With ``easyauth`` App Service Authentication signs the person in from the link; with ``entra``
a bearer token for MLOPS_ENTRA_AUDIENCE is needed (the CLI, curl); with ``none`` the page is off (answered 403 with
what to set), so an anonymous caller never sees a model name or an audit reason.
"""
from __future__ import annotations

import html
from collections.abc import Mapping
from urllib.parse import quote

from shared.config import Settings
from shared.lineage import EndpointStory, Lineage

KINDS = ("data", "job", "model", "deployment", "approver")
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def page_url(settings: Settings, endpoint: str) -> str:
    """The endpoint page's address for links in cards: the app's public URL, no key in it. "" when no public URL
    is configured (a card then shows no link rather than a wrong one)."""
    if not settings.public_url:
        return ""
    return f"{settings.public_url}/api/endpoints/{quote(endpoint, safe='')}/page"


class Refused(Exception):
    """The caller may not read the page: ``status`` (401 or 403) and a message that says what would work."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def reader(headers: Mapping[str, str], settings: Settings) -> str:
    """Who is reading: the signed-in person's name. Raises Refused when nobody is signed in, a token is bad, or
    the app has no way to know who is calling (MLOPS_APPROVAL_AUTH=none)."""
    from shared import approvals

    if settings.approval_auth == "none":
        raise Refused(403, "the endpoint page needs a named reader: set MLOPS_APPROVAL_AUTH=easyauth (App Service "
                           "Authentication signs people in from the card's link) or entra (a bearer token); "
                           "meanwhile use `mlops status` and `mlops lineage` with your own credentials")
    try:
        who = approvals.principal_from(headers, settings)
    except approvals.Unauthenticated as error:
        raise Refused(401, str(error)) from None
    if who is None:
        how = ("sign in through App Service Authentication" if settings.approval_auth == "easyauth"
               else f"send an Entra ID bearer token for {settings.entra_audience or 'MLOPS_ENTRA_AUDIENCE'}")
        raise Refused(401, f"the endpoint page needs a signed-in person: {how}")
    return who.name


def refusal_page(error: Refused) -> str:
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Not signed in</title></head><body>"
            f"<p id='status'>{html.escape(str(error))}</p></body></html>")


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


# --- the lineage graph: one row of boxes per deployed model, arrows between hops ---------------------------

BOX_W, BOX_H, GAP_X, ROW_H = 215, 58, 30, 84


def _graph(lineages: list[Lineage]) -> str:
    if not lineages:
        return "<p id='graph-empty'>No deployed model yet.</p>"
    width = len(KINDS) * BOX_W + (len(KINDS) - 1) * GAP_X + 20
    height = len(lineages) * ROW_H + 10
    parts = [f"<svg id='lineage-graph' xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
             f"viewBox='0 0 {width} {height}' role='img' aria-label='lineage graph'>",
             "<defs><marker id='arrow' markerWidth='8' markerHeight='8' refX='7' refY='4' orient='auto'>"
             "<path d='M0,0 L8,4 L0,8 z' fill='#555'/></marker></defs>"]
    for row, ln in enumerate(lineages):
        y = 10 + row * ROW_H
        by_kind: dict[str, list] = {}
        for link in ln.links:
            by_kind.setdefault(link.kind, []).append(link)
        for col, kind in enumerate(KINDS):
            x = 10 + col * (BOX_W + GAP_X)
            links = by_kind.get(kind) or []
            name = ", ".join(link.name for link in links) or "—"
            detail = "; ".join(link.detail for link in links if link.detail)
            found = all(link.found for link in links) and bool(links)
            fill = "#e8f1fb" if found else "#f4f4f4"
            parts.append(f"<g class='node' data-kind='{kind}' data-model='{_e(ln.model)}:{_e(ln.version)}'>"
                         f"<title>{_e(kind)}: {_e(name)} {_e(detail)}</title>"
                         f"<rect x='{x}' y='{y}' width='{BOX_W}' height='{BOX_H}' rx='6' fill='{fill}' "
                         "stroke='#4a78a8'/>"
                         f"<text x='{x + 8}' y='{y + 18}' font-size='11' fill='#555'>{_e(kind)}</text>"
                         f"<text class='node-name' x='{x + 8}' y='{y + 38}' font-size='13'>{_e(_clip(name, 30))}"
                         "</text></g>")
            if col:
                parts.append(f"<line x1='{x - GAP_X + 2}' y1='{y + BOX_H / 2}' x2='{x - 3}' y2='{y + BOX_H / 2}' "
                             "stroke='#555' marker-end='url(#arrow)'/>")
    parts.append("</svg>")
    return "".join(parts)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _lineage_tables(lineages: list[Lineage]) -> str:
    out = []
    for ln in lineages:
        rows = "".join(f"<tr data-kind='{_e(link.kind)}'><th>{_e(link.kind)}</th><td class='name'>{_e(link.name)}</td>"
                       f"<td>{_e(link.detail)}</td></tr>" for link in ln.links)
        metrics = ", ".join(f"{_e(k)} {v:.4f}" for k, v in sorted(ln.metrics.items()) if k in ("auc", "logloss"))
        out.append(f"<h3>{_e(ln.model)}:{_e(ln.version)}</h3><p class='metrics'>{metrics}</p>"
                   f"<table class='lineage' data-model='{_e(ln.model)}:{_e(ln.version)}'>{rows}</table>")
    return "".join(out)


def _state(story: EndpointStory) -> str:
    traffic = dict(story.endpoint.traffic) if story.endpoint is not None else {}
    rows = "".join(f"<tr><th>{_e(name)}</th><td class='weight' data-deployment='{_e(name)}'>{int(w)}%</td></tr>"
                   for name, w in sorted(traffic.items()) if w)
    s = story.state or {}
    facts = [("Phase", s.get("phase", "no state record")), ("Stable", s.get("stable") or "—"),
             ("Canary", s.get("canary") or "—"), ("Canary weight", f"{s.get('canary_weight', 0)}%"),
             ("Held", "yes" if s.get("held") else "no")]
    if s.get("awaiting_approval"):
        facts.append(("Awaiting approval", s["awaiting_approval"]["model"]))
    if s.get("last_manual"):
        facts.append(("Last manual change", f"{s['last_manual']['action']} by {s['last_manual']['actor']}"))
    fact_rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts)
    return (f"<table id='rollout'>{fact_rows}</table><h3>Live traffic</h3>"
            f"<table id='traffic'>{rows or '<tr><td>no traffic</td></tr>'}</table>")


def _history(history: list[dict]) -> str:
    if not history:
        return "<p id='history-empty'>No traffic change recorded yet.</p>"
    rows = "".join(f"<tr><td>{_e(h['at'])}</td><td>{_e(h['decision'])}</td><td class='split'>"
                   + ", ".join(f"{_e(k)} {v}%" for k, v in sorted(h["traffic"].items()) if v)
                   + f"</td><td>{_e(h['actor'])}</td></tr>" for h in history)
    return ("<table id='history'><tr><th>at</th><th>decision</th><th>split</th><th>by</th></tr>"
            f"{rows}</table>")


def _drift(drift: list[dict]) -> str:
    if not drift:
        return ""
    values = [d["value"] for d in drift if d["value"] is not None]
    top = max([*values, *(d["threshold"] for d in drift if d["threshold"] is not None), 1e-9])
    bar_w, h = 36, 120
    bars = []
    for i, d in enumerate(drift):
        v = d["value"] or 0.0
        bh = max(1.0, h * v / top)
        x = 10 + i * (bar_w + 8)
        bars.append(f"<rect class='drift-bar' x='{x}' y='{20 + h - bh:.1f}' width='{bar_w}' "
                    f"height='{bh:.1f}' fill='#c0504d'><title>{_e(d['at'])}: {_e(d['metric'])} {v:.3f}</title></rect>"
                    f"<text x='{x}' y='{16 + h - bh:.1f}' font-size='10'>{v:.2f}</text>")
        if d["threshold"] is not None:
            ty = 20 + h - h * d["threshold"] / top
            bars.append(f"<line x1='{10 + i * (bar_w + 8)}' x2='{10 + i * (bar_w + 8) + bar_w}' y1='{ty:.1f}' "
                        f"y2='{ty:.1f}' stroke='#333' stroke-dasharray='3,2'/>")
    width = 20 + len(drift) * (bar_w + 8)
    chart = (f"<svg id='drift-chart' xmlns='http://www.w3.org/2000/svg' width='{width}' height='{h + 30}' "
             f"role='img' aria-label='drift values'>{''.join(bars)}</svg>")
    rows = "".join(f"<tr><td>{_e(d['at'])}</td><td>{_e(d['metric'])}</td><td class='value'>{_num(d['value'])}</td>"
                   f"<td>{_num(d['threshold'])}</td><td>{_e(d['decision'])}</td>"
                   f"<td>{_e(d['reason'])}</td></tr>" for d in drift)
    return (f"<section id='drift'><h2>Drift</h2>{chart}<p class='legend'>Each bar is one finding's measured value, "
            f"oldest first; the dashed line is its threshold.</p><table id='drift-table'><tr><th>at</th><th>metric</th>"
            f"<th>value</th><th>threshold</th><th>decision</th><th>reason</th></tr>{rows}</table></section>")


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _timeline(timeline: list[dict]) -> str:
    rows = "".join(f"<li class='audit-entry' data-decision='{_e(r['decision'])}'><time>{_e(r['at'])}</time> "
                   f"<b>{_e(r['decision'])}</b> <span class='message'>{_e(r['message'])}</span> by "
                   f"<span class='actor'>{_e(r['actor'])}</span>: <span class='reason'>{_e(r['reason'])}</span></li>"
                   for r in timeline)
    return f"<ol id='audit'>{rows}</ol>" if rows else "<p id='audit-empty'>No decision recorded yet.</p>"


def render(story: EndpointStory, *, reader_name: str = "") -> str:
    """The whole page for one endpoint, every value escaped."""
    name = _e(story.name)
    who = f"<p id='reader'>Signed in as {_e(reader_name)}</p>" if reader_name else ""
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{name}: lineage and rollout</title><style>"
            "body{font-family:system-ui,sans-serif;margin:2rem;max-width:82rem;color:#222}.graph{overflow-x:auto}"
            "table{border-collapse:collapse;margin:.5rem 0}th,td{border:1px solid #ccc;padding:.25rem .5rem;"
            "text-align:left;vertical-align:top}h2{margin-top:2rem;border-bottom:1px solid #ddd}"
            "#audit{padding-left:1.2rem}#audit li{margin:.2rem 0}time{color:#666;font-size:.9em}"
            "svg text{font-family:system-ui,sans-serif}</style></head><body>"
            f"<h1 id='title'>{name}</h1>{who}"
            f"<h2>Lineage</h2><div class='graph'>{_graph(story.lineages)}</div>{_lineage_tables(story.lineages)}"
            f"<h2>Rollout</h2>{_state(story)}"
            f"<h2>Traffic history</h2>{_history(story.traffic_history)}"
            f"{_drift(story.drift)}"
            f"<h2>Audit timeline</h2>{_timeline(story.timeline)}"
            "</body></html>")

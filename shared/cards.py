"""Pure renderers of an Alert: Adaptive Card 1.5 for Teams Workflows webhooks, and plain text for the console."""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable

from shared.domain import SEVERITIES, Alert
from shared.drift.chart import CHART_FACT
from shared.links import PageLink, page_link

SCHEMA_URL = "http://adaptivecards.io/schemas/adaptive-card.json"
CARD_VERSION = "1.5"
CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
# Teams drops messages over ~28 KB; the budget leaves room for the message wrapper and for hosts that count
# bytes a little differently (a card is measured as UTF-8 JSON, exactly as the adapter sends it).
MAX_CARD_BYTES = 24 * 1024
MAX_ACTIONS = 6  # Teams renders at most six top-level actions; more are silently dropped
TRUNCATION_MARKER = "… [truncated {n:,} characters] …"

# Severity → (container style, text color, label). Error and critical share Teams' red "attention" style;
# critical also gets a bolder badge so the difference is still visible at a glance.
_SEVERITY_LOOK = {
    "info": ("accent", "accent", "INFO"),
    "warning": ("warning", "warning", "WARNING"),
    "error": ("attention", "attention", "ERROR"),
    "critical": ("attention", "attention", "CRITICAL"),
}
_RESOLVED_LOOK = ("good", "good", "RESOLVED")

KIND_LABELS = {
    "training_started": "Training started",
    "training_failed": "Training failed",
    "model_registered": "Model registered",
    "model_rejected": "Model rejected by the quality gate",
    "deployment_changed": "Deployment and traffic change",
    "rollback": "Rollback",
    "retraining_started": "Retraining started after drift",
    "drift_detected": "Drift or health alert",
    "manual_action": "Manual action acknowledged",
    "event_rejected": "Event rejected",
    "approval_requested": "Approval needed",
    "approval_expired": "Approval expired",
    "rollout_held": "Rollout held",
    "deployment_retired": "Deployment retired",
    "model_degraded": "Model degraded (ground truth)",
}

# Limits on every free-text field, so one runaway value cannot push the card over the budget. The second set is
# used only when a card with the first set is still too big (dozens of long facts, many long links).
_LIMITS = {"title": 250, "summary": 3000, "fact_title": 80, "fact_value": 500, "facts": 30, "url": 2048}
_TIGHT = {"title": 150, "summary": 1000, "fact_title": 40, "fact_value": 120, "facts": 12, "url": 1024}


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (plus the marker); keeps the head and the tail.

    The tail is kept because an error log or traceback ends with the actual exception.
    """
    text = text or ""
    if len(text) <= limit:
        return text
    if limit <= 0:
        return TRUNCATION_MARKER.format(n=len(text)).strip(" …")
    head = limit // 3
    tail = limit - head
    cut = len(text) - head - tail
    return f"{text[:head]}\n{TRUNCATION_MARKER.format(n=cut)}\n{text[len(text) - tail:]}"


def card_size(card: dict) -> int:
    """Serialized size in bytes, measured the way the Teams adapter sends it (compact UTF-8 JSON)."""
    return len(json.dumps(card, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def build_card(alert: Alert, *, studio_url: str = "", page_url: PageLink | None = None) -> dict:
    """An Adaptive Card 1.5 for ``alert``, always under MAX_CARD_BYTES serialized.

    The card says what happened (title, summary), why (the evidence: comparison, transition or signal, then the
    facts, each shown once), what the automation did (summary), and what a person should do next (the alert's
    ``next_step`` or its kind's runbook step), with the time it was raised.

    ``studio_url`` turns relative links (``/runs/...``) into absolute ones; ``page_url`` builds the endpoint
    page's address (shared/links.py) for an "Open page" button. Key-protected routes are never linked.
    """
    base = alert
    for limits in (_LIMITS, _TIGHT):
        card = _card(base, "", limits, studio_url, page_url)
        if card_size(card) <= MAX_CARD_BYTES:
            break
    else:
        # Even the tight layout is too big (pathological input): fall back to the header and summary only.
        base = dataclasses.replace(alert, facts=(), links=(), incident_key=alert.incident_key[:200],
                                   event_id=alert.event_id[:200], correlation_id=alert.correlation_id[:200],
                                   next_step=alert.next_step[:1000])
        limits = _TIGHT
        card = _card(base, "", limits, studio_url, page_url)
    if not alert.detail:
        return card
    full = _card(base, alert.detail, limits, studio_url, page_url)
    if card_size(full) <= MAX_CARD_BYTES:
        return full
    # Binary search for the longest excerpt that fits: JSON escaping makes bytes-per-character unpredictable.
    lo, hi = 0, len(alert.detail)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if card_size(_card(base, clip(alert.detail, mid), limits, studio_url, page_url)) <= MAX_CARD_BYTES:
            lo = mid
        else:
            hi = mid - 1
    return _card(base, clip(alert.detail, lo), limits, studio_url, page_url)


def message_payload(card: dict) -> dict:
    """The body a Teams Workflows webhook ("When a Teams webhook request is received") expects."""
    return {"type": "message", "attachments": [{"contentType": CONTENT_TYPE, "content": card}]}


def render_text(alert: Alert, *, detail_limit: int = 2000) -> str:
    """A readable multi-line rendering for the console and logs: what happened, why, what was done, facts, links."""
    label = "RESOLVED" if alert.resolved else alert.severity.upper()
    kind = KIND_LABELS.get(alert.kind, alert.kind)
    when = timestamp(alert)
    lines = [f"[{label}] {alert.title}",
             f"  {kind} · by {alert.actor}" + (f" · {when}" if when else "")
             + (f" · event {alert.event_id}" if alert.event_id else "")
             + (f" · chain {alert.correlation_id}" if alert.correlation_id not in ("", alert.event_id) else "")
             + (f" · incident {alert.incident_key}" if alert.incident_key else ""),
             *("  " + line for line in (alert.summary or "").splitlines() or [""])]
    if alert.facts:
        width = min(24, max(len(k) for k, _ in alert.facts))
        lines += [f"  {k + ':':<{width + 1}} {v}" for k, v in alert.facts]
    for title, url in alert.links:
        lines.append(f"  → {title}: {url}")
    lines.append(f"  Next step: {next_step(alert)}")
    if alert.detail:
        lines.append("  Detail:")
        lines += ["    " + line for line in clip(alert.detail, detail_limit).splitlines()]
    return "\n".join(lines)


# --- what to do next ------------------------------------------------------------------------------------

# The runbook step of each kind (docs/runbook-cards.md says more): what a person on call should do after reading
# the card. An alert's own ``next_step`` (more specific: a job name, an approval page) wins over these.
NEXT_STEPS = {
    "training_started": "Nothing to do now: another card follows when the job finishes. Follow it in the studio.",
    "training_failed": "Read the error excerpt, fix the data or the training code, then rerun the job "
                       "(POST /api/reruns with {\"job\": ...}).",
    "model_registered": "Nothing to do: the rollout goes on by policy. Check the comparison with the champion if "
                        "the margin looks thin.",
    "model_rejected": "Compare this data version with the champion's: land corrected data as a new version, or "
                      "change the gate (MLOPS_MIN_PRIMARY, MLOPS_MIN_IMPROVEMENT) if the policy is wrong.",
    "deployment_changed": "Nothing to do unless errors or latency rise on the new deployment; to undo it, roll back "
                          "(POST /api/rollbacks).",
    "rollback": "Find out why the model degraded (the signal above), then land fresh data to retrain. The "
                "rolled-back deployment gets no traffic again on its own.",
    "retraining_started": "Nothing to do now: the new model goes through the gate and a canary. If the drift "
                          "continues, check the data source.",
    "drift_detected": "Check the signal above against the source data. The automation acts by policy (rollback or "
                      "retrain); if it only recorded the signal, decide whether to land new data or roll back.",
    "model_degraded": "Live accuracy fell below training on labelled predictions: check the labels and the "
                      "serving data, then land fresh data to retrain. The automation acts by policy (rollback or "
                      "retrain).",
    "manual_action": "Nothing to do: the request is done and recorded in the audit trail.",
    "event_rejected": "Fix the cause named above, then replay the event or rerun by hand: it is not retried on "
                      "its own.",
    "approval_requested": "Review the candidate against the stable model on the approval page, then approve or "
                          "reject it before it expires.",
    "approval_expired": "Nothing was deployed. To deploy this model after all, rerun its training to ask for a new "
                        "approval.",
    "rollout_held": "Nothing to do unless it stays held: the canary advances once it has enough requests. Roll "
                    "back by hand to stop it.",
    "deployment_retired": "Nothing to do: deployments no longer needed were removed.",
}
RESOLVED_STEP = "Nothing to do: the condition cleared."


def next_step(alert: Alert) -> str:
    """What a person should do after reading ``alert``."""
    if alert.next_step:
        return alert.next_step
    if alert.resolved:
        return RESOLVED_STEP
    return NEXT_STEPS.get(alert.kind, "Read the facts above and decide whether to act.")


def timestamp(alert: Alert) -> str:
    """``alert.at`` as "2026-12-02 15:11:29 UTC"; "" when the alert carries no time."""
    from datetime import datetime, timezone

    if not alert.at:
        return ""
    try:
        when = datetime.fromisoformat(alert.at)
    except ValueError:
        return alert.at[:40]
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# --- layout ---------------------------------------------------------------------------------------------

def _card(alert: Alert, detail: str, limits: dict, studio_url: str, page_url: PageLink | None) -> dict:
    body: list[dict] = [_header(alert, limits)]
    if alert.summary:
        body.append(_text(clip(alert.summary, limits["summary"]), spacing="medium"))
    evidence, shown = _kind_section(alert, limits)
    # Every fact appears once: what the comparison, transition or signal above already shows is not repeated; the
    # drift chart is drawn, never listed.
    facts = [(k, v) for k, v in list(alert.facts)[: limits["facts"]] if k not in shown and k != CHART_FACT]
    titles = {k for k, _ in facts} | shown
    if alert.actor and alert.actor != "automation" and not any(v == alert.actor for _, v in alert.facts):
        facts.append(("By", alert.actor))
    if alert.event_id and "Event" not in titles:
        facts.append(("Event", alert.event_id))
    if alert.correlation_id and alert.correlation_id != alert.event_id and "Chain" not in titles:
        facts.append(("Chain", alert.correlation_id))
    if len(alert.facts) > limits["facts"]:
        facts.append(("…", f"{len(alert.facts) - limits['facts']} more facts not shown"))
    if evidence or facts:
        body.append(_text("Why", weight="bolder", size="small", isSubtle=True, spacing="medium"))
        body.extend(evidence)
    if facts:
        body.append({"type": "FactSet", "spacing": "small", "facts": [
            {"title": clip(str(k), limits["fact_title"]), "value": clip(str(v), limits["fact_value"]) or "—"}
            for k, v in facts]})
    body.append({"type": "Container", "style": "emphasis", "spacing": "medium", "items": [
        _text("Next step", weight="bolder", size="small"),
        _text(clip(next_step(alert), limits["summary"]), spacing="none")]})
    if detail:
        body.append({"type": "Container", "style": "emphasis", "spacing": "medium", "items": [
            _text("Detail", weight="bolder", size="small"),
            _text(detail, fontType="monospace", size="small")]})
    card: dict = {
        "type": "AdaptiveCard",
        "version": CARD_VERSION,
        "$schema": SCHEMA_URL,
        "fallbackText": clip(f"{alert.title}: {alert.summary}", 300),
        "body": body,
        "actions": _actions(alert, limits, studio_url, page_url),
        "msteams": {"width": "Full"},
    }
    return card


def _header(alert: Alert, limits: dict) -> dict:
    style, color, label = _RESOLVED_LOOK if alert.resolved else _SEVERITY_LOOK.get(
        alert.severity if alert.severity in SEVERITIES else "info", _SEVERITY_LOOK["info"])
    kind = KIND_LABELS.get(alert.kind, alert.kind.replace("_", " ").capitalize())
    badge = f"{label} · {kind}"
    if alert.resolved and alert.severity in ("warning", "error", "critical"):
        badge += f" · was {alert.severity}"
    title = clip(alert.title, limits["title"])
    if alert.resolved and not title.lower().startswith("resolved"):
        title = f"Resolved: {title}"
    items = [
        _text(badge, color=color, weight="bolder", size="small",
              isSubtle=alert.severity == "info" and not alert.resolved),
        _text(title, style="heading", size="large" if alert.severity == "critical" and not alert.resolved
              else "medium", weight="bolder", color=color),
    ]
    when = timestamp(alert)
    if when:
        items.append(_text(when, size="small", isSubtle=True, spacing="none"))
    return {"type": "Container", "style": style, "bleed": True, "items": items}


def _kind_section(alert: Alert, limits: dict) -> tuple[list[dict], set[str]]:
    """What each kind of alert puts first (the comparison or transition an operator looks for), and the titles
    of the facts it shows, so the fact set does not repeat them."""
    facts = dict(alert.facts)
    if alert.kind in ("model_rejected", "model_registered"):
        return _metric_table(alert.facts, limits)
    if alert.kind in ("rollback", "deployment_changed") and (facts.get("From") or facts.get("To")):
        blocks, shown = _transition("From", facts.get("From"), "To", facts.get("To"), limits), {"From", "To"}
        if facts.get("Signal"):  # a rollback after drift: the statistic that caused it, right under the change
            blocks.append(_text(f"Signal: **{clip(facts['Signal'], limits['fact_value'])}**", spacing="small"))
            shown.add("Signal")
        return blocks, shown
    if alert.kind == "deployment_changed" and (facts.get("Traffic before") or facts.get("Traffic now")):
        return (_transition("Traffic before", facts.get("Traffic before"), "Traffic now", facts.get("Traffic now"),
                            limits), {"Traffic before", "Traffic now"})
    if alert.kind == "manual_action":
        who = facts.get("Requested by") or alert.actor
        return ([_text(f"Requested by **{clip(who, 120)}**", spacing="small")] if who else [],
                {"Requested by"} if facts.get("Requested by") else set())
    if alert.kind == "drift_detected":
        return drift_section(alert, limits), {"Signal"} if facts.get("Signal") else set()
    if alert.kind == "model_degraded":
        blocks = degradation_section(alert, limits)
        return blocks, ({"Live AUC", "Training AUC", "Live logloss", "Training logloss", "AUC drop"} if blocks
                        else set())
    if alert.kind == "rollback" and facts.get("Signal"):
        return [_text(f"Signal: **{clip(facts['Signal'], limits['fact_value'])}**", spacing="small")], {"Signal"}
    if alert.kind == "event_rejected":
        return [_text("Acknowledged and not retried: fix the cause, then replay or rerun.", isSubtle=True,
                      spacing="small")], set()
    return [], set()


def _metric_table(facts: Iterable[tuple[str, str]], limits: dict) -> tuple[list[dict], set[str]]:
    """Metric | this model | champion, for every metric that has a "Champion <metric>" counterpart."""
    values = dict(facts)
    rows = [(k, v, values[f"Champion {k}"]) for k, v in values.items()
            if not k.startswith("Champion") and f"Champion {k}" in values]
    if not rows:
        return [], set()
    columns = [("Metric", [r[0] for r in rows]), ("This model", [r[1] for r in rows]),
               ("Champion", [r[2] for r in rows])]
    return [_text("Against the champion", weight="bolder", spacing="small"),
            {"type": "ColumnSet", "spacing": "small", "columns": [
                {"type": "Column", "width": "auto" if i == 0 else "stretch", "items": [
                    _text(head, weight="bolder", size="small"),
                    *(_text(clip(str(cell), limits["fact_value"]), spacing="none") for cell in cells)]}
                for i, (head, cells) in enumerate(columns)]}], {t for r in rows for t in (r[0], f"Champion {r[0]}")}


def _transition(left_label: str, left: str | None, right_label: str, right: str | None, limits: dict) -> list[dict]:
    def column(label: str, value: str | None) -> dict:
        return {"type": "Column", "width": "stretch", "items": [
            _text(label, isSubtle=True, size="small"),
            _text(clip(value or "—", limits["fact_value"]), weight="bolder", spacing="none")]}

    return [{"type": "ColumnSet", "spacing": "small", "columns": [
        column(left_label, left),
        {"type": "Column", "width": "auto", "verticalContentAlignment": "center",
         "items": [_text("→", size="large")]},
        column(right_label, right)]}]


def _actions(alert: Alert, limits: dict, studio_url: str, page_url: PageLink | None) -> list[dict]:
    links: list[tuple[str, str]] = []
    for title, url in alert.links:
        url = _absolute(url, studio_url)
        if url and len(url) <= limits["url"]:
            links.append((title or "Open", url))
    page = page_link(dict(alert.facts).get("Endpoint", ""), page_url)
    if page and len(page[1]) > limits["url"]:
        page = None
    # The page link is kept even when the alert has many links: it is the operator's way into the app.
    room = MAX_ACTIONS - (1 if page else 0)
    actions = [{"type": "Action.OpenUrl", "title": clip(t, 40), "url": u} for t, u in links[:room]]
    if page:
        actions.append({"type": "Action.OpenUrl", "title": page[0], "url": page[1]})
    return actions


def _absolute(url: str, base: str) -> str:
    url = (url or "").strip()
    if url.startswith(("https://", "http://")):
        return url
    if url.startswith("/") and base.startswith(("https://", "http://")):
        return base.rstrip("/") + url
    return ""  # anything else (a local path, javascript:) is not a link Teams should open


def _text(text: str, **props: object) -> dict:
    block: dict = {"type": "TextBlock", "text": text, "wrap": True}
    block.update({k: v for k, v in props.items() if v is not None and v is not False})
    return block


def degradation_section(alert: Alert, limits: dict) -> list[dict]:
    """A model_degraded card leads with live against training: AUC and log loss side by side, then the drop."""
    facts = dict(alert.facts)
    rows = [(name, facts.get(f"Live {key}"), facts.get(f"Training {key}")) for name, key in (("AUC", "AUC"),
                                                                                           ("Log loss", "logloss"))
            if facts.get(f"Live {key}")]
    if not rows:
        return []
    columns = [("Metric", [r[0] for r in rows]), ("Live", [r[1] for r in rows]),
               ("Training", [r[2] or "—" for r in rows])]
    out = [_text("Live against training", weight="bolder", spacing="medium"),
           {"type": "ColumnSet", "spacing": "small", "columns": [
               {"type": "Column", "width": "auto" if i == 0 else "stretch", "items": [
                   _text(head, weight="bolder", size="small"),
                   *(_text(clip(str(cell), limits["fact_value"]), spacing="none") for cell in cells)]}
               for i, (head, cells) in enumerate(columns)]}]
    if facts.get("AUC drop"):
        out.append(_text(f"AUC drop: **{clip(facts['AUC drop'], limits['fact_value'])}** over "
                         f"{clip(facts.get('Labelled predictions', '?'), 20)} labelled predictions",
                         color="attention", spacing="small"))
    return out


# Bar colours of the drift chart: container styles, so hosts pick colours that fit their theme.
_BASELINE_STYLE, _WINDOW_STYLE = "accent", "warning"


def drift_section(alert: Alert, limits: dict) -> list[dict]:
    """A drift card leads with the signal, then a chart of the top feature's baseline against current shares.

    The bars are Adaptive Card columns, not an image: Teams does not reliably render data URIs, and a PNG served by
    the app would need the app's authentication in front of every card reader. Each bin is one row: its label, then
    two bars whose filled column's weight is the share (the empty column takes the rest)."""
    facts = dict(alert.facts)
    out: list[dict] = []
    if facts.get("Signal"):
        out.append(_text(f"Signal: **{clip(facts['Signal'], limits['fact_value'])}**", spacing="small"))
    try:
        chart = json.loads(facts.get(CHART_FACT) or "null")
    except ValueError:
        chart = None
    bins = chart.get("bins") if isinstance(chart, dict) else None
    if not bins:
        return out
    out.append(_text(f"{clip(str(chart.get('feature', '')), 80)}: baseline against this window", weight="bolder",
                     spacing="medium"))
    out.append({"type": "ColumnSet", "spacing": "small", "columns": [
        _legend("Baseline", _BASELINE_STYLE), _legend("This window", _WINDOW_STYLE)]})
    for label, base, now in bins[:12]:
        out.append({"type": "ColumnSet", "spacing": "small", "columns": [
            {"type": "Column", "width": 2, "verticalContentAlignment": "center",
             "items": [_text(clip(str(label), 24), size="small")]},
            {"type": "Column", "width": 5, "items": [_bar(float(base), _BASELINE_STYLE),
                                                      _bar(float(now), _WINDOW_STYLE)]},
            {"type": "Column", "width": 2, "verticalContentAlignment": "center",
             "items": [_text(f"{base:.0%} → {now:.0%}", size="small", isSubtle=True)]}]})
    return out


def _bar(share: float, style: str) -> dict:
    """A horizontal bar: a filled column weighted by ``share`` next to an empty one for the rest (weights are
    whole numbers out of 1000; a zero share is an empty row)."""
    filled = max(0, min(1000, round(share * 1000)))
    columns = []
    if filled:
        columns.append({"type": "Column", "width": filled, "style": style, "minHeight": "8px", "items": []})
    if filled < 1000:
        columns.append({"type": "Column", "width": 1000 - filled, "minHeight": "8px", "items": []})
    return {"type": "ColumnSet", "spacing": "none", "columns": columns}


def _legend(label: str, style: str) -> dict:
    return {"type": "Column", "width": "auto", "items": [{"type": "ColumnSet", "columns": [
        {"type": "Column", "width": "12px", "style": style, "minHeight": "8px", "items": []},
        {"type": "Column", "width": "auto", "items": [_text(label, size="small", spacing="none")]}]}]}

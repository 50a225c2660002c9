"""Adaptive Cards for every alert kind validate against the official 1.5 schema and stay under Teams' size limit."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from shared.cards import MAX_CARD_BYTES, build_card, card_size, clip, message_payload, render_text
from shared.domain import ALERT_KINDS, SEVERITIES, Alert

REPO = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO.parent / "shared" / "adaptivecards-schemas" / "1.5.0" / "adaptive-card.json"
TEAMS_LIMIT = 28 * 1024
STATUS = "https://example.invalid/api/status"

FACTS = {
    "training_started": (("Job", "train-churn-v3-a1"), ("Data", "churn:3"), ("Attempt", "1")),
    "training_failed": (("Job", "train-churn-v3-a1"), ("Status", "Failed"), ("Attempt", "1 of 3")),
    "model_registered": (("Model", "churn-model:3.1"), ("auc", "0.8412"), ("Champion auc", "0.8301")),
    "model_rejected": (("Job", "train-churn-v3-a2"), ("auc", "0.6612"), ("logloss", "0.5100"),
                       ("Champion auc", "0.8301"), ("Champion logloss", "0.4200")),
    "deployment_changed": (("Endpoint", "churn-endpoint"), ("Traffic before", "v2-1 100%"),
                           ("Traffic now", "v2-1 90%, v3-1 10%")),
    "rollback": (("Endpoint", "churn-endpoint"), ("From", "v3-1 10%, v2-1 90%"), ("To", "v2-1 100%")),
    "retraining_started": (("Endpoint", "churn-endpoint"), ("Data", "churn:4")),
    "drift_detected": (("Endpoint", "churn-endpoint"), ("Signal", "psi 0.310 (threshold 0.200)")),
    "manual_action": (("Endpoint", "churn-endpoint"), ("Requested by", "alice@example.com")),
    "event_rejected": (("Event", "evt-1"), ("Type", "RunFinished"), ("Outcome", "rejected")),
    "approval_requested": (("Endpoint", "churn-endpoint"), ("Phase", "awaiting_approval"),
                           ("Expires", "2026-12-09T12:00:00+00:00")),
    "approval_expired": (("Endpoint", "churn-endpoint"), ("Phase", "promoted")),
    "rollout_held": (("Endpoint", "churn-endpoint"), ("Analysis", "canary served 12 requests, fewer than 100")),
    "deployment_retired": (("Endpoint", "churn-endpoint"), ("Traffic", "churn-model-v3 100%")),
    "model_degraded": (("Endpoint", "churn-endpoint"), ("Deployment", "churn-model-v3"), ("Live AUC", "0.612"),
                       ("Training AUC", "0.842"), ("AUC drop", "0.230 (tolerance 0.05)"), ("Live logloss", "0.701"),
                       ("Training logloss", "0.412"), ("Labelled predictions", "300")),
}


@pytest.fixture(scope="module")
def validator():
    if not SCHEMA_PATH.exists():
        pytest.skip(f"official Adaptive Card 1.5 schema not found at {SCHEMA_PATH}")
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)  # the schema declares its own draft (draft-06)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def validate(validator, card: dict) -> None:
    host_neutral = copy.deepcopy(card)
    host_neutral.pop("msteams", None)  # Teams-only key; the schema's AdaptiveCard forbids unknown properties
    errors = sorted(validator.iter_errors(host_neutral), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message[:200]}" for e in errors[:5])


def alert(kind: str, **changes) -> Alert:
    base = dict(kind=kind, severity="error" if kind in ("training_failed", "event_rejected") else "info",
                title=f"{kind.replace('_', ' ').capitalize()}: churn", summary=f"What happened for {kind}; why; "
                "what was done.", facts=FACTS[kind],
                links=(("Open job", "https://ml.azure.com/runs/train-churn-v3-a1?wsid=/subscriptions/x"),),
                incident_key=f"{kind}:churn", event_id="evt-1")
    base.update(changes)
    return Alert(**base)


def texts(card: dict) -> str:
    return json.dumps(card, ensure_ascii=False)


def test_covers_every_alert_kind():
    assert set(FACTS) == set(ALERT_KINDS)


@pytest.mark.parametrize("resolved", [False, True], ids=["open", "resolved"])
@pytest.mark.parametrize("kind", ALERT_KINDS)
def test_every_kind_validates_against_the_official_schema(validator, kind, resolved):
    card = build_card(alert(kind, resolved=resolved), status_url=STATUS)
    validate(validator, card)
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.5"
    assert card["msteams"] == {"width": "Full"}
    assert card_size(card) < TEAMS_LIMIT


@pytest.mark.parametrize("kind", ALERT_KINDS)
def test_every_kind_stays_under_28kb_with_a_100kb_detail_and_shows_the_truncation_marker(validator, kind):
    detail = "Traceback (most recent call last):\n" + ("  File \"train.py\", line 1, in <module>\n" * 2600) \
        + "ValueError: the real error is at the end"
    assert len(detail) > 100_000
    card = build_card(alert(kind, detail=detail), status_url=STATUS)
    validate(validator, card)
    size = card_size(card)
    assert size <= MAX_CARD_BYTES < TEAMS_LIMIT
    assert size > MAX_CARD_BYTES - 2048, "the excerpt should use the room it has"
    body = texts(card)
    assert "[truncated " in body and " characters]" in body
    assert "ValueError: the real error is at the end" in body, "the tail of a traceback carries the error"
    assert len(json.dumps(message_payload(card)).encode()) < TEAMS_LIMIT


def test_non_ascii_and_escaped_detail_is_measured_in_utf8_bytes(validator):
    detail = ("é\"\\\n\t€😀" * 20_000)
    card = build_card(alert("training_failed", detail=detail))
    validate(validator, card)
    assert card_size(card) <= MAX_CARD_BYTES


def test_pathological_facts_summary_and_links_still_fit(validator):
    huge = alert("rollback", title="t" * 5000, summary="s" * 50_000,
                 facts=tuple((f"fact {i}" * 20, "v" * 5000) for i in range(200)),
                 links=tuple((f"link {i}", "https://example.invalid/" + "p" * 1500) for i in range(40)),
                 detail="d" * 100_000)
    card = build_card(huge, status_url=STATUS)
    validate(validator, card)
    assert card_size(card) <= MAX_CARD_BYTES


def test_facts_render_as_a_factset_with_the_actor_and_event():
    card = build_card(alert("manual_action", actor="alice@example.com"))
    factsets = [b for b in card["body"] if b["type"] == "FactSet"]
    assert len(factsets) == 1
    titles = {f["title"]: f["value"] for f in factsets[0]["facts"]}
    assert titles["Endpoint"] == "churn-endpoint"
    assert titles["Requested by"] == "alice@example.com"
    assert titles["Event"] == "evt-1"
    assert "Requested by **alice@example.com**" in texts(card)


def test_links_become_open_url_actions_and_the_status_link_is_added():
    a = alert("deployment_changed", links=(("Open endpoint", "https://ml.azure.com/endpoints/realtime/e/detail"),
                                           ("Relative", "/runs/j"), ("Local path", "C:\\x")))
    card = build_card(a, studio_url="https://ml.azure.com", status_url=STATUS)
    actions = [(x["type"], x["title"], x["url"]) for x in card["actions"]]
    assert ("Action.OpenUrl", "Open endpoint", "https://ml.azure.com/endpoints/realtime/e/detail") in actions
    assert ("Action.OpenUrl", "Relative", "https://ml.azure.com/runs/j") in actions
    assert actions[-1] == ("Action.OpenUrl", "Open status", STATUS)
    assert all(url.startswith("https://") for _, _, url in actions), "non-URLs are not offered as links"


def test_no_status_link_without_a_status_url():
    assert all(a["title"] != "Open status" for a in build_card(alert("rollback"))["actions"])


def test_at_most_six_actions_keeping_the_status_link():
    links = tuple((f"l{i}", f"https://example.invalid/{i}") for i in range(10))
    actions = build_card(alert("rollback", links=links), status_url=STATUS)["actions"]
    assert len(actions) == 6 and actions[-1]["title"] == "Open status"


@pytest.mark.parametrize("severity,style", [("info", "accent"), ("warning", "warning"), ("error", "attention"),
                                            ("critical", "attention")])
def test_severity_sets_the_header_style_and_badge(severity, style):
    header = build_card(alert("drift_detected", severity=severity))["body"][0]
    assert header["type"] == "Container" and header["style"] == style
    assert header["items"][0]["text"].startswith(severity.upper())


def test_resolved_variant_is_green_and_says_resolved():
    card = build_card(alert("drift_detected", severity="warning", resolved=True))
    header = card["body"][0]
    assert header["style"] == "good"
    assert header["items"][0]["text"].startswith("RESOLVED") and "was warning" in header["items"][0]["text"]
    assert header["items"][1]["text"].startswith("Resolved: ")


def test_gate_rejection_shows_metrics_against_the_champion():
    card = build_card(alert("model_rejected", severity="warning"))
    columnsets = [b for b in card["body"] if b["type"] == "ColumnSet"]
    assert columnsets, "a metric table is expected"
    cols = [[i["text"] for i in c["items"]] for c in columnsets[0]["columns"]]
    assert cols[0] == ["Metric", "auc", "logloss"]
    assert cols[1] == ["This model", "0.6612", "0.5100"]
    assert cols[2] == ["Champion", "0.8301", "0.4200"]


def test_rollback_shows_from_and_to():
    body = build_card(alert("rollback", severity="critical"))["body"]
    transition = next(b for b in body if b["type"] == "ColumnSet")
    cells = [[i["text"] for i in c["items"]] for c in transition["columns"]]
    assert cells[0] == ["From", "v3-1 10%, v2-1 90%"] and cells[1] == ["→"] and cells[2] == ["To", "v2-1 100%"]


def test_message_payload_is_the_workflows_shape():
    card = build_card(alert("training_started"))
    payload = message_payload(card)
    assert payload == {"type": "message", "attachments": [{
        "contentType": "application/vnd.microsoft.card.adaptive", "content": card}]}


def test_build_card_is_pure():
    a = alert("training_failed", detail="x" * 50_000)
    assert build_card(a, status_url=STATUS) == build_card(a, status_url=STATUS)


def test_clip_keeps_head_and_tail_with_a_counted_marker():
    out = clip("a" * 1000 + "TAIL", 100)
    assert out.startswith("a" * 33) and out.endswith("TAIL")
    assert "[truncated 904 characters]" in out
    assert clip("short", 100) == "short"


@pytest.mark.parametrize("severity", SEVERITIES)
def test_render_text_tells_what_happened_why_what_was_done_facts_and_links(severity):
    a = alert("training_failed", severity=severity, detail="line1\n" + "z" * 10_000 + "\nValueError: end")
    text = render_text(a)
    lines = text.splitlines()
    assert lines[0] == f"[{severity.upper()}] {a.title}"
    assert "What happened for training_failed; why; what was done." in text
    assert "Job:" in text and "train-churn-v3-a1" in text
    assert "→ Open job: https://ml.azure.com/runs/" in text
    assert "[truncated " in text and "ValueError: end" in text
    assert len(text) < 4000


def test_render_text_marks_resolved_alerts():
    assert render_text(alert("drift_detected", resolved=True)).startswith("[RESOLVED] ")


def _break(card: dict, how: str) -> dict:
    broken = copy.deepcopy(card)
    broken.pop("msteams", None)
    if how == "unknown element":
        broken["body"].append({"type": "Blink", "text": "x"})
    elif how == "text not a string":
        broken["body"][1]["text"] = 42
    elif how == "open-url without url":
        broken["actions"][0].pop("url")
    elif how == "factset without facts":
        next(b for b in broken["body"] if b["type"] == "FactSet").pop("facts")
    elif how == "bad container style":
        broken["body"][0]["style"] = "loud"
    elif how == "not an AdaptiveCard":
        broken["type"] = "HeroCard"
    return broken


@pytest.mark.parametrize("how", ["unknown element", "text not a string", "open-url without url",
                                 "factset without facts", "bad container style", "not an AdaptiveCard"])
def test_the_validator_does_reject_broken_cards(validator, how):
    card = build_card(alert("rollback", severity="critical"), status_url=STATUS)
    validate(validator, card)  # the intact card passes ...
    with pytest.raises(AssertionError):  # ... and the same check fails once it is broken
        validate(validator, _break(card, how))


def test_host_keys_are_what_the_schema_would_refuse(validator):
    card = build_card(alert("training_started"))
    assert list(validator.iter_errors(card)), "msteams is Teams-only: the official schema refuses it"
    validate(validator, card)  # and passes once it is removed, as Teams would read it


def test_sizes_of_every_kind_are_far_below_the_limit_without_detail():
    sizes = {kind: card_size(build_card(alert(kind), status_url=STATUS)) for kind in ALERT_KINDS}
    assert max(sizes.values()) < 8 * 1024, sizes

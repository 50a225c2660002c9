"""Adaptive Cards for every alert kind validate against Adaptive Cards 1.5 and stay under Teams' size limit.

The schema tests run in every checkout: tests/fixtures/adaptivecard-1.5.schema.json is this project's own schema of
the part of Adaptive Cards 1.5 our cards use. When the official schema is next to the repository (../shared), the
cards are validated against it too, and the fixture is checked to allow nothing the official schema refuses.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest

from shared.cards import MAX_CARD_BYTES, NEXT_STEPS, build_card, card_size, clip, message_payload, render_text
from shared.domain import ALERT_KINDS, SEVERITIES, Alert
from shared.drift.chart import CHART_FACT

REPO = Path(__file__).resolve().parents[2]
FIXTURE_PATH = REPO / "tests" / "fixtures" / "adaptivecard-1.5.schema.json"
OFFICIAL_PATH = REPO.parent / "shared" / "adaptivecards-schemas" / "1.5.0" / "adaptive-card.json"
TEAMS_LIMIT = 28 * 1024
PAGE = "https://app.example.invalid/api/endpoints/{endpoint}/page"
AT = "2026-12-02T15:11:29.512+00:00"


def page_url(endpoint: str) -> str:
    return PAGE.format(endpoint=endpoint)


FACTS = {
    "training_started": (("Job", "train-churn-v3-a1"), ("Data", "churn:3"), ("Attempt", "1")),
    "training_failed": (("Job", "train-churn-v3-a1"), ("Status", "Failed"), ("Attempt", "1 of 3")),
    "model_registered": (("Model", "churn-model:3.1"), ("auc", "0.8412"), ("Champion auc", "0.8301")),
    "model_rejected": (("Job", "train-churn-v3-a2"), ("auc", "0.6612"), ("logloss", "0.5100"),
                       ("Champion auc", "0.8301"), ("Champion logloss", "0.4200")),
    "deployment_changed": (("Endpoint", "churn-endpoint"), ("Traffic before", "v2-1 100%"),
                           ("Traffic now", "v2-1 90%, v3-1 10%")),
    "rollback": (("Endpoint", "churn-endpoint"), ("From", "v3-1 10%, v2-1 90%"), ("To", "v2-1 100%"),
                 ("Signal", "psi 0.310 (threshold 0.200) on tenure_months")),
    "retraining_started": (("Endpoint", "churn-endpoint"), ("Data", "churn:4")),
    "drift_detected": (("Endpoint", "churn-endpoint"), ("Signal", "psi 0.310 (threshold 0.200)"),
                       (CHART_FACT, json.dumps({"feature": "tenure_months", "bins": [["< 12", 0.25, 0.02],
                                                                                    ["12 – 24", 0.5, 0.18],
                                                                                    [">= 24", 0.25, 0.8]]}))),
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


def _validator(schema: dict):
    cls = jsonschema.validators.validator_for(schema)  # each schema declares its own draft
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


@pytest.fixture(scope="module")
def fixture_schema() -> dict:
    return json.loads(FIXTURE_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def validator(fixture_schema):
    """Our own schema of the Adaptive Cards 1.5 subset the cards use: present in every checkout."""
    return _validator(fixture_schema)


@pytest.fixture(scope="module")
def official_schema() -> dict:
    if not OFFICIAL_PATH.exists():
        pytest.skip(f"extra check: the official Adaptive Card 1.5 schema is not at {OFFICIAL_PATH}")
    return json.loads(OFFICIAL_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def official(official_schema):
    return _validator(official_schema)


def validate(validator, card: dict) -> None:
    host_neutral = copy.deepcopy(card)
    host_neutral.pop("msteams", None)  # Teams-only key; AdaptiveCard forbids unknown properties
    errors = sorted(validator.iter_errors(host_neutral), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message[:200]}" for e in errors[:5])


def alert(kind: str, **changes) -> Alert:
    base = dict(kind=kind, severity="error" if kind in ("training_failed", "event_rejected") else "info",
                title=f"{kind.replace('_', ' ').capitalize()}: churn", summary=f"What happened for {kind}; why; "
                "what was done.", facts=FACTS[kind],
                links=(("Open job", "https://ml.azure.com/runs/train-churn-v3-a1?wsid=/subscriptions/x"),),
                incident_key=f"{kind}:churn", event_id="evt-1", at=AT)
    base.update(changes)
    return Alert(**base)


def texts(card: dict) -> str:
    return json.dumps(card, ensure_ascii=False)


def test_covers_every_alert_kind():
    assert set(FACTS) == set(ALERT_KINDS)


@pytest.mark.parametrize("resolved", [False, True], ids=["open", "resolved"])
@pytest.mark.parametrize("kind", ALERT_KINDS)
def test_every_kind_validates_against_our_adaptive_cards_schema(validator, kind, resolved):
    card = build_card(alert(kind, resolved=resolved, actor="http:alice", correlation_id="chain-1"),
                      page_url=page_url)
    validate(validator, card)
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.5"
    assert card["msteams"] == {"width": "Full"}
    assert card_size(card) < TEAMS_LIMIT


@pytest.mark.parametrize("kind", ALERT_KINDS)
def test_every_kind_stays_under_28kb_with_a_100kb_detail_and_shows_the_truncation_marker(validator, kind):
    detail = "Traceback (most recent call last):\n" + ("  File \"train.py\", line 1, in <module>\n" * 2600) \
        + "ValueError: the real error is at the end"
    assert len(detail) > 100_000
    card = build_card(alert(kind, detail=detail), page_url=page_url)
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
    card = build_card(huge, page_url=page_url)
    validate(validator, card)
    assert card_size(card) <= MAX_CARD_BYTES


def test_facts_render_as_a_factset_with_the_actor_and_event_once():
    card = build_card(alert("manual_action", actor="alice@example.com", correlation_id="blob-evt-7"))
    factsets = [b for b in card["body"] if b["type"] == "FactSet"]
    assert len(factsets) == 1
    titles = {f["title"]: f["value"] for f in factsets[0]["facts"]}
    assert titles["Endpoint"] == "churn-endpoint"
    assert titles["Event"] == "evt-1" and titles["Chain"] == "blob-evt-7"
    assert "Requested by **alice@example.com**" in texts(card)
    assert "Requested by" not in titles and "By" not in titles, "the requester is shown once, above the facts"


def test_links_become_open_url_actions_and_the_endpoint_page_link_is_added():
    a = alert("deployment_changed", links=(("Open endpoint", "https://ml.azure.com/endpoints/realtime/e/detail"),
                                           ("Relative", "/runs/j"), ("Local path", "C:\\x")))
    card = build_card(a, studio_url="https://ml.azure.com", page_url=page_url)
    actions = [(x["type"], x["title"], x["url"]) for x in card["actions"]]
    assert ("Action.OpenUrl", "Open endpoint", "https://ml.azure.com/endpoints/realtime/e/detail") in actions
    assert ("Action.OpenUrl", "Relative", "https://ml.azure.com/runs/j") in actions
    assert actions[-1] == ("Action.OpenUrl", "Open page", page_url("churn-endpoint"))
    assert all(url.startswith("https://") for _, _, url in actions), "non-URLs are not offered as links"


def test_no_page_link_without_a_builder_and_never_the_key_protected_status_route():
    for kind in ALERT_KINDS:
        card = build_card(alert(kind))
        assert all(a["title"] != "Open page" for a in card["actions"])
        assert "/api/status" not in texts(card)


def test_a_builder_that_gives_no_url_adds_no_link():
    assert all(a["title"] != "Open page" for a in build_card(alert("rollback"), page_url=lambda e: "")["actions"])


def test_at_most_six_actions_keeping_the_page_link():
    links = tuple((f"l{i}", f"https://example.invalid/{i}") for i in range(10))
    actions = build_card(alert("rollback", links=links), page_url=page_url)["actions"]
    assert len(actions) == 6 and actions[-1]["title"] == "Open page"


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


def test_rollback_shows_from_and_to_once_and_the_signal_behind_it():
    card = build_card(alert("rollback", severity="critical"))
    body = card["body"]
    transition = next(b for b in body if b["type"] == "ColumnSet")
    cells = [[i["text"] for i in c["items"]] for c in transition["columns"]]
    assert cells[0] == ["From", "v3-1 10%, v2-1 90%"] and cells[1] == ["→"] and cells[2] == ["To", "v2-1 100%"]
    assert texts(card).count("v3-1 10%, v2-1 90%") == 1 and texts(card).count("v2-1 100%") == 1
    assert "Signal: **psi 0.310 (threshold 0.200) on tenure_months**" in texts(card)


def _dicts(node):
    """Every object in a card, depth first."""
    if isinstance(node, dict):
        yield node
        node = list(node.values())
    if isinstance(node, list):
        for item in node:
            yield from _dicts(item)


def _shown_texts(card: dict) -> list[str]:
    """Every fact title and every column label (From, To, Metric, ...) of the body, in order."""
    out: list[str] = []
    for node in _dicts(card["body"]):
        if node.get("type") == "FactSet":
            out.extend(f["title"] for f in node["facts"])
        elif node.get("type") == "Column" and node.get("items") and node["items"][0].get("type") == "TextBlock":
            out.append(node["items"][0]["text"])
    return out


@pytest.mark.parametrize("kind", ALERT_KINDS)
def test_no_card_shows_a_fact_twice(kind):
    card = build_card(alert(kind, actor="http:alice", correlation_id="c-1"), page_url=page_url)
    labels = [t for t in _shown_texts(card) if t != "→"]
    assert len(labels) == len(set(labels)), labels
    # every text and fact value in the body (the links may name a job again)
    leaves = [v for node in _dicts(card["body"]) for k, v in node.items() if k in ("text", "value")
              and isinstance(v, str)]
    for title, value in FACTS[kind]:
        if title == CHART_FACT:  # drawn as bars, never shown as text
            assert value not in leaves
            continue
        shown = [leaf for leaf in leaves if leaf == value or f"**{value}**" in leaf]
        assert len(shown) == 1, (title, value, shown)


@pytest.mark.parametrize("kind", ALERT_KINDS)
def test_every_card_says_when_why_and_what_to_do_next(kind):
    card = build_card(alert(kind))
    header = card["body"][0]["items"]
    assert header[-1]["text"] == "2026-12-02 15:11:29 UTC"
    labels = [b.get("text") for b in card["body"] if b["type"] == "TextBlock"]
    assert "Why" in labels
    step = next(b for b in card["body"] if b["type"] == "Container" and b["items"][0]["text"] == "Next step")
    assert step["items"][1]["text"] == NEXT_STEPS[kind]


def test_an_alerts_own_next_step_wins_and_a_resolved_alert_needs_nothing():
    own = build_card(alert("training_failed", next_step="Rerun train-churn-v3-a1 after fixing the CSV."))
    assert "Rerun train-churn-v3-a1 after fixing the CSV." in texts(own)
    assert "Nothing to do: the condition cleared." in texts(build_card(alert("drift_detected", resolved=True)))


def test_a_card_without_a_time_has_no_time_line():
    header = build_card(alert("rollback", at=""))["body"][0]["items"]
    assert len(header) == 2


def test_message_payload_is_the_workflows_shape():
    card = build_card(alert("training_started"))
    payload = message_payload(card)
    assert payload == {"type": "message", "attachments": [{
        "contentType": "application/vnd.microsoft.card.adaptive", "content": card}]}


def test_build_card_is_pure():
    a = alert("training_failed", detail="x" * 50_000)
    assert build_card(a, page_url=page_url) == build_card(a, page_url=page_url)


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
    assert "2026-12-02 15:11:29 UTC" in lines[1]
    assert f"Next step: {NEXT_STEPS['training_failed']}" in text
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


BREAKS = ["unknown element", "text not a string", "open-url without url", "factset without facts",
          "bad container style", "not an AdaptiveCard", "unknown property", "bad spacing", "bad size"]


def _break_more(card: dict, how: str) -> dict:
    if how in ("unknown property", "bad spacing", "bad size"):
        broken = copy.deepcopy(card)
        broken.pop("msteams", None)
        block = broken["body"][1]
        if how == "unknown property":
            block["blink"] = True
        elif how == "bad spacing":
            block["spacing"] = "huge"
        else:
            block["size"] = "gigantic"
        return broken
    return _break(card, how)


@pytest.mark.parametrize("how", BREAKS)
def test_our_schema_does_reject_broken_cards(validator, how):
    card = build_card(alert("rollback", severity="critical"), page_url=page_url)
    validate(validator, card)  # the intact card passes ...
    with pytest.raises(AssertionError):  # ... and the same check fails once it is broken
        validate(validator, _break_more(card, how))


def test_host_keys_are_what_the_schema_would_refuse(validator):
    card = build_card(alert("training_started"))
    assert list(validator.iter_errors(card)), "msteams is Teams-only: the schema refuses it"
    validate(validator, card)  # and passes once it is removed, as Teams would read it


# --- the fixture: exactly what the cards use, nothing the official schema refuses ---------------------------

def _used(card: dict, out: dict[str, set[str]]) -> None:
    """Element or action type → the properties the card gives it."""
    def walk(node, as_type: str | None = None):
        if isinstance(node, dict):
            kind = node.get("type") or as_type
            if kind:
                out.setdefault(kind, set()).update(k for k in node if k != "msteams")
            for key, value in node.items():
                if key == "facts":
                    for fact in value:
                        out.setdefault("Fact", set()).update(fact)
                elif key != "msteams":
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)
    walk(card)


def _every_variant() -> list[dict]:
    cards = []
    for kind in ALERT_KINDS:
        for severity in SEVERITIES:
            for resolved in (False, True):
                cards.append(build_card(alert(kind, severity=severity, resolved=resolved, actor="http:alice",
                                              correlation_id="c-1", detail="Traceback: x"), page_url=page_url))
    return cards


def test_the_fixture_allows_exactly_the_properties_our_cards_use(fixture_schema):
    used: dict[str, set[str]] = {}
    for card in _every_variant():
        _used(card, used)
    allowed = {name: set(d["properties"]) for name, d in fixture_schema["definitions"].items() if "properties" in d}
    assert used == allowed


def _samples(schema: dict, definitions: dict) -> list[object]:
    """Every value a property schema of the fixture allows, when it is a finite set; a typical one otherwise."""
    if "$ref" in schema:
        return _samples(definitions[schema["$ref"].split("/")[-1]], definitions)
    if "const" in schema:
        return [schema["const"]]
    if "enum" in schema:
        return list(schema["enum"])
    if "anyOf" in schema:
        return [v for option in schema["anyOf"] for v in _samples(option, definitions)]
    kind = schema.get("type")
    if kind == "string" and "pattern" in schema:
        return ["12px"]  # the one pattern the fixture uses: pixel sizes
    if kind == "boolean":
        return [True, False]
    if kind == "string":
        return ["https://example.invalid/x" if schema.get("format", "").startswith("uri") else "text"]
    if kind == "array":
        return [[]]
    if kind == "number":
        return [0, 2.5]
    raise AssertionError(f"no sample for {schema}")


_MINIMAL = {"TextBlock": {"type": "TextBlock", "text": "t"}, "FactSet": {"type": "FactSet", "facts": []},
            "Container": {"type": "Container", "items": []}, "ColumnSet": {"type": "ColumnSet", "columns": []},
            "Column": {"type": "Column", "items": []}, "Fact": {"title": "t", "value": "v"},
            "Action.OpenUrl": {"type": "Action.OpenUrl", "url": "https://example.invalid/"},
            "AdaptiveCard": {"type": "AdaptiveCard", "version": "1.5"}}


def _in_a_card(name: str, node: dict) -> dict:
    card = {"type": "AdaptiveCard", "version": "1.5", "body": []}
    if name == "AdaptiveCard":
        return node
    if name == "Column":
        card["body"].append({"type": "ColumnSet", "columns": [node]})
    elif name == "Fact":
        card["body"].append({"type": "FactSet", "facts": [node]})
    elif name == "Action.OpenUrl":
        card["actions"] = [node]
    else:
        card["body"].append(node)
    return card


def test_the_fixture_allows_nothing_the_official_schema_refuses(fixture_schema, official_schema, official):
    definitions = fixture_schema["definitions"]
    theirs = official_schema["definitions"]
    refused = []
    for name, mine in definitions.items():
        if "properties" not in mine:
            continue
        assert set(mine["properties"]) <= set(theirs[name]["properties"]), name
        assert set(theirs[name].get("required", [])) <= set(mine.get("required", [])), name
        for prop, schema in mine["properties"].items():
            for value in _samples(schema, definitions):
                node = {**_MINIMAL[name], prop: value}
                errors = list(official.iter_errors(_in_a_card(name, node)))
                if errors:
                    refused.append((name, prop, value, errors[0].message[:120]))
    assert not refused, refused


def test_the_fixture_and_the_official_schema_agree_on_every_card(official, validator):
    for card in _every_variant():
        validate(validator, card)
        validate(official, card)


def test_sizes_of_every_kind_are_far_below_the_limit_without_detail():
    sizes = {kind: card_size(build_card(alert(kind), page_url=page_url)) for kind in ALERT_KINDS}
    assert max(sizes.values()) < 8 * 1024, sizes

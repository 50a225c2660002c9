"""The model_degraded card leads with live against training metrics and the AUC drop."""
import json

from shared.cards import build_card, render_text
from shared.domain import Alert

FACTS = (("Endpoint", "churn-endpoint"), ("Deployment", "churn-model-v3"), ("Live AUC", "0.612"),
         ("Training AUC", "0.842"), ("AUC drop", "0.230 (tolerance 0.05)"), ("Live logloss", "0.701"),
         ("Training logloss", "0.412"), ("Labelled predictions", "300"))


def _columns(card):
    for element in card["body"]:
        for item in element.get("items", [element]):
            if item.get("type") == "ColumnSet" and item["columns"][0]["items"][0]["text"] == "Metric":
                return [[t["text"] for t in c["items"]] for c in item["columns"]]
    return None


def test_the_card_compares_live_with_training_and_names_the_drop():
    card = build_card(Alert(kind="model_degraded", severity="warning", title="Model degraded: churn-endpoint",
                            summary="live AUC fell", facts=FACTS))
    assert _columns(card) == [["Metric", "AUC", "Log loss"], ["Live", "0.612", "0.701"],
                              ["Training", "0.842", "0.412"]]
    assert "AUC drop: **0.230 (tolerance 0.05)** over 300 labelled predictions" in json.dumps(card)
    assert "Model degraded (ground truth)" in json.dumps(card, ensure_ascii=False)
    assert "Model degraded (ground truth)" in render_text(Alert(kind="model_degraded", severity="warning", title="t",
                                                  summary="s", facts=FACTS))


def test_without_live_metrics_there_is_no_table():
    card = build_card(Alert(kind="model_degraded", severity="warning", title="t", summary="s",
                            facts=(("Endpoint", "e"),)))
    assert _columns(card) is None

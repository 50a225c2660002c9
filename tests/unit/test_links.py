"""Studio deep links in the studio's own URL forms, per cloud; none on the embedded backend."""
from __future__ import annotations

import dataclasses

from shared.config import Settings
from shared.links import page_link, studio_links

WSID = ("?wsid=/subscriptions/0000-sub/resourceGroups/rg-ml/providers/Microsoft.MachineLearningServices"
        "/workspaces/ws-churn")


def azure(**changes) -> Settings:
    return dataclasses.replace(Settings(), backend="azure", subscription_id="0000-sub", resource_group="rg-ml",
                               workspace="ws-churn", **changes)


def test_job_model_and_endpoint_links_in_the_public_cloud():
    links = dict(studio_links(azure(), job="train-churn-v3-a1", model="churn-model:3", endpoint="churn-endpoint"))
    assert links == {
        "Open job": f"https://ml.azure.com/runs/train-churn-v3-a1{WSID}",
        "Open model": f"https://ml.azure.com/model/churn-model:3/details{WSID}",
        "Open endpoint": f"https://ml.azure.com/endpoints/realtime/churn-endpoint/detail{WSID}",
    }


def test_a_model_given_as_name_slash_version_links_the_same_page():
    assert studio_links(azure(), model="churn-model/3") == studio_links(azure(), model="churn-model:3")


def test_sovereign_clouds_use_their_own_studio():
    links = studio_links(azure(studio_url="https://ml.azure.us/"), job="j1")
    assert links == (("Open job", f"https://ml.azure.us/runs/j1{WSID}"),)


def test_the_embedded_backend_and_an_unnamed_workspace_have_no_studio_links():
    assert studio_links(Settings(), job="j1", model="m:1", endpoint="e") == ()
    assert studio_links(dataclasses.replace(azure(), workspace=""), job="j1") == ()


def test_names_are_escaped_in_the_path():
    (_, url), = studio_links(azure(), job="a b/c")
    assert url.startswith("https://ml.azure.com/runs/a%20b%2Fc?wsid=")


def test_the_page_link_comes_from_the_wired_builder_only():
    assert page_link("churn-endpoint", None) is None
    assert page_link("", lambda e: "https://x.invalid/p") is None
    assert page_link("churn-endpoint", lambda e: f"https://app.invalid/api/endpoints/{e}") == \
        ("Open page", "https://app.invalid/api/endpoints/churn-endpoint")
    assert page_link("churn-endpoint", lambda e: "javascript:alert(1)") is None

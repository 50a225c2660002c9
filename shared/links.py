"""Where a person looks next: Azure ML studio deep links, and the one place a card's "open page" link is built.

Studio addresses (the forms the studio itself uses, with the workspace named by ``wsid``):

    job        {studio}/runs/{job}?wsid=...
    model      {studio}/model/{name}:{version}/details?wsid=...
    endpoint   {studio}/endpoints/realtime/{endpoint}/detail?wsid=...

``{studio}`` is ``settings.studio_url`` (https://ml.azure.com, or the sovereign cloud's studio). The embedded
backend has no studio: it gets no studio links at all.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

Link = tuple[str, str]


def workspace_id(settings: Any) -> str:
    """The ``wsid`` value: the workspace's ARM id."""
    return (f"/subscriptions/{settings.subscription_id}/resourceGroups/{settings.resource_group}"
            f"/providers/Microsoft.MachineLearningServices/workspaces/{settings.workspace}")


def studio_links(settings: Any, *, job: str = "", model: str = "", endpoint: str = "") -> tuple[Link, ...]:
    """("Open job" | "Open model" | "Open endpoint", url) for the named resources; () on the local backend or
    when the workspace is not named. ``model`` is "name:version" (or "name/version")."""
    if getattr(settings, "backend", "local") != "azure" or not settings.workspace:
        return ()
    base = (settings.studio_url or "").rstrip("/")
    if not base.startswith("https://"):
        return ()
    wsid = "?wsid=" + workspace_id(settings)
    out: list[Link] = []
    if job:
        out.append(("Open job", f"{base}/runs/{quote(job, safe='')}{wsid}"))
    if model:
        name, sep, version = model.replace("/", ":").rpartition(":")
        ref = f"{quote(name, safe='')}:{quote(version, safe='')}" if sep else quote(model, safe="")
        out.append(("Open model", f"{base}/model/{ref}/details{wsid}"))
    if endpoint:
        out.append(("Open endpoint", f"{base}/endpoints/realtime/{quote(endpoint, safe='')}/detail{wsid}"))
    return tuple(out)


# --- the "open page" link -------------------------------------------------------------------------------
#
# Cards never link to key-protected routes (GET /api/status answers 401 to a browser). The endpoint page (the
# lineage page, served by its own route and protected like the approval page) is the operator's way in; its URL
# builder lives with that page. Wire it here, once: ``PageLink`` takes an endpoint name and returns the page's
# absolute URL, or "" when there is none. Until it is wired, cards carry no page link.

PageLink = Callable[[str], str]


def page_link(endpoint: str, builder: PageLink | None) -> Link | None:
    """("Open page", url) for ``endpoint`` when a builder is wired and gives an http(s) URL; else None."""
    if not endpoint or builder is None:
        return None
    url = builder(endpoint) or ""
    return ("Open page", url) if url.startswith(("https://", "http://")) else None

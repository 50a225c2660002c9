"""`mlops`: the command line for people on call. The same commands against the local stack and against Azure.

It reads through the ports the app itself uses (shared/bootstrap.py wires them from the same MLOPS_* settings):
the workspace, the state records, the audit trail and the ledger. Against the local stack it opens them as an
observer (the served app owns the jobs); what changes something (land, replay, approve, reject) goes through the
running app over HTTP, so it is checked and recorded exactly as any other request.

Exit codes: 0 ok, 1 not found or failed, 2 usage or configuration error.
"""
from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.tree import Tree

OK, FAILED, USAGE = 0, 1, 2
app = typer.Typer(name="mlops", help="Operate mlops-reflex, locally or in Azure, with the same commands.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


class Fail(Exception):
    """A command's own failure: message and exit code."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Session:
    """What one invocation works with: the settings and, built on first use, the runtime (its ports)."""

    runtime: Any = None
    settings: Any = None
    credential: Any = None  # azure: None = DefaultAzureCredential (your az login); tests pass their own
    as_json: bool = False
    console: Console = field(default_factory=lambda: Console(highlight=False, soft_wrap=True))
    built: bool = False

    def config(self):
        if self.settings is None:
            if self.runtime is not None:
                self.settings = self.runtime.settings
            else:
                from shared.config import Settings

                self.settings = Settings.from_env()
        return self.settings

    def ports(self):
        if self.runtime is None:
            settings = self.config()
            from shared.bootstrap import build

            if settings.backend == "local":
                from shared.local.workspace import WORKSPACE_DIR, LocalWorkspace

                if not settings.home.exists():
                    raise Fail(f"no local stack at MLOPS_HOME={settings.home}: start `make serve` (or set "
                               "MLOPS_HOME)", USAGE)
                self.runtime = build(settings, workspace=LocalWorkspace(settings.home / WORKSPACE_DIR, readonly=True),
                                     notifier=_Unused())
            else:
                self.runtime = build(settings, notifier=_Unused())
            self.built = True
        return self.runtime

    def close(self) -> None:
        if self.built and self.runtime is not None:
            self.runtime.close()

    def emit(self, data: Any, render: Callable[[], None]) -> None:
        if self.as_json:
            self.console.print_json(json.dumps(data, default=str))
        else:
            render()


class _Unused:
    """The CLI reads; it never sends an alert (the bus it would send through is not used)."""

    def notify(self, alert) -> None:  # pragma: no cover - nothing calls it
        raise RuntimeError("the mlops CLI sends no alerts")


def _session(ctx: typer.Context) -> Session:
    return ctx.obj


def handled(fn: Callable) -> Callable:
    """Map the app's errors to exit codes and one clear line (no traceback)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        from shared.errors import InvalidPayload, NotFound, PermanentError, TransientError

        ctx = kwargs.get("ctx") or next(a for a in args if isinstance(a, typer.Context))
        err = Console(stderr=True, highlight=False, soft_wrap=True)
        try:
            fn(*args, **kwargs)
        except Fail as error:
            err.print(f"error: {error}", markup=False)
            raise typer.Exit(error.code) from None
        except NotFound as error:
            err.print(f"not found: {error}", markup=False)
            raise typer.Exit(FAILED) from None
        except (InvalidPayload, ValueError) as error:
            err.print(f"error: {error}", markup=False)
            raise typer.Exit(USAGE) from None
        except TransientError as error:
            err.print(f"unavailable, try again: {error}", markup=False)
            raise typer.Exit(FAILED) from None
        except PermanentError as error:  # e.g. a service's 4xx (ServiceRejected): its own message, no traceback
            err.print(f"failed: {error}", markup=False)
            raise typer.Exit(FAILED) from None
        finally:
            _session(ctx).close()

    return run


@app.callback()
def main_options(ctx: typer.Context,
                 as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables")) -> None:
    """Operate mlops-reflex: status, lineage, audit, events, approvals, land and watch."""
    from shared.bootstrap import Runtime

    obj = ctx.obj
    session = obj if isinstance(obj, Session) else Session(runtime=obj if isinstance(obj, Runtime) else None)
    session.as_json = as_json
    ctx.obj = session


# --- status ------------------------------------------------------------------------------------------------

@app.command()
@handled
def status(ctx: typer.Context, endpoint: str = typer.Argument(None, help="one endpoint (default: all)"),
           limit: int = typer.Option(10, "--limit", min=1, max=500, help="recent decisions listed")) -> None:
    """Endpoints with their state record (stable, canary, weights, phase, pending), running jobs, the ledger."""
    from shared.pages import page_url
    from shared.views import status as snapshot

    s = _session(ctx)
    rt = s.ports()
    snap = snapshot(rt.workspace, rt.audit, rt.ledger, states=rt.states, decisions=limit, endpoint=endpoint)
    for ep in snap["endpoints"]:
        state = rt.states.load(ep["name"])
        ep["pending"] = _pending(state)
        ep["page"] = page_url(rt.settings, ep["name"]) or None
    if endpoint and not snap["endpoints"]:
        raise Fail(f"endpoint {endpoint} is unknown")

    def render() -> None:
        table = Table(title="Endpoints")
        for col in ("endpoint", "phase", "stable", "canary", "weights", "pending"):
            table.add_column(col)
        for ep in snap["endpoints"]:
            r = ep["rollout"] or {}
            weights = ", ".join(f"{k} {v}%" for k, v in ep["traffic"].items()) or "no traffic"
            waiting = r.get("awaiting_approval")
            table.add_row(ep["name"], r.get("phase", "—") + (" (held)" if r.get("held") else ""),
                          r.get("stable") or "—", (r.get("canary") or "—") + (f" {r['canary_weight']}%"
                                                                             if r.get("canary") else ""),
                          weights, ep["pending"] or (f"approval of {waiting['model']}" if waiting else "—"))
        s.console.print(table if snap["endpoints"] else "no endpoint yet")
        for ep in snap["endpoints"]:
            if ep["page"]:
                s.console.print(f"page: {ep['page']}", markup=False)
        if snap["running_jobs"]:
            jobs = Table(title="Running jobs")
            for col in ("job", "status", "attempt", "data"):
                jobs.add_column(col)
            for j in snap["running_jobs"]:
                jobs.add_row(j["name"], j["status"], str(j["attempt"]), j["data"])
            s.console.print(jobs)
        s.console.print("ledger: " + ", ".join(f"{k} {v}" for k, v in sorted(snap["ledger"].items())), markup=False)

    s.emit(snap, render)


def _pending(state) -> str:
    """A committed transition whose effects are not all carried out yet (the controller finishes it)."""
    if state is None or not state.pending:
        return ""
    p = state.pending
    return str(p.get("action") or p.get("kind") or "transition") + " in progress" if isinstance(p, dict) else "yes"


# --- lineage -----------------------------------------------------------------------------------------------

@app.command()
@handled
def lineage(ctx: typer.Context, model: str = typer.Argument(..., metavar="MODEL[:VERSION]",
                                                            help="a model, or one version of it (default: newest)")
            ) -> None:
    """Data asset version → training job → model version → deployment → approver."""
    from shared.lineage import lineage as chain
    from shared.lineage import resolve_model

    s = _session(ctx)
    rt = s.ports()
    found = chain(rt.workspace, rt.audit, resolve_model(rt.workspace, model))

    def render() -> None:
        # data → job → model nest (each made the next); the model's deployments and its approver hang off it.
        tree = Tree(f"[bold]{_esc(found.model)}:{_esc(found.version)}[/bold]  gate {_esc(found.gate or '?')}")
        node = tree
        for link in found.links:
            mark = "" if link.found else " [dim](missing)[/dim]"
            label = f"[cyan]{link.kind}[/cyan] {_esc(link.name)}{mark}"
            if link.detail:
                label += f"  [dim]{_esc(link.detail)}[/dim]"
            if link.kind in ("deployment", "approver"):
                node.add(label)
            else:
                node = node.add(label)
        s.console.print(tree)

    s.emit(found.as_dict(), render)


def _esc(text: str) -> str:
    from rich.markup import escape

    return escape(text)


# --- audit -------------------------------------------------------------------------------------------------

@app.command()
@handled
def audit(ctx: typer.Context,
          endpoint: str = typer.Option(None, "--endpoint", "-e", help="only decisions about this endpoint (or "
                                                                      "model, asset, job)"),
          since: str = typer.Option(None, "--since", help="30m, 2h, 7d or an ISO time"),
          limit: int = typer.Option(20, "--limit", min=1, max=1000),
          decision: list[str] = typer.Option(None, "--decision", help="only these decisions (repeatable)")) -> None:
    """The audit trail, newest first: who decided what, why, and what it changed."""
    from shared.lineage import parse_since
    from shared.redact import redact

    s = _session(ctx)
    after = parse_since(since, datetime.now(timezone.utc)) if since else None
    rt = s.ports()
    records = rt.audit.recent(limit=limit, subject=endpoint or None, since=after, decisions=decision or None)
    rows = [{"at": r.at.isoformat(timespec="seconds") if r.at else None, "event_id": r.event_id,
             "message": r.message, "decision": r.decision, "actor": r.actor, "reason": redact(r.reason),
             "resources": list(r.resources)} for r in records]

    def render() -> None:
        if not rows:
            s.console.print("no decision recorded" + (f" about {endpoint}" if endpoint else ""), markup=False)
            return
        table = Table(title="Audit trail")
        for col in ("at", "decision", "message", "actor", "reason"):
            table.add_column(col, overflow="fold")
        for r in rows:
            table.add_row(r["at"] or "", r["decision"], r["message"], r["actor"], _esc(r["reason"]))
        s.console.print(table)

    s.emit(rows, render)


# --- events ------------------------------------------------------------------------------------------------

@app.command()
@handled
def events(ctx: typer.Context, limit: int = typer.Option(20, "--limit", min=1, max=1000),
           outcome: list[str] = typer.Option(None, "--outcome", help="only these outcomes, e.g. failed, rejected"),
           dead_letter_dir: Path = typer.Option(None, "--dead-letter-dir",
                                                help="local: default $MLOPS_HOME/deadletter")) -> None:
    """The ledger (each event's outcome), parked alerts and dead-lettered events."""
    s = _session(ctx)
    rt = s.ports()
    rows_of = getattr(rt.ledger, "rows", None)
    rows = rows_of(limit=limit, outcomes=outcome or None) if callable(rows_of) else []
    parked_of = getattr(rt.ledger, "parked", None)
    parked = [{"key": k, "attempts": a} for k, _, a in (parked_of(limit=limit) if callable(parked_of) else [])]
    dead = _dead_letters(rt.settings, dead_letter_dir, rt)
    data = {"stats": rt.ledger.stats(), "rows": rows, "parked": parked, "dead_letters": dead}

    def render() -> None:
        s.console.print("ledger: " + ", ".join(f"{k} {v}" for k, v in sorted(data["stats"].items())), markup=False)
        table = Table(title="Ledger")
        for col in ("updated", "key", "event type", "outcome", "attempts", "dups", "reason"):
            table.add_column(col, overflow="fold")
        for r in rows:
            table.add_row(r["updated_at"][:19], _esc(r["key"]), r["event_type"], r["outcome"], str(r["attempts"]),
                          str(r["duplicates"]), _esc(r["reason"][:120]))
        s.console.print(table)
        if parked:
            s.console.print(f"parked (the outbox sweep retries them): {len(parked)}", markup=False)
        s.console.print(f"dead letters: {len(dead)}" + ("" if not dead else " (mlops replay delivers them again)"),
                        markup=False)
        for d in dead:
            s.console.print(f"  {d['subscription']}  {d['id']}  {d['eventType']}  {d['reason']}", markup=False)

    s.emit(data, render)


def _dead_letters(settings, folder: Path | None, rt) -> list[dict]:
    """Local: the dead-letter files the local Event Grid wrote. Azure: the blobs in the dead-letter container of
    the storage account that holds the ledger tables (infra/app/storage.bicep), read with the same credential."""
    if settings.backend == "local":
        root = folder or settings.home / "deadletter"
        out = []
        for path in sorted(root.glob("*/*.json")) if root.is_dir() else []:
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            out.append({"subscription": path.parent.name, "id": str(record.get("id", "")),
                        "eventType": str(record.get("eventType", "")),
                        "reason": str(record.get("deadLetterReason", "")), "file": str(path)})
        return out
    from shared.local import subscriptions as subs

    containers = {s.dead_letter_container for s in subs.load() if s.dead_letter_container}
    blob_service = getattr(rt, "deps", {}).get("dead_letter_blobs")
    if blob_service is None:
        from azure.storage.blob import BlobServiceClient

        blob_service = BlobServiceClient(dead_letter_account_url(settings.ledger_table_uri), credential=rt.credential)
    from shared.adapters.errors import translated

    out = []
    for container in sorted(containers):
        client = blob_service.get_container_client(container)
        with translated(f"list the dead letters in {container}"):
            blobs = list(client.list_blobs())
        for blob in blobs:
            # Event Grid writes each dead letter as a JSON array of events, each with its deadLetterReason.
            try:
                with translated(f"read the dead letter {blob.name}"):
                    body = json.loads(client.download_blob(blob.name).readall())
            except ValueError:
                body = []
            for event in body if isinstance(body, list) else [body]:
                if isinstance(event, dict):
                    out.append({"subscription": blob.name.rsplit("/", 1)[0], "id": str(event.get("id", "")),
                                "eventType": str(event.get("eventType", "")),
                                "reason": str(event.get("deadLetterReason", "")),
                                "file": f"{container}/{blob.name}"})
    return out


def dead_letter_account_url(ledger_table_uri: str) -> str:
    """The blob endpoint of the storage account whose table endpoint holds the ledger (the dead-letter container
    lives in the same account, infra/app/storage.bicep)."""
    from urllib.parse import urlsplit

    parts = urlsplit(ledger_table_uri)
    host = parts.netloc.replace(".table.", ".blob.", 1)
    if host == parts.netloc:
        raise Fail(f"cannot tell the blob endpoint from MLOPS_LEDGER__tableServiceUri={ledger_table_uri!r}", USAGE)
    return f"{parts.scheme}://{host}"


# --- replay, land: through the running app --------------------------------------------------------------------

def _local_cli(args: list[str]) -> int:
    from shared.local import cli

    return cli.main(args, configure_logging=False)  # mlops set up its own logging (main)


def _target_args(url: str | None, key: str | None) -> list[str]:
    return [*(["--url", url] if url else []), *(["--key", key] if key else [])]


@app.command()
@handled
def replay(ctx: typer.Context, subscription: str = typer.Option(None, "--subscription"),
           url: str = typer.Option(None, "--url", help="the running host (default: what `make serve` recorded)"),
           key: str = typer.Option(None, "--key", help="its function key (default: what `make serve` recorded)")
           ) -> None:
    """Deliver dead-lettered events again (local stack); in Azure the outbox sweep retries parked alerts."""
    s = _session(ctx)
    if s.config().backend != "local":
        raise Fail("replaying Event Grid dead letters runs against the local stack; in Azure, `mlops events` lists "
                   "them and the outbox_sweep timer retries parked alerts every 5 minutes (docs/cli.md)", USAGE)
    code = _local_cli(["replay", *(["--subscription", subscription] if subscription else []),
                       *_target_args(url, key)])
    if code:
        raise typer.Exit(code)


@app.command()
@handled
def land(ctx: typer.Context, asset: str = typer.Argument(..., help="data asset name, e.g. churn"),
         version: str = typer.Argument(..., help="data asset version, e.g. 1 or 2026-12-01"),
         file: Path = typer.Argument(None, help="the file (default: a generated churn table)"),
         rows: int = typer.Option(3000, "--rows"), seed: int = typer.Option(None, "--seed"),
         drift: float = typer.Option(0.0, "--drift", min=0.0, max=1.0),
         url: str = typer.Option(None, "--url"), key: str = typer.Option(None, "--key"),
         account_url: str = typer.Option(None, "--account-url",
                                         help="azure: the landing account's blob endpoint (default: from "
                                              "MLOPS_DATASTORE_ACCOUNT and MLOPS_AZURE_CLOUD)")) -> None:
    """Land a file in the landing container (local stack: the BlobCreated event reaches the running app)."""
    s = _session(ctx)
    settings = s.config()
    if settings.backend == "local":
        code = _local_cli(["land", asset, version, *([str(file)] if file else []), "--rows", str(rows),
                           *(["--seed", str(seed)] if seed is not None else []), "--drift", str(drift),
                           *_target_args(url, key)])
        if code:
            raise typer.Exit(code)
        s.console.print(f"follow it: mlops watch {asset}:{version}", markup=False)
        return
    if file is None or not file.is_file():
        raise Fail(f"in Azure, land takes the file to upload{f' (no such file: {file})' if file else ''}", USAGE)
    if not (account_url or settings.datastore_account):
        raise Fail("MLOPS_DATASTORE_ACCOUNT must name the landing storage account (or pass --account-url)", USAGE)
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.blob import BlobServiceClient

    from shared import eventgrid
    from shared.adapters import identity

    eventgrid.validate_asset(asset, "asset")
    eventgrid.validate_version(version, "version")
    blob = f"{asset}/{version}/{file.name}"
    base = account_url or f"https://{settings.datastore_account}.blob.{STORAGE_SUFFIX[settings.azure_cloud]}"
    service = BlobServiceClient(base, credential=s.credential or identity.credential(settings))
    from shared.adapters.errors import translated

    try:
        with translated(f"upload {settings.landing_container}/{blob}"), file.open("rb") as data:
            # Never overwrite: a data version is immutable, and a second BlobCreated would retrain on other bytes.
            try:
                service.get_blob_client(settings.landing_container, blob).upload_blob(data, overwrite=False)
            except ResourceExistsError:
                raise Fail(f"{settings.landing_container}/{blob} already exists: a data version is immutable, "
                           f"land the file as a new version (e.g. {asset} {version}-2)") from None
    finally:
        service.close()
    s.console.print(f"landed {settings.landing_container}/{blob}; follow it: mlops watch {asset}:{version}",
                    markup=False)


# The storage endpoint suffix of each Azure cloud (MLOPS_AZURE_CLOUD).
STORAGE_SUFFIX = {"AzureCloud": "core.windows.net", "AzureUSGovernment": "core.usgovcloudapi.net",
                  "AzureChinaCloud": "core.chinacloudapi.cn"}


# --- approve / reject: the app's approval route, as a named person ---------------------------------------------

def _decide(ctx: typer.Context, endpoint: str, reason: str, decision: str, url: str | None, token: str | None,
            user: str | None) -> None:
    import httpx

    s = _session(ctx)
    rt = s.ports()
    state = rt.states.load(endpoint)
    if state is None or state.candidate is None:
        raise Fail(f"nothing on {endpoint} waits for approval")
    base = url or rt.settings.public_url or _recorded_url(rt.settings)
    if not base:
        raise Fail("no app URL: pass --url, or set MLOPS_PUBLIC_URL", USAGE)
    token = token or os.environ.get("MLOPS_TOKEN")
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if user:
        headers["X-Local-User"] = user  # the local host's simulated App Service Authentication (serve --easy-auth)
    r = httpx.post(f"{base.rstrip('/')}/api/approvals/{state.candidate.approval_id}", headers=headers,
                   json={"decision": decision, "reason": reason}, timeout=120)
    if r.status_code != 202:
        try:
            why = r.json().get("error", r.text)
        except ValueError:
            why = r.text
        raise Fail(f"{decision} refused ({r.status_code}): {why}")
    s.emit(r.json(), lambda: s.console.print(
        f"{decision}d {state.candidate.model}:{state.candidate.version} on {endpoint}", markup=False))


def _recorded_url(settings) -> str:
    from shared.local.cli import RUNTIME_FILE

    path = settings.home / RUNTIME_FILE
    if settings.backend == "local" and path.exists():
        return str(json.loads(path.read_text(encoding="utf-8")).get("url", ""))
    return ""


_TOKEN_HELP = "Entra ID access token (default $MLOPS_TOKEN), e.g. $(az account get-access-token --resource <aud> " \
              "--query accessToken -o tsv)"


@app.command()
@handled
def approve(ctx: typer.Context, endpoint: str = typer.Argument(...),
            reason: str = typer.Option(..., "--reason", "-r"), url: str = typer.Option(None, "--url"),
            token: str = typer.Option(None, "--token", help=_TOKEN_HELP),
            user: str = typer.Option(None, "--user", help="local stack with `serve --easy-auth`: who you are")) -> None:
    """Approve the model that waits on ENDPOINT, as a named person (the app checks who you are)."""
    _decide(ctx, endpoint, reason, "approve", url, token, user)


@app.command()
@handled
def reject(ctx: typer.Context, endpoint: str = typer.Argument(...),
           reason: str = typer.Option(..., "--reason", "-r"), url: str = typer.Option(None, "--url"),
           token: str = typer.Option(None, "--token", help=_TOKEN_HELP),
           user: str = typer.Option(None, "--user", help="local stack with `serve --easy-auth`: who you are")) -> None:
    """Reject the model that waits on ENDPOINT, as a named person."""
    _decide(ctx, endpoint, reason, "reject", url, token, user)


# --- watch ---------------------------------------------------------------------------------------------------

@dataclass
class Chain:
    """Where a data version's chain stands: one line per hop, and whether (and how) it settled."""

    data: str = "waiting for the data version"
    job: str = "waiting"
    model: str = "waiting"
    rollout: str = "waiting"
    settled: str = ""  # "" while in flight; else the outcome
    ok: bool = False


def follow(rt, asset: str, version: str) -> Chain:
    """One look at the chain data version → job → model → rollout, through the ports."""
    from shared.domain import TAG_ASSET, TAG_DATA_VERSION, JobStatus
    from shared.errors import NotFound

    c = Chain()
    try:
        data = rt.workspace.get_data(asset, version)
        c.data = f"registered {asset}:{version}"
    except NotFound:
        refused = rt.audit.recent(limit=5, subject=asset, decisions=["reject", "refuse"])
        mine = [r for r in refused if str(r.facts.get("version", "")) == version]
        if mine:
            c.data, c.settled = f"refused: {mine[0].reason}", "the data version was refused"
        return c
    del data
    jobs = rt.workspace.list_jobs(tags={TAG_ASSET: asset, TAG_DATA_VERSION: version})
    if not jobs:
        return c
    job = jobs[0]
    c.job = f"{job.name} {job.status.value}"
    model_name = rt.settings.model_for(asset)
    model = next((m for m in rt.workspace.list_models(model_name)
                  if m.tags.get(TAG_DATA_VERSION) == version and m.tags.get(TAG_ASSET, asset) == asset), None)
    if model is None:
        if job.status in (JobStatus.FAILED, JobStatus.CANCELED) and job.attempt >= rt.settings.policy.max_attempts:
            c.settled = f"training failed after {job.attempt} attempts"
        elif job.status is JobStatus.COMPLETED:
            verdict = [r for r in rt.audit.recent(limit=20, subject=job.name) if r.decision in ("reject", "approve")]
            if verdict and verdict[0].decision == "reject":
                c.model, c.settled = f"rejected by the gate: {verdict[0].reason}", "the gate rejected the model"
        return c
    ref = f"{model.name}:{model.version}"
    c.model = f"{ref} gate {model.tags.get('mlops_gate', '?')}"
    state = rt.states.load(rt.settings.endpoint_for(asset))
    if state is None:
        return c
    if state.candidate is not None and f"{state.candidate.model}:{state.candidate.version}" == ref:
        c.rollout, c.settled, c.ok = "awaiting approval by a named person", "awaiting approval", True
    elif state.canary_model == ref:
        c.rollout = f"canary {state.canary} at {state.weight}% ({state.phase.value})"
    elif state.stable_model == ref and state.phase.completed and not state.pending:
        c.rollout, c.settled, c.ok = f"{state.stable} serves 100% ({state.phase.value})", "deployed", True
    elif _deployments_of(rt, state.endpoint, model) & set(state.rolled_back) and state.phase.completed:
        c.rollout, c.settled = f"rolled back ({state.phase.value})", "rolled back"
    return c


def _deployments_of(rt, endpoint: str, model) -> set[str]:
    ep = rt.workspace.get_endpoint(endpoint)
    return {d.name for d in (ep.deployments if ep else ()) if (d.model_name, d.model_version) == (model.name,
                                                                                               model.version)}


@app.command()
@handled
def watch(ctx: typer.Context, ref: str = typer.Argument(..., metavar="ASSET:VERSION"),
          timeout: float = typer.Option(600.0, "--timeout", min=1, help="seconds to wait for the chain to settle"),
          interval: float = typer.Option(1.0, "--interval", min=0.05, help="seconds between looks")) -> None:
    """Follow a data version's chain (data → job → model → rollout) until it settles; exit 1 on timeout or failure."""
    asset, sep, version = ref.partition(":")
    if not sep or not asset or not version:
        raise Fail(f"watch takes ASSET:VERSION, not {ref!r}", USAGE)
    s = _session(ctx)
    rt = s.ports()
    deadline = time.monotonic() + timeout
    hops = ("data", "job", "model", "rollout")
    with Progress(SpinnerColumn(), TextColumn("{task.fields[hop]:8}"), TextColumn("{task.description}"),
                  TimeElapsedColumn(), console=s.console, transient=False, disable=s.as_json) as progress:
        tasks = {h: progress.add_task("waiting", total=1, hop=h) for h in hops}
        while True:
            c = follow(rt, asset, version)
            for h in hops:
                text = getattr(c, h)
                done = not text.startswith("waiting") and (h != "job" or " Completed" in text or bool(c.settled))
                progress.update(tasks[h], description=text, completed=1 if done else 0)
            if c.settled or time.monotonic() >= deadline:
                break
            time.sleep(interval)
    result = {"asset": asset, "version": version, "data": c.data, "job": c.job, "model": c.model,
              "rollout": c.rollout, "settled": c.settled or None}
    if s.as_json:
        s.console.print_json(json.dumps(result))
    if not c.settled:
        raise Fail(f"{asset}:{version} did not settle within {timeout:g} s (last: {c.rollout})")
    if not c.ok:
        raise Fail(f"{asset}:{version}: {c.settled}")
    if not s.as_json:
        s.console.print(f"settled: {c.settled}", markup=False)


# --- check-config --------------------------------------------------------------------------------------------

def config_problems(environ: dict[str, str]) -> list:
    """Every problem with the MLOPS_* settings at once (shared.config.check: invalid values, what the backend
    needs, names that are not settings), errors first."""
    from shared.config import check

    return check(environ)


@app.command("check-config")
def check_config(ctx: typer.Context) -> None:
    """Check every MLOPS_* setting at once; exit 2 naming all the problems."""
    s = _session(ctx)
    problems = config_problems(dict(os.environ))
    errors = [p for p in problems if p.severity == "error"]
    if problems:
        Console(stderr=True, highlight=False, soft_wrap=True).print(
            f"{len(errors)} error(s), {len(problems) - len(errors)} warning(s) in the settings:\n"
            + "\n".join(f"  - {'' if p.severity == 'error' else 'warning: '}{p.message}" for p in problems),
            markup=False)
    if errors:
        raise typer.Exit(USAGE)
    from shared.config import Settings

    settings = Settings.from_env()
    s.emit({"backend": settings.backend, "ok": True},
           lambda: s.console.print(f"settings ok (backend {settings.backend})", markup=False))


def main() -> None:
    """The console script `mlops`."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()

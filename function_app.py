"""Azure Functions entry points (Python v2 model). Thin triggers: payload → message → bus → response.

Importing this module does no I/O and imports no heavy SDK: the host indexes it on every cold start.
"""
from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import math
import threading
import uuid

import azure.functions as func

from shared import eventgrid, logs
from shared.errors import InvalidPayload, TransientError
from shared.messages import AdvanceRollouts, DecideApproval, DriftDetected, RerunJob, RollBack, StartTraining
from shared.redact import redact
from shared.retry import (
    DRIFT_MONITOR_SECONDS,
    EVENT_GRID_SECONDS,
    HTTP_SECONDS,
    ROLLOUT_TICK_SECONDS,
    SWEEP_SECONDS,
    within,
)

logger = logging.getLogger(__name__)
app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
_runtime = None
_runtime_lock = threading.Lock()


class NotConfigured(TransientError):
    """The app's settings are missing or invalid: nothing can run until they are fixed (which restarts the app).
    Transient for Event Grid (it redelivers once the settings are fixed); HTTP answers 503 naming the problems."""

    def __init__(self, error: InvalidPayload) -> None:
        super().__init__(f"the app is not configured: {error}")
        self.problems = [str(p) for p in getattr(error, "problems", [])] or [str(error)]


_config_error: NotConfigured | None = None


def runtime():
    """The wired app, built on first use and kept for the life of the worker. Settings that are missing or invalid
    are logged once, as one error naming them all; every later call raises NotConfigured without building again."""
    global _runtime, _config_error
    if _runtime is None:
        with _runtime_lock:  # the worker runs sync functions on a thread pool: build once, not once per thread
            if _config_error is not None:
                raise _config_error
            if _runtime is None:
                from shared.bootstrap import build
                from shared.config import SETTING_NAMES, SettingsError

                logs.setup_azure()  # Application Insights via OpenTelemetry, when its connection string is set
                try:
                    _runtime = build()
                except InvalidPayload as error:
                    if not isinstance(error, SettingsError) and getattr(error, "field", None) not in SETTING_NAMES:
                        raise  # not a setting: a bug, with its traceback
                    from shared.config import check

                    # Every problem at once (invalid values, what the backend lacks), not only the first found.
                    errors = [p for p in check() if p.severity == "error"] or getattr(error, "problems", [])
                    _config_error = NotConfigured(SettingsError(errors) if errors else error)
                    logger.error("%s", _config_error)  # once per worker, no traceback: the message is the story
                    raise _config_error from None
    return _runtime


def _configured(fn):
    """An HTTP route answers 503 + Retry-After and a JSON naming every settings problem when the app is not
    configured, instead of failing with a traceback per request."""
    import functools

    def wrapper(req: func.HttpRequest) -> func.HttpResponse:
        try:
            runtime()
        except NotConfigured as error:
            return func.HttpResponse(json.dumps({"error": "the app is not configured", "problems": error.problems,
                                                 "fix": "set the app settings named here (docs/settings.md); "
                                                        "python -m shared.local check-config lists them"}),
                                     status_code=503, mimetype="application/json",
                                     headers={"Retry-After": str(DEFAULT_RETRY_AFTER)})
        return fn(req)
    # Not written as a decorator: the infra checks read function_app.py's decorator blocks with a regex.
    return functools.wraps(fn)(wrapper)


def use_runtime(rt) -> None:
    """Run the functions against a given runtime (the local host, tests); also forgets a configuration error."""
    global _runtime, _config_error
    _runtime = rt
    _config_error = None


# Event Grid never delivers an event over 1 MB (its per-event limit), and no route here needs more: anything
# bigger is junk, refused before it is parsed further or stored.
MAX_EVENT_BYTES = MAX_BODY_BYTES = 1024 * 1024


class TooLarge(InvalidPayload):
    """A body or event over the size limit (answered 413, which neither Event Grid nor an action group retries)."""


def _event_size(payload: dict) -> int:
    try:
        return len(json.dumps(payload, default=str, ensure_ascii=False).encode("utf-8", "backslashreplace"))
    except (ValueError, TypeError, RecursionError):
        raise InvalidPayload("the event cannot be read as JSON", field="event") from None


def _deliver(event: func.EventGridEvent) -> None:
    """One Event Grid event through the bus. Permanent problems are recorded and acknowledged; transient ones
    raise, so Event Grid delivers again."""
    rt = runtime()
    payload = {"id": event.id, "eventType": event.event_type, "subject": event.subject, "topic": event.topic,
               "data": event.get_json()}
    try:
        if _event_size(payload) > MAX_EVENT_BYTES:
            raise TooLarge(f"the event is larger than {MAX_EVENT_BYTES} bytes", field="event")
        message = eventgrid.to_message(payload, landing_container=rt.settings.landing_container,
                                       datastore_account=rt.settings.datastore_account)
    except InvalidPayload as error:
        rt.bus.reject(event.id or "unknown", event.event_type or "unknown", error, source="eventgrid")
        return
    rt.bus.handle(message)


@app.function_name("on_blob_created")
@app.event_grid_trigger(arg_name="event")
@within(EVENT_GRID_SECONDS)  # one deadline per invocation (shared/retry.py)
@logs.invoked
def on_blob_created(event: func.EventGridEvent) -> None:
    """A committed blob in the landing container → a data asset version → training."""
    _deliver(event)


@app.function_name("on_run_event")
@app.event_grid_trigger(arg_name="event")
@within(EVENT_GRID_SECONDS)  # one deadline per invocation (shared/retry.py)
@logs.invoked
def on_run_event(event: func.EventGridEvent) -> None:
    """An Azure ML run finished → gate → register → roll out; or failed → alert, maybe retry."""
    _deliver(event)


@app.function_name("on_model_event")
@app.event_grid_trigger(arg_name="event")
@within(EVENT_GRID_SECONDS)  # one deadline per invocation (shared/retry.py)
@logs.invoked
def on_model_event(event: func.EventGridEvent) -> None:
    """ModelRegistered / ModelDeployed (ours or by hand) → the audit trail."""
    _deliver(event)


@app.function_name("on_dataset_drift")
@app.event_grid_trigger(arg_name="event")
@within(EVENT_GRID_SECONDS)  # one deadline per invocation (shared/retry.py)
@logs.invoked
def on_dataset_drift(event: func.EventGridEvent) -> None:
    """Azure ML dataset drift → rollback or retrain, by policy."""
    _deliver(event)


@app.function_name("on_custom_event")
@app.event_grid_trigger(arg_name="event")
@within(EVENT_GRID_SECONDS)  # one deadline per invocation (shared/retry.py)
@logs.invoked
def on_custom_event(event: func.EventGridEvent) -> None:
    """Our own topic: MLOps.DataRegistered (assets registered by SDK/CLI), MLOps.DriftDetected (our monitor)."""
    _deliver(event)


def _json(status: int, body: dict) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body, default=str), status_code=status, mimetype="application/json")


def _bad_request(error: InvalidPayload) -> func.HttpResponse:
    return _json(413 if isinstance(error, TooLarge) else 400, {"error": redact(str(error)), "field": error.field})


def _body(req: func.HttpRequest) -> dict:
    if len(req.get_body() or b"") > MAX_BODY_BYTES:
        raise TooLarge(f"the body is larger than {MAX_BODY_BYTES} bytes", field="body")
    try:
        body = req.get_json()
    except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than the parser goes
        raise InvalidPayload("body must be JSON", field="body") from None
    if not isinstance(body, dict):
        raise InvalidPayload("body must be a JSON object", field="body")
    return body


def _actor(req: func.HttpRequest, body: dict) -> str:
    """Who asked, for the audit trail. A signed-in person (MLOPS_APPROVAL_AUTH easyauth or entra, as the approval
    page checks it) is "user:<name>"; otherwise App Service authentication's header, or the body's ``actor`` (or
    ``requested_by``) field, since a function key alone names no one: "http:<name>"."""
    from shared import approvals

    try:
        who = approvals.principal_from(req.headers, runtime().settings)
    except approvals.Unauthenticated:
        who = None  # a bad token names no one; the request itself is allowed by its function key
    if who is not None:
        return f"user:{who.name[:100]}"
    named = req.headers.get("x-ms-client-principal-name") or body.get("actor") or body.get("requested_by")
    return f"http:{str(named)[:100]}" if named else "http:http-caller"


def _text(body: dict, name: str, *, required: bool = True) -> str:
    value = body.get(name)
    if value is None or value == "":
        if required:
            raise InvalidPayload(f"{name} is required", field=name)
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InvalidPayload(f"{name} must be a string", field=name)
    return str(int(value) if isinstance(value, float) and value.is_integer() else value).strip()


# A command the bus recorded as failed: answer with the status its error class stands for.
_STATUS = {"InvalidPayload": 400, "NotFound": 404, "Conflict": 409}
DEFAULT_RETRY_AFTER = 30  # seconds, when the failing service named no time
MAX_RETRY_AFTER = 300


def _unavailable(error: TransientError) -> func.HttpResponse:
    """A transient failure as HTTP: 503 with Retry-After. Azure Monitor action groups retry a webhook on 408,
    429, 503 and 504 only (a 500 is final), and any HTTP client reads 503 + Retry-After as "try again then"."""
    wait = getattr(error, "retry_after", None)
    seconds = DEFAULT_RETRY_AFTER if wait is None else min(MAX_RETRY_AFTER, max(1, math.ceil(wait)))
    body = json.dumps({"error": redact(str(error))[:500], "retry_after": seconds})
    return func.HttpResponse(body, status_code=503, mimetype="application/json",
                             headers={"Retry-After": str(seconds)})


def _run_command(command) -> func.HttpResponse:
    try:
        results = runtime().bus.handle(command)
    except TransientError as error:
        return _unavailable(error)
    failed = next((r for r in results if r.outcome in ("rejected", "failed")), None)
    if failed is not None:
        return _json(_STATUS.get(str(failed.data.get("error")), 422), {"error": redact(failed.reason),
                                                                        "outcome": failed.outcome})
    answer = {}
    for r in results:
        answer.update(r.data)
    answer["event_id"] = command.event_id
    answer["decisions"] = [{"message": r.message, "outcome": r.outcome, "reason": r.reason} for r in results]
    return _json(202, answer)


@app.function_name("reruns")
@app.route(route="reruns", methods=["POST"])
@within(HTTP_SECONDS)
@logs.invoked
@_configured
def reruns(req: func.HttpRequest) -> func.HttpResponse:
    """Retrain a data asset version ({asset, version}) or rerun a job ({job}); "force": true = a new attempt."""
    try:
        body = _body(req)
        force = body.get("force", False)
        if not isinstance(force, bool):
            raise InvalidPayload("force must be true or false", field="force")
        actor, reason = _actor(req, body), _text(body, "reason", required=False)
        event_id = f"http-{uuid.uuid4()}"
        if body.get("job"):
            command = RerunJob(event_id=event_id, job_name=_text(body, "job"), force=force, reason=reason,
                               actor=actor)
        else:
            asset, version = _text(body, "asset"), _text(body, "version")
            eventgrid.validate_asset(asset, "asset")
            eventgrid.validate_version(version, "version")
            command = StartTraining(event_id=event_id, asset=asset, version=version, attempt=0 if force else 1,
                                    reason=reason or "rerun requested over HTTP", actor=actor)
    except InvalidPayload as error:
        return _bad_request(error)
    return _run_command(command)


@app.function_name("rollbacks")
@app.route(route="rollbacks", methods=["POST"])
@within(HTTP_SECONDS)
@logs.invoked
@_configured
def rollbacks(req: func.HttpRequest) -> func.HttpResponse:
    """Roll an endpoint back by hand: {endpoint, reason, to_deployment?}."""
    try:
        body = _body(req)
        command = RollBack(event_id=f"http-{uuid.uuid4()}", endpoint=_text(body, "endpoint"),
                           reason=_text(body, "reason"), to_deployment=_text(body, "to_deployment", required=False),
                           actor=_actor(req, body))
    except InvalidPayload as error:
        return _bad_request(error)
    return _run_command(command)


@app.function_name("status")
@app.route(route="status", methods=["GET"])
@within(HTTP_SECONDS)
@logs.invoked
@_configured
def status(req: func.HttpRequest) -> func.HttpResponse:
    """Endpoints with their traffic split, recent decisions, running jobs."""
    from shared.views import status as snapshot

    rt = runtime()
    try:
        limit = int(req.params.get("limit") or 20)
        if not 1 <= limit <= MAX_STATUS_LIMIT:
            raise ValueError
    except ValueError:
        return _bad_request(InvalidPayload(f"limit must be a whole number from 1 to {MAX_STATUS_LIMIT}",
                                           field="limit"))
    endpoint = (req.params.get("endpoint") or "").strip() or None
    try:
        return _json(200, snapshot(rt.workspace, rt.audit, rt.ledger, states=rt.states, decisions=limit,
                                   endpoint=endpoint))
    except TransientError as error:
        return _unavailable(error)


MAX_STATUS_LIMIT = 500  # decisions one status answer lists


@app.function_name("endpoint_page")
@app.route(route="endpoints/{endpoint}/page", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@within(HTTP_SECONDS)
@logs.invoked
@_configured
def endpoint_page(req: func.HttpRequest) -> func.HttpResponse:
    """One endpoint's page (lineage graph, rollout, traffic history, audit timeline, drift) for a signed-in person:
    anonymous at the Functions level so a card can link to it without a key; shared/pages.py checks the reader."""
    from shared import pages
    from shared.errors import NotFound
    from shared.lineage import endpoint_story

    rt = runtime()
    try:
        who = pages.reader(req.headers, rt.settings)
    except pages.Refused as error:
        return _page(error.status, pages.refusal_page(error))
    name = req.route_params.get("endpoint", "")
    try:
        story = endpoint_story(rt.workspace, rt.audit, rt.states, name)
    except NotFound:
        return _page(404, "<!doctype html><title>Not found</title><p id='status'>No such endpoint.</p>")
    except TransientError as error:
        return _unavailable(error)
    return _page(200, pages.render(story, reader_name=who))


def _page(status: int, page: str) -> func.HttpResponse:
    from shared.pages import CSP

    return func.HttpResponse(page, status_code=status, mimetype="text/html",
                             headers={"Content-Security-Policy": CSP, "X-Frame-Options": "DENY",
                                      "Cache-Control": "no-store"})


@app.function_name("monitor_alert")
@app.route(route="alerts", methods=["POST"])
@within(HTTP_SECONDS)
@logs.invoked
@_configured
def monitor_alert(req: func.HttpRequest) -> func.HttpResponse:
    """Azure Monitor alerts (common alert schema) from an action group webhook → DriftDetected."""
    return _alert(req)


@app.function_name("monitor_alert_secure")
@app.route(route="alerts/secure", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@within(HTTP_SECONDS)
@logs.invoked
@_configured
def monitor_alert_secure(req: func.HttpRequest) -> func.HttpResponse:
    """The same, from an action group's secure webhook: no key in the action group's readable configuration; an
    Entra ID token with the alerts app role instead (MLOPS_ALERT_AUTH=entra)."""
    from shared import approvals

    rt = runtime()
    if rt.settings.alert_auth != "entra":
        return _json(404, {"error": "secure alert delivery is off (MLOPS_ALERT_AUTH=key): use /api/alerts"})
    try:
        approvals.alert_sender(req.headers, rt.settings)
    except approvals.Unauthenticated as error:
        return _json(401, {"error": str(error)})
    except approvals.Forbidden as error:
        return _json(403, {"error": str(error)})
    return _alert(req)


def _alert(req: func.HttpRequest) -> func.HttpResponse:
    rt = runtime()
    try:
        message = eventgrid.from_common_alert(_body(req))
    except InvalidPayload as error:
        rt.bus.reject(f"alert-{uuid.uuid4()}", "AzureMonitorAlert", error, source="azure-monitor")
        return _bad_request(error)
    try:
        results = rt.bus.handle(message)
    except TransientError as error:
        # Inline design (docs/reliability.md): the action group retries a 503 for about a minute and a half; the
        # message is also parked on its ledger claim, so the outbox sweep runs it again on its own after that.
        _park(rt, message)
        return _unavailable(error)
    return _json(202, {"event_id": message.event_id,
                       "decisions": [{"message": r.message, "outcome": r.outcome, "reason": r.reason}
                                     for r in results]})


@app.function_name("rollout_tick")
@app.timer_trigger(schedule="0 * * * * *", arg_name="timer", run_on_startup=False)
@within(ROLLOUT_TICK_SECONDS)
@logs.invoked
def rollout_tick(timer: func.TimerRequest) -> None:
    """Every minute: analyse each canary, advance, promote or abort it; expire approvals; retire deployments."""
    from datetime import datetime, timezone

    minute = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M")
    runtime().bus.handle(AdvanceRollouts(event_id=f"tick-{minute}"))  # a tick fired twice in a minute is one


@app.function_name("drift_monitor")
@app.timer_trigger(schedule="0 */10 * * * *", arg_name="timer", run_on_startup=False)
@within(DRIFT_MONITOR_SECONDS)
@logs.invoked
def drift_monitor(timer: func.TimerRequest) -> None:
    """Every 10 minutes: check each serving deployment's last complete window (MLOPS_DRIFT_INTERVAL_MINUTES long)
    of collected data against its model's baseline, once per window (shared/drift/monitor.py)."""
    from shared.drift.monitor import run_tick

    checks = run_tick(runtime())
    done = [c for c in checks if c.outcome != "skipped"]
    if done:
        logger.info("drift monitor: %s", ", ".join(f"{c.endpoint}/{c.deployment} {c.outcome}" for c in done))


def _html(status: int, page: str) -> func.HttpResponse:
    return func.HttpResponse(page, status_code=status, mimetype="text/html",
                             headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                                                 "form-action 'self'", "X-Frame-Options": "DENY"})


def _approval_url(req: func.HttpRequest, approval_id: str) -> str:
    """This approval's address, built from the configured public URL (or the request's scheme and host) and the id:
    never the raw request URL, whose query string a link's author controls."""
    from urllib.parse import quote, urlsplit

    base = runtime().settings.public_url
    if not base:
        parts = urlsplit(req.url)
        base = f"{parts.scheme}://{parts.netloc}"
    return f"{base}/api/approvals/{quote(approval_id, safe='')}"


def _approval_view(req: func.HttpRequest, message: str = "", status: int = 200) -> func.HttpResponse:
    from datetime import datetime, timezone

    from shared import approvals

    rt = runtime()
    state = approvals.find(rt.states, req.route_params.get("approval_id", ""))
    if state is None:
        return _html(404, "<!doctype html><title>Not found</title><p id='status'>This approval is unknown, was "
                          "already used or has expired.</p>")
    c = state.candidate
    cand_tags = rt.workspace.get_model(c.model, c.version).tags
    stable_tags = {}
    if state.stable_model:
        name, _, version = state.stable_model.rpartition(":")
        stable_tags = rt.workspace.get_model(name, version).tags
    try:
        who = approvals.principal_from(req.headers, rt.settings)
    except approvals.Unauthenticated as error:
        who, message = None, str(error)
    page = approvals.render_page(state, cand_tags, stable_tags, who=who, settings=rt.settings,
                                 url=_approval_url(req, state.candidate.approval_id),
                                 allowed=who is not None and approvals.may_approve(who, rt.settings.approvers),
                                 now=datetime.now(timezone.utc), message=message)
    return _html(status, page)


@app.function_name("approval_page")
@app.route(route="approvals/{approval_id}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@within(HTTP_SECONDS)
@logs.invoked
@_configured
def approval_page(req: func.HttpRequest) -> func.HttpResponse:
    """The approval page a Teams card links to: the candidate against the stable, and the decision form."""
    return _approval_view(req)


@app.function_name("approval_decision")
@app.route(route="approvals/{approval_id}", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@within(HTTP_SECONDS)
@logs.invoked
@_configured
def approval_decision(req: func.HttpRequest) -> func.HttpResponse:
    """Approve or reject ({decision: approve|reject, reason}) as the person App Service Authentication signed in;
    a function key alone never approves."""
    from urllib.parse import parse_qs, urlsplit

    from shared import approvals

    rt = runtime()
    try:
        who = approvals.principal_from(req.headers, rt.settings)
    except approvals.Unauthenticated as error:
        return _json(401, {"error": str(error)})
    if who is None:
        return _json(401, {"error": f"approving needs a named person (MLOPS_APPROVAL_AUTH={rt.settings.approval_auth}"
                                    "): an Entra ID bearer token or App Service Authentication; a function key is "
                                    "not enough"})
    if not approvals.may_approve(who, rt.settings.approvers):
        return _json(403, {"error": f"{who.name} is not on the approvers list (MLOPS_APPROVERS)"})
    raw = req.get_body() or b""
    is_form = "json" not in (req.headers.get("content-type") or "")
    if is_form:
        # A browser form: the signed-in session rides on a cookie, so a page on another site could post one. It
        # must come from this app (Origin or Referer naming this host) and carry the page's anti-forgery token.
        source = req.headers.get("origin") or req.headers.get("referer") or ""
        if urlsplit(source).netloc != urlsplit(req.url).netloc:
            return _json(403, {"error": "approval form refused: it was not posted from this app's page"})
        body = {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
    else:
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return _bad_request(InvalidPayload("body must be JSON", field="body"))
        if not isinstance(body, dict):
            return _bad_request(InvalidPayload("body must be a JSON object", field="body"))
    decision, reason = str(body.get("decision", "")).lower(), str(body.get("reason", "")).strip()
    if decision not in ("approve", "reject"):
        return _bad_request(InvalidPayload("decision must be approve or reject", field="decision"))
    if not reason:
        return _bad_request(InvalidPayload("a reason is required", field="reason"))
    state = approvals.find(rt.states, req.route_params.get("approval_id", ""))
    if state is None:
        return _json(409, {"error": "this approval is unknown, was already used or has expired"})
    if is_form and not hmac.compare_digest(str(body.get("token", "")), approvals.form_token(state, who)):
        return _json(403, {"error": "approval form refused: its anti-forgery token is missing or not yours"})
    command = DecideApproval(event_id=f"http-{uuid.uuid4()}", endpoint=state.endpoint,
                             approval_id=state.candidate.approval_id, approve=decision == "approve",
                             reason=reason[:500], actor=f"user:{who.name}")
    answer = _run_command(command)
    if "html" in (req.headers.get("accept") or "") and answer.status_code == 202:
        return _html(200, f"<!doctype html><title>Done</title><p id='status'>{html_escape(decision)}d by "
                          f"{html_escape(who.name)}.</p>")
    return answer


def html_escape(text: str) -> str:
    import html

    return html.escape(text)


MAX_PARKED_ATTEMPTS = 48  # the sweep runs every 5 minutes: about 4 hours of retries, then the poison path


def _park(rt, message: DriftDetected) -> None:
    park = getattr(rt.ledger, "park", None)
    if callable(park):
        try:
            park(f"{message.event_id}/{message.type}", json.dumps(dataclasses.asdict(message)))
        except Exception:  # parking is the second line; the caller's own retry (the 503) is the first
            logger.warning("could not park alert %s for the app's own retry", message.event_id, exc_info=True)


def replay_parked(rt, *, limit: int = 50, max_attempts: int = MAX_PARKED_ATTEMPTS) -> dict[str, int]:
    """Run parked alerts again (their sender stopped retrying); after ``max_attempts`` one is failed for good:
    recorded, audited and alerted (the poison path). Returns counts by what became of them."""
    counts = {"done": 0, "waiting": 0, "failed": 0}
    parked = getattr(rt.ledger, "parked", None)
    for key, payload, attempts in parked(limit=limit) if callable(parked) else []:
        try:
            message = DriftDetected(**json.loads(payload))
        except (ValueError, TypeError):
            logger.error("parked message of %s is unreadable; failing it", key)
            rt.ledger.complete(key, "failed", "parked message unreadable")
            counts["failed"] += 1
            continue
        if attempts >= max_attempts:
            rt.bus.abandon(message, f"still failing after {attempts} attempts")
            counts["failed"] += 1
            continue
        try:
            rt.bus.handle(message)
            counts["done"] += 1
        except TransientError as error:
            logger.info("parked alert %s still waiting: %s", message.event_id, redact(str(error)))
            counts["waiting"] += 1
    return counts


@app.function_name("outbox_sweep")
@app.timer_trigger(schedule="0 */5 * * * *", arg_name="timer", run_on_startup=False)
@within(SWEEP_SECONDS)
@logs.invoked
def outbox_sweep(timer: func.TimerRequest) -> None:
    """Run parked alerts again, then deliver notifications still pending (e.g. Teams was down)."""
    replayed = replay_parked(runtime())
    if any(replayed.values()):
        logger.info("parked alerts replayed: %s", replayed)
    flush = getattr(runtime().notifier, "flush", None)
    if callable(flush):
        delivered = flush(max_seconds=60.0)
        logger.info("outbox sweep delivered %s alerts", delivered)


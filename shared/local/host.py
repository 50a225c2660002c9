"""A local Azure Functions host: serves a FunctionApp's HTTP triggers and the Event Grid webhook over real HTTP.

It indexes the app the way the Functions host does (``get_functions()``, then each function's trigger binding)
and calls the real decorated functions with real ``func.HttpRequest`` / ``func.EventGridEvent`` objects, so the
same ``function_app.py`` runs here, under ``func start`` and in Azure.

Contract kept from the host and the Event Grid extension (``/runtime/webhooks/eventgrid``):

* keys: ``x-functions-key`` header or ``code`` query parameter; FUNCTION and ADMIN routes and the webhook
  (the ``eventgrid_extension`` system key in Azure) accept the one local key; ANONYMOUS routes need none;
* the webhook looks the function up first (404 when unknown), then reads ``aeg-event-type`` without regard to
  case: SubscriptionValidation → 200 ``{"validationResponse": code}``, Notification → 202 when every event
  succeeded and 500 when any raised, Unsubscribe → 202, anything else → 400;
* the CloudEvents abuse-protection handshake: OPTIONS on the webhook → 200 with
  ``WebHook-Allowed-Origin: eventgrid.azure.net`` (the value the Event Grid extension answers with);
* a body over the host's limit (``FUNCTIONS_REQUEST_BODY_SIZE_LIMIT``, 100 MB by default) → 413 unread.

A function that raises a designed transient error (``TransientError``) is logged as one warning line, not a
traceback: it is the expected way to ask Event Grid for redelivery, not a fault.
"""
from __future__ import annotations

import asyncio
import hmac
import inspect
import json
import logging
import re
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func
from azure.functions.timer import TimerRequest

from shared.errors import TransientError
from shared.redact import redact

logger = logging.getLogger(__name__)

WEBHOOK_PATH = "/runtime/webhooks/eventgrid"
KEY_HEADER = "x-functions-key"
EVENT_TYPE_HEADER = "aeg-event-type"
ALLOWED_ORIGIN = "eventgrid.azure.net"
MAX_BODY_BYTES = 100 * 1024 * 1024
_INDEXES: dict[int, tuple[Any, tuple[IndexedFunction, ...]]] = {}
_INDEX_LOCK = threading.Lock()


@dataclass(frozen=True)
class IndexedFunction:
    """What the host reads from one function's bindings."""

    name: str
    trigger_type: str  # httpTrigger | eventGridTrigger | timerTrigger | ...
    arg_name: str  # the parameter the trigger value is passed as
    route: str | None  # HTTP only: the route template, without the prefix
    methods: tuple[str, ...]  # HTTP only: upper-case methods; empty = every method
    auth_level: str  # HTTP only: anonymous | function | admin
    call: Callable[..., Any]


def index(app: func.FunctionApp) -> tuple[IndexedFunction, ...]:
    """The app's functions as the host indexes them, built once per FunctionApp and cached.

    ``FunctionApp.get_functions()`` refuses a second call (it records every name it has seen and then finds
    them "duplicated"). Building is otherwise idempotent, so the name record is saved and restored around our
    call: the app is left as we found it and whoever else indexes it (the real host, a test fixture) still can.
    """
    with _INDEX_LOCK:
        cached = _INDEXES.get(id(app))
        if cached is not None and cached[0] is app:
            return cached[1]
        saved = getattr(app, "functions_bindings", None)
        app.functions_bindings = {}
        try:
            functions = app.get_functions()
        finally:
            app.functions_bindings = saved
        indexed = tuple(_describe(f) for f in functions)
        _INDEXES[id(app)] = (app, indexed)
        return indexed


def _describe(function: Any) -> IndexedFunction:
    trigger = function.get_trigger()
    raw = trigger.get_dict_repr() if trigger is not None else {}
    kind = str(raw.get("type", ""))
    methods = tuple(_enum_text(m).upper() for m in (raw.get("methods") or ()))
    auth = _enum_text(raw.get("authLevel") or "function").lower()
    route = raw.get("route") if kind == "httpTrigger" else None
    if kind == "httpTrigger" and not route:
        route = function.get_function_name()  # the host's default route is the function name
    return IndexedFunction(name=function.get_function_name(), trigger_type=kind, arg_name=str(raw.get("name", "")),
                           route=route, methods=methods, auth_level=auth, call=function.get_user_function())


def _enum_text(value: Any) -> str:
    return str(getattr(value, "value", value))


def _route_pattern(template: str) -> re.Pattern[str]:
    """Compile an ASP.NET-style route template ({name}, {name:int}, {name?}, {*rest}) into a regex."""
    out, pos = [], 0
    for m in re.finditer(r"\{(\*?)([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z]+))?(\?)?\}", template):
        out.append(re.escape(template[pos:m.start()]))
        star, name, constraint, optional = m.groups()
        body = r".*" if star else r"-?\d+" if constraint in ("int", "long") else r"[^/]+"
        group = f"(?P<{name}>{body})"
        if optional and out and out[-1].endswith("/"):
            out[-1] = out[-1][:-1]  # an optional last segment may drop its slash too
            group = f"(?:/{group})?"
        elif optional:
            group += "?"
        out.append(group)
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("^" + "".join(out) + "/?$", re.IGNORECASE)


@dataclass(frozen=True)
class Reply:
    """A response the handler writes back."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] | None = None
    content_type: str = "text/plain; charset=utf-8"


def _json_reply(status: int, payload: object) -> Reply:
    return Reply(status, json.dumps(payload).encode(), content_type="application/json; charset=utf-8")


def _text(status: int, message: str = "") -> Reply:
    return Reply(status, (message or HTTPStatus(status).phrase).encode("utf-8", "backslashreplace"))


def new_key() -> str:
    """A random function key (192 bits) in hex: a key may be passed as ``--key KEY``, and one starting with "-"
    (as token_urlsafe's can) would be read by argparse as an option."""
    return secrets.token_hex(24)


class LocalHost:
    """Serve a FunctionApp on 127.0.0.1 (``port=0`` picks a free port). Use ``start()``/``stop()`` or ``with``."""

    def __init__(self, app: func.FunctionApp, *, host: str = "127.0.0.1", port: int = 7071,
                 master_key: str | None = None, route_prefix: str = "api",
                 max_body_bytes: int = MAX_BODY_BYTES, easy_auth: bool = False) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.easy_auth = easy_auth  # simulate App Service Authentication in front of the app
        self.functions = {f.name: f for f in index(app)}
        self.key = master_key or new_key()
        self.route_prefix = route_prefix.strip("/")
        self._routes = [(f, _route_pattern(f.route)) for f in self.functions.values() if f.trigger_type == "httpTrigger"]
        self._host, self._port = host, port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:7071 (the real port once started)."""
        port = self._server.server_address[1] if self._server else self._port
        return f"http://{self._host}:{port}"

    def start(self) -> LocalHost:
        if self._server is not None:
            return self
        self._server = ThreadingHTTPServer((self._host, self._port), self._handler_class())
        self._server.daemon_threads = True
        # A short poll interval makes stop() quick: shutdown() waits for the loop's next poll.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="local-functions-host", daemon=True)
        self._thread.start()
        logger.info("local Functions host listening on %s with %d functions", self.url, len(self.functions))
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None
        logger.info("local Functions host stopped")

    def __enter__(self) -> LocalHost:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def webhook_url(self, function_name: str) -> str:
        """The Event Grid endpoint of a function, key included, as an Azure subscription would hold it."""
        return f"{self.url}{WEBHOOK_PATH}?functionName={function_name}&code={self.key}"

    # --- dispatch (no sockets: the handler below only moves bytes) ------------------------------------------

    def dispatch(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Reply:
        """Answer one request as the Functions host would; a fault of the host itself is a bare 500."""
        try:
            return self._dispatch(method, target, headers, body)
        except Exception:
            logger.exception("the host failed on %s %s", method, urlsplit(target).path)
            return _text(500, "Internal Server Error")

    def _dispatch(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Reply:
        parts = urlsplit(target)
        path = parts.path or "/"
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        lowered = {k.lower(): v for k, v in headers.items()}
        if path.rstrip("/").lower() == WEBHOOK_PATH:
            return self._webhook(method, query, lowered, body)
        if path.rstrip("/").lower() == "/admin/host/status":
            return _json_reply(200, {"state": "Running"}) if method in ("GET", "HEAD") else _text(405)
        if path.lower().startswith("/admin/functions/"):
            return self._admin_invoke(method, path.rstrip("/").split("/")[-1], query, lowered, body)
        prefix = f"/{self.route_prefix}/" if self.route_prefix else "/"
        if not path.lower().startswith(prefix.lower()):
            return _text(404)
        return self._http(method, target, path[len(prefix):], query, headers, lowered, body)

    def _authorized(self, query: Mapping[str, str], lowered: Mapping[str, str]) -> bool:
        given = lowered.get(KEY_HEADER) or query.get("code") or ""
        return hmac.compare_digest(given.encode(), self.key.encode())

    def _http(self, method: str, target: str, route_path: str, query: dict[str, str], headers: Mapping[str, str],
              lowered: Mapping[str, str], body: bytes) -> Reply:
        found = [(f, m) for f, pattern in self._routes if (m := pattern.match(route_path))]
        if not found:
            return _text(404)
        allowed = [(f, m) for f, m in found if not f.methods or method in f.methods]
        if not allowed:
            methods = sorted({x for f, _ in found for x in f.methods})
            return Reply(405, b"Method Not Allowed", headers={"Allow": ", ".join(methods)})
        function, match = allowed[0]
        if function.auth_level != "anonymous" and not self._authorized(query, lowered):
            return _text(401)
        if self.easy_auth:
            headers = _easy_auth(headers)
        request = func.HttpRequest(method=method, url=self.url + target, headers=dict(headers), params=query,
                                   route_params={k: v for k, v in match.groupdict().items() if v is not None},
                                   body=body)
        try:
            result = _invoke(function, request)
        except Exception as error:  # the host turns an unhandled error into a 500; the worker logs it
            _log_failure(f"function {function.name}", error)
            return _text(500, "Internal Server Error")
        return _http_reply(result)

    def _webhook(self, method: str, query: Mapping[str, str], lowered: Mapping[str, str], body: bytes) -> Reply:
        if method not in ("POST", "OPTIONS"):
            return _text(405)
        if not self._authorized(query, lowered):
            return _text(401)
        name = query.get("functionName", "")
        function = self.functions.get(name)
        if function is None or function.trigger_type != "eventGridTrigger":
            logger.info("cannot find Event Grid function %r", name)
            return _text(404, f"cannot find function: '{name}'")
        if method == "OPTIONS":  # CloudEvents 1.0 abuse protection, as the extension answers it
            return Reply(200, headers={"WebHook-Allowed-Origin": ALLOWED_ORIGIN})
        kind = (lowered.get(EVENT_TYPE_HEADER) or "").lower()
        if kind not in ("subscriptionvalidation", "notification", "unsubscribe"):
            return _text(400, f"{EVENT_TYPE_HEADER} must be SubscriptionValidation, Notification or Unsubscribe")
        if kind == "unsubscribe":
            return Reply(202)
        try:
            payload = json.loads(body or b"null")
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
            return _text(400, "the body is not JSON")
        events = payload if isinstance(payload, list) else [payload]
        if not events or not all(isinstance(e, dict) for e in events):
            return _text(400, "the body must be an event or a JSON array of events")
        if kind == "subscriptionvalidation":
            code = (events[0].get("data") or {}).get("validationCode") if isinstance(events[0].get("data"), dict) else None
            if not code:
                return _text(400, "no data.validationCode in the validation event")
            logger.info("validation handshake for %s", name)
            return _json_reply(200, {"validationResponse": code})
        failures = []
        for event in events:  # like the extension: run every event, then answer 500 if any failed
            try:
                _invoke(function, _event_grid_event(event))
            except Exception as error:  # reported to Event Grid as a 500 so it redelivers
                _log_failure(f"function {name}", error)
                failures.append(f"{str(event.get('id'))[:100]}: {type(error).__name__}: {redact(str(error))[:300]}")
        if failures:
            return _text(500, "; ".join(failures))
        return Reply(202)

    def _admin_invoke(self, method: str, name: str, query: Mapping[str, str], lowered: Mapping[str, str],
                      body: bytes) -> Reply:
        """POST /admin/functions/NAME runs a non-HTTP function by hand (Core Tools does the same): a timer
        now, or an Event Grid function with {"input": "<event JSON>"}. Needs the key, as the master key would."""
        if method != "POST":
            return _text(405)
        if not self._authorized(query, lowered):
            return _text(401)
        function = self.functions.get(name)
        if function is None or function.trigger_type not in ("timerTrigger", "eventGridTrigger"):
            return _text(404, f"cannot find function: '{name}'")
        try:
            given = json.loads(body or b"{}").get("input") or ""
            value = (TimerRequest(past_due=False) if function.trigger_type == "timerTrigger"
                     else _event_grid_event(json.loads(given)))
        except (ValueError, AttributeError, TypeError):
            return _text(400, 'the body must be {"input": "<event JSON>"}')
        try:
            _invoke(function, value)
        except Exception as error:  # reported as the host would: logged, 500
            _log_failure(f"function {name}", error)
            return _text(500, "Internal Server Error")
        return Reply(202)

    # --- the socket side -----------------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        host = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, so the local Event Grid can reuse its connection
            server_version = "mlops-local-functions-host"

            def _serve(self) -> None:
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    length = -1
                if length < 0 or length > host.max_body_bytes:
                    # Unread: the connection is closed after the answer rather than drained.
                    self.close_connection = True
                    reply = (_text(400, "bad Content-Length") if length < 0 else
                             _text(413, f"the body is larger than {host.max_body_bytes} bytes"))
                else:
                    body = self.rfile.read(length) if length > 0 else b""
                    reply = host.dispatch(self.command, self.path, dict(self.headers.items()), body)
                self.send_response(reply.status)
                extra = dict(reply.headers or {})
                if not any(k.lower() == "content-type" for k in extra):
                    self.send_header("Content-Type", reply.content_type)
                for k, v in extra.items():
                    if k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(reply.body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
                logger.debug("%s %s", self.address_string(), format % args)

        return Handler


def _easy_auth(headers: Mapping[str, str]) -> dict[str, str]:
    """What App Service Authentication does to a request: the client's own X-MS-CLIENT-PRINCIPAL* headers are
    dropped, and a signed-in caller's identity is written in their place. Signing in is simulated: X-Local-User
    names the caller (X-Local-Groups / X-Local-Roles, comma-separated, add claims)."""
    from shared.approvals import encode_principal

    kept = {k: v for k, v in headers.items()
            if not k.lower().startswith("x-ms-client-principal") and not k.lower().startswith("x-local-")}
    lowered = {k.lower(): v for k, v in headers.items()}
    user = (lowered.get("x-local-user") or "").strip()
    if user:
        split = lambda v: tuple(x.strip() for x in (v or "").split(",") if x.strip())  # noqa: E731
        kept["X-MS-CLIENT-PRINCIPAL-NAME"] = user
        kept["X-MS-CLIENT-PRINCIPAL-IDP"] = "aad"
        kept["X-MS-CLIENT-PRINCIPAL"] = encode_principal(user, groups=split(lowered.get("x-local-groups")),
                                                         roles=split(lowered.get("x-local-roles")))
    return kept


def _log_failure(what: str, error: BaseException) -> None:
    """A designed transient failure is one warning line; anything else keeps its traceback."""
    if isinstance(error, TransientError):
        logger.warning("%s asked for a retry: %s: %s", what, type(error).__name__, redact(str(error)))
    else:
        logger.error("%s raised", what, exc_info=error)


def _invoke(function: IndexedFunction, value: Any) -> Any:
    result = function.call(**{function.arg_name: value})
    if inspect.isawaitable(result):  # async def functions run to completion, as the worker's loop would
        result = asyncio.run(_await(result))
    return result


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _http_reply(result: Any) -> Reply:
    if result is None:
        return Reply(204)
    if isinstance(result, func.HttpResponse):
        headers = {k: v for k, v in result.headers.items()}
        mimetype = result.mimetype or "text/plain"
        content_type = f"{mimetype}; charset={result.charset}" if result.charset else mimetype
        return Reply(int(result.status_code), result.get_body() or b"", headers=headers, content_type=content_type)
    if isinstance(result, (str, bytes)):  # the worker also accepts a plain $return value
        return Reply(200, result.encode() if isinstance(result, str) else result)
    raise TypeError(f"an HTTP function returned {type(result).__name__}, not HttpResponse")


def _event_grid_event(event: Mapping[str, Any]) -> func.EventGridEvent:
    """The EventGridEvent the Python worker builds from one delivered event (Event Grid or CloudEvents keys)."""
    def pick(*names: str) -> Any:
        for n in names:
            for k, v in event.items():
                if k.lower() == n.lower():
                    return v
        return None

    when = pick("eventTime", "time")
    try:
        event_time = datetime.fromisoformat(str(when).replace("Z", "+00:00")) if when else None
    except ValueError:
        event_time = None
    data = pick("data")
    return func.EventGridEvent(id=pick("id"), data=data if data is not None else {}, topic=pick("topic", "source"),
                               subject=pick("subject"), event_type=pick("eventType", "type"),
                               event_time=event_time, data_version=pick("dataVersion", "dataversion"))

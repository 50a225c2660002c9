"""Local online endpoints: a real HTTP scoring server with Azure ML's request shape, traffic split and request log."""
from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from shared.errors import InvalidPayload, NotFound, ServiceRejected, Throttled, TransientError

logger = logging.getLogger(__name__)

DEPLOYMENT_HEADER = "azureml-model-deployment"  # Azure ML's header: which deployment served, or should serve
ERROR_TAG = "local_error_share"  # deployment tag: share of requests that fail with 500 (fault injection)
MAX_BODY = 16 * 1024 * 1024  # bytes; larger requests answer 413 like a managed endpoint's payload limit


class BadRequest(Exception):
    """The request cannot be scored; the message goes back to the client with the status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class SmoothRoundRobin:
    """Nginx's smooth weighted round-robin per endpoint: deterministic, and any 100 consecutive picks over weights
    summing to 100 follow the split exactly (90/10 gives 90 and 10, interleaved rather than in runs)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: dict[str, tuple[tuple[tuple[str, int], ...], dict[str, int]]] = {}

    def pick(self, endpoint: str, traffic: Mapping[str, int]) -> str | None:
        weights = tuple(sorted((name, int(w)) for name, w in traffic.items() if w > 0))
        if not weights:
            return None
        total = sum(w for _, w in weights)
        with self._lock:
            known = self._state.get(endpoint)
            if known is None or known[0] != weights:  # a new split starts a fresh cycle
                known = (weights, {name: 0 for name, _ in weights})
                self._state[endpoint] = known
            current = known[1]
            for name, w in weights:
                current[name] += w
            best = max(weights, key=lambda nw: current[nw[0]])[0]  # ties: the first name, so it stays deterministic
            current[best] -= total
            return best


def rows_of(body: object) -> list[dict]:
    """Rows from Azure ML's MLflow shape ``{"input_data": {"columns", "index", "data"}}`` (or records under
    ``input_data``), or from ``{"data": [{column: value}, ...]}``."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object with input_data or data")
    if "input_data" in body:
        given = body["input_data"]
        if isinstance(given, dict):
            columns, data = given.get("columns"), given.get("data")
            if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
                raise BadRequest("input_data.columns must be a list of column names")
            if not isinstance(data, list) or not all(isinstance(r, list) for r in data):
                raise BadRequest("input_data.data must be a list of rows (lists of values)")
            for i, r in enumerate(data):
                if len(r) != len(columns):
                    raise BadRequest(f"input_data.data[{i}] has {len(r)} values for {len(columns)} columns")
            rows = [dict(zip(columns, r, strict=True)) for r in data]
        elif isinstance(given, list):
            rows = given
        else:
            raise BadRequest("input_data must be an object with columns and data, or a list of records")
    elif "data" in body:
        rows = body["data"]
    else:
        raise BadRequest("the body has neither input_data nor data")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise BadRequest("rows must be objects mapping column names to values")
    if not rows:
        raise BadRequest("there are no rows to score")
    return rows


class ScoringServer:
    """Serves every endpoint of one workspace at ``POST /score/<endpoint>``; models load once per deployment."""

    def __init__(self, workspace: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self.workspace = workspace
        self.router = SmoothRoundRobin()
        self._models: dict[tuple[str, str, str, str], Any] = {}
        self._load_lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, port), _handler(self))
        self._httpd.daemon_threads = True
        self.url = f"http://{host}:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="local-scoring", daemon=True)
        self._thread.start()
        logger.info("scoring server listening on %s", self.url)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    _faults = random.Random(7)  # deterministic fault injection: the same requests fail on every run

    def predictor(self, endpoint: str, deployment) -> Any:
        key = (endpoint, deployment.name, deployment.model_name, deployment.model_version)
        with self._load_lock:  # one load per deployment even when the first requests arrive together
            if key not in self._models:
                from shared.training.score import load

                model = self.workspace.get_model(deployment.model_name, deployment.model_version)
                self._models[key] = load(model.path)
                logger.info("loaded %s:%s for %s/%s", deployment.model_name, deployment.model_version, endpoint,
                            deployment.name)
            return self._models[key]

    def handle(self, endpoint: str, raw: bytes, wanted: str | None) -> tuple[int, str | None, object, list, list]:
        """Score one request: (status, deployment, body to answer, rows logged, outputs logged)."""
        ep = self.workspace.get_endpoint(endpoint)
        if ep is None:
            return 404, None, {"error": f"endpoint {endpoint} does not exist"}, [], []
        try:
            body = json.loads(raw or b"null")
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            return 400, None, {"error": f"the body is not JSON: {error}"}, [], []
        try:
            rows = rows_of(body)
        except BadRequest as error:
            return error.status, None, {"error": str(error)}, [], []
        if wanted:
            # Like Azure: the header reaches a deployment directly, even one at 0% traffic.
            chosen = wanted if ep.deployment(wanted) is not None else None
            if chosen is None:
                return 404, None, {"error": f"endpoint {endpoint} has no deployment {wanted}"}, rows, []
        else:
            chosen = self.router.pick(endpoint, ep.traffic)
            if chosen is None:
                return 404, None, {"error": f"endpoint {endpoint} sends no traffic to any deployment"}, rows, []
        dep = ep.deployment(chosen)
        if (dep.state or "").lower() == "failed":
            return 503, chosen, {"error": f"deployment {chosen} is in state Failed"}, rows, []
        share = float(dep.tags.get(ERROR_TAG) or 0)
        if share and self._faults.random() < share:  # fault injection (tests, the demo's failing canary)
            return 500, chosen, {"error": "injected scoring failure"}, rows, []
        predictor = self.predictor(endpoint, dep)
        missing = [f for f in predictor.features if any(f not in r for r in rows)]
        if missing:
            return 400, chosen, {"error": f"rows lack the model's input columns: {', '.join(missing)}"}, rows, []
        try:
            outputs = predictor.predict(rows)
        except (TypeError, ValueError) as error:
            return 400, chosen, {"error": f"cannot score these rows: {error}"}, rows, []
        return 200, chosen, outputs, rows, outputs


def _handler(server: ScoringServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes; with Nagle on, keep-alive clients wait ~40 ms for a delayed ACK.
        disable_nagle_algorithm = True

        def log_message(self, fmt: str, *args) -> None:  # the stdlib writes to stderr; keep it in logging
            logger.debug("%s " + fmt, self.address_string(), *args)

        def _send(self, status: int, body: object, deployment: str | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if deployment:
                self.send_header(DEPLOYMENT_HEADER, deployment)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's naming
            self._send(405 if self.path.startswith("/score/") else 404, {"error": "POST rows to /score/<endpoint>"})

        def do_POST(self) -> None:  # noqa: N802 - the stdlib's naming
            started = time.perf_counter()
            if not self.path.startswith("/score/") or not self.path[len("/score/"):].strip("/"):
                self._send(404, {"error": "POST rows to /score/<endpoint>"})
                return
            endpoint = self.path[len("/score/"):].split("?")[0].strip("/")
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                status, deployment, body, rows, outputs = 413, None, {"error": "the body is too large"}, [], []
                self.close_connection = True
            else:
                raw = self.rfile.read(length)
                try:
                    status, deployment, body, rows, outputs = server.handle(
                        endpoint, raw, self.headers.get(DEPLOYMENT_HEADER))
                except Exception as error:  # noqa: BLE001 - a server answers 500 and logs; it never dies on a request
                    logger.exception("scoring on %s failed", endpoint)
                    status, deployment, body, rows, outputs = 500, None, {"error": f"scoring failed: {error}"}, [], []
            latency = (time.perf_counter() - started) * 1000.0
            # Logged before answering, so a client (or the monitor) that saw the answer also finds its row.
            try:
                server.workspace.record_request(endpoint=endpoint, deployment=deployment, inputs=rows,
                                                outputs=outputs, latency_ms=latency, status=status,
                                                error="" if status < 300 else str(body.get("error", "")))
            except Exception:  # noqa: BLE001 - losing one log row must not fail the request
                logger.exception("could not log a request to %s", endpoint)
            self._send(status, body, deployment)

    return Handler


def score(url_or_workspace: Any, endpoint: str, rows: Sequence[Mapping[str, object]], *,
          deployment: str | None = None, timeout: float = 30.0, client=None) -> tuple[str, list[float]]:
    """Score rows over real HTTP as a client would: returns (deployment that served, churn probabilities).

    ``url_or_workspace`` is the server's base URL, an endpoint's scoring URI, or a workspace (its ``scoring_url``).
    Pass an ``httpx.Client`` to reuse connections: a fresh client per call costs ~30 ms of setup.
    """
    import httpx

    if isinstance(url_or_workspace, str):
        base = url_or_workspace.rstrip("/")
        url = base if base.endswith(f"/score/{endpoint}") else f"{base}/score/{endpoint}"
    else:
        url = url_or_workspace.scoring_url(endpoint)
    columns: list[str] = []
    for row in rows:
        columns.extend(c for c in row if c not in columns)
    body = {"input_data": {"columns": columns, "index": list(range(len(rows))),
                           "data": [[row.get(c) for c in columns] for row in rows]}}
    headers = {DEPLOYMENT_HEADER: deployment} if deployment else {}
    try:
        r = (client or httpx).post(url, json=body, headers=headers, timeout=timeout)
    except httpx.TransportError as error:
        raise TransientError(f"scoring {endpoint} failed: {error}") from error
    if r.status_code == 200:
        return r.headers.get(DEPLOYMENT_HEADER, ""), [float(p) for p in r.json()]
    try:
        message = r.json().get("error", r.text)
    except (ValueError, AttributeError):
        message = r.text
    text = f"scoring {endpoint} answered {r.status_code}: {message}"
    if r.status_code == 404:
        raise NotFound(text)
    if r.status_code == 400:
        raise InvalidPayload(text, field="rows")
    if r.status_code == 429:
        raise Throttled(text)
    if r.status_code >= 500:
        raise TransientError(text)
    raise ServiceRejected(text, status=r.status_code)


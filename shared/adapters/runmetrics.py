"""Run metrics from the Azure ML workspace's MLflow tracking server, over its REST API (no mlflow dependency).

Azure ML SDK v2 has no metrics API of its own: its docs say to query runs with MLflow against the workspace's
tracking URI, where an Azure ML job's name is the MLflow run id. The tracking URI (``MLClient.workspaces.get(name)
.mlflow_tracking_uri``) looks like ``azureml://<region>.api.azureml.ms/mlflow/v1.0/subscriptions/<sub>/
resourceGroups/<rg>/providers/Microsoft.MachineLearningServices/workspaces/<ws>`` (v2.0 on newer workspaces); with
``https`` for ``azureml`` it is the base of the MLflow REST API (``/api/2.0/mlflow/...``).

Two calls per metric key, both documented MLflow REST endpoints:

* ``GET runs/get?run_id=<job>`` → ``{"run": {"info": {...}, "data": {"metrics": [{key, value, timestamp, step}]}}}``
  lists the keys the run logged (one entry per key: the last logged value).
* ``GET metrics/get-history?run_id=&metric_key=&max_results=[&page_token=]`` → ``{"metrics": [...],
  "next_page_token"}`` gives every logged value; the final one is the entry with the highest step, then the latest
  timestamp (then the largest value, MLflow's own tie rule).
"""
from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from shared import retry
from shared.adapters.errors import translated
from shared.adapters.monitor import READ_POLICY
from shared.errors import InvalidPayload, TransientError

logger = logging.getLogger(__name__)

API_PREFIX = "/api/2.0/mlflow"
# Token audience of the Azure ML data plane (<region>.api.azureml.ms), as azure-ai-ml's data-plane clients use it.
# Azure ML's "Using MLflow REST" sample uses an ARM token (https://management.azure.com) instead: pass ``scope`` to
# use that.
PUBLIC_SCOPE = "https://ml.azure.com/.default"
_SOVEREIGN_SCOPES = {"api.ml.azure.cn": "https://ml.azure.cn/.default", "api.ml.azure.us": "https://ml.azure.us/.default"}
MAX_JOB_NAME = 255


def tracking_base_url(uri: str) -> str:
    """The https base of the MLflow REST API for a workspace tracking URI (``azureml://`` → ``https://``)."""
    parts = urlsplit((uri or "").strip())
    if parts.scheme.lower() not in ("azureml", "https") or not parts.hostname or parts.query or parts.fragment \
            or parts.username or parts.password:
        raise InvalidPayload(f"not an Azure ML MLflow tracking URI: {uri!r} (expected azureml://<region>."
                             "api.azureml.ms/mlflow/v1.0/subscriptions/.../workspaces/<name>)",
                             field="mlflow_tracking_uri")
    return urlunsplit(("https", parts.netloc, parts.path.rstrip("/"), "", ""))


def scope_for(base_url: str) -> str:
    """The token scope for a tracking host: the Azure ML data-plane audience of that host's cloud."""
    host = (urlsplit(base_url).hostname or "").lower()
    for suffix, scope in _SOVEREIGN_SCOPES.items():
        if host == suffix or host.endswith("." + suffix):
            return scope
    return PUBLIC_SCOPE


def final_value(history: list[Mapping[str, Any]]) -> float | None:
    """The value logged last: highest step, then latest timestamp, then (exact ties) the largest value."""
    best: tuple[int, int, float] | None = None
    for entry in history:
        value = _float(entry.get("value"))
        if value is None:
            continue
        key = (_int(entry.get("step")), _int(entry.get("timestamp")), value)
        if best is None or _later(key, best):
            best = key
    return best[2] if best is not None else None


class MlflowRunMetrics:
    """Implements the RunMetrics port. ``tracking_uri`` is the workspace's MLflow tracking URI, or a callable that
    returns it (called once, on first use, so wiring does no I/O)."""

    def __init__(self, tracking_uri: str | Callable[[], str | None], credential: Any, *, scope: str | None = None,
                 transport: Any = None, retry_total: int = 3, budget_seconds: float = retry.CALL_SECONDS,
                 page_size: int = 1000, max_pages: int = 50) -> None:
        self._tracking_uri = tracking_uri
        self.credential = credential
        self.scope = scope
        self.transport = transport
        self.retry_total = retry_total
        self.budget_seconds = budget_seconds
        self.page_size = page_size
        self.max_pages = max_pages
        self._base_url: str | None = None
        self._client: Any = None
        self._lock = threading.Lock()
        if isinstance(tracking_uri, str):
            self._base_url = tracking_base_url(tracking_uri)  # a bad setting fails at start-up

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            with self._lock:
                if self._base_url is None:
                    with translated("read the workspace's MLflow tracking URI"):
                        uri = self._tracking_uri() if callable(self._tracking_uri) else self._tracking_uri
                    if not uri:
                        raise InvalidPayload("the workspace reports no MLflow tracking URI",
                                             field="mlflow_tracking_uri")
                    self._base_url = tracking_base_url(uri)
        return self._base_url

    # --- the port ----------------------------------------------------------------------------------------

    def get_run_metrics(self, job_name: str) -> dict[str, float]:
        """Final value of every metric the run logged. NotFound when the run does not exist; {} when it logged
        none. Non-finite values (NaN, ±inf) are left out, with a warning: a gate must never compare with them."""
        _check_job_name(job_name)
        run = self._get("runs/get", {"run_id": job_name}, f"read MLflow run {job_name}").get("run") or {}
        latest = {m["key"]: m for m in (run.get("data") or {}).get("metrics") or [] if m.get("key")}
        metrics: dict[str, float] = {}
        for key in sorted(latest):
            history = self._history(job_name, key)
            value = final_value(history) if history is not None else None
            if value is None:  # no readable history: the run's own "last logged value" is the final one
                value = final_value([latest[key]])
            if value is None or not math.isfinite(value):
                logger.warning("run %s: metric %r has no finite final value (%r); left out", job_name, key, value)
                continue
            metrics[key] = value
        logger.info("run %s logged %d metrics: %s", job_name, len(metrics), ", ".join(sorted(metrics)) or "none")
        return metrics

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # --- REST --------------------------------------------------------------------------------------------

    def _history(self, run_id: str, key: str) -> list[Mapping[str, Any]] | None:
        """Every logged value of one metric, following next_page_token; None when it cannot be read whole."""
        entries: list[Mapping[str, Any]] = []
        token, seen = "", set()
        for _ in range(self.max_pages):
            params = {"run_id": run_id, "metric_key": key, "max_results": str(self.page_size)}
            if token:
                params["page_token"] = token
            page = self._get("metrics/get-history", params, f"read the history of {key} in run {run_id}")
            entries.extend(page.get("metrics") or [])
            token = page.get("next_page_token") or ""
            if not token:
                return entries
            if token in seen:
                logger.warning("run %s: history of %s repeats page token %r; using the run's last value",
                               run_id, key, token)
                return None
            seen.add(token)
        logger.warning("run %s: history of %s is longer than %d pages; using the run's last value", run_id, key,
                       self.max_pages)
        return None

    def _pipeline(self) -> Any:
        base = self.base_url  # resolved first: it takes the same (non-reentrant) lock
        # Under the lock: the Functions worker runs invocations on a thread pool, and a client made twice would
        # leave one unclosed.
        with self._lock:
            if self._client is None:
                from azure.core import PipelineClient
                from azure.core.pipeline.policies import (
                    BearerTokenCredentialPolicy,
                    HeadersPolicy,
                    HttpLoggingPolicy,
                    RequestIdPolicy,
                    UserAgentPolicy,
                )

                policies = [RequestIdPolicy(), HeadersPolicy({"Accept": "application/json"}),
                            UserAgentPolicy(sdk_moniker="mlops-reflex-runmetrics"),
                            retry.sdk_policy(retry.Policy(attempts=self.retry_total + 1,
                                                          max_retry_after=READ_POLICY.max_retry_after),
                                             retry_posts=True, call_seconds=self.budget_seconds),
                            BearerTokenCredentialPolicy(self.credential, self.scope or scope_for(base)),
                            HttpLoggingPolicy()]
                kwargs = {"transport": self.transport} if self.transport is not None else {}
                self._client = PipelineClient(base_url=base, policies=policies, **kwargs)
            return self._client

    def _get(self, operation: str, params: dict[str, str], what: str) -> dict[str, Any]:
        from azure.core.exceptions import HttpResponseError
        from azure.core.rest import HttpRequest

        client = self._pipeline()
        with translated(what):
            response = client.send_request(HttpRequest("GET", f"{self.base_url}{API_PREFIX}/{operation}",
                                                       params=params))
            if response.status_code != 200:
                raise HttpResponseError(message=_service_error(response), response=response)
        try:
            body = response.json()
        except ValueError:
            raise TransientError(f"{what}: the tracking server answered 200 with a body that is not JSON") from None
        if not isinstance(body, dict):
            raise TransientError(f"{what}: the tracking server answered 200 with {type(body).__name__}, not an object")
        return body


def _service_error(response: Any) -> str:
    """MLflow's ``{"error_code", "message"}`` (or Azure's ``{"error": {"code", "message"}}``) as one line."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        code = inner.get("error_code") or inner.get("code") or ""
        message = inner.get("message") or ""
        if message:
            return f"{code}: {message}" if code else str(message)
    return f"HTTP {response.status_code} {response.reason or ''}".strip()


def _check_job_name(job_name: str) -> None:
    if not isinstance(job_name, str) or not job_name.strip() or len(job_name) > MAX_JOB_NAME \
            or any(c.isspace() or ord(c) < 0x20 for c in job_name):
        raise InvalidPayload(f"not an Azure ML job name: {job_name!r}", field="job_name")


def _float(value: Any) -> float | None:
    """JSON numbers, and the strings MLflow writes for non-finite doubles ("NaN", "Infinity")."""
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int:
    """int64 fields arrive as numbers from MLflow's server and as strings under the proto3 JSON mapping."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _later(a: tuple[int, int, float], b: tuple[int, int, float]) -> bool:
    if a[:2] != b[:2]:
        return a[:2] > b[:2]
    if math.isnan(b[2]):  # on an exact tie a number beats NaN, whatever order the service listed them in
        return not math.isnan(a[2])
    return not math.isnan(a[2]) and a[2] > b[2]

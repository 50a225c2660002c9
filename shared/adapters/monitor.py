"""Azure Monitor adapter: health of an online endpoint (or one deployment) from Log Analytics or platform metrics.

Two sources, one answer (``Health``):

* **Log Analytics (primary).** ``AmlOnlineEndpointTrafficLog`` holds one row per scoring request (ResponseCode,
  TotalDurationMs, EndpointName, DeploymentName, TimeGenerated). One KQL query counts requests by final response
  code and computes true percentiles over the window: exact counts, exact non-2xx share. It needs a diagnostic
  setting that sends the endpoint's traffic logs to the workspace ``MLOPS_LOG_ANALYTICS_WORKSPACE_ID`` names.
* **Platform metrics (fallback).** ``RequestsPerMinute`` (split by ``statusCodeClass``) and ``RequestLatency_P50`` /
  ``RequestLatency_P95`` of ``Microsoft.MachineLearningServices/workspaces/onlineEndpoints``, filtered by the
  ``deployment`` dimension, read through the regional metrics batch API. Always emitted, no diagnostic setting
  needed, but per-minute aggregates: the count is the sum of per-minute averages and the percentiles are a
  request-weighted mean of per-minute percentiles, not percentiles of the window.

Used when: no Log Analytics workspace is configured (metrics only), or the workspace has no
``AmlOnlineEndpointTrafficLog`` table yet (the diagnostic setting is missing; the query is rejected with a 400 naming
the table). Throttling and 5xx are never papered over with the other source: they raise (translated) so Event Grid
redelivers and the decision is made on one consistent source.
"""
from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

from shared import retry
from shared.adapters.errors import translated
from shared.domain import Health
from shared.errors import InvalidPayload, ServiceRejected

logger = logging.getLogger(__name__)

TRAFFIC_TABLE = "AmlOnlineEndpointTrafficLog"
METRIC_NAMESPACE = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints"
REQUESTS_METRIC = "RequestsPerMinute"  # Count, dimensions deployment, statusCode, statusCodeClass, modelStatusCode
LATENCY_METRICS = ("RequestLatency_P50", "RequestLatency_P95")  # Milliseconds, dimension deployment
MAX_WINDOW_MINUTES = 30 * 24 * 60  # a month: longer windows are not a health check any more

# Azure ML's rule for endpoint and deployment names (azure-ai-ml EndpointConfigurations.NAME_REGEX_PATTERN, 3-32
# characters): a name that passes can be put in KQL and in a metrics $filter without any escaping at all.
_ENDPOINT_NAME = re.compile(r"[A-Za-z](?:[-A-Za-z0-9]*[A-Za-z0-9])?")
# Azure ML workspace names: 3-33 letters, digits, hyphens or underscores, starting with a letter or digit.
_WORKSPACE_NAME = re.compile(r"[A-Za-z0-9][-A-Za-z0-9_]{2,32}")
_GUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")


def check_endpoint_name(value: str, *, field: str) -> str:
    """The name unchanged when it follows Azure ML's endpoint/deployment naming rule; InvalidPayload otherwise."""
    if not isinstance(value, str) or not 3 <= len(value) <= 32 or not _ENDPOINT_NAME.fullmatch(value):
        raise InvalidPayload(f"{field} {value!r} is not an Azure ML endpoint or deployment name "
                             "(3-32 letters, digits or hyphens, starting with a letter)", field=field)
    return value


def kql_string(value: str) -> str:
    """A KQL string literal for ``value``: double-quoted, backslash and quote escaped, no control characters."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise InvalidPayload(f"{value!r} contains control characters and cannot be put in a query", field="name")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def kql_datetime(value: datetime) -> str:
    return "datetime(" + value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ") + ")"


def traffic_query(endpoint: str, deployment: str | None, start: datetime, end: datetime,
                  workspace: str = "") -> str:
    """KQL over AmlOnlineEndpointTrafficLog: one row per final response code in the window (``code``,
    ``requests``), each carrying the window's latency percentiles (``p50_ms``, ``p95_ms`` of TotalDurationMs).

    Counting by code keeps the answer a handful of rows however busy the endpoint is, and leaves "what is an error"
    to the adapter (the rule the local monitor uses). Names are validated against Azure ML's naming rule and quoted
    anyway; ``=~`` because ARM names are case-insensitive. ResponseCode is an int in the table reference but the
    portal's sample query compares it with strings, so it goes through ``toint`` either way.
    """
    lines = ["let traffic = " + TRAFFIC_TABLE,
             f"| where TimeGenerated between ({kql_datetime(start)} .. {kql_datetime(end)})"]
    if workspace:
        lines.append(f"| where AzureMLWorkspaceName =~ {kql_string(workspace)}")
    lines.append(f"| where EndpointName =~ {kql_string(check_endpoint_name(endpoint, field='endpoint'))}")
    if deployment:
        lines.append(f"| where DeploymentName =~ {kql_string(check_endpoint_name(deployment, field='deployment'))}")
    lines[-1] += ";"
    lines += ["let latency = toscalar(traffic | summarize percentiles_array(TotalDurationMs, 50, 95));",
              "traffic",
              "| summarize requests = count() by code = toint(ResponseCode)",
              "| extend p50_ms = todouble(latency[0]), p95_ms = todouble(latency[1])"]
    return "\n".join(lines)


def endpoint_resource_id(subscription_id: str, resource_group: str, workspace: str, endpoint: str) -> str:
    return (f"/subscriptions/{subscription_id}/resourceGroups/{resource_group}/providers/"
            f"Microsoft.MachineLearningServices/workspaces/{workspace}/onlineEndpoints/{endpoint}")


def metrics_audience(metrics_endpoint: str) -> str:
    """Token audience of a regional metrics endpoint: ``https://westeurope.metrics.monitor.azure.com`` →
    ``https://metrics.monitor.azure.com`` (the SDK's sovereign-cloud sample passes it explicitly the same way)."""
    host = urlsplit(metrics_endpoint if "://" in metrics_endpoint else "https://" + metrics_endpoint).hostname or ""
    _, _, rest = host.partition(".")
    if not rest.startswith("metrics.monitor."):
        raise InvalidPayload(f"MLOPS_METRICS_ENDPOINT must be a regional metrics endpoint such as "
                             f"https://westeurope.metrics.monitor.azure.com, not {metrics_endpoint!r}",
                             field="MLOPS_METRICS_ENDPOINT")
    return f"https://{rest}"


# Monitor queries are POSTs that are safe to repeat: retried on 408/429 too, within the app's one policy.
READ_POLICY = retry.Policy(attempts=3, max_retry_after=5.0)


@dataclass(frozen=True)
class _Window:
    start: datetime
    end: datetime


class AzureMonitor:
    """Implements the Monitor port against Azure Monitor. Build it with ``from_settings``; every client is created
    lazily (the azure.monitor packages are imported on first use) and reused until ``close()``."""

    def __init__(self, credential: Any, *, workspace_id: str = "", logs_endpoint: str = "",
                 metrics_endpoint: str = "", subscription_id: str = "", resource_group: str = "",
                 workspace: str = "", transport: Any = None, clock: Callable[[], datetime] | None = None,
                 budget_seconds: float = retry.CALL_SECONDS, retry_total: int = 2) -> None:
        self.credential = credential
        self.workspace_id = workspace_id.strip()
        self.logs_endpoint = (logs_endpoint or "").strip()
        self.metrics_endpoint = (metrics_endpoint or "").strip().rstrip("/")
        self.subscription_id = subscription_id.strip()
        self.resource_group = resource_group.strip()
        self.workspace = workspace.strip()
        self.transport = transport
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.budget_seconds = budget_seconds
        self.retry_total = retry_total
        self._logs: Any = None
        self._metrics: Any = None
        # The Functions worker runs invocations on a thread pool: clients are made once, not once per racing thread
        # (a second one would be dropped unclosed, its connection pool with it).
        self._lock = threading.Lock()
        if self.workspace_id and not _GUID.fullmatch(self.workspace_id):
            raise InvalidPayload("MLOPS_LOG_ANALYTICS_WORKSPACE_ID must be the workspace's GUID (Workspace ID on "
                                 "its Overview blade)", field="MLOPS_LOG_ANALYTICS_WORKSPACE_ID")
        if self.workspace and not _WORKSPACE_NAME.fullmatch(self.workspace):
            raise InvalidPayload(f"MLOPS_WORKSPACE {self.workspace!r} is not an Azure ML workspace name",
                                 field="MLOPS_WORKSPACE")
        if self.metrics_endpoint:
            metrics_audience(self.metrics_endpoint)  # fail at start-up, not on the first alert
        if not self.workspace_id and not self.metrics_configured:
            raise InvalidPayload("Azure Monitor needs MLOPS_LOG_ANALYTICS_WORKSPACE_ID, or MLOPS_METRICS_ENDPOINT with "
                                 "MLOPS_SUBSCRIPTION_ID, MLOPS_RESOURCE_GROUP and MLOPS_WORKSPACE",
                                 field="MLOPS_LOG_ANALYTICS_WORKSPACE_ID")

    @classmethod
    def from_settings(cls, settings: Any, credential: Any, **kwargs: Any) -> AzureMonitor:
        return cls(credential, workspace_id=settings.log_analytics_workspace_id,
                   logs_endpoint=settings.logs_endpoint, metrics_endpoint=settings.metrics_endpoint,
                   subscription_id=settings.subscription_id, resource_group=settings.resource_group,
                   workspace=settings.workspace, **kwargs)

    @property
    def metrics_configured(self) -> bool:
        return bool(self.metrics_endpoint and self.subscription_id and self.resource_group and self.workspace)

    # --- the port ----------------------------------------------------------------------------------------

    def health(self, endpoint: str, deployment: str | None, window_minutes: int) -> Health:
        """Request count, non-2xx share and latency p50/p95 (ms) of ``endpoint`` (or one ``deployment``) over the
        last ``window_minutes``. No traffic is a Health with 0 requests; a partial answer has ``partial=True``."""
        check_endpoint_name(endpoint, field="endpoint")
        if deployment:
            check_endpoint_name(deployment, field="deployment")
        if isinstance(window_minutes, bool) or not isinstance(window_minutes, int) \
                or not 1 <= window_minutes <= MAX_WINDOW_MINUTES:
            raise InvalidPayload(f"window_minutes must be a whole number from 1 to {MAX_WINDOW_MINUTES}, "
                                 f"not {window_minutes!r}", field="window_minutes")
        end = self.clock().astimezone(timezone.utc)
        window = _Window(start=end - timedelta(minutes=window_minutes), end=end)
        if self.workspace_id:
            try:
                return self._from_logs(endpoint, deployment, window_minutes, window)
            except _TableMissing as missing:
                if not self.metrics_configured:
                    raise ServiceRejected(f"health of {endpoint}: {missing}; send the endpoint's "
                                          f"{TRAFFIC_TABLE} to the workspace (diagnostic setting) or set "
                                          "MLOPS_METRICS_ENDPOINT", status=400) from None
                logger.warning("health of %s: %s; using platform metrics instead", endpoint, missing)
        return self._from_metrics(endpoint, deployment, window_minutes, window)

    def close(self) -> None:
        with self._lock:
            clients, self._logs, self._metrics = (self._logs, self._metrics), None, None
        for client in clients:
            if client is not None:
                client.close()

    def _policy(self) -> Any:
        return retry.sdk_policy(retry.Policy(attempts=self.retry_total + 1, max_retry_after=READ_POLICY.max_retry_after),
                                retry_posts=True, call_seconds=self.budget_seconds)

    # --- Log Analytics -----------------------------------------------------------------------------------

    def _logs_client(self) -> Any:
        with self._lock:
            if self._logs is None:
                from azure.monitor.query import LogsQueryClient

                # The client strips a trailing /v1 and uses the endpoint as the token audience, so a sovereign cloud
                # needs only MLOPS_LOGS_ENDPOINT (e.g. https://api.loganalytics.azure.cn/v1).
                kwargs: dict[str, Any] = {"retry_policy": self._policy()}
                if self.logs_endpoint:
                    kwargs["endpoint"] = self.logs_endpoint
                if self.transport is not None:
                    kwargs["transport"] = self.transport
                self._logs = LogsQueryClient(self.credential, **kwargs)
            return self._logs

    def _from_logs(self, endpoint: str, deployment: str | None, window_minutes: int, window: _Window) -> Health:
        from azure.core.exceptions import HttpResponseError
        from azure.monitor.query import LogsQueryStatus

        query = traffic_query(endpoint, deployment, window.start, window.end, self.workspace)
        what = f"query {TRAFFIC_TABLE} for {endpoint}" + (f"/{deployment}" if deployment else "")
        with translated(what):
            try:
                result = self._logs_client().query_workspace(
                    self.workspace_id, query, timespan=(window.start, window.end),
                    server_timeout=max(1, int(retry.timeout(self.budget_seconds))))
            except HttpResponseError as exc:
                if _table_missing(exc):  # not an AzureError any more: passes through translated() untouched
                    raise _TableMissing(f"Log Analytics has no {TRAFFIC_TABLE} table") from exc
                raise
        partial = result.status == LogsQueryStatus.PARTIAL
        tables = (result.partial_data if partial else result.tables) or []
        if partial:
            error = result.partial_error
            logger.warning("%s: partial result (%s: %s); using the rows returned", what,
                           getattr(error, "code", ""), getattr(error, "message", error))
        rows = [{name: row[name] for name in table.columns} for table in tables for row in table.rows]
        by_code: dict[int | None, int] = {}
        for row in rows:
            code = _status(row.get("code"))
            by_code[code] = by_code.get(code, 0) + int(row.get("requests") or 0)
        requests = sum(by_code.values())
        # Not 2xx is an error, as in the local monitor; a request the log has no final code for did not succeed.
        errors = sum(n for code, n in by_code.items() if code is None or not 200 <= code < 300)
        latency = next((row for row in rows if _number(row.get("p95_ms")) is not None), {})
        health = Health(endpoint=endpoint, deployment=deployment, window_minutes=window_minutes, requests=requests,
                        error_share=errors / requests if requests else 0.0,
                        latency_p50_ms=_number(latency.get("p50_ms")) if requests else None,
                        latency_p95_ms=_number(latency.get("p95_ms")) if requests else None, partial=partial)
        logger.info("health of %s%s over %d min from logs: %d requests, %.1f%% errors, by code %s%s", endpoint,
                    f"/{deployment}" if deployment else "", window_minutes, requests, 100 * health.error_share,
                    by_code, " (partial)" if partial else "")
        return health

    # --- platform metrics --------------------------------------------------------------------------------

    def _metrics_client(self) -> Any:
        with self._lock:
            if self._metrics is None:
                from azure.monitor.querymetrics import MetricsClient

                kwargs: dict[str, Any] = {"audience": metrics_audience(self.metrics_endpoint),
                                          "retry_policy": self._policy()}
                if self.transport is not None:
                    kwargs["transport"] = self.transport
                self._metrics = MetricsClient(self.metrics_endpoint, self.credential, **kwargs)
            return self._metrics

    def _query_metrics(self, endpoint: str, names: Iterable[str], metric_filter: str | None, window: _Window,
                       what: str) -> tuple[dict[str, Any], bool]:
        """{metric name: Metric} for the endpoint resource, and whether an asked-for metric is missing."""
        from azure.monitor.querymetrics import MetricAggregationType

        names = list(names)
        resource_id = endpoint_resource_id(self.subscription_id, self.resource_group, self.workspace, endpoint)
        with translated(what):
            results = self._metrics_client().query_resources(
                resource_ids=[resource_id], metric_namespace=METRIC_NAMESPACE, metric_names=names,
                timespan=(window.start, window.end), granularity=timedelta(minutes=1),
                aggregations=[MetricAggregationType.AVERAGE], filter=metric_filter)
        found = {m.name: m for result in results for m in result.metrics if m.name}
        missing = [n for n in names if n not in found]
        if missing:
            logger.warning("%s: the service returned no %s", what, ", ".join(missing))
        return found, bool(missing)

    def _from_metrics(self, endpoint: str, deployment: str | None, window_minutes: int, window: _Window) -> Health:
        if not self.metrics_configured:
            raise InvalidPayload("platform metrics need MLOPS_METRICS_ENDPOINT, MLOPS_SUBSCRIPTION_ID, "
                                 "MLOPS_RESOURCE_GROUP and MLOPS_WORKSPACE", field="MLOPS_METRICS_ENDPOINT")
        scope = f"deployment eq '{deployment}'" if deployment else None
        what = f"read {REQUESTS_METRIC} of {endpoint}" + (f"/{deployment}" if deployment else "")
        by_class = f"{scope} and statusCodeClass eq '*'" if scope else "statusCodeClass eq '*'"
        found, partial = self._query_metrics(endpoint, [REQUESTS_METRIC], by_class, window, what)
        per_minute: dict[datetime, float] = {}
        total = errors = 0.0
        for series in getattr(found.get(REQUESTS_METRIC), "timeseries", None) or []:
            status_class = _dimension(series.metadata_values, "statusCodeClass")
            # "2xx" (or a bare code such as "200"): anything else, including an unknown class, is an error.
            failed = not status_class.startswith("2")
            for point in series.data or []:
                value = _number(point.average)
                if value is None:
                    continue
                per_minute[point.timestamp] = per_minute.get(point.timestamp, 0.0) + value
                total += value
                if failed:
                    errors += value
        requests = int(round(total))
        p50 = p95 = None
        if requests:
            found, missing = self._query_metrics(endpoint, LATENCY_METRICS, scope, window,
                                                 f"read request latency of {endpoint}")
            partial = partial or missing
            p50 = _weighted_mean(found.get(LATENCY_METRICS[0]), per_minute)
            p95 = _weighted_mean(found.get(LATENCY_METRICS[1]), per_minute)
        health = Health(endpoint=endpoint, deployment=deployment, window_minutes=window_minutes, requests=requests,
                        error_share=min(1.0, errors / total) if total else 0.0, latency_p50_ms=p50,
                        latency_p95_ms=p95, partial=partial)
        logger.info("health of %s%s over %d min from platform metrics: %d requests, %.1f%% errors%s", endpoint,
                    f"/{deployment}" if deployment else "", window_minutes, requests, 100 * health.error_share,
                    " (partial)" if partial else "")
        return health


class _TableMissing(Exception):
    """Log Analytics does not know AmlOnlineEndpointTrafficLog: no diagnostic setting sends it there (yet)."""


def _table_missing(exc: Any) -> bool:
    """A 400 whose body says the traffic table cannot be resolved (KQL semantic error SEM0100)."""
    if getattr(exc, "status_code", None) != 400:
        return False
    text = str(exc).lower()  # azure-core's rendering of the OneAPI error includes the inner errors
    return TRAFFIC_TABLE.lower() in text and "resolve" in text


def _status(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _dimension(values: dict[str, str] | None, name: str) -> str:
    for key, value in (values or {}).items():
        if key.lower() == name.lower():
            return str(value or "")
    return ""


def _weighted_mean(metric: Any, weights: dict[datetime, float]) -> float | None:
    """Mean of the per-minute values, each weighted by that minute's request count when known."""
    pairs = [(value, weights.get(point.timestamp, 0.0))
             for series in (getattr(metric, "timeseries", None) or []) for point in (series.data or [])
             if (value := _number(point.average)) is not None]
    if not pairs:
        return None
    weight = sum(w for _, w in pairs)
    if weight > 0:
        return sum(v * w for v, w in pairs) / weight
    return sum(v for v, _ in pairs) / len(pairs)


__all__ = ["AzureMonitor", "check_endpoint_name", "endpoint_resource_id", "kql_string", "metrics_audience",
           "traffic_query"]

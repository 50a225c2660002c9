"""The azure backend's ports (MLOPS_BACKEND=azure): one managed-identity credential, one client per service.

Called by shared/bootstrap.py on a worker's first invocation, never at import: the clients load azure.ai.ml and the
other SDKs then. Nothing here sends a request; each client authenticates and connects on its first call.
"""
from __future__ import annotations

import logging
from typing import Any

from shared.config import Settings
from shared.errors import InvalidPayload

logger = logging.getLogger(__name__)


def build_azure(settings: Settings, *, credential: Any = None, **client_options: Any) -> dict[str, Any]:
    """{"workspace", "metrics", "ledger", "audit", "outbox", "tables", "monitor", "publisher"} for ``settings``.

    ``credential`` defaults to the app's managed identity (DefaultAzureCredential); ``client_options`` (e.g.
    ``transport=`` in tests) reach every SDK client. The ledger table endpoint is required: without it there is
    no exactly-once bookkeeping, so the app refuses to start rather than act twice. The monitor and the
    publisher are optional: without their settings, alerts are acted on without a health reading and our own
    events are not published (both are logged once here).
    """
    from shared.adapters import azureml, events, identity, monitor, tables

    if not settings.ledger_table_uri:
        raise InvalidPayload("MLOPS_LEDGER__tableServiceUri must name the ledger's table endpoint for the azure "
                             "backend", field="MLOPS_LEDGER__tableServiceUri")
    cred = credential if credential is not None else identity.credential(settings)
    # The workspace adapter is also the RunMetrics port: it reads the run's MLflow metrics (runmetrics.py) from
    # the tracking URI the workspace reports, on the first request.
    workspace = azureml.build_workspace(settings, cred, **client_options)
    service = tables.service_client(settings.ledger_table_uri, cred, **client_options)
    deps: dict[str, Any] = {
        "credential": cred,
        "workspace": workspace,
        "metrics": workspace,
        # The tables are declared by infra/app/storage.bicep: no create calls on a cold start.
        **tables.build_stores(service, create=False),
        # The stores' TableClients share this client's connection pool and never close it (azure-data-tables
        # wraps it so a table client cannot): it is kept here so Runtime.close() closes it.
        "tables": service,
    }
    if settings.log_analytics_workspace_id or settings.metrics_endpoint:
        deps["monitor"] = monitor.AzureMonitor.from_settings(settings, cred, transport=client_options.get("transport"))
    else:
        logger.warning("no MLOPS_LOG_ANALYTICS_WORKSPACE_ID or MLOPS_METRICS_ENDPOINT: drift decisions are made "
                       "without an endpoint health reading")
        deps["monitor"] = None
    if settings.topic_endpoint:
        deps["publisher"] = events.EventGridPublisher.from_settings(settings, cred, **client_options)
    else:
        logger.warning("no MLOPS_EVENTS__topicEndpointUri: rollbacks and drift findings are not published")
        deps["publisher"] = None
    if settings.drift.container_url:  # ground truth is joined with what the data collector kept (shared/labels.py)
        from shared.drift.collected import CollectedData
        from shared.drift.monitor import container_for

        deps["collected"] = CollectedData(container_for(settings.drift.container_url, cred), cred)
    logger.info("azure backend wired for workspace %s/%s", settings.resource_group, settings.workspace)
    return deps

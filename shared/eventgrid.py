"""Wire payloads (Event Grid, CloudEvents, Azure Monitor common alerts) → typed messages. Tolerant by design.

Accepted: ``data`` keys in camelCase (the wire) or PascalCase (Microsoft's published samples), versions as
numbers or strings, statuses in any letter case, unknown fields ignored. Unknown event types become
``EventIgnored`` (acknowledged and recorded, never retried); unreadable payloads raise ``InvalidPayload``.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

from shared.errors import InvalidPayload
from shared.messages import (
    DataRegistered,
    DriftDetected,
    EventIgnored,
    LabelsLanded,
    Message,
    ModelDeployed,
    ModelRegistered,
    RunFinished,
)

ML = "microsoft.machinelearningservices."
LABELS_SUFFIX = "-labels"  # landing/<asset>-labels/<date>/<file>: ground truth for <asset>'s endpoint
BLOB_CREATED = "microsoft.storage.blobcreated"
# Only these APIs mean a blob is complete. On ADLS Gen2, CreateFile fires before any byte is written;
# FlushWithClose is the commit.
COMMITTED_APIS = {"putblob", "putblocklist", "copyblob", "flushwithclose"}
MARKER_FILE = "_SUCCESS"  # a folder version is committed by this marker (Spark/ADF convention)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,254}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SEVERITIES = {"sev0": "critical", "sev1": "error", "sev2": "warning", "sev3": "info", "sev4": "info"}


class Fields:
    """Case-insensitive view of a JSON object: ``f["runId"]`` finds runId, RunId or runid."""

    def __init__(self, obj: object, where: str = "data") -> None:
        if obj is None:
            obj = {}
        if not isinstance(obj, Mapping):
            raise InvalidPayload(f"{where} must be a JSON object", field=where)
        self.where = where
        self._map = {str(k).lower(): v for k, v in obj.items()}

    def get(self, key: str, default: object = None) -> object:
        value = self._map.get(key.lower(), default)
        return default if value is None else value

    def text(self, key: str, default: str = "") -> str:
        """A string field; numbers are accepted and rendered without a spurious '.0'."""
        value = self.get(key)
        if value is None or value == "":
            return default
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, (int, float, str)):
            return str(value).strip()
        raise InvalidPayload(f"{self.where}.{key} must be a string or a number", field=f"{self.where}.{key}")

    def require(self, key: str) -> str:
        value = self.text(key)
        if not value:
            raise InvalidPayload(f"{self.where}.{key} is missing", field=f"{self.where}.{key}")
        return value

    def number(self, key: str) -> float | None:
        value = self.get(key)
        if value is None or value == "":
            return None
        try:
            return float(value)
        except (TypeError, ValueError):
            raise InvalidPayload(f"{self.where}.{key} must be a number", field=f"{self.where}.{key}") from None

    def mapping(self, key: str) -> dict:
        value = self.get(key, {})
        return dict(value) if isinstance(value, Mapping) else {}


MAX_ID = 512  # longer ids and types are not Event Grid's; they would only bloat the ledger key


def _identifier(e: Fields, *keys: str) -> str:
    """A string envelope field (id, eventType/type): Event Grid and CloudEvents both send these as JSON strings,
    so a number, NaN, list or object there is junk, not something to coerce. Must be valid UTF-8 text."""
    value = next((e.get(k) for k in keys if e.get(k) is not None), None)
    where = f"event.{keys[0]}"
    if value is None or value == "":
        raise InvalidPayload(f"{where} is missing", field=where)
    if not isinstance(value, str):
        raise InvalidPayload(f"{where} must be a string", field=where)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidPayload(f"{where} is not valid Unicode text", field=where) from None
    value = value.strip()
    if not value or len(value) > MAX_ID or not value.isprintable():
        raise InvalidPayload(f"{where} must be 1 to {MAX_ID} printable characters", field=where)
    return value


def envelope(event: Mapping[str, object]) -> tuple[str, str, str, Fields]:
    """(id, eventType, subject, data) of an Event Grid or CloudEvents 1.0 event."""
    if not isinstance(event, Mapping):
        raise InvalidPayload("an event must be a JSON object", field="event")
    e = Fields(event, "event")
    event_id = _identifier(e, "id")
    event_type = _identifier(e, "eventType", "type")
    return event_id, event_type, e.text("subject"), Fields(e.get("data", {}), "data")


def _unreadable(what: str, error: BaseException) -> InvalidPayload:
    # Parsing is pure: whatever it raises on a payload is a fact about the payload (a field of the wrong shape
    # the code did not foresee), so it is permanent. Only the error's class is kept: its text may quote the input.
    return InvalidPayload(f"unreadable {what} ({type(error).__name__})", field="body")


def to_message(event: Mapping[str, object], *, landing_container: str = "landing",
               datastore_account: str = "") -> Message:
    """Translate one Event Grid event (dict, as delivered) into the message the bus handles.

    ``datastore_account`` is the storage account behind the landing datastore (MLOPS_DATASTORE_ACCOUNT): a
    BlobCreated from any other account is refused, since registering it would point the datastore at a blob it does
    not hold. Empty (the embedded backend) skips the check. Raises only InvalidPayload for a payload it cannot read,
    whatever shape the junk takes.
    """
    try:
        return _to_message(event, landing_container, datastore_account)
    except InvalidPayload:
        raise
    except (TypeError, ValueError, AttributeError, LookupError, ArithmeticError, RecursionError) as error:
        raise _unreadable("event", error) from None


def _to_message(event: Mapping[str, object], landing_container: str, datastore_account: str) -> Message:
    event_id, event_type, subject, data = envelope(event)
    kind = event_type.lower()
    if kind == BLOB_CREATED:
        if datastore_account:
            refused = _foreign_account(event_id, event, data, datastore_account)
            if refused is not None:
                return refused
        return _blob_created(event_id, subject, data, landing_container)
    if kind in (ML + "runcompleted", ML + "runstatuschanged"):
        status = "Completed" if kind.endswith("runcompleted") else data.require("runStatus")
        return RunFinished(event_id=event_id, job_name=data.require("runId"), status=status,
                           experiment=data.text("experimentName"),
                           error=_run_error(data))
    if kind == ML + "modelregistered":
        tags = {str(k): str(v) for k, v in data.mapping("modelTags").items()}
        return ModelRegistered(event_id=event_id, name=data.require("modelName"),
                               version=data.require("modelVersion"), tags=tags)
    if kind == ML + "modeldeployed":
        return ModelDeployed(event_id=event_id, endpoint=data.require("serviceName"), models=data.text("modelIds"))
    if kind == ML + "datasetdriftdetected":
        # Dataset drift monitors name no endpoint: by convention the monitor is named after the endpoint.
        name = data.require("dataDriftName")
        return DriftDetected(event_id=event_id, endpoint=name, source="azureml", rule=name,
                             metric="drift_coefficient", value=data.number("driftCoefficient"),
                             description=f"dataset drift between {data.text('startTime')} and {data.text('endTime')}")
    if kind == "mlops.dataregistered":
        asset, version = validate_asset(data.require("asset") if data.get("asset") else data.require("name"), "data.asset"), \
            validate_version(data.require("version"))
        path = data.text("path")
        if "?" in path or "#" in path:
            # A query string on a storage URL is usually a SAS token: it would be stored as the asset's path and
            # repeated in the audit trail and alerts. The value is not echoed here for the same reason.
            raise InvalidPayload("path must be a datastore URI or blob URL without a query string (no SAS tokens: "
                                 "the app reads data with its identity)", field="path")
        return DataRegistered(event_id=event_id, asset=asset, version=version, path=path, source="custom",
                              register=bool(path))
    if kind == "mlops.driftdetected":
        return DriftDetected(event_id=event_id, endpoint=data.require("endpoint"), deployment=data.text("deployment"),
                             source=data.text("monitor", "mlops-monitor"),
                             severity=_severity(data.text("severity", "warning")),
                             resolved=str(data.get("resolved", "")).lower() in ("true", "1", "resolved"),
                             rule=data.text("monitor"), metric=data.text("metric"), value=data.number("value"),
                             threshold=data.number("threshold"), description=data.text("description"),
                             details=_drift_details(data))
    return EventIgnored(event_id=event_id, event_type=event_type, reason=f"no handler for {event_type}")


def _drift_details(data: Fields) -> dict:
    """What our monitors add for the alert (top features, window, chart); malformed parts are dropped."""
    from shared.drift.chart import details, read_details

    top = data.get("top")
    window = data.get("window")
    rows = data.get("rows", data.get("requests"))
    return read_details(details([t for t in top if isinstance(t, dict)] if isinstance(top, list) else [],
                                window if isinstance(window, dict) else None,
                                rows if isinstance(rows, int) and not isinstance(rows, bool) else 0,
                                data.get("chart") if isinstance(data.get("chart"), dict) else None))


def _run_error(data: Fields) -> str:
    props = Fields(data.mapping("runProperties"), "data.runProperties")
    return props.text("error") or props.text("azureml.runError") or data.text("error")


def validate_asset(value: str, field: str) -> str:
    if not _NAME.match(value):
        raise InvalidPayload(f"{field} {value!r} is not a valid data asset name (letters, digits, - and _)",
                             field=field)
    return value


def validate_version(value: str, field: str = "data.version") -> str:
    if not _VERSION.match(value):
        raise InvalidPayload(f"{field} {value!r} is not a valid version (letters, digits, '.', '-', '_')",
                             field=field)
    return value


_TOPIC_ACCOUNT = re.compile(r"/providers/microsoft\.storage/storageaccounts/([^/]+)", re.IGNORECASE)
_URL_ACCOUNT = re.compile(r"^https://([^./]+)\.(?:blob|dfs)\.", re.IGNORECASE)


def _foreign_account(event_id: str, event: Mapping[str, object], data: Fields, account: str) -> Message | None:
    """EventIgnored when the blob's storage account, read from the event's topic and from its URL, is not
    ``account`` (or cannot be read from either); None when it is that account."""
    envelope_fields = Fields(event, "event")
    topic = envelope_fields.text("topic") or envelope_fields.text("source")
    seen = [m.group(1) for m in (_TOPIC_ACCOUNT.search(topic), _URL_ACCOUNT.match(data.text("url"))) if m]
    others = sorted({a for a in seen if a.lower() != account.lower()})
    if seen and not others:
        return None
    found = ", ".join(repr(a) for a in others) if others else "no storage account in its topic or url"
    return EventIgnored(event_id=event_id, event_type="Microsoft.Storage.BlobCreated",
                        reason=f"BlobCreated from {found}, not from the landing datastore's storage account "
                               f"{account!r} (MLOPS_DATASTORE_ACCOUNT): not registered")


def _blob_created(event_id: str, subject: str, data: Fields, landing_container: str) -> Message:
    api = data.text("api")
    if api.lower() not in COMMITTED_APIS:
        return EventIgnored(event_id=event_id, event_type="Microsoft.Storage.BlobCreated",
                            reason=f"blob not committed yet (api {api or 'missing'})")
    m = re.match(r"^/blobServices/default/containers/([^/]+)/blobs/(.+)$", subject or "", re.IGNORECASE)
    if not m:
        raise InvalidPayload(f"subject {subject!r} is not a blob subject", field="subject")
    container, blob_path = m.group(1), unquote(m.group(2))
    if container.lower() != landing_container.lower():
        raise InvalidPayload(f"container {container!r} is not the landing container {landing_container!r}",
                             field="subject")
    if "?" in blob_path or "#" in blob_path or "\\" in blob_path:
        raise InvalidPayload("the blob name holds '?', '#' or '\\': not a landing file", field="subject")
    parts = blob_path.split("/")
    if len(parts) < 3 or not all(parts):
        raise InvalidPayload(f"blob path {blob_path!r} does not follow <asset>/<version>/<file>", field="subject")
    asset, version, filename = parts[0], parts[1], "/".join(parts[2:])
    validate_asset(asset, "subject (asset)")
    validate_version(version, "subject (version)")
    url = _blob_url(data.require("url"), container, blob_path)
    if filename == MARKER_FILE:
        # The marker commits the whole folder: register the folder, not the marker.
        url = url.rsplit("/", 1)[0] + "/"
    elif any(part.startswith(("_", ".")) for part in parts[2:]):
        # Hidden or scratch files and folders anywhere below the version (Spark's _temporary/, .crc files,
        # ..): never data, and a "." start also covers path traversal.
        return EventIgnored(event_id=event_id, event_type="Microsoft.Storage.BlobCreated",
                            reason=f"{blob_path} is a hidden, scratch or marker file")
    if asset.lower().endswith(LABELS_SUFFIX) and len(asset) > len(LABELS_SUFFIX) and filename != MARKER_FILE:
        # Ground truth for served predictions, not training data (shared/labels.py, docs/drift.md).
        return LabelsLanded(event_id=event_id, asset=asset[:-len(LABELS_SUFFIX)], version=version, path=url)
    return DataRegistered(event_id=event_id, asset=asset, version=version, path=url, source=url, register=True)


# The storage endpoints a BlobCreated url may name: Blob (blob.core.…) or, on ADLS Gen2, DFS (dfs.core.…), in any
# Azure cloud (windows.net, chinacloudapi.cn, usgovcloudapi.net).
_STORAGE_HOST = re.compile(r"^([a-z0-9]{3,24})\.(blob|dfs)\.(core\.[a-z0-9.-]+)$")


def _blob_url(raw: str, container: str, blob_path: str) -> str:
    """The blob URL to register, from ``data.url``: it must name the same container and blob as the subject
    (otherwise it is not the blob the event is about: a path such as /etc/passwd is refused), on a storage
    account's Blob or DFS endpoint. Any query string (a SAS token) and fragment are dropped, and a DFS url is
    given as its Blob endpoint form, the one every datastore reader takes."""
    parts = urlsplit(raw)
    host = (parts.hostname or "").lower()
    m = _STORAGE_HOST.match(host)
    if parts.scheme.lower() != "https" or not m or parts.port is not None or parts.username is not None:
        raise InvalidPayload("data.url is not an https URL of a storage account's blob or dfs endpoint",
                             field="data.url")
    if unquote(parts.path) != f"/{container}/{blob_path}":
        raise InvalidPayload("data.url does not name the blob in the event subject", field="data.url")
    return f"https://{m.group(1)}.blob.{m.group(3)}{parts.path}"


def _severity(value: str) -> str:
    v = value.strip().lower()
    if v in _SEVERITIES:
        return _SEVERITIES[v]
    return v if v in ("info", "warning", "error", "critical") else "warning"


def from_common_alert(body: object) -> DriftDetected:
    """An Azure Monitor alert in the common alert schema (action group webhook) → DriftDetected.

    The event id combines alertId and monitorCondition, so Fired and Resolved are distinct facts while
    a re-sent notification of either is a duplicate. Raises only InvalidPayload for a body it cannot read.
    """
    try:
        return _from_common_alert(body)
    except InvalidPayload:
        raise
    except (TypeError, ValueError, AttributeError, LookupError, ArithmeticError, RecursionError) as error:
        raise _unreadable("alert", error) from None


def _strings(value: object, where: str) -> list[str]:
    """A list of strings in an alert (alertTargetIDs, configurationItems); anything else is a bad payload."""
    if value is None or value == "":
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidPayload(f"{where} must be a list of strings", field=where)
    return value


def _from_common_alert(body: object) -> DriftDetected:
    root = Fields(body, "body")
    if root.text("schemaId") and root.text("schemaId").lower() != "azuremonitorcommonalertschema":
        raise InvalidPayload(f"schemaId {root.text('schemaId')!r} is not azureMonitorCommonAlertSchema",
                             field="schemaId")
    data = Fields(root.get("data"), "data")
    ess = Fields(data.get("essentials"), "data.essentials")
    alert_id = ess.require("alertId")
    if len(alert_id) > MAX_ID or not alert_id.isprintable():
        raise InvalidPayload(f"data.essentials.alertId must be 1 to {MAX_ID} printable characters",
                             field="data.essentials.alertId")
    condition = ess.text("monitorCondition", "Fired")
    custom = Fields(data.get("customProperties") or {}, "data.customProperties")
    endpoint = custom.text("endpoint")
    if not endpoint:
        for target in _strings(ess.get("alertTargetIDs"), "data.essentials.alertTargetIDs"):
            m = re.search(r"/onlineendpoints/([^/]+)", str(target), re.IGNORECASE)
            if m:
                endpoint = m.group(1)
                break
    if not endpoint:
        items = _strings(ess.get("configurationItems"), "data.essentials.configurationItems")
        endpoint = items[0] if items else ""
    if not endpoint:
        raise InvalidPayload("the alert names no online endpoint (alertTargetIDs, configurationItems or "
                             "customProperties.endpoint)", field="data.essentials.alertTargetIDs")
    context = Fields(data.get("alertContext") or {}, "data.alertContext")
    metric, value, threshold, deployment = _alert_condition(context)
    return DriftDetected(
        event_id=f"{alert_id}:{condition.lower()}", endpoint=endpoint,
        deployment=custom.text("deployment") or deployment, source="azure-monitor",
        severity=_severity(ess.text("severity", "Sev2")), resolved=condition.lower() == "resolved",
        rule=ess.text("alertRule"), metric=metric, value=value, threshold=threshold,
        description=ess.text("description"))


def _alert_condition(context: Fields) -> tuple[str, float | None, float | None, str]:
    """Metric name, value, threshold and deployment dimension of a metric alert's first condition."""
    condition = Fields(context.get("condition") or {}, "data.alertContext.condition")
    all_of = condition.get("allOf") or []
    if not all_of or not isinstance(all_of[0], Mapping):
        return "", None, None, ""
    first = Fields(all_of[0], "data.alertContext.condition.allOf[0]")
    deployment = ""
    for dim in first.get("dimensions") or []:
        d = Fields(dim, "dimension")
        if d.text("name").lower() == "deployment":
            deployment = d.text("value")
    return first.text("metricName"), first.number("metricValue"), first.number("threshold"), deployment

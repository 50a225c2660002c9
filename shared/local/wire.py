"""Builders of Event Grid events in the wire format Azure sends (Event Grid schema), for the embedded backend.

The embedded workspace emits these, so a local run goes through the same parsing and routing as Azure.
"""
from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime, timezone

LOCAL_SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
LOCAL_GROUP = "mlops-local"
ML_TOPIC = (f"/subscriptions/{LOCAL_SUBSCRIPTION}/resourceGroups/{LOCAL_GROUP}"
            "/providers/Microsoft.MachineLearningServices/workspaces/local")
STORAGE_TOPIC = (f"/subscriptions/{LOCAL_SUBSCRIPTION}/resourceGroups/{LOCAL_GROUP}"
                 "/providers/Microsoft.Storage/storageAccounts/mlopslocaldata")
CUSTOM_TOPIC = (f"/subscriptions/{LOCAL_SUBSCRIPTION}/resourceGroups/{LOCAL_GROUP}"
                "/providers/Microsoft.EventGrid/topics/mlops-events")

# Which topic each source name stands for (the subscription list names sources, not ids).
TOPICS = {"ml": ML_TOPIC, "storage": STORAGE_TOPIC, "custom": CUSTOM_TOPIC}

ML = "Microsoft.MachineLearningServices."


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def event(topic: str, event_type: str, subject: str, data: Mapping[str, object], *, event_id: str | None = None,
          data_version: str = "2", event_time: str | None = None) -> dict:
    """One event in the Event Grid schema."""
    return {
        "id": event_id or str(uuid.uuid4()),
        "topic": topic,
        "subject": subject,
        "eventType": event_type,
        "eventTime": event_time or _now(),
        "data": dict(data),
        "dataVersion": data_version,
        "metadataVersion": "1",
    }


def blob_created(container: str, blob_path: str, *, content_length: int, api: str = "PutBlob",
                 account: str = "mlopslocaldata", event_id: str | None = None) -> dict:
    """Microsoft.Storage.BlobCreated for a blob the local datastore committed."""
    url = f"https://{account}.blob.core.windows.net/{container}/{blob_path}"
    return event(STORAGE_TOPIC, "Microsoft.Storage.BlobCreated",
                 f"/blobServices/default/containers/{container}/blobs/{blob_path}",
                 {"api": api, "clientRequestId": str(uuid.uuid4()), "requestId": str(uuid.uuid4()),
                  "eTag": "0x" + uuid.uuid4().hex[:15].upper(), "contentType": "text/csv",
                  "contentLength": content_length, "blobType": "BlockBlob", "url": url,
                  "sequencer": f"{uuid.uuid4().int:032x}", "storageDiagnostics": {"batchId": str(uuid.uuid4())}},
                 event_id=event_id, data_version="")


def _run_data(run_id: str, experiment: str, tags: Mapping[str, str], properties: Mapping[str, str]) -> dict:
    return {"experimentId": str(uuid.uuid5(uuid.NAMESPACE_URL, experiment)), "experimentName": experiment,
            "runId": run_id, "runType": "azureml.scriptrun", "runTags": dict(tags),
            "runProperties": dict(properties)}


def run_status_changed(run_id: str, status: str, *, experiment: str, tags: Mapping[str, str],
                       properties: Mapping[str, str] | None = None) -> dict:
    data = _run_data(run_id, experiment, tags, properties or {})
    data["runStatus"] = status
    return event(ML_TOPIC, ML + "RunStatusChanged", f"experiments/{data['experimentId']}/runs/{run_id}", data)


def run_completed(run_id: str, *, experiment: str, tags: Mapping[str, str],
                  properties: Mapping[str, str] | None = None) -> dict:
    data = _run_data(run_id, experiment, tags, properties or {})
    return event(ML_TOPIC, ML + "RunCompleted", f"experiments/{data['experimentId']}/runs/{run_id}", data)


def model_registered(name: str, version: str, tags: Mapping[str, str]) -> dict:
    return event(ML_TOPIC, ML + "ModelRegistered", f"models/{name}:{version}",
                 {"modelName": name, "modelVersion": version, "modelTags": dict(tags), "modelProperties": {}})


def model_deployed(endpoint: str, model_ids: str, tags: Mapping[str, str] | None = None) -> dict:
    return event(ML_TOPIC, ML + "ModelDeployed", f"endpoints/{endpoint}",
                 {"serviceName": endpoint, "serviceComputeType": "Managed", "modelIds": model_ids,
                  "serviceTags": dict(tags or {}), "serviceProperties": {}})


def custom(event_type: str, subject: str, data: Mapping[str, object], *, event_id: str | None = None) -> dict:
    """One of our own events (MLOps.*), as published to the custom topic."""
    return event(CUSTOM_TOPIC, event_type, subject, data, event_id=event_id, data_version="1.0")

"""A small, stateful fake of the Azure ML REST API, plugged into azure-ai-ml's real MLClient as its transport.

``FakeAzureML`` is an azure-core ``HttpTransport``: ``MLClient(cred, sub, rg, ws, transport=FakeAzureML(...))`` sends
every ARM and data-plane request here instead of the network, and gets back the same response objects azure-core's
requests transport builds. It keeps the resources it was sent, so a GET returns what a PUT stored, in the shapes of
the REST specification (azure-rest-api-specs, Microsoft.MachineLearningServices), with ``systemData`` and
``provisioningState``. What it answers, under
``/subscriptions/{s}/resourceGroups/{g}/providers/Microsoft.MachineLearningServices``:

    workspaces/{w}                                            GET: location, discoveryUrl, mlFlowTrackingUri
    workspaces/{w}/datastores[/{d}[/listSecrets]]             GET (list, ?isDefault=true), POST listSecrets
    workspaces/{w}/{data|models|codes|environments}/{n}[/versions[/{v}]]
                                                              PUT a version, GET, list; containers keep latestVersion
    workspaces/{w}/codes/{n}/versions/{v}/startPendingUpload  POST: a SAS URI on the loopback blob endpoint below
    workspaces/{w}/computes/{c}                               GET
    workspaces/{w}/jobs[/{id}]                                PUT (an existing name is 409), GET, list (?tag=<key>)
    workspaces/{w}/onlineEndpoints[/{e}[/deployments[/{d}]]]  PUT as a long-running operation, GET, list
    locations/{l}/mfeOperationsStatus/{id}                    GET: the operation finishes on its first poll

and on ``https://{location}.api.azureml.ms``: ``/discovery``, MLflow's ``runs/get`` and ``metrics/get-history``,
and RunHistory's ``runs/{id}``.

azure-storage-blob (which azure-ai-ml uses to upload a job's code with the SAS URI the service hands out) does not
take MLClient's transport, so the SAS URI points at a loopback HTTP server that passes each blob request to the same
state and request log. Any other host is refused like an unreachable network (``ServiceRequestError``) and kept in
``unexpected``, so a test can prove nothing left the machine.

Every request is recorded (method, host, path, api-version, query, headers, parsed JSON body) with the status it got.
``fail_next`` injects a fault (429 with Retry-After, 500, 409, ...) for matching requests; ``finish_job`` ends a job
as the service would (status, logged metrics, error); ``hold_operations`` keeps long-running operations in progress and
``fail_next_operation`` ends the next one Failed.
Assumptions where the specification is silent are marked "assumed" below.
"""
from __future__ import annotations

import io
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit
from xml.sax.saxutils import escape

import requests
import urllib3
from azure.core.credentials import AccessToken
from azure.core.exceptions import ServiceRequestError
from azure.core.pipeline.transport import HttpTransport, RequestsTransportResponse
from azure.core.rest import HttpRequest as RestHttpRequest

logger = logging.getLogger(__name__)

ARM_HOST = "management.azure.com"
PROVIDER = "Microsoft.MachineLearningServices"
_ARM_PATH = re.compile(r"^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.MachineLearningServices/(.*)$",
                       re.IGNORECASE)
# The immutable field of each versioned asset (an anonymous environment's version is the hash of its definition).
_ASSET_KINDS = {"data": "dataUri", "models": "modelUri", "codes": "codeUri", "environments": "image"}
_LRO_KINDS = ("onlineendpoints",)  # endpoints and their deployments are created as long-running operations
_MLFLOW_STATUS = {"NotStarted": "SCHEDULED", "Queued": "SCHEDULED", "Preparing": "SCHEDULED", "Starting": "RUNNING",
                  "Running": "RUNNING", "Finalizing": "RUNNING", "Completed": "FINISHED", "Failed": "FAILED",
                  "Canceled": "KILLED", "CancelRequested": "KILLED"}


class FakeCredential:
    """A token credential handing out a fixed, meaningless token: MLClient refuses to start without one."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("fake-token-for-tests", int(time.time()) + 3600)


@dataclass
class Recorded:
    """One request the fake received and the status it answered."""

    method: str
    url: str
    host: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any  # parsed JSON, raw bytes for anything else, None when empty
    status: int = 0

    @property
    def api_version(self) -> str | None:
        return self.query.get("api-version")

    @property
    def json(self) -> dict:
        if not isinstance(self.body, dict):
            raise AssertionError(f"{self.method} {self.path} carried no JSON object: {self.body!r}")
        return self.body

    def __repr__(self) -> str:
        return f"<{self.method} {self.host}{self.path} {self.status}>"


@dataclass
class Fault:
    """An error answered instead of the real response, ``times`` times, to requests matching method and path."""

    status: int
    method: str | None = None
    path_contains: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    code: str = ""
    message: str = ""
    times: int = 1

    def matches(self, method: str, path: str) -> bool:
        return ((self.method is None or self.method.upper() == method.upper())
                and (self.path_contains is None or self.path_contains.lower() in path.lower()))


@dataclass
class _Blob:
    data: bytes
    metadata: dict[str, str]
    content_type: str
    etag: str
    modified: str


class _Answer(Exception):
    """Raised inside a handler to answer at once (errors)."""

    def __init__(self, status: int, body: Any = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, dict(headers or {})


UNWATCHED_OPERATION_SECONDS = 1.0  # a long-running operation nobody polls ends on its own after this long


def _error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> _Answer:
    # The ARM error envelope (common-types ErrorResponse): what azure-core's ARMErrorFormat reads.
    return _Answer(status, {"error": {"code": code, "message": message, "details": [], "additionalInfo": []}}, headers)


class FakeAzureML(HttpTransport):
    """The fake service and the azure-core transport that reaches it; safe to use from several threads."""

    def __init__(self, subscription_id: str = "00000000-0000-0000-0000-000000000000",
                 resource_group: str = "rg-mlops", workspace: str = "mlw-mlops", *, location: str = "westeurope",
                 page_size: int = 50, lro_delay_ms: int = 5) -> None:
        self.subscription_id, self.resource_group, self.workspace = subscription_id, resource_group, workspace
        self.location = location
        self.page_size = page_size
        self.lro_delay_ms = lro_delay_ms
        self.hold_operations = False  # True: long-running operations stay InProgress until released
        # True: data versions come back in the long datastore URI form (azureml://subscriptions/.../datastores/...);
        # assumed possible (Studio shows that form), so the adapter must treat both forms as one path.
        self.long_data_uris = False
        self.requests: list[Recorded] = []
        self.unexpected: list[str] = []  # URLs on hosts the fake does not serve
        self.slept: list[float] = []  # every wait azure-core asked this transport for (retries, LRO polls)
        self._lock = threading.RLock()
        self._resources: dict[tuple[str, ...], dict] = {}
        self._operations: dict[str, dict] = {}
        self._faults: list[Fault] = []
        self._metrics: dict[str, dict[str, float]] = {}
        self._errors: dict[str, str] = {}
        self._blobs: dict[tuple[str, str], _Blob] = {}
        self._last_time = datetime.now(timezone.utc)
        self._adapter = requests.adapters.HTTPAdapter()
        self._blob_server: ThreadingHTTPServer | None = None
        self._fail_operation: str | None = None
        self.workspace_id = str(uuid.UUID(int=0x5EED))
        self.ws_path = (f"/subscriptions/{subscription_id}/resourceGroups/{resource_group}/providers/{PROVIDER}"
                        f"/workspaces/{workspace}")
        self.api_base = f"https://{location}.api.azureml.ms"
        self.mlflow_uri = f"azureml://{location}.api.azureml.ms/mlflow/v1.0{self.ws_path}"
        self._put(("datastores", "workspaceblobstore"), {"properties": {
            "datastoreType": "AzureBlob", "accountName": "fakestorage", "containerName": "azureml-blobstore-fake",
            "endpoint": "core.windows.net", "protocol": "https", "serviceDataAccessAuthIdentity": "None",
            "credentials": {"credentialsType": "AccountKey"}, "isDefault": True, "description": None,
            "tags": {}, "properties": {}}})
        self._put(("datastores", "workspaceartifactstore"), {"properties": {
            "datastoreType": "AzureBlob", "accountName": "fakestorage", "containerName": "azureml",
            "endpoint": "core.windows.net", "protocol": "https", "serviceDataAccessAuthIdentity": "None",
            "credentials": {"credentialsType": "AccountKey"}, "isDefault": False, "tags": {}, "properties": {}}})

    # --- the transport -------------------------------------------------------------------------------

    def __enter__(self) -> FakeAzureML:
        return self

    def __exit__(self, *args: Any) -> None:
        pass  # pipelines close their transport on exit; the fake lives on until shutdown()

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def sleep(self, duration: float) -> None:
        with self._lock:
            self.slept.append(duration)
        time.sleep(duration)

    def send(self, request, **kwargs: Any):
        status, headers, data = self.handle(request.method, request.url, dict(request.headers), _content(request))
        raw = urllib3.HTTPResponse(body=io.BytesIO(data), headers=headers, status=status,
                                   reason=HTTPStatus(status).phrase, preload_content=False, decode_content=False)
        prepared = requests.Request(request.method, request.url, headers=dict(request.headers)).prepare()
        internal = self._adapter.build_response(prepared, raw)
        if isinstance(request, RestHttpRequest):
            # What RequestsTransport hands back for azure.core.rest requests (read now unless streaming).
            from azure.core.rest._requests_basic import RestRequestsTransportResponse

            response = RestRequestsTransportResponse(request=request, internal_response=internal, block_size=4096)
            if not kwargs.get("stream"):
                response.read()
            return response
        return RequestsTransportResponse(request, internal, 4096)

    # --- test controls -------------------------------------------------------------------------------

    def fail_next(self, status: int, *, method: str | None = None, path_contains: str | None = None,
                  retry_after: float | str | None = None, code: str | None = None, message: str | None = None,
                  times: int = 1) -> Fault:
        """Answer the next ``times`` matching requests with ``status`` and an ARM error body."""
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        fault = Fault(status=status, method=method, path_contains=path_contains, headers=headers,
                      code=code or HTTPStatus(status).phrase.replace(" ", ""),
                      message=message or f"injected {status} {HTTPStatus(status).phrase}", times=times)
        with self._lock:
            self._faults.append(fault)
        return fault

    def finish_job(self, name: str, status: str = "Completed", *, metrics: Mapping[str, float] | None = None,
                   error: str = "") -> None:
        """End a job as the service would: its status, the metrics the run logged, the error of a failed run."""
        with self._lock:
            job = self._resources.get(("jobs", name.lower()))
            if job is None:
                raise KeyError(f"no job {name}")
            job["properties"]["status"] = status
            self._touch(job)
            self._metrics[name.lower()] = {k: float(v) for k, v in (metrics or {}).items()}
            if error:
                self._errors[name.lower()] = error

    def set_job_status(self, name: str, status: str) -> None:
        with self._lock:
            job = self._resources[("jobs", name.lower())]
            job["properties"]["status"] = status
            self._touch(job)

    def resource(self, *segments: str) -> dict | None:
        """What the fake stores under the workspace, e.g. ``resource("onlineEndpoints", "ep")``."""
        with self._lock:
            found = self._resources.get(tuple(s.lower() for s in segments))
            return json.loads(json.dumps(found)) if found is not None else None

    def blob_names(self) -> list[str]:
        with self._lock:
            return sorted(f"{c}/{b}" for c, b in self._blobs)

    def find(self, method: str | None = None, path_contains: str | None = None, *,
             host: str | None = None) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if (method is None or r.method == method.upper())
                    and (path_contains is None or path_contains.lower() in r.path.lower())
                    and (host is None or r.host == host)]

    def shutdown(self) -> None:
        """Stop the loopback blob server (if it started)."""
        server, self._blob_server = self._blob_server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    # --- dispatch ------------------------------------------------------------------------------------

    def handle(self, method: str, url: str, headers: Mapping[str, str], content: bytes) -> tuple[int, dict, bytes]:
        """Answer one request: (status, headers, body bytes). Also the entry point of the loopback blob server."""
        parts = urlsplit(url)
        host, path = (parts.hostname or "").lower(), unquote(parts.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        body: Any = None
        if content:
            try:
                body = json.loads(content)
            except ValueError:
                body = content
        record = Recorded(method=method.upper(), url=url, host=host, path=path, query=query,
                          headers={str(k): str(v) for k, v in headers.items()}, body=body)
        with self._lock:
            self.requests.append(record)
            try:
                self._settle_unwatched()
                fault = next((f for f in self._faults if f.matches(method, path)), None)
                if fault is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    raise _error(fault.status, fault.code, fault.message, fault.headers)
                if host == ARM_HOST:
                    answer = self._arm(record)
                elif host == urlsplit(self.api_base).hostname:
                    answer = self._dataplane(record)
                elif self._blob_server is not None and parts.port == self._blob_server.server_address[1]:
                    return self._finish(record, *self._blob(record, content))
                else:
                    self.unexpected.append(url)
                    record.status = -1
                    raise ServiceRequestError(f"the fake Azure ML service does not serve {url} (no network in tests)")
            except _Answer as a:
                answer = a
            return self._finish(record, answer.status, answer.headers, answer.body)

    def _finish(self, record: Recorded, status: int, headers: Mapping[str, str], body: Any) -> tuple[int, dict, bytes]:
        record.status = status
        out = {"x-ms-request-id": str(uuid.uuid4()), "Date": formatdate(usegmt=True), **headers}
        if isinstance(body, bytes):
            data = body
        elif body is None:
            data = b""
        else:
            data = json.dumps(body).encode()
            out.setdefault("Content-Type", "application/json; charset=utf-8")
        if record.method == "HEAD":
            data = b""
        else:
            out["Content-Length"] = str(len(data))
        return status, out, data

    # --- ARM -----------------------------------------------------------------------------------------

    def _arm(self, r: Recorded) -> _Answer:
        m = _ARM_PATH.match(r.path)
        if not m:
            raise _error(404, "InvalidResourceType", f"no such ARM resource type: {r.path}")
        sub, group, rest = m.groups()
        if sub != self.subscription_id:
            raise _error(404, "SubscriptionNotFound", f"The subscription '{sub}' could not be found.")
        if group.lower() != self.resource_group.lower():
            raise _error(404, "ResourceGroupNotFound", f"Resource group '{group}' could not be found.")
        segs = [s for s in rest.split("/") if s]
        if len(segs) == 4 and segs[0].lower() == "locations" and segs[2].lower() == "mfeoperationsstatus":
            return self._operation_status(segs[3])
        if len(segs) < 2 or segs[0].lower() != "workspaces" or segs[1].lower() != self.workspace.lower():
            raise _error(404, "ResourceNotFound", f"The Resource '{PROVIDER}/{'/'.join(segs[:2])}' under resource "
                                                  f"group '{group}' was not found.")
        segs = segs[2:]
        kind = segs[0].lower() if segs else ""
        if not segs:
            if r.method != "GET":
                raise _error(405, "MethodNotAllowed", f"{r.method} is not supported on a workspace here")
            return _Answer(200, self._workspace())
        if kind == "datastores":
            return self._datastores(r, segs)
        if kind == "codes" and len(segs) == 5 and segs[4].lower() == "startpendingupload":
            return self._start_pending_upload(r, segs)
        if kind == "computes" and len(segs) == 2 and r.method == "GET":
            return _Answer(200, self._compute(segs[1]))
        if kind in _ASSET_KINDS:
            return self._assets(r, segs)
        if kind == "jobs":
            return self._jobs(r, segs)
        if kind == "onlineendpoints":
            return self._endpoints(r, segs)
        raise _error(404, "NotFound", f"the fake does not serve {'/'.join(segs)}")

    def _workspace(self) -> dict:
        ws = self.ws_path
        sub_rg = f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}/providers"
        return {
            "id": ws, "name": self.workspace, "type": f"{PROVIDER}/workspaces", "location": self.location,
            "kind": "Default", "tags": {}, "sku": {"name": "Basic", "tier": "Basic"},
            "identity": {"type": "SystemAssigned", "principalId": str(uuid.UUID(int=1)),
                         "tenantId": str(uuid.UUID(int=2))},
            "properties": {
                "friendlyName": self.workspace, "workspaceId": self.workspace_id, "provisioningState": "Succeeded",
                "discoveryUrl": f"{self.api_base}/discovery", "mlFlowTrackingUri": self.mlflow_uri,
                "storageAccount": f"{sub_rg}/Microsoft.Storage/storageAccounts/fakestorage",
                "keyVault": f"{sub_rg}/Microsoft.KeyVault/vaults/fakevault",
                "applicationInsights": f"{sub_rg}/Microsoft.Insights/components/fakeinsights",
                "hbiWorkspace": False, "publicNetworkAccess": "Enabled", "v1LegacyMode": False,
            },
            "systemData": self._system_data(),
        }

    def _compute(self, name: str) -> dict:
        return {"id": f"{self.ws_path}/computes/{name}", "name": name, "type": f"{PROVIDER}/workspaces/computes",
                "location": self.location, "properties": {
                    "computeType": "AmlCompute", "provisioningState": "Succeeded",
                    "properties": {"vmSize": "STANDARD_DS3_V2", "vmPriority": "Dedicated",
                                   "scaleSettings": {"minNodeCount": 0, "maxNodeCount": 2}}},
                "systemData": self._system_data()}

    def _datastores(self, r: Recorded, segs: list[str]) -> _Answer:
        if len(segs) == 1 and r.method == "GET":
            items = [v for k, v in self._resources.items() if k[0] == "datastores" and len(k) == 2]
            if r.query.get("isDefault", "").lower() == "true":
                items = [d for d in items if d["properties"].get("isDefault")]
            return _Answer(200, {"value": items})
        store = self._resources.get(("datastores", segs[1].lower())) if len(segs) >= 2 else None
        if store is None:
            raise _error(404, "UserError", f"Datastore {segs[1] if len(segs) > 1 else ''} not found")
        if len(segs) == 2 and r.method == "GET":
            return _Answer(200, store)
        if len(segs) == 3 and segs[2].lower() == "listsecrets" and r.method == "POST":
            # Assumed: a short-lived SAS (expirable_secret) rather than the account key.
            return _Answer(200, {"secretsType": "Sas", "sasToken": "sv=2021-08-06&sr=c&sig=fake"})
        raise _error(405, "MethodNotAllowed", f"{r.method} {'/'.join(segs)}")

    def _start_pending_upload(self, r: Recorded, segs: list[str]) -> _Answer:
        if r.method != "POST":
            raise _error(405, "MethodNotAllowed", r.method)
        base = self._blob_base()
        container = f"code-{uuid.uuid4().hex[:12]}"  # assumed: one temporary container per pending upload
        return _Answer(200, {
            "blobReferenceForConsumption": {
                "blobUri": f"{base}/{container}",
                "storageAccountArmId": (f"/subscriptions/{self.subscription_id}/resourceGroups/"
                                        f"{self.resource_group}/providers/Microsoft.Storage/storageAccounts/fakestorage"),
                "credential": {"credentialType": "SAS", "sasUri": f"{base}/{container}?sv=2021-08-06&sr=c&sig=fake"},
            },
            "pendingUploadId": str(uuid.uuid4()),
            "pendingUploadType": "TemporaryBlobReference",
        })

    # --- assets: data, models, codes ----------------------------------------------------------------

    def _assets(self, r: Recorded, segs: list[str]) -> _Answer:
        kind = segs[0].lower()
        if len(segs) == 1 and r.method == "GET":
            return self._page(r, [v for k, v in self._resources.items() if k[0] == kind and len(k) == 2])
        if len(segs) == 2 and r.method == "GET":
            return _Answer(200, self._get((kind, segs[1])))
        if len(segs) == 3 and segs[2].lower() == "versions" and r.method == "GET":
            items = [v for k, v in self._resources.items()
                     if len(k) == 4 and k[:3] == (kind, segs[1].lower(), "versions")]
            if kind == "codes" and r.query.get("hash"):
                # azure-ai-ml asks under a fresh random name and reuses whatever version it gets back, so the
                # service must match the content hash across every code asset of the workspace.
                items = [v for k, v in self._resources.items() if k[0] == "codes" and len(k) == 4
                         and v["properties"].get("properties", {}).get("hash_sha256") == r.query["hash"]]
            return self._page(r, items)
        if len(segs) == 4 and segs[2].lower() == "versions":
            if r.method == "GET":
                return _Answer(200, self._get(tuple(segs)))
            if r.method == "PUT":
                return self._put_version(r, kind, segs)
        raise _error(405, "MethodNotAllowed", f"{r.method} {'/'.join(segs)}")

    def _put_version(self, r: Recorded, kind: str, segs: list[str]) -> _Answer:
        props = dict(r.json.get("properties") or {})
        uri_key = _ASSET_KINDS[kind]
        short = "azureml://datastores/"
        if kind == "data" and self.long_data_uris and str(props.get(uri_key, "")).startswith(short):
            props[uri_key] = (f"azureml://subscriptions/{self.subscription_id}/resourcegroups/{self.resource_group}"
                              f"/workspaces/{self.workspace}/datastores/" + props[uri_key][len(short):])
        existing = self._resources.get(tuple(s.lower() for s in segs))
        if existing is not None:
            old = existing["properties"].get(uri_key)
            if old != props.get(uri_key):
                # Assumed 409: the specification only says versions are immutable; the service's code is UserError.
                raise _error(409, "UserError", f"{kind} version {segs[1]}:{segs[3]} already exists with "
                                               f"{uri_key} {old}; asset versions are immutable")
            for mutable in ("tags", "description", "isArchived"):
                if mutable in props:
                    existing["properties"][mutable] = props[mutable]
            existing["properties"]["properties"] = {**(props.get("properties") or {}),
                                                    **existing["properties"].get("properties", {})}
            self._touch(existing)
            return _Answer(200, existing)
        if kind == "models":
            self._check_job_uri(props.get(uri_key, ""))
            # The service reads MLmodel and fills the flavors of an MLflow model (azure-ai-ml cannot parse a
            # model version without the key); the flavor here is the one train.py writes.
            props["flavors"] = ({"python_function": {"data": {"loader_module": "score", "code": "code"}}}
                                if props.get("modelType") == "mlflow_model" else {})
        if kind in ("models", "codes"):
            props["provisioningState"] = "Succeeded"
        resource = self._put(tuple(segs), {"properties": props})
        container = self._resources.get((kind, segs[1].lower()))
        if container is None:
            container = self._put((kind, segs[1]), {"properties": {
                "description": None, "tags": {}, "properties": {}, "isArchived": False}})
        container["properties"]["latestVersion"] = segs[3]
        container["properties"]["nextVersion"] = _next_version(segs[3])
        self._touch(container)
        return _Answer(201, resource)

    def _check_job_uri(self, uri: str) -> None:
        m = re.match(r"^azureml://jobs/([^/]+)/outputs/([^/]+)", uri)
        if not m:
            return
        job = self._resources.get(("jobs", m.group(1).lower()))
        if job is None:
            raise _error(400, "UserError", f"Could not find job {m.group(1)} for model path {uri}")
        if m.group(2) not in job["properties"].get("outputs", {}):
            raise _error(400, "UserError", f"Job {m.group(1)} has no output {m.group(2)}")

    # --- jobs ----------------------------------------------------------------------------------------

    def _jobs(self, r: Recorded, segs: list[str]) -> _Answer:
        if len(segs) == 1 and r.method == "GET":
            items = [v for k, v in self._resources.items() if k[0] == "jobs"]
            if r.query.get("tag"):
                items = [j for j in items if r.query["tag"] in (j["properties"].get("tags") or {})]
            if r.query.get("jobType"):
                items = [j for j in items if j["properties"].get("jobType") == r.query["jobType"]]
            if r.query.get("listViewType", "ActiveOnly") == "ActiveOnly":
                items = [j for j in items if not j["properties"].get("isArchived")]
            return self._page(r, items)
        if len(segs) != 2:
            raise _error(404, "NotFound", "/".join(segs))
        if r.method == "GET":
            return _Answer(200, self._get(("jobs", segs[1])))
        if r.method != "PUT":
            raise _error(405, "MethodNotAllowed", r.method)
        if ("jobs", segs[1].lower()) in self._resources:
            # Assumed: a second PUT of a job name is refused (the service does not rerun a job).
            raise _error(409, "UserError", f"A job with name {segs[1]} already exists")
        props = dict(r.json.get("properties") or {})
        if props.get("jobType") == "Command" and not props.get("command"):
            raise _error(400, "UserError", "A command job needs a command")
        studio = f"https://ml.azure.com/runs/{segs[1]}?wsid={self.ws_path}"
        props.update(status="NotStarted", isArchived=False, services={
            "Tracking": {"jobServiceType": "Tracking", "endpoint": self.mlflow_uri},
            "Studio": {"jobServiceType": "Studio", "endpoint": studio}})
        outputs = dict(props.get("outputs") or {})
        for name, out in outputs.items():
            if out and not out.get("uri"):  # the service picks the default location of unnamed outputs
                outputs[name] = {**out, "uri": f"azureml://datastores/workspaceblobstore/paths/azureml/"
                                              f"{segs[1]}/{name}/"}
        outputs["default"] = {"jobOutputType": "uri_folder", "mode": "ReadWriteMount",
                              "uri": f"azureml://datastores/workspaceartifactstore/ExperimentRun/dcid.{segs[1]}"}
        props["outputs"] = outputs
        return _Answer(201, self._put(("jobs", segs[1]), {"properties": props}))

    # --- online endpoints and deployments -------------------------------------------------------------

    def _endpoints(self, r: Recorded, segs: list[str]) -> _Answer:
        n = len(segs)
        if r.method == "GET":
            if n == 1:
                return self._page(r, [v for k, v in self._resources.items() if k[0] == "onlineendpoints"
                                      and len(k) == 2])
            if n == 3 and segs[2].lower() == "deployments":
                self._get(("onlineEndpoints", segs[1]))
                return self._page(r, [v for k, v in self._resources.items()
                                      if len(k) == 4 and k[:3] == ("onlineendpoints", segs[1].lower(), "deployments")])
            if n in (2, 4):
                return _Answer(200, self._get(tuple(segs)))
        if r.method == "PUT" and n == 2:
            return self._put_endpoint(r, segs)
        if r.method == "PUT" and n == 4 and segs[2].lower() == "deployments":
            return self._put_deployment(r, segs)
        if r.method == "DELETE" and n == 4 and segs[2].lower() == "deployments":
            return self._delete_deployment(segs)
        raise _error(405, "MethodNotAllowed", f"{r.method} {'/'.join(segs)}")

    def _delete_deployment(self, segs: list[str]) -> _Answer:
        """OnlineDeployments_Delete: 202 with an Azure-AsyncOperation to poll; the service refuses to delete a
        deployment that still has traffic (assumed wording: the documented rule is that traffic must be 0 first)."""
        endpoint = self._get(("onlineEndpoints", segs[1]))
        resource = self._get(tuple(segs))
        props = endpoint["properties"]
        if any(k.lower() == segs[3].lower() and int(v) for k, v in
               {**(props.get("traffic") or {}), **(props.get("mirrorTraffic") or {})}.items()):
            raise _error(400, "BadArgument", f"Deployment {segs[3]} has traffic and cannot be deleted")
        del self._resources[self._key_of(resource["id"])]
        op = f"{uuid.uuid4()}"
        self._operations[op] = {"target": resource["id"], "status": "InProgress", "polls": 0,
                                "start": self._now(), "fail": None}
        status_url = (f"https://{ARM_HOST}/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
                      f"/providers/{PROVIDER}/locations/{self.location}/mfeOperationsStatus/{op}"
                      f"?api-version=2023-04-01-preview")
        return _Answer(202, None, {"Azure-AsyncOperation": status_url, "retry-after-ms": str(self.lro_delay_ms)})

    def _put_endpoint(self, r: Recorded, segs: list[str]) -> _Answer:
        body = r.json
        props = dict(body.get("properties") or {})
        deployments = {k[3]: v for k, v in self._resources.items()
                       if len(k) == 4 and k[:3] == ("onlineendpoints", segs[1].lower(), "deployments")}
        traffic = {str(k): int(v) for k, v in (props.get("traffic") or {}).items()}
        mirror = {str(k): int(v) for k, v in (props.get("mirrorTraffic") or {}).items()}
        for name in [*traffic, *mirror]:
            if name.lower() not in deployments:
                raise _error(400, "BadArgument", f"Deployment {name} does not exist in endpoint {segs[1]}")
        if traffic and sum(traffic.values()) != 100 and any(traffic.values()):
            raise _error(400, "BadArgument", f"Traffic must add up to 100, not {sum(traffic.values())}")
        if any(v > 50 for v in mirror.values()):
            raise _error(400, "BadArgument", "Mirror traffic of a deployment cannot exceed 50%")
        both = [n for n in mirror if traffic.get(n)]
        if both:
            raise _error(400, "BadArgument", f"Deployment(s) {', '.join(both)} cannot receive live and mirror traffic")
        existing = self._resources.get(("onlineendpoints", segs[1].lower()))
        props.update(traffic=traffic, mirrorTraffic=mirror,
                     provisioningState="Updating" if existing else "Creating",
                     scoringUri=f"https://{segs[1]}.{self.location}.inference.ml.azure.com/score",
                     swaggerUri=f"https://{segs[1]}.{self.location}.inference.ml.azure.com/swagger.json")
        resource = self._put(tuple(segs), {
            "location": body.get("location") or self.location, "kind": body.get("kind"),
            "tags": dict(body.get("tags") or {}), "identity": _identity(body.get("identity")),
            "properties": props})
        return self._accepted(resource, created=existing is None)

    def _put_deployment(self, r: Recorded, segs: list[str]) -> _Answer:
        self._get(("onlineEndpoints", segs[1]))
        body = r.json
        props = dict(body.get("properties") or {})
        model = props.get("model") or ""
        m = re.search(r"/models/([^/]+)/versions/([^/]+)$", model)
        if m and ("models", m.group(1).lower(), "versions", m.group(2).lower()) not in self._resources:
            raise _error(400, "UserError", f"Model {m.group(1)}:{m.group(2)} was not found")
        existing = self._resources.get(tuple(s.lower() for s in segs))
        props["provisioningState"] = "Updating" if existing else "Creating"
        # Defaults the service fills in for a managed deployment (azure-ai-ml reads scaleSettings back).
        probe = {"failureThreshold": 30, "successThreshold": 1, "timeout": "PT2S", "period": "PT10S",
                 "initialDelay": "PT10S"}
        props.setdefault("scaleSettings", {"scaleType": "Default"})
        props.setdefault("requestSettings", {"requestTimeout": "PT5S", "maxConcurrentRequestsPerInstance": 1,
                                             "maxQueueWait": "PT0.5S"})
        props.setdefault("livenessProbe", dict(probe))
        props.setdefault("readinessProbe", dict(probe))
        props.setdefault("appInsightsEnabled", False)
        props.setdefault("egressPublicNetworkAccess", "Enabled")
        resource = self._put(tuple(segs), {
            "location": body.get("location") or self.location, "kind": body.get("kind"),
            "tags": dict(body.get("tags") or {}), "sku": body.get("sku"), "properties": props})
        return self._accepted(resource, created=existing is None)

    def _accepted(self, resource: dict, *, created: bool) -> _Answer:
        """A PUT answered as a long-running operation with Azure-AsyncOperation (OnlineEndpoints_CreateOrUpdate)."""
        op = f"{uuid.uuid4()}"
        self._operations[op] = {"target": resource["id"], "status": "InProgress", "polls": 0,
                                "start": self._now(), "fail": self._fail_operation,
                                "due": time.monotonic() + UNWATCHED_OPERATION_SECONDS}
        self._fail_operation = None
        status_url = (f"https://{ARM_HOST}/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
                      f"/providers/{PROVIDER}/locations/{self.location}/mfeOperationsStatus/{op}"
                      f"?api-version=2023-04-01-preview")
        # retry-after-ms, not Retry-After: azure-core reads "Retry-After: 0" as absent and falls back to 30 s.
        headers = {"Azure-AsyncOperation": status_url, "retry-after-ms": str(self.lro_delay_ms),
                   "x-ms-async-operation-timeout": "PT1H"}
        return _Answer(201 if created else 200, resource, headers)

    def _settle(self, entry: dict) -> None:
        entry["status"] = "Failed" if entry["fail"] else "Succeeded"
        target = self._resources.get(self._key_of(entry["target"]))
        if target is not None:
            target["properties"]["provisioningState"] = entry["status"]
            self._touch(target)

    def _settle_unwatched(self) -> None:
        """Azure finishes an operation whether or not anyone polls it: one nobody polled (its caller gave up, or
        its poll failed) ends on its own after UNWATCHED_OPERATION_SECONDS, instead of leaving its resource
        Updating for ever."""
        if self.hold_operations:
            return
        now = time.monotonic()
        for entry in self._operations.values():
            if entry["status"] == "InProgress" and entry.get("due", now + 1) <= now:
                self._settle(entry)

    def _operation_status(self, op: str) -> _Answer:
        entry = self._operations.get(op)
        if entry is None:
            raise _error(404, "NotFound", f"operation {op} not found")
        entry["polls"] += 1
        body = {"id": op, "name": op, "status": entry["status"], "startTime": entry["start"]}
        if entry["status"] == "InProgress" and not self.hold_operations:
            self._settle(entry)
            body["status"] = entry["status"]
        if entry["status"] != "InProgress":
            body["endTime"] = self._now()
        if entry["status"] == "Failed":
            body["error"] = {"code": "DeploymentFailed", "message": entry["fail"]}
        return _Answer(200, body, {"retry-after-ms": str(self.lro_delay_ms)})

    def fail_next_operation(self, message: str = "the deployment failed") -> None:
        """The next long-running operation ends Failed on its first poll, and its resource with it."""
        with self._lock:
            self._fail_operation = message

    def set_endpoint_property(self, endpoint: str, name: str, value: Any) -> None:
        """Change an endpoint behind the adapter's back, as a person in Studio would."""
        with self._lock:
            resource = self._resources[("onlineendpoints", endpoint.lower())]
            resource["properties"][name] = value
            self._touch(resource)

    # --- api.azureml.ms: discovery, MLflow, RunHistory ----------------------------------------------

    def _dataplane(self, r: Recorded) -> _Answer:
        if r.path == "/discovery" and r.method == "GET":
            return _Answer(200, {k: self.api_base for k in (
                "api", "catalog", "experimentation", "gallery", "history", "hyperdrive", "labeling",
                "modelmanagement", "pipelines", "studiocoreservices")})
        ws = self.ws_path.lower()
        path = r.path.lower()
        if path == f"/mlflow/v1.0{ws}/api/2.0/mlflow/runs/get" and r.method == "GET":
            run_id = r.query.get("run_id") or r.query.get("run_uuid") or ""
            job = self._resources.get(("jobs", run_id.lower()))
            if job is None:
                raise _Answer(404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"Run '{run_id}' not found"})
            return _Answer(200, {"run": self._mlflow_run(run_id, job)})
        if path == f"/mlflow/v1.0{ws}/api/2.0/mlflow/metrics/get-history" and r.method == "GET":
            run_id, key = r.query.get("run_id") or "", r.query.get("metric_key") or ""
            job = self._resources.get(("jobs", run_id.lower()))
            if job is None:
                raise _Answer(404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"Run '{run_id}' not found"})
            logged = self._metrics.get(run_id.lower(), {})
            created = _millis(job["systemData"]["createdAt"])
            # one value per metric, logged at step 0: what train.py's mlflow.log_metrics records
            return _Answer(200, {"metrics": [{"key": key, "value": logged[key], "timestamp": created, "step": 0}]
                                 if key in logged else []})
        m = re.match(rf"^/history/v1\.0{re.escape(ws)}/runs/([^/]+)$", path)
        if m and r.method == "GET":
            job = self._resources.get(("jobs", m.group(1)))
            if job is None:
                raise _error(404, "UserError", f"Run {m.group(1)} was not found")
            return _Answer(200, self._history_run(m.group(1), job))
        raise _error(404, "NotFound", f"the fake does not serve {r.path}")

    def _mlflow_run(self, run_id: str, job: dict) -> dict:
        props = job["properties"]
        created = _millis(job["systemData"]["createdAt"])
        return {
            "info": {"run_id": job["name"], "run_uuid": job["name"], "run_name": props.get("displayName"),
                     "experiment_id": str(uuid.uuid5(uuid.NAMESPACE_URL, props.get("experimentName") or "Default")),
                     "status": _MLFLOW_STATUS.get(props.get("status", ""), "RUNNING"), "start_time": created,
                     "end_time": _millis(job["systemData"]["lastModifiedAt"]), "lifecycle_stage": "active",
                     "artifact_uri": f"azureml://experiments/{props.get('experimentName')}/runs/{job['name']}/artifacts"},
            "data": {"metrics": [{"key": k, "value": v, "timestamp": created, "step": 0}
                                 for k, v in self._metrics.get(run_id.lower(), {}).items()],
                     "params": [], "tags": [{"key": k, "value": v} for k, v in (props.get("tags") or {}).items()]},
        }

    def _history_run(self, run_id: str, job: dict) -> dict:
        props = job["properties"]
        run = {"runId": job["name"], "runUuid": str(uuid.uuid5(uuid.NAMESPACE_URL, job["name"])),
               "status": props.get("status"), "experimentId": str(uuid.uuid5(uuid.NAMESPACE_URL,
                                                                             props.get("experimentName") or "")),
               "createdUtc": job["systemData"]["createdAt"], "tags": props.get("tags") or {},
               "properties": props.get("properties") or {}}
        if run_id in self._errors:
            run["error"] = {"error": {"code": "UserError", "message": self._errors[run_id]}}
        return run

    # --- the loopback blob endpoint -------------------------------------------------------------------

    def _blob_base(self) -> str:
        if self._blob_server is None:
            server = ThreadingHTTPServer(("127.0.0.1", 0), _BlobHandler)
            server.daemon_threads = True
            server.fake = self  # type: ignore[attr-defined]
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-azureml-blob",
                             daemon=True).start()
            self._blob_server = server
        return f"http://127.0.0.1:{self._blob_server.server_address[1]}/fakestorage"

    def _blob(self, r: Recorded, content: bytes) -> tuple[int, dict, Any]:
        parts = [p for p in r.path.split("/") if p]
        base = {"x-ms-version": r.headers.get("x-ms-version", "2021-08-06")}
        if len(parts) == 2 and r.query.get("comp") == "list":
            prefix = r.query.get("prefix", "")
            names = sorted(b for (c, b) in self._blobs if c == parts[1] and b.startswith(prefix))
            items = "".join(f"<Blob><Name>{escape(n)}</Name><Properties><Content-Length>"
                            f"{len(self._blobs[(parts[1], n)].data)}</Content-Length><BlobType>BlockBlob</BlobType>"
                            f"</Properties></Blob>" for n in names)
            xml = (f'<?xml version="1.0" encoding="utf-8"?><EnumerationResults ContainerName="{escape(parts[1])}">'
                   f"<Prefix>{escape(prefix)}</Prefix><Blobs>{items}</Blobs><NextMarker /></EnumerationResults>")
            return 200, {**base, "Content-Type": "application/xml"}, xml.encode()
        if len(parts) < 3:
            return 400, {**base, "x-ms-error-code": "InvalidUri"}, b""
        key = (parts[1], "/".join(parts[2:]))
        blob = self._blobs.get(key)
        lower = {k.lower(): v for k, v in r.headers.items()}
        meta = {k[len("x-ms-meta-"):]: v for k, v in lower.items() if k.startswith("x-ms-meta-")}
        if r.method == "PUT" and r.query.get("comp") == "metadata":
            if blob is None:
                return 404, {**base, "x-ms-error-code": "BlobNotFound"}, b""
            blob.metadata, blob.etag, blob.modified = meta, f'"0x{uuid.uuid4().hex[:16].upper()}"', self._http_now()
            return 200, {**base, "ETag": blob.etag, "Last-Modified": blob.modified}, b""
        if r.method == "PUT" and lower.get("x-ms-blob-type") == "BlockBlob":
            if lower.get("if-none-match") == "*" and blob is not None:
                return 409, {**base, "x-ms-error-code": "BlobAlreadyExists"}, b""
            blob = _Blob(content, meta, lower.get("x-ms-blob-content-type", "application/octet-stream"),
                         f'"0x{uuid.uuid4().hex[:16].upper()}"', self._http_now())
            self._blobs[key] = blob
            return 201, {**base, "ETag": blob.etag, "Last-Modified": blob.modified,
                         "x-ms-request-server-encrypted": "true"}, b""
        if r.method in ("HEAD", "GET"):
            if blob is None:
                return 404, {**base, "x-ms-error-code": "BlobNotFound"}, b""
            headers = {**base, "ETag": blob.etag, "Last-Modified": blob.modified, "Content-Type": blob.content_type,
                       "Content-Length": str(len(blob.data)), "x-ms-blob-type": "BlockBlob",
                       "x-ms-creation-time": blob.modified, "Accept-Ranges": "bytes",
                       **{f"x-ms-meta-{k}": v for k, v in blob.metadata.items()}}
            return 200, headers, blob.data
        return 400, {**base, "x-ms-error-code": "UnsupportedHttpVerb"}, b""

    # --- storage helpers -----------------------------------------------------------------------------

    def _key_of(self, arm_id: str) -> tuple[str, ...]:
        rest = arm_id[len(self.ws_path):] if arm_id.lower().startswith(self.ws_path.lower()) else arm_id
        return tuple(s.lower() for s in rest.split("/") if s)

    def _get(self, segs: tuple[str, ...]) -> dict:
        found = self._resources.get(tuple(s.lower() for s in segs))
        if found is None:
            kind = "/".join(segs[0::2])
            raise _error(404, "UserError" if segs[0].lower() in ("data", "models", "codes", "jobs") else "NotFound",
                         f"Could not find {kind} {'/'.join(segs[1::2])} in workspace {self.workspace}")
        return found

    def _put(self, segs: tuple[str, ...], resource: dict) -> dict:
        key = tuple(s.lower() for s in segs)
        existing = self._resources.get(key)
        resource = {"id": existing["id"] if existing else f"{self.ws_path}/{'/'.join(segs)}",
                    "name": existing["name"] if existing else segs[-1],
                    "type": f"{PROVIDER}/workspaces/{'/'.join(segs[0::2])}",
                    **{k: v for k, v in resource.items() if v is not None},
                    "systemData": existing["systemData"] if existing else self._system_data()}
        if existing:
            self._touch(resource)
        self._resources[key] = resource
        return resource

    def _page(self, r: Recorded, items: list[dict]) -> _Answer:
        """One page of a list, oldest first unless $orderBy asks otherwise, with nextLink while more remain."""
        order = (r.query.get("$orderBy") or r.query.get("orderBy") or "").lower()
        items = sorted(items, key=lambda x: x["systemData"]["createdAt"], reverse="desc" in order)
        top = r.query.get("$top") or r.query.get("count")
        if top:
            items = items[: int(top)]
        start = int(r.query.get("$skipToken") or 0)
        page = items[start:start + self.page_size]
        body: dict[str, Any] = {"value": page}
        if start + self.page_size < len(items):
            query = {**r.query, "$skipToken": str(start + self.page_size)}
            body["nextLink"] = f"https://{r.host}{r.path}?{urlencode(query)}"
        return _Answer(200, body)

    def _now(self) -> str:
        # Strictly increasing, so "newest first" is well defined even within one clock tick.
        now = datetime.now(timezone.utc)
        if now <= self._last_time:
            now = self._last_time + timedelta(microseconds=1000)
        self._last_time = now
        return now.isoformat(timespec="microseconds").replace("+00:00", "Z")

    def _http_now(self) -> str:
        return formatdate(usegmt=True)

    def _system_data(self) -> dict:
        now = self._now()
        return {"createdAt": now, "createdBy": "mlops-automation", "createdByType": "ManagedIdentity",
                "lastModifiedAt": now, "lastModifiedBy": "mlops-automation", "lastModifiedByType": "ManagedIdentity"}

    def _touch(self, resource: dict) -> None:
        resource["systemData"] = {**resource["systemData"], "lastModifiedAt": self._now()}


class _BlobHandler(BaseHTTPRequestHandler):
    """Loopback HTTP front of the fake for azure-storage-blob, which cannot be given MLClient's transport."""

    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        else:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
        url = f"http://{self.headers.get('Host', '127.0.0.1')}{self.path}"
        status, headers, data = self.server.fake.handle(self.command, url, dict(self.headers.items()), body)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD" and data:
            self.wfile.write(data)

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's parameter name
        logger.debug("blob endpoint: " + format, *args)


def _content(request) -> bytes:
    """The body of an azure-core request (rest or legacy) as bytes."""
    content = getattr(request, "content", None) if isinstance(request, RestHttpRequest) else request.data
    if content is None:
        return b""
    if isinstance(content, str):
        return content.encode()
    if isinstance(content, bytes | bytearray):
        return bytes(content)
    if hasattr(content, "read"):
        return content.read()
    return b"".join(content)


def _identity(given: dict | None) -> dict:
    identity = dict(given or {"type": "SystemAssigned"})
    if identity.get("type") == "SystemAssigned":
        identity.setdefault("principalId", str(uuid.UUID(int=3)))
        identity.setdefault("tenantId", str(uuid.UUID(int=2)))
    return identity


def _next_version(version: str) -> str | None:
    return str(int(version) + 1) if version.isdigit() else None


def _millis(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)

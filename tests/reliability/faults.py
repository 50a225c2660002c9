"""Transient faults injected through an SDK's own transport: a real azure-core RequestsTransport (talking to
Azurite, or any local server) that answers a share of requests itself, before they leave the process, with what
a throttled or failing Azure service answers: 503, 429 with a Retry-After, or no connection at all. Nothing reached
the server, so the fault is transient in the strictest sense: a retry is always safe."""
from __future__ import annotations

import io
import random
import threading
from collections import Counter
from http import HTTPStatus

import requests
import urllib3
from azure.core.exceptions import ServiceRequestError
from azure.core.pipeline.transport import RequestsTransport, RequestsTransportResponse
from azure.core.rest import HttpRequest as RestHttpRequest

KINDS = ("503", "429", "connection")


class FaultyTransport(RequestsTransport):
    """RequestsTransport with ``fault_rate`` of its requests failed on purpose (seeded, thread-safe). ``injected``
    counts them by kind; ``slept`` records the retry waits azure-core asked for, which are waited only up to
    ``max_sleep`` seconds each (the deadline tests keep it at the real value)."""

    def __init__(self, *, fault_rate: float = 0.2, seed: int = 11, retry_after_ms: int = 200,
                 max_sleep: float | None = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.fault_rate = fault_rate
        self.retry_after_ms = retry_after_ms
        self.max_sleep = max_sleep
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.injected: Counter = Counter()
        self.requests = 0
        self.slept: list[float] = []

    def sleep(self, duration: float) -> None:
        with self._lock:
            self.slept.append(duration)
        super().sleep(duration if self.max_sleep is None else min(duration, self.max_sleep))

    @property
    def total_injected(self) -> int:
        return sum(self.injected.values())

    def send(self, request, **kwargs):
        with self._lock:
            self.requests += 1
            kind = self._rng.choice(KINDS) if self._rng.random() < self.fault_rate else None
            if kind:
                self.injected[kind] += 1
        if kind == "connection":
            raise ServiceRequestError("injected: connection refused")
        if kind is None:
            return super().send(request, **kwargs)
        status = int(kind)
        headers = {"Content-Type": "application/json"}
        if status == 429:
            # As Azure Storage throttles: whole seconds in Retry-After, the precise wait in x-ms-retry-after-ms.
            headers["Retry-After"] = str(max(1, -(-self.retry_after_ms // 1000)))
            headers["x-ms-retry-after-ms"] = str(self.retry_after_ms)
        return _response(request, status, headers, b'{"odata.error":{"code":"ServerBusy","message":{"lang":"en-US",'
                                                   b'"value":"injected transient fault"}}}', **kwargs)


_ADAPTER = requests.adapters.HTTPAdapter()


def _response(request, status: int, headers: dict, data: bytes, **kwargs):
    """The response object RequestsTransport builds, for a status and body made up here."""
    raw = urllib3.HTTPResponse(body=io.BytesIO(data), headers=headers, status=status,
                               reason=HTTPStatus(status).phrase, preload_content=False, decode_content=False)
    prepared = requests.Request(request.method, request.url, headers=dict(request.headers)).prepare()
    internal = _ADAPTER.build_response(prepared, raw)
    if isinstance(request, RestHttpRequest):
        from azure.core.rest._requests_basic import RestRequestsTransportResponse

        response = RestRequestsTransportResponse(request=request, internal_response=internal, block_size=4096)
        if not kwargs.get("stream"):
            response.read()
        return response
    return RequestsTransportResponse(request, internal, 4096)


def route_table_waits(monkeypatch) -> None:
    """azure-data-tables wraps the transport of every TableClient in a TransportWrapper whose sleep() is azure-core's
    time.sleep, bypassing the transport's own: route it to the wrapped transport, so a FaultyTransport records the
    retry waits (and sleeps only up to its ``max_sleep``) as FaultyAzureML does for Azure ML."""
    from azure.data.tables._base_client import TransportWrapper

    monkeypatch.setattr(TransportWrapper, "sleep", lambda self, duration: self._transport.sleep(duration),
                        raising=False)

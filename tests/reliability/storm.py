"""The storm harness: the real function_app on the local host, wired to the azure backend (the real adapters,
the fake Azure ML REST service, Table Storage on Azurite), fed by concurrent deliverers that behave like Event
Grid (at least once, no order, a retry on every non-2xx except the codes Event Grid never retries).

Scale comes from the environment: RELIABILITY_SCALE=full (``make reliability``) runs the sizes the issue asks
for; anything else runs a reduced size that still covers every scenario. Each scenario writes its figures to
``.reliability/<name>.json`` (see figures.py, which renders them into docs/reliability.md).
"""
from __future__ import annotations

import json
import os
import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from shared.local import wire
from tests.fakes.azureml_service import FakeAzureML

FULL = os.environ.get("RELIABILITY_SCALE", "").lower() == "full"
FIGURES_DIR = Path(__file__).resolve().parents[2] / ".reliability"
NO_RETRY = {400, 401, 403, 404, 413}  # Event Grid's webhook codes it never retries (delivery-and-retry docs)


def size(reduced: int, full: int) -> int:
    return full if FULL else reduced


class FaultyAzureML(FakeAzureML):
    """The fake Azure ML service with a share of its answers replaced by transient faults (503, or 429 with a
    Retry-After), chosen at random per request; the SDK's own waits are recorded, not slept."""

    def __init__(self, *, fault_rate: float = 0.0, seed: int = 11, **options) -> None:
        super().__init__(**options)
        self.fault_rate = fault_rate
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self.injected = 0

    def sleep(self, duration: float) -> None:
        with self._lock:
            self.slept.append(duration)

    def send(self, request, **kwargs):
        with self._rng_lock:
            fault = self._rng.random() < self.fault_rate
            status = self._rng.choice((503, 429))
        if fault and "/providers/" in request.url:
            path = httpx.URL(request.url).path
            self.fail_next(status, method=request.method, path_contains=path,
                           retry_after=1 if status == 429 else None)
            with self._lock:
                self.injected += 1
        return super().send(request, **kwargs)


@dataclass
class Delivery:
    """What the deliverers saw."""

    events: int = 0  # distinct events
    posts: int = 0  # HTTP deliveries, duplicates and retries included
    duplicates: int = 0  # copies posted on purpose
    answers: Counter = field(default_factory=Counter)  # status code → count
    lost: list[str] = field(default_factory=list)  # events never acknowledged
    seconds: float = 0.0

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.answers.items() if status >= 500)


def deliver_storm(url: str, key: str, function: str, events: list[dict], *, duplicate_share: float = 0.3,
                  deliverers: int = 8, seed: int = 7, patience: float = 90.0) -> Delivery:
    """Post every event (plus ``duplicate_share`` extra copies), shuffled, from ``deliverers`` threads; a 5xx or a
    dropped connection is retried like Event Grid, a 2xx acknowledges. Event Grid keeps retrying for 24 hours;
    here each copy is retried for ``patience`` seconds (backoff 10 ms rising to 250 ms), so an event counts as
    lost only if the app keeps refusing it that long, not because it waited its turn on a busy endpoint (all
    versions deploy to one endpoint, one transition at a time)."""
    rng = random.Random(seed)
    copies = list(events) + [rng.choice(events) for _ in range(int(len(events) * duplicate_share))]
    rng.shuffle(copies)
    report = Delivery(events=len(events), duplicates=len(copies) - len(events))
    lock = threading.Lock()
    queue = list(enumerate(copies))
    acked: set[str] = set()

    def worker() -> None:
        with httpx.Client(timeout=30) as client:
            while True:
                with lock:
                    if not queue:
                        return
                    _, event = queue.pop()
                give_up = time.monotonic() + patience
                attempt = 0
                while time.monotonic() < give_up:
                    attempt += 1
                    try:
                        status = client.post(f"{url}/runtime/webhooks/eventgrid",
                                             params={"functionName": function, "code": key},
                                             headers={"aeg-event-type": "Notification"}, json=[event]).status_code
                    except httpx.TransportError:
                        status = 599  # no answer: Event Grid retries
                    with lock:
                        report.posts += 1
                        report.answers[status] += 1
                    if 200 <= status < 300:
                        with lock:
                            acked.add(event["id"])
                        break
                    if status in NO_RETRY:
                        break  # dead-lettered
                    time.sleep(min(0.01 * attempt, 0.25))

    started = time.monotonic()
    threads = [threading.Thread(target=worker, name=f"deliverer-{i}") for i in range(deliverers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report.seconds = round(time.monotonic() - started, 2)
    report.lost = sorted({e["id"] for e in events} - acked)
    return report


def blob_events(versions: int) -> list[dict]:
    return [wire.blob_created("landing", f"churn/{v}/churn.csv", content_length=4096, account="mlopsdata",
                              event_id=str(uuid.uuid4())) for v in range(1, versions + 1)]


def write_figures(name: str, figures: dict, *, scale: str | None = None) -> Path:
    FIGURES_DIR.mkdir(exist_ok=True)
    path = FIGURES_DIR / f"{name}.json"
    scale = scale or ("full" if FULL else "reduced")
    path.write_text(json.dumps({"scenario": name, "scale": scale, **figures}, indent=2,
                               default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else dict(o)))
    return path

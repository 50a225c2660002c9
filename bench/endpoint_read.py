"""Reading an endpoint whose deployments collect data: the Azure ML adapter's get_endpoint through the real MLClient
against the fake Azure ML service (tests/fakes/azureml_service.py), with azure-ai-ml's own experimental-class
check against the adapter's (shared/adapters/azureml.py, ``_from_rest_object_in_stack``).

Every deployment we create has a data collector, and azure-ai-ml builds its DataCollector and DeploymentCollection
(experimental classes) on every read, each time calling ``inspect.stack()``. Its cost grows with the depth of the
stack, so each case runs at the top of a thread and 40 frames down (a request through the host is about that deep).
Prints a table; run with `make bench`."""
from __future__ import annotations

import logging
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")  # azure-ai-ml's marshmallow deprecation noise
logging.disable(logging.WARNING)

from azure.ai.ml._utils import _experimental  # noqa: E402

from shared.adapters.azureml import build_workspace  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.domain import ModelSpec  # noqa: E402
from tests.fakes.azureml_service import FakeAzureML, FakeCredential  # noqa: E402

STOCK = _experimental._should_skip_warning  # azure-ai-ml's, before the adapter replaces it
READS = 30


def at_depth(depth: int, fn):
    return fn() if depth <= 0 else at_depth(depth - 1, fn)


def timed(ws, endpoint: str, depth: int) -> float:
    """Median milliseconds of one get_endpoint, ``depth`` frames down."""
    samples = []
    for _ in range(READS):
        started = time.perf_counter()
        at_depth(depth, lambda: ws.get_endpoint(endpoint))
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def main() -> int:
    fake = FakeAzureML()
    settings = Settings(backend="azure", subscription_id=fake.subscription_id, resource_group=fake.resource_group,
                        workspace=fake.workspace, datastore="landing", compute="cpu-cluster")
    ws = build_workspace(settings, FakeCredential(), transport=fake)
    ours = _experimental._should_skip_warning
    assert ours is not STOCK, "the adapter did not install its check"
    try:
        ws.register_data("churn", "1", "https://mlopsdata.blob.core.windows.net/landing/churn/1/churn.csv")
        from tests.integration.test_azureml_requests import _spec

        ws.submit_training(_spec())
        fake.finish_job("train-churn-v1-a1", metrics={"auc": 0.81, "logloss": 0.45})
        model = ws.register_model(ModelSpec(name="churn-model", version="1", job_name="train-churn-v1-a1", tags={}))
        print(f"{'deployments':>11} {'depth':>5} {'azure-ai-ml ms':>14} {'adapter ms':>10} {'speed-up':>8}")
        for count in (1, 2, 4):
            for n in range(len(fake.find("PUT", "/deployments/")) + 1, count + 1):
                ws.create_deployment("churn-ep", f"v{n}-1", model, {"mlops_owner": "mlops-automation"})
            assert len(ws.get_endpoint("churn-ep").deployments) == count
            for depth in (0, 40):
                _experimental._should_skip_warning = STOCK
                stock = timed(ws, "churn-ep", depth)
                _experimental._should_skip_warning = ours
                mine = timed(ws, "churn-ep", depth)
                print(f"{count:>11} {depth:>5} {stock:>14.1f} {mine:>10.1f} {stock / mine:>7.1f}x")
    finally:
        _experimental._should_skip_warning = ours
        ws.close()
        fake.shutdown()
    print(f"median of {READS} reads each; the fake answers on localhost, so the rest is the SDK's own work")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A pytest plugin that writes down every request the fake Azure ML service answers (tests/fakes/azureml_service.py).

Loaded with ``-p tests.infra.arm_recorder`` by tests/infra/test_custom_role.py, which runs the Azure ML adapter's own
tests in a child pytest and then checks that the app's custom role allows each operation they made. The requests are
appended as JSON lines (method, host, path) to the file named by ``MLOPS_ARM_RECORD``.
"""
from __future__ import annotations

import json
import os
import threading

import pytest

_lock = threading.Lock()


@pytest.fixture(autouse=True)
def _record_fake_azureml_requests(monkeypatch):
    target = os.environ.get("MLOPS_ARM_RECORD")
    if not target:
        yield
        return
    from tests.fakes.azureml_service import FakeAzureML

    original = FakeAzureML._finish

    def _finish(self, record, status, headers, body):
        line = json.dumps({"method": record.method, "host": record.host, "path": record.path, "status": status})
        with _lock, open(target, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        return original(self, record, status, headers, body)

    monkeypatch.setattr(FakeAzureML, "_finish", _finish)
    yield

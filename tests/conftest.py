"""Shared fixtures: the indexed Function App (get_functions() may run only once per FunctionApp) and one Azurite
for the whole session (defined here so every module shares it instead of starting its own)."""
import json

import pytest

from tests.integration.azurite import (
    AZURITE_BLOB,
    azurite,  # noqa: F401 - a session fixture, shared by every module
    start_azurite,
)


def _azurite_blob(tmp_path_factory, folder: str, **options):
    if not AZURITE_BLOB.exists():
        pytest.skip("Azurite is not installed: run `make setup`")
    instance = start_azurite(tmp_path_factory.mktemp(folder), service="blob", **options)
    yield instance
    instance.stop()


@pytest.fixture(scope="session")
def blob_azurite_oauth(tmp_path_factory):
    """One azurite-blob accepting bearer tokens (the managed-identity path) for the whole session; each test makes
    containers of its own, with unique names."""
    yield from _azurite_blob(tmp_path_factory, "azurite-blob-oauth", oauth=True)


@pytest.fixture(scope="module")
def blob_azurite(tmp_path_factory):
    """An azurite-blob with its well-known account key, one per module that asks for it."""
    yield from _azurite_blob(tmp_path_factory, "azurite-blob")


@pytest.fixture(scope="session")
def indexed_functions():
    import function_app

    return {f.get_function_name(): json.loads(f.get_function_json()) for f in function_app.app.get_functions()}


@pytest.fixture(autouse=True)
def _root_logging_restored():
    """A command line run in-process (shared.local.cli.main) installs the process's JSON log handler on the root
    logger, as it should in its own process; here it would outlive the test and write into later tests' output."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def fake():
    """The fake Azure ML service (tests/fakes/azureml_service.py), on a local port; a module may define its own."""
    from tests.fakes.azureml_service import FakeAzureML

    service = FakeAzureML()
    yield service
    service.hold_operations = False
    service.shutdown()
    assert service.unexpected == [], "a request left for a host the fake does not serve"

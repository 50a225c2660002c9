"""Shared fixtures: the indexed Function App (get_functions() may run only once per FunctionApp) and one Azurite
for the whole session (defined here so every module shares it instead of starting its own)."""
import json

import pytest

from tests.integration.azurite import azurite  # noqa: F401 - a session fixture, shared by every module


@pytest.fixture(scope="session")
def indexed_functions():
    import function_app

    return {f.get_function_name(): json.loads(f.get_function_json()) for f in function_app.app.get_functions()}

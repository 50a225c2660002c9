"""Shared fixtures: the indexed Function App (get_functions() may run only once per FunctionApp)."""
import json

import pytest


@pytest.fixture(scope="session")
def indexed_functions():
    import function_app

    return {f.get_function_name(): json.loads(f.get_function_json()) for f in function_app.app.get_functions()}

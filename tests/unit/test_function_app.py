"""The app as the Functions host indexes it: one FunctionApp, the right triggers, routes and auth levels."""
import subprocess
import sys
from pathlib import Path

import azure.functions as func

ROOT = Path(__file__).resolve().parents[2]

EVENT_GRID = {"on_blob_created", "on_run_event", "on_model_event", "on_dataset_drift", "on_custom_event"}
HTTP = {"reruns": ("reruns", ["POST"]), "rollbacks": ("rollbacks", ["POST"]), "status": ("status", ["GET"]),
        "monitor_alert": ("alerts", ["POST"])}
# Anonymous at the Functions level: App Service Authentication (Easy Auth) signs the approver in, never a key.
APPROVAL = {"approval_page": ("approvals/{approval_id}", ["GET"]),
            "approval_decision": ("approvals/{approval_id}", ["POST"]),
            # the action group's secure webhook: an Entra ID token with the alerts app role, never a key
            "monitor_alert_secure": ("alerts/secure", ["POST"]),
            # the endpoint page: a card links to it, so no key; the app checks the signed-in reader (shared/pages.py)
            "endpoint_page": ("endpoints/{endpoint}/page", ["GET"])}


def test_importing_the_app_loads_no_heavy_sdk_and_does_no_io():
    code = ("import sys, function_app; heavy = [m for m in ('azure.ai.ml', 'xgboost', 'numpy', 'azure.identity',"
            " 'azure.data.tables', 'shared.local.workspace') if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "MLOPS_HOME": "/nonexistent/should-not-be-created"})
    assert out.stdout.strip() == ""
    assert not Path("/nonexistent/should-not-be-created").exists()


def test_there_is_exactly_one_function_app():
    import function_app

    apps = [v for v in vars(function_app).values() if isinstance(v, func.FunctionApp)]
    assert len(apps) == 1


def test_every_function_is_indexed(indexed_functions):
    assert set(indexed_functions) == EVENT_GRID | set(HTTP) | set(APPROVAL) | {"outbox_sweep", "rollout_tick", "drift_monitor"}


def test_event_grid_functions_bind_one_event_grid_trigger(indexed_functions):
    for name in EVENT_GRID:
        bindings = indexed_functions[name]["bindings"]
        assert [b["type"] for b in bindings] == ["eventGridTrigger"], name
        assert bindings[0]["direction"].lower() == "in" and bindings[0]["name"] == "event"


def test_http_functions_have_routes_methods_and_function_auth(indexed_functions):
    for name, (route, methods) in HTTP.items():
        trigger = next(b for b in indexed_functions[name]["bindings"] if b["type"] == "httpTrigger")
        assert trigger["route"] == route
        assert [m.upper() for m in trigger["methods"]] == methods
        assert str(trigger["authLevel"]).upper() == "FUNCTION", name
        assert any(b["type"] == "http" and b["direction"].lower() == "out" for b in indexed_functions[name]["bindings"])


def test_approval_routes_are_anonymous_so_that_a_function_key_alone_can_never_approve(indexed_functions):
    for name, (route, methods) in APPROVAL.items():
        trigger = next(b for b in indexed_functions[name]["bindings"] if b["type"] == "httpTrigger")
        assert trigger["route"] == route and [m.upper() for m in trigger["methods"]] == methods
        assert str(trigger["authLevel"]).upper() == "ANONYMOUS", name


def test_the_rollout_controller_ticks_every_minute(indexed_functions):
    trigger = indexed_functions["rollout_tick"]["bindings"][0]
    assert trigger["type"] == "timerTrigger" and trigger["schedule"] == "0 * * * * *"


def test_outbox_sweep_runs_every_five_minutes(indexed_functions):
    trigger = indexed_functions["outbox_sweep"]["bindings"][0]
    assert trigger["type"] == "timerTrigger" and trigger["schedule"] == "0 */5 * * * *"


def test_concurrent_first_invocations_build_the_runtime_once(monkeypatch):
    import threading
    import time

    import function_app
    from shared import bootstrap

    built = []

    def slow_build():
        time.sleep(0.05)  # long enough for every thread to arrive while the first is still building
        built.append(object())
        return built[-1]

    monkeypatch.setattr(bootstrap, "build", slow_build)
    monkeypatch.setattr(function_app, "_runtime", None)
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(function_app.runtime())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1 and seen == [built[0]] * 8

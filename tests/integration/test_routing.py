"""Which functions receive which events: the subscription list, applied by the local Event Grid over real HTTP."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import azure.functions as func
import pytest

from shared.local import subscriptions as subs
from shared.local import wire
from shared.local.eventgrid import LocalEventGrid
from shared.local.host import LocalHost, index

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "events"
TAGS = {"mlops_owner": "mlops-automation", "mlops_data_asset": "churn", "mlops_data_version": "3"}


def captured(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


# (label, event, the functions that must receive it): captured Azure payloads and what the embedded backend emits.
TABLE = [
    ("azure RunCompleted", captured("ml_run_completed.json"), {"on_run_event"}),
    ("azure RunStatusChanged Completed", captured("ml_run_status_changed_completed.json"), {"on_run_event"}),
    ("azure RunStatusChanged Failed", captured("ml_run_status_changed_failed.json"), {"on_run_event"}),
    ("azure RunStatusChanged Running", captured("ml_run_status_changed_running.json"), set()),
    ("azure ModelRegistered", captured("ml_model_registered.json"), {"on_model_event"}),
    ("azure ModelDeployed", captured("ml_model_deployed.json"), {"on_model_event"}),
    ("azure DatasetDriftDetected", captured("ml_dataset_drift_detected.json"), {"on_dataset_drift"}),
    ("azure BlobCreated PutBlob in landing", captured("storage_blob_created_putblob.json"), {"on_blob_created"}),
    ("azure BlobCreated FlushWithClose in landing", captured("storage_blob_created_flushwithclose.json"),
     {"on_blob_created"}),
    ("azure BlobCreated CreateFile in landing", captured("storage_blob_created_createfile.json"), set()),
    ("azure BlobCreated in another container", captured("storage_blob_created_other_container.json"), set()),
    ("azure BlobDeleted in landing", captured("storage_blob_deleted_landing.json"), set()),
    ("custom MLOps.DataRegistered", captured("custom_data_registered.json"), {"on_custom_event"}),
    ("custom MLOps.DriftDetected", captured("custom_drift_detected.json"), {"on_custom_event"}),
    ("local BlobCreated PutBlockList", wire.blob_created("landing", "churn/9/data.csv", content_length=10,
                                                         api="PutBlockList"), {"on_blob_created"}),
    ("local BlobCreated CopyBlob in archive", wire.blob_created("archive", "churn/9/data.csv", content_length=10,
                                                                api="CopyBlob"), set()),
    ("local RunCompleted", wire.run_completed("job-1", experiment="churn", tags=TAGS), {"on_run_event"}),
    ("local RunStatusChanged Canceled", wire.run_status_changed("job-1", "Canceled", experiment="churn", tags=TAGS),
     {"on_run_event"}),
    ("local RunStatusChanged Queued", wire.run_status_changed("job-1", "Queued", experiment="churn", tags=TAGS),
     set()),
    ("local ModelRegistered", wire.model_registered("churn-model", "8", TAGS), {"on_model_event"}),
    ("local ModelDeployed", wire.model_deployed("churn-endpoint", "churn-model:8"), {"on_model_event"}),
    ("local MLOps.DataRegistered", wire.custom("MLOps.DataRegistered", "data/churn/9",
                                               {"asset": "churn", "version": "9"}), {"on_custom_event"}),
    ("unknown type on the custom topic", wire.custom("MLOps.SomethingElse", "x", {}), set()),
    ("unknown type on the workspace topic", wire.event(wire.ML_TOPIC, "Microsoft.MachineLearningServices.RunFoo",
                                                       "experiments/x/runs/y", {}), set()),
    ("storage event type raised on the workspace topic",
     {**wire.blob_created("landing", "a.csv", content_length=1), "topic": wire.ML_TOPIC}, set()),
]
IDS = [label for label, _, _ in TABLE]


def routed(subscription_list, event) -> set[str]:
    return {s.function for s in subs.route(subscription_list, subs.source_of(event), event)}


def table_of(subscription_list) -> dict[str, set[str]]:
    return {label: routed(subscription_list, event) for label, event, _ in TABLE}


@pytest.mark.parametrize("label, event, expected", TABLE, ids=IDS)
def test_each_event_is_routed_to_exactly_the_functions_the_subscription_list_names(label, event, expected):
    assert routed(subs.load(), event) == expected


# --- over real HTTP ---------------------------------------------------------------------------------------

recording_app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
received: list[tuple[str, str]] = []
_lock = threading.Lock()


def _record(function: str, event: func.EventGridEvent) -> None:
    with _lock:
        received.append((function, event.id))


@recording_app.function_name("on_blob_created")
@recording_app.event_grid_trigger(arg_name="event")
def rec_blob(event: func.EventGridEvent) -> None:
    _record("on_blob_created", event)


@recording_app.function_name("on_run_event")
@recording_app.event_grid_trigger(arg_name="event")
def rec_run(event: func.EventGridEvent) -> None:
    _record("on_run_event", event)


@recording_app.function_name("on_model_event")
@recording_app.event_grid_trigger(arg_name="event")
def rec_model(event: func.EventGridEvent) -> None:
    _record("on_model_event", event)


@recording_app.function_name("on_dataset_drift")
@recording_app.event_grid_trigger(arg_name="event")
def rec_drift(event: func.EventGridEvent) -> None:
    _record("on_dataset_drift", event)


@recording_app.function_name("on_custom_event")
@recording_app.event_grid_trigger(arg_name="event")
def rec_custom(event: func.EventGridEvent) -> None:
    _record("on_custom_event", event)


def test_over_real_http_each_event_reaches_exactly_the_functions_in_the_table(tmp_path):
    received.clear()
    with LocalHost(recording_app, port=0) as host, LocalEventGrid(
            subs.load(), endpoint_url=host.url, function_key=host.key, dead_letter_dir=tmp_path, max_attempts=2,
            backoff=0.01) as grid:
        for _, event, _ in TABLE:
            grid.publish(event)
        assert grid.drain(timeout=20)
        stats = grid.stats()
    by_event: dict[str, set[str]] = {}
    for function, event_id in received:
        by_event.setdefault(event_id, set()).add(function)
    assert {label: by_event.get(event["id"], set()) for label, event, _ in TABLE} == {
        label: expected for label, _, expected in TABLE}
    assert stats["dead_lettered"] == 0 and stats["delivered"] == sum(len(e) for _, _, e in TABLE)
    assert stats["unmatched"] == sum(1 for *_, e in TABLE if not e)


# --- a typo in the list shows up here ------------------------------------------------------------------------

def test_letter_case_in_event_types_and_subject_prefixes_does_not_change_routing():
    shouting = [subs.with_changes([s], s.name, included_event_types=tuple(t.upper() for t in s.included_event_types),
                                  subject_begins_with=s.subject_begins_with.upper())[0] for s in subs.load()]
    assert table_of(shouting) == {label: expected for label, _, expected in TABLE}


@pytest.mark.parametrize("name, change, broken_rows", [
    ("data-landed", {"subject_begins_with": "/blobServices/default/containers/landings/blobs/"},
     {"azure BlobCreated PutBlob in landing", "azure BlobCreated FlushWithClose in landing",
      "local BlobCreated PutBlockList"}),
    ("run-finished", {"advanced_filters": (subs.AdvancedFilter("StringNotIn", "data.runStatus",
                                                               ("NotStarted", "Queued", "Runing")),)},
     {"azure RunStatusChanged Running"}),
    ("run-finished", {"advanced_filters": (subs.AdvancedFilter("StringIn", "data.runStatus",
                                                               ("Completed", "Failed", "Canceled")),)},
     {"azure RunCompleted", "local RunCompleted"}),
    ("model-lifecycle", {"source": "custom"}, {"azure ModelRegistered", "azure ModelDeployed", "local ModelRegistered",
                                               "local ModelDeployed"}),
])
def test_a_typo_in_a_filter_changes_exactly_the_rows_it_should(name, change, broken_rows):
    changed = table_of(subs.with_changes(subs.load(), name, **change))
    expected = {label: e for label, _, e in TABLE}
    assert {label for label in expected if changed[label] != expected[label]} == broken_rows


def test_a_prefix_without_its_trailing_slash_also_takes_containers_that_start_the_same():
    # "/containers/landing" (no slash) would also route "landing-archive": the list keeps the slash on purpose.
    loose = subs.with_changes(subs.load(), "data-landed",
                              subject_begins_with="/blobServices/default/containers/landing")
    neighbour = wire.blob_created("landing-archive", "churn/1/data.csv", content_length=1)
    assert routed(loose, neighbour) == {"on_blob_created"}
    assert routed(subs.load(), neighbour) == set()


# --- the list and the app agree --------------------------------------------------------------------------

def test_every_event_grid_function_has_a_subscription_and_every_subscription_names_one():
    import function_app

    functions = index(function_app.app)  # cached: get_functions() runs once per FunctionApp
    event_grid = {f.name for f in functions if f.trigger_type == "eventGridTrigger"}
    subscribed = {s.function for s in subs.load()}
    assert event_grid == subscribed
    assert all(f.trigger_type == "eventGridTrigger" for f in functions if f.name in subscribed)


def test_the_blob_filter_admits_exactly_the_apis_the_parser_treats_as_committed():
    from shared.eventgrid import COMMITTED_APIS

    landed = next(s for s in subs.load() if s.function == "on_blob_created")
    (api_filter,) = [f for f in landed.advanced_filters if f.key == "data.api"]
    assert api_filter.operator_type == "StringIn"
    assert {v.lower() for v in api_filter.values} == COMMITTED_APIS


def test_the_blob_subject_prefix_names_the_default_landing_container():
    from shared.config import Settings

    landed = next(s for s in subs.load() if s.function == "on_blob_created")
    assert landed.subject_begins_with == f"/blobServices/default/containers/{Settings().landing_container}/blobs/"

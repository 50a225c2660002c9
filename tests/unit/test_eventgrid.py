"""Wire payloads → messages: key casing, number-or-string versions, any-case statuses, unknown fields and types."""
import pytest

from shared import eventgrid
from shared.errors import InvalidPayload
from shared.local import wire
from shared.messages import (
    DataRegistered,
    DriftDetected,
    EventIgnored,
    ModelDeployed,
    ModelRegistered,
    RunFinished,
)


def blob(path, api="PutBlob", container="landing"):
    return wire.blob_created(container, path, content_length=100, api=api)


@pytest.mark.parametrize("api", ["PutBlob", "PutBlockList", "CopyBlob", "FlushWithClose", "putblob"])
def test_committed_blob_in_the_landing_path_registers_a_data_version(api):
    m = eventgrid.to_message(blob("churn/3/part.csv", api))
    assert isinstance(m, DataRegistered)
    assert (m.asset, m.version, m.register) == ("churn", "3", True)
    assert m.path.endswith("/landing/churn/3/part.csv")


def test_adls_create_file_is_ignored_until_flush_with_close():
    m = eventgrid.to_message(blob("churn/3/part.csv", "CreateFile"))
    assert isinstance(m, EventIgnored) and "CreateFile" in m.reason


def test_success_marker_registers_the_whole_folder():
    m = eventgrid.to_message(blob("churn/2026-11-01/_SUCCESS"))
    assert isinstance(m, DataRegistered) and m.path.endswith("/landing/churn/2026-11-01/")


def test_hidden_files_are_ignored():
    assert isinstance(eventgrid.to_message(blob("churn/3/.tmp-part.csv")), EventIgnored)


@pytest.mark.parametrize("path, container", [
    ("churn/data.csv", "landing"),  # no version folder
    ("churn/3/part.csv", "raw"),  # another container
    ("ch urn/3/part.csv", "landing"),  # not a valid asset name
    ("churn/v 3/part.csv", "landing"),  # not a valid version
])
def test_paths_off_the_convention_are_rejected_with_the_reason(path, container):
    with pytest.raises(InvalidPayload) as err:
        eventgrid.to_message(blob(path, container=container))
    assert err.value.field == "subject" or "subject" in err.value.field


def test_run_status_changed_in_pascal_case_with_any_status_case():
    # Microsoft's published samples use PascalCase data keys and the CloudEvents envelope.
    event = {"source": wire.ML_TOPIC, "subject": "experiments/x/runs/job-1",
             "type": "Microsoft.MachineLearningServices.RunStatusChanged", "time": "2026-11-28T10:00:00Z",
             "id": "e-1", "specversion": "1.0",
             "data": {"ExperimentId": "x", "ExperimentName": "exp", "RunId": "job-1", "RunType": "azureml.scriptrun",
                      "RunTags": {"mlops_owner": "mlops-automation"}, "RunProperties": {}, "RunStatus": "FAILED",
                      "SomethingNew": 1}}
    m = eventgrid.to_message(event)
    assert m == RunFinished(event_id="e-1", job_name="job-1", status="FAILED", experiment="exp", error="")


def test_run_completed_means_completed():
    m = eventgrid.to_message(wire.run_completed("job-2", experiment="e", tags={}))
    assert isinstance(m, RunFinished) and m.status == "Completed" and m.job_name == "job-2"


def test_model_registered_accepts_a_numeric_version():
    event = {"id": "e", "eventType": "Microsoft.MachineLearningServices.ModelRegistered", "subject": "models/m:20",
             "data": {"ModelName": "m", "ModelVersion": 20, "ModelTags": {"area": "churn"}}}
    m = eventgrid.to_message(event)
    assert m == ModelRegistered(event_id="e", name="m", version="20", tags={"area": "churn"})


def test_model_deployed():
    m = eventgrid.to_message(wire.model_deployed("churn-endpoint", "m:1,m:2"))
    assert isinstance(m, ModelDeployed) and m.endpoint == "churn-endpoint" and m.models == "m:1,m:2"


def test_dataset_drift_names_the_monitor_after_the_endpoint():
    event = wire.event(wire.ML_TOPIC, "Microsoft.MachineLearningServices.DatasetDriftDetected", "datadrift/x/run/y",
                       {"DataDriftId": "x", "DataDriftName": "churn-endpoint", "RunId": "y",
                        "BaseDatasetId": "b", "TargetDatasetId": "t", "DriftCoefficient": 0.83,
                        "StartTime": "2026-11-01", "EndTime": "2026-11-08"})
    m = eventgrid.to_message(event)
    assert isinstance(m, DriftDetected) and m.endpoint == "churn-endpoint" and m.value == pytest.approx(0.83)


def test_custom_data_registered_with_numeric_version_and_no_path_needs_no_registration():
    m = eventgrid.to_message(wire.custom("MLOps.DataRegistered", "data/churn", {"asset": "churn", "version": 7}))
    assert m == DataRegistered(event_id=m.event_id, asset="churn", version="7", path="", source="custom",
                               register=False)


def test_custom_drift_event():
    m = eventgrid.to_message(wire.custom("MLOps.DriftDetected", "endpoints/e",
                                         {"endpoint": "e", "deployment": "v2-1", "metric": "psi", "value": "0.41",
                                          "threshold": 0.2, "monitor": "local-psi"}))
    assert isinstance(m, DriftDetected)
    assert (m.endpoint, m.deployment, m.metric, m.value, m.threshold) == ("e", "v2-1", "psi", 0.41, 0.2)


def test_unknown_event_types_are_ignored_not_failed():
    m = eventgrid.to_message({"id": "z", "eventType": "Contoso.Something", "data": {}})
    assert isinstance(m, EventIgnored) and "Contoso.Something" in m.reason


@pytest.mark.parametrize("event, field", [
    ({"eventType": "X", "data": {}}, "event.id"),
    ({"id": "a", "data": {}}, "event.eventType"),
    ({"id": "a", "eventType": "Microsoft.MachineLearningServices.RunCompleted", "data": {}}, "data.runId"),
    ({"id": "a", "eventType": "Microsoft.MachineLearningServices.RunCompleted", "data": [1]}, "data"),
    ({"id": "a", "eventType": "MLOps.DriftDetected", "data": {"endpoint": "e", "value": "high"}}, "data.value"),
])
def test_unreadable_payloads_name_the_bad_field(event, field):
    with pytest.raises(InvalidPayload) as err:
        eventgrid.to_message(event)
    assert err.value.field == field


def common_alert(condition="Fired", **custom):
    body = {"schemaId": "azureMonitorCommonAlertSchema", "data": {
        "essentials": {"alertId": "/subscriptions/s/providers/Microsoft.AlertsManagement/alerts/abc",
                       "alertRule": "churn-errors", "severity": "Sev1", "signalType": "Metric",
                       "monitorCondition": condition, "monitoringService": "Platform",
                       "alertTargetIDs": ["/subscriptions/s/resourcegroups/rg/providers/microsoft.machinelearningservices"
                                          "/workspaces/ws/onlineendpoints/churn-endpoint"],
                       "firedDateTime": "2026-11-28T10:00:00Z", "description": "5xx share above 5%"},
        "alertContext": {"condition": {"allOf": [{"metricName": "RequestsPerMinute", "metricValue": 12.5,
                                                  "threshold": "10", "dimensions": [
                                                      {"name": "deployment", "value": "v2-1"}]}]}}}}
    if custom:
        body["data"]["customProperties"] = custom
    return body


def test_common_alert_schema_names_endpoint_deployment_and_severity():
    m = eventgrid.from_common_alert(common_alert())
    assert (m.endpoint, m.deployment, m.severity, m.resolved) == ("churn-endpoint", "v2-1", "error", False)
    assert (m.metric, m.value, m.threshold) == ("RequestsPerMinute", 12.5, 10.0)
    assert m.event_id.endswith(":fired")


def test_resolved_alert_is_a_distinct_fact():
    fired, resolved = eventgrid.from_common_alert(common_alert()), eventgrid.from_common_alert(common_alert("Resolved"))
    assert resolved.resolved and fired.event_id != resolved.event_id


def test_custom_properties_override_the_endpoint():
    assert eventgrid.from_common_alert(common_alert(endpoint="other")).endpoint == "other"


def test_alert_without_an_endpoint_is_rejected():
    body = common_alert()
    body["data"]["essentials"]["alertTargetIDs"] = ["/subscriptions/s/resourceGroups/rg"]
    with pytest.raises(InvalidPayload):
        eventgrid.from_common_alert(body)


def test_other_alert_schemas_are_rejected():
    with pytest.raises(InvalidPayload) as err:
        eventgrid.from_common_alert({"schemaId": "Microsoft.Insights/activityLogs", "data": {}})
    assert err.value.field == "schemaId"


def test_a_custom_data_path_carrying_a_sas_token_is_refused_without_repeating_it():
    sas = "https://acct.blob.core.windows.net/landing/churn/3/x.csv?sv=2024-01-01&sig=SECRETSIG"
    with pytest.raises(InvalidPayload) as err:
        eventgrid.to_message(wire.custom("MLOps.DataRegistered", "data/churn",
                                         {"asset": "churn", "version": "3", "path": sas}))
    assert err.value.field == "path" and "SECRETSIG" not in str(err.value)


# --- the landing datastore's storage account (MLOPS_DATASTORE_ACCOUNT) ---------------------------------------

def _azure_blob_created(account: str = "stmlopsdataprod", *, url_account: str | None = None) -> dict:
    """The captured Azure payload (fixtures/events), its topic and url moved to the given accounts."""
    import json
    from pathlib import Path

    event = json.loads((Path(__file__).parents[1] / "fixtures/events/storage_blob_created_putblob.json").read_text())
    event["topic"] = event["topic"].replace("stmlopsdataprod", account)
    event["data"]["url"] = event["data"]["url"].replace("stmlopsdataprod", url_account or account)
    return event


def test_a_blob_created_on_the_datastore_account_is_registered():
    m = eventgrid.to_message(_azure_blob_created(), datastore_account="stmlopsdataprod")
    assert isinstance(m, DataRegistered) and (m.asset, m.version) == ("churn", "3")
    # Account names compare without case, as Azure treats them.
    assert isinstance(eventgrid.to_message(_azure_blob_created(), datastore_account="STMLOPSDATAPROD"), DataRegistered)


def test_a_blob_created_on_another_account_is_refused_with_the_reason():
    m = eventgrid.to_message(_azure_blob_created("stsomeoneelse"), datastore_account="stmlopsdataprod")
    assert isinstance(m, EventIgnored)
    assert m.reason == ("BlobCreated from 'stsomeoneelse', not from the landing datastore's storage account "
                        "'stmlopsdataprod' (MLOPS_DATASTORE_ACCOUNT): not registered")


def test_a_topic_and_url_that_disagree_or_name_no_account_are_refused():
    # The url is what would be registered: an event whose topic is ours but whose url is not is refused too.
    mixed = eventgrid.to_message(_azure_blob_created(url_account="stsomeoneelse"), datastore_account="stmlopsdataprod")
    assert isinstance(mixed, EventIgnored) and "'stsomeoneelse'" in mixed.reason
    anonymous = _azure_blob_created()
    anonymous["topic"] = ""
    anonymous["data"]["url"] = "https://example.invalid/landing/churn/3/data.csv"
    m = eventgrid.to_message(anonymous, datastore_account="stmlopsdataprod")
    assert isinstance(m, EventIgnored) and "no storage account in its topic or url" in m.reason


def test_without_a_configured_account_the_source_is_not_checked():
    # The embedded backend's events come from its local topic; it sets no MLOPS_DATASTORE_ACCOUNT.
    assert isinstance(eventgrid.to_message(_azure_blob_created("stsomeoneelse")), DataRegistered)

"""The subscription list: loading with defaults, errors that name the bad entry, and Event Grid's filter rules."""
import pytest

from shared.local import subscriptions as subs
from shared.local import wire
from shared.local.subscriptions import SubscriptionError

ML_TOPIC, STORAGE_TOPIC = wire.ML_TOPIC, wire.STORAGE_TOPIC


def one(**entry):
    """A document with a single subscription; fields given override a valid baseline."""
    base = {"name": "probe", "function": "on_probe", "source": "ml", "includedEventTypes": ["A.B"]}
    base.update(entry)
    return {"defaults": {"retryPolicy": {"maxDeliveryAttempts": 30, "eventTimeToLiveInMinutes": 1440},
                         "deadLetterContainer": "dl"}, "subscriptions": [base]}


def sub_with(*filters, arrays=False, **entry):
    doc = one(advancedFilters=list(filters), enableAdvancedFilteringOnArrays=arrays, **entry)
    return subs.parse(doc)[0]


def event(data=None, *, event_type="A.B", subject="s/1", topic=ML_TOPIC, **extra):
    e = {"id": "e-1", "topic": topic, "subject": subject, "eventType": event_type, "eventTime": "2026-01-01T00:00:00Z",
         "data": {} if data is None else data, "dataVersion": "2", "metadataVersion": "1"}
    e.update(extra)
    return e


# --- loading ----------------------------------------------------------------------------------------------

def test_the_repository_list_loads_with_defaults_merged_into_every_subscription():
    loaded = subs.load()
    assert {s.function for s in loaded} == {"on_blob_created", "on_run_event", "on_model_event", "on_dataset_drift",
                                            "on_custom_event"}
    for s in loaded:
        assert (s.max_delivery_attempts, s.event_ttl_minutes, s.dead_letter_container) == (30, 1440,
                                                                                            "eventgrid-deadletter")


def test_a_subscription_retry_policy_overrides_only_the_fields_it_names():
    loaded = subs.parse(one(retryPolicy={"maxDeliveryAttempts": 5}, deadLetterContainer="mine"))[0]
    assert (loaded.max_delivery_attempts, loaded.event_ttl_minutes, loaded.dead_letter_container) == (5, 1440, "mine")


def test_all_or_no_included_event_types_means_every_type():
    for types in (None, [], ["All"]):
        s = subs.parse(one(includedEventTypes=types))[0]
        assert subs.matches(s, "ml", event(event_type="Anything.At.All"))


@pytest.mark.parametrize("entry, message", [
    ({"function": ""}, "subscription 'probe': function is required"),
    ({"source": "blob"}, "subscription 'probe': source must be one of ml, storage, custom"),
    ({"name": "has space"}, "subscription 'has space': name must be 3-64"),
    ({"includedEventTypes": "A.B"}, "includedEventTypes must be a list"),
    ({"retryPolicy": {"maxDeliveryAttempts": 31}}, "retryPolicy.maxDeliveryAttempts must be a whole number from 1 to 30"),
    ({"retryPolicy": {"eventTimeToLiveInMinutes": 0}}, "eventTimeToLiveInMinutes must be a whole number from 1 to 1440"),
    ({"advancedFilters": [{"operatorType": "StringLike", "key": "data.a", "values": ["x"]}]},
     "advancedFilters[0]: unknown operatorType 'StringLike'"),
    ({"advancedFilters": [{"operatorType": "StringIn", "key": "data.a", "values": "x"}]},
     "advancedFilters[0]: StringIn needs a non-empty 'values' list"),
    ({"advancedFilters": [{"operatorType": "NumberIn", "key": "data.a", "values": ["1"]}]},
     "advancedFilters[0]: NumberIn values must be numbers"),
    ({"advancedFilters": [{"operatorType": "NumberGreaterThan", "key": "data.a", "values": [1]}]},
     "advancedFilters[0]: NumberGreaterThan needs a single 'value' that is a number"),
    ({"advancedFilters": [{"operatorType": "StringIn", "key": "data..a", "values": ["x"]}]},
     "advancedFilters[0]: key must be a field name"),
    ({"advancedFilters": [{"operatorType": "StringIn", "key": "data.a", "values": [str(i) for i in range(26)]}]},
     "at most 25 filter values in total, this subscription has 26"),
    ({"subjectBeginsWith": 7}, "subjectBeginsWith must be a string"),
])
def test_a_malformed_subscription_is_refused_with_a_message_naming_it(entry, message):
    with pytest.raises(SubscriptionError) as raised:
        subs.parse(one(**entry), where="subscriptions.json")
    assert message in str(raised.value)
    assert str(raised.value).startswith("subscriptions.json: subscription")


def test_two_subscriptions_with_the_same_name_in_any_case_are_refused():
    doc = one()
    doc["subscriptions"].append({**doc["subscriptions"][0], "name": "PROBE"})
    with pytest.raises(SubscriptionError, match="'PROBE': the name is used twice"):
        subs.parse(doc)


def test_a_missing_or_broken_file_is_reported_with_its_path(tmp_path):
    with pytest.raises(SubscriptionError, match="no such file"):
        subs.load(tmp_path / "absent.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(SubscriptionError, match=f"{broken}: not valid JSON"):
        subs.load(broken)


def test_an_empty_subscription_list_is_refused():
    with pytest.raises(SubscriptionError, match="subscriptions must be a non-empty list"):
        subs.parse({"subscriptions": []})


# --- event type, subject, source ---------------------------------------------------------------------------

def test_event_types_match_without_regard_to_case():
    s = subs.parse(one(includedEventTypes=["Microsoft.MachineLearningServices.ModelRegistered"]))[0]
    assert subs.matches(s, "ml", event(event_type="microsoft.machinelearningservices.modelregistered"))
    assert not subs.matches(s, "ml", event(event_type="Microsoft.MachineLearningServices.ModelDeployed"))


def test_subject_filters_are_case_insensitive_unless_the_subscription_says_otherwise():
    s = subs.parse(one(subjectBeginsWith="/blobServices/default/containers/landing/", subjectEndsWith=".CSV"))[0]
    assert subs.matches(s, "ml", event(subject="/BLOBSERVICES/default/containers/Landing/blobs/a/data.csv"))
    assert not subs.matches(s, "ml", event(subject="/blobServices/default/containers/landing2/blobs/data.csv"))
    assert not subs.matches(s, "ml", event(subject="/blobServices/default/containers/landing/blobs/data.parquet"))
    strict = subs.parse(one(subjectBeginsWith="/blobServices/default/containers/landing/",
                            isSubjectCaseSensitive=True))[0]
    assert not subs.matches(strict, "ml", event(subject="/blobServices/default/containers/Landing/blobs/x"))
    assert subs.matches(strict, "ml", event(subject="/blobServices/default/containers/landing/blobs/x"))


def test_an_event_from_another_source_never_matches():
    s = subs.parse(one())[0]
    assert subs.matches(s, "ml", event())
    assert not subs.matches(s, "storage", event())


@pytest.mark.parametrize("topic, source", [
    (wire.ML_TOPIC, "ml"), (wire.STORAGE_TOPIC, "storage"), (wire.CUSTOM_TOPIC, "custom"),
    ("/subscriptions/x/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/w", "ml"),
    ("/subscriptions/x/resourceGroups/rg/providers/microsoft.storage/storageAccounts/st", "storage"),
    ("/subscriptions/x/resourceGroups/rg/providers/Microsoft.EventGrid/topics/t", "custom"),
    ("/subscriptions/x/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv", None),
    ("", None),
])
def test_the_source_is_read_from_the_topic_local_or_azure(topic, source):
    assert subs.source_of({"topic": topic}) == source


# --- advanced filters --------------------------------------------------------------------------------------

def f(op, key="data.k", values=None, value=None):
    raw = {"operatorType": op, "key": key}
    if values is not None:
        raw["values"] = values
    if value is not None:
        raw["value"] = value
    return raw


@pytest.mark.parametrize("flt, data, expected", [
    # strings: case-insensitive, values are alternatives
    (f("StringIn", values=["PutBlob", "FlushWithClose"]), {"k": "putblob"}, True),
    (f("StringIn", values=["PutBlob"]), {"k": "CreateFile"}, False),
    (f("StringNotIn", values=["Running"]), {"k": "RUNNING"}, False),
    (f("StringNotIn", values=["Running"]), {"k": "Completed"}, True),
    (f("StringBeginsWith", values=["abc", "xyz"]), {"k": "XYZ-1"}, True),
    (f("StringNotBeginsWith", values=["abc"]), {"k": "ABCdef"}, False),
    (f("StringEndsWith", values=[".csv"]), {"k": "a.CSV"}, True),
    (f("StringNotEndsWith", values=[".csv"]), {"k": "a.json"}, True),
    (f("StringContains", values=["drift"]), {"k": "DataDRIFT"}, True),
    (f("StringNotContains", values=["drift"]), {"k": "data"}, True),
    # a missing key fails every operator but the documented NotIn pair
    (f("StringIn", values=["x"]), {}, False),
    (f("StringNotIn", values=["x"]), {}, True),
    (f("StringNotContains", values=["x"]), {}, False),
    (f("StringNotBeginsWith", values=["x"]), {}, False),
    (f("StringNotEndsWith", values=["x"]), {}, False),
    (f("NumberIn", values=[1]), {}, False),
    (f("NumberNotIn", values=[1]), {}, True),
    (f("NumberGreaterThan", value=1), {}, False),
    (f("BoolEquals", value=True), {}, False),
    (f("IsNullOrUndefined"), {}, True),
    (f("IsNotNull"), {}, False),
    # null counts as absent
    (f("IsNullOrUndefined"), {"k": None}, True),
    (f("IsNotNull"), {"k": None}, False),
    (f("StringNotIn", values=["x"]), {"k": None}, True),
    (f("IsNotNull"), {"k": ""}, True),
    # values of another type than the operator's are ignored
    (f("StringIn", values=["5"]), {"k": 5}, False),
    (f("StringNotIn", values=["5"]), {"k": 5}, True),
    (f("NumberIn", values=[5]), {"k": "5"}, False),
    (f("BoolEquals", value=True), {"k": "true"}, False),
    (f("NumberGreaterThan", value=1), {"k": True}, False),
    # numbers
    (f("NumberIn", values=[5, 1]), {"k": 5.0}, True),
    (f("NumberNotIn", values=[41, 0]), {"k": 41}, False),
    (f("NumberGreaterThan", value=0.5), {"k": 0.83}, True),
    (f("NumberGreaterThan", value=0.83), {"k": 0.83}, False),
    (f("NumberGreaterThanOrEquals", value=0.83), {"k": 0.83}, True),
    (f("NumberLessThan", value=10), {"k": 9}, True),
    (f("NumberLessThanOrEquals", value=10), {"k": 11}, False),
    (f("NumberInRange", values=[[0, 1], [10, 20]]), {"k": 15}, True),
    (f("NumberNotInRange", values=[[0, 1], [10, 20]]), {"k": 5}, True),
    (f("NumberNotInRange", values=[[0, 1]]), {"k": 1}, False),
    (f("BoolEquals", value=False), {"k": False}, True),
    # dotted keys reach into nested objects; names inside data are exact
    (f("StringIn", key="data.runTags.mlops_owner", values=["mlops-automation"]),
     {"runTags": {"mlops_owner": "MLOps-Automation"}}, True),
    (f("StringIn", key="data.runTags.mlops_owner", values=["mlops-automation"]), {"runTags": {}}, False),
    (f("StringIn", key="data.runTags.mlops_owner", values=["mlops-automation"]), {"runTags": "flat"}, False),
    (f("StringIn", key="data.runTags.mlops_owner", values=["x"]), {"RunTags": {"mlops_owner": "x"}}, False),
    # envelope fields, in any spelling of the key
    (f("StringBeginsWith", key="Subject", values=["s/"]), {}, True),
    (f("StringIn", key="EventType", values=["a.b"]), {}, True),
    (f("StringIn", key="id", values=["E-1"]), {}, True),
    (f("StringIn", key="DataVersion", values=["2"]), {}, True),
    (f("IsNotNull", key="nosuchfield"), {}, False),
])
def test_advanced_filters_follow_event_grid_semantics(flt, data, expected):
    assert subs.matches(sub_with(flt), "ml", event(data)) is expected


def test_array_values_are_only_looked_into_when_the_subscription_enables_it():
    flt = f("StringIn", values=["b"])
    assert subs.matches(sub_with(flt, arrays=True), "ml", event({"k": ["a", "B"]}))
    assert not subs.matches(sub_with(flt, arrays=False), "ml", event({"k": ["a", "b"]}))
    negated = f("StringNotIn", values=["b"])
    assert not subs.matches(sub_with(negated, arrays=True), "ml", event({"k": ["a", "b"]}))
    assert subs.matches(sub_with(negated, arrays=True), "ml", event({"k": ["a", "c"]}))


def test_every_advanced_filter_must_pass():
    both = sub_with(f("StringIn", key="data.api", values=["PutBlob"]), f("NumberGreaterThan", key="data.size", value=0))
    assert subs.matches(both, "ml", event({"api": "PutBlob", "size": 10}))
    assert not subs.matches(both, "ml", event({"api": "PutBlob", "size": 0}))
    assert not subs.matches(both, "ml", event({"api": "CreateFile", "size": 10}))


def test_run_finished_takes_terminal_run_events_and_run_completed_which_has_no_status():
    run = next(s for s in subs.load() if s.name == "run-finished")
    tags = {"mlops_owner": "mlops-automation"}
    assert subs.matches(run, "ml", wire.run_completed("r1", experiment="e", tags=tags))
    for status, expected in (("Completed", True), ("Failed", True), ("Canceled", True), ("Running", False),
                             ("Queued", False), ("Finalizing", False), ("NotResponding", False), ("Paused", False),
                             ("Unknown", False)):
        assert subs.matches(run, "ml", wire.run_status_changed("r1", status, experiment="e", tags=tags)) is expected


def test_route_returns_every_matching_subscription_in_list_order():
    doc = one()
    doc["subscriptions"].append({**doc["subscriptions"][0], "name": "second", "function": "on_other"})
    loaded = subs.parse(doc)
    assert [s.name for s in subs.route(loaded, "ml", event())] == ["probe", "second"]


def test_with_changes_returns_a_changed_copy_and_leaves_the_original_alone():
    loaded = subs.load()
    changed = subs.with_changes(loaded, "data-landed", subject_begins_with="/x/")
    assert next(s for s in changed if s.name == "data-landed").subject_begins_with == "/x/"
    assert next(s for s in loaded if s.name == "data-landed").subject_begins_with.endswith("/landing/blobs/")
    with pytest.raises(KeyError):
        subs.with_changes(loaded, "no-such-subscription")


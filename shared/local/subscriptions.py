"""The Event Grid subscription list (infra/subscriptions.json): load, validate, and match events with Event Grid's filter rules.

The same file feeds the Bicep templates, so this module is how we know that local routing equals Azure routing.
Filter semantics follow the Event Grid documentation ("Understand event filtering for Event Grid subscriptions"):

* ``includedEventTypes``: the event type must be one of them (compared without regard to case); absent, empty
  or ``["All"]`` means every type.
* ``subjectBeginsWith`` / ``subjectEndsWith``: plain prefix / suffix tests, case-insensitive unless the
  subscription sets ``isSubjectCaseSensitive`` (Event Grid's default is false).
* ``advancedFilters``: every filter must pass (AND); the values inside one filter are alternatives (OR).
  String comparisons are case-insensitive. When the key is missing (or null) every operator fails except
  ``NumberNotIn`` and ``StringNotIn`` (documented as matched) and ``IsNullOrUndefined``. Key values of another
  type than the operator's are ignored, so ``StringNotIn`` passes for a number. Arrays are only looked into
  when ``enableAdvancedFilteringOnArrays`` is true; otherwise an array counts as a value of another type.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from shared.local import wire

logger = logging.getLogger(__name__)

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "infra" / "subscriptions.json"
SOURCES = ("ml", "storage", "custom")

# Event Grid limits (documented): 25 advanced filters and 25 filter values in total per subscription,
# 512 characters per string value; retry policy 1..30 attempts and 1..1440 minutes of time to live.
MAX_FILTERS = 25
MAX_FILTER_VALUES = 25
MAX_STRING_VALUE = 512
MAX_ATTEMPTS_RANGE = (1, 30)
TTL_MINUTES_RANGE = (1, 1440)
_NAME = re.compile(r"^[A-Za-z0-9-]{3,64}$")  # event subscription names: 3-64 letters, digits and hyphens

STRING_MULTI = {"StringIn", "StringNotIn", "StringBeginsWith", "StringNotBeginsWith", "StringEndsWith",
                "StringNotEndsWith", "StringContains", "StringNotContains"}
NUMBER_MULTI = {"NumberIn", "NumberNotIn"}
NUMBER_RANGE = {"NumberInRange", "NumberNotInRange"}
NUMBER_SINGLE = {"NumberGreaterThan", "NumberGreaterThanOrEquals", "NumberLessThan", "NumberLessThanOrEquals"}
BOOL_SINGLE = {"BoolEquals"}
NULL_CHECKS = {"IsNotNull", "IsNullOrUndefined"}
OPERATORS = STRING_MULTI | NUMBER_MULTI | NUMBER_RANGE | NUMBER_SINGLE | BOOL_SINGLE | NULL_CHECKS
NEGATIONS = {"StringNotIn", "StringNotBeginsWith", "StringNotEndsWith", "StringNotContains", "NumberNotIn",
             "NumberNotInRange"}
# Documented: a missing key makes these two match. NumberNotInRange is not in the documented list either way;
# we treat it like NumberNotIn, its closest sibling.
MATCH_WHEN_MISSING = {"NumberNotIn", "StringNotIn", "NumberNotInRange"}

# Event Grid schema envelope fields a filter key may name (matched without regard to case).
_ENVELOPE = {"id": "id", "topic": "topic", "subject": "subject", "eventtype": "eventType",
             "dataversion": "dataVersion", "metadataversion": "metadataVersion", "eventtime": "eventTime"}
_MISSING = object()


class SubscriptionError(ValueError):
    """The subscription list is malformed; the message names the subscription and the field."""


@dataclass(frozen=True)
class AdvancedFilter:
    """One advanced filter: ``operator_type`` applied to the event value found at ``key``."""

    operator_type: str
    key: str
    values: tuple[Any, ...] = ()  # the alternatives of multi-valued operators (ranges are (low, high) pairs)
    value: Any = None  # the single operand of NumberGreaterThan..., BoolEquals


@dataclass(frozen=True)
class Subscription:
    """One Event Grid event subscription delivering to one function, with defaults merged in."""

    name: str
    function: str
    source: str  # ml | storage | custom (see wire.TOPICS)
    included_event_types: tuple[str, ...] = ()  # empty = every type
    subject_begins_with: str = ""
    subject_ends_with: str = ""
    subject_case_sensitive: bool = False
    advanced_filters: tuple[AdvancedFilter, ...] = ()
    filter_arrays: bool = False  # enableAdvancedFilteringOnArrays
    max_delivery_attempts: int = 30
    event_ttl_minutes: int = 1440
    dead_letter_container: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


def load(path: str | Path | None = None) -> list[Subscription]:
    """Read and validate the subscription list (``infra/subscriptions.json`` by default)."""
    path = Path(path) if path else DEFAULT_PATH
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SubscriptionError(f"{path}: no such file") from None
    except json.JSONDecodeError as error:
        raise SubscriptionError(f"{path}: not valid JSON ({error})") from None
    return parse(doc, where=str(path))


def parse(doc: Any, *, where: str = "subscriptions") -> list[Subscription]:
    """Validate a parsed subscription document and merge its defaults into every subscription."""
    if not isinstance(doc, Mapping):
        raise SubscriptionError(f"{where}: the document must be a JSON object")
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, Mapping):
        raise SubscriptionError(f"{where}: defaults must be an object")
    entries = doc.get("subscriptions")
    if not isinstance(entries, list) or not entries:
        raise SubscriptionError(f"{where}: subscriptions must be a non-empty list")
    result, seen = [], set()
    for index, entry in enumerate(entries):
        label = f"{where}: subscriptions[{index}]"
        if isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
            label = f"{where}: subscription {entry['name']!r}"
        sub = _subscription(entry, defaults, label)
        if sub.name.lower() in seen:  # Event Grid names are case-insensitive within a topic
            raise SubscriptionError(f"{label}: the name is used twice")
        seen.add(sub.name.lower())
        result.append(sub)
    return result


def _subscription(entry: Any, defaults: Mapping[str, Any], label: str) -> Subscription:
    if not isinstance(entry, Mapping):
        raise SubscriptionError(f"{label}: must be an object")
    name = _required_text(entry, "name", label)
    if not _NAME.match(name):
        raise SubscriptionError(f"{label}: name must be 3-64 letters, digits or hyphens")
    function = _required_text(entry, "function", label)
    source = _required_text(entry, "source", label)
    if source not in SOURCES:
        raise SubscriptionError(f"{label}: source must be one of {', '.join(SOURCES)}, not {source!r}")
    types = entry.get("includedEventTypes")
    if types is None:
        types = []
    if not isinstance(types, list) or not all(isinstance(t, str) and t.strip() for t in types):
        raise SubscriptionError(f"{label}: includedEventTypes must be a list of event type names")
    if any(t.lower() == "all" for t in types):
        types = []
    begins = _optional_text(entry, "subjectBeginsWith", label)
    ends = _optional_text(entry, "subjectEndsWith", label)
    case_sensitive = entry.get("isSubjectCaseSensitive", False)
    arrays = entry.get("enableAdvancedFilteringOnArrays", False)
    for key, flag in (("isSubjectCaseSensitive", case_sensitive), ("enableAdvancedFilteringOnArrays", arrays)):
        if not isinstance(flag, bool):
            raise SubscriptionError(f"{label}: {key} must be true or false")
    filters = entry.get("advancedFilters") or []
    if not isinstance(filters, list):
        raise SubscriptionError(f"{label}: advancedFilters must be a list")
    parsed = tuple(_filter(f, f"{label}: advancedFilters[{i}]") for i, f in enumerate(filters))
    if len(parsed) > MAX_FILTERS:
        raise SubscriptionError(f"{label}: Event Grid allows at most {MAX_FILTERS} advanced filters")
    total = sum(max(len(f.values), 1) for f in parsed if f.operator_type not in NULL_CHECKS)
    if total > MAX_FILTER_VALUES:
        raise SubscriptionError(f"{label}: Event Grid allows at most {MAX_FILTER_VALUES} filter values in total, "
                                f"this subscription has {total}")
    retry = {**(defaults.get("retryPolicy") or {}), **(entry.get("retryPolicy") or {})}
    attempts = _bounded_int(retry.get("maxDeliveryAttempts", 30), "retryPolicy.maxDeliveryAttempts",
                            MAX_ATTEMPTS_RANGE, label)
    ttl = _bounded_int(retry.get("eventTimeToLiveInMinutes", 1440), "retryPolicy.eventTimeToLiveInMinutes",
                       TTL_MINUTES_RANGE, label)
    container = entry.get("deadLetterContainer", defaults.get("deadLetterContainer", ""))
    if not isinstance(container, str):
        raise SubscriptionError(f"{label}: deadLetterContainer must be a string")
    return Subscription(name=name, function=function, source=source,
                        included_event_types=tuple(t.strip() for t in types), subject_begins_with=begins,
                        subject_ends_with=ends, subject_case_sensitive=case_sensitive, advanced_filters=parsed,
                        filter_arrays=arrays, max_delivery_attempts=attempts, event_ttl_minutes=ttl,
                        dead_letter_container=container, raw=dict(entry))


def _filter(raw: Any, label: str) -> AdvancedFilter:
    if not isinstance(raw, Mapping):
        raise SubscriptionError(f"{label}: must be an object")
    op = raw.get("operatorType")
    if op not in OPERATORS:
        raise SubscriptionError(f"{label}: unknown operatorType {op!r} (known: {', '.join(sorted(OPERATORS))})")
    key = raw.get("key")
    if not isinstance(key, str) or not key.strip() or any(not part for part in key.split(".")):
        raise SubscriptionError(f"{label}: key must be a field name such as subject or data.api")
    if op in NULL_CHECKS:
        return AdvancedFilter(op, key)
    if op in NUMBER_SINGLE | BOOL_SINGLE:
        value = raw.get("value")
        ok = isinstance(value, bool) if op in BOOL_SINGLE else _is_number(value)
        if not ok:
            kind = "true or false" if op in BOOL_SINGLE else "a number"
            raise SubscriptionError(f"{label}: {op} needs a single 'value' that is {kind}")
        return AdvancedFilter(op, key, value=value)
    values = raw.get("values")
    if not isinstance(values, list) or not values:
        raise SubscriptionError(f"{label}: {op} needs a non-empty 'values' list")
    for v in values:
        if op in STRING_MULTI and not (isinstance(v, str) and len(v) <= MAX_STRING_VALUE):
            raise SubscriptionError(f"{label}: {op} values must be strings of at most {MAX_STRING_VALUE} characters")
        if op in NUMBER_MULTI and not _is_number(v):
            raise SubscriptionError(f"{label}: {op} values must be numbers")
        if op in NUMBER_RANGE and not (isinstance(v, list) and len(v) == 2 and all(map(_is_number, v))
                                       and v[0] <= v[1]):
            raise SubscriptionError(f"{label}: {op} values must be [low, high] number pairs")
    return AdvancedFilter(op, key, values=tuple(tuple(v) if isinstance(v, list) else v for v in values))


def _required_text(entry: Mapping[str, Any], key: str, label: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise SubscriptionError(f"{label}: {key} is required (a non-empty string)")
    return value.strip()


def _optional_text(entry: Mapping[str, Any], key: str, label: str) -> str:
    value = entry.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SubscriptionError(f"{label}: {key} must be a string")
    return value


def _bounded_int(value: Any, key: str, bounds: tuple[int, int], label: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not bounds[0] <= value <= bounds[1]:
        raise SubscriptionError(f"{label}: {key} must be a whole number from {bounds[0]} to {bounds[1]}, "
                                f"not {value!r}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --- matching ----------------------------------------------------------------------------------------------

def source_of(event: Mapping[str, Any]) -> str | None:
    """The source name (ml | storage | custom) of an event, from its topic; None when it cannot tell.

    Local topics map exactly through ``wire.TOPICS``; captured Azure payloads carry real resource ids, so the
    provider segment decides for them (a workspace, a storage account, a custom topic).
    """
    topic = str(event.get("topic") or "").lower()
    for name, known in wire.TOPICS.items():
        if topic == known.lower():
            return name
    if "/providers/microsoft.machinelearningservices/workspaces/" in topic:
        return "ml"
    if "/providers/microsoft.storage/storageaccounts/" in topic:
        return "storage"
    if "/providers/microsoft.eventgrid/topics/" in topic or "/providers/microsoft.eventgrid/domains/" in topic:
        return "custom"
    return None


def matches(subscription: Subscription, source: str, event: Mapping[str, Any]) -> bool:
    """Whether Event Grid would deliver ``event``, raised on ``source``, to ``subscription``. Pure."""
    if source != subscription.source or not isinstance(event, Mapping):
        return False
    event_type = str(_field(event, "eventType") or "")
    if subscription.included_event_types and event_type.lower() not in {
            t.lower() for t in subscription.included_event_types}:
        return False
    subject = str(_field(event, "subject") or "")
    begins, ends = subscription.subject_begins_with, subscription.subject_ends_with
    if not subscription.subject_case_sensitive:
        subject, begins, ends = subject.lower(), begins.lower(), ends.lower()
    if not subject.startswith(begins) or not subject.endswith(ends):
        return False
    return all(_passes(f, event, subscription.filter_arrays) for f in subscription.advanced_filters)


def route(subscriptions: Iterable[Subscription], source: str, event: Mapping[str, Any]) -> list[Subscription]:
    """Every subscription the event goes to, in list order."""
    return [s for s in subscriptions if matches(s, source, event)]


def with_changes(subscriptions: Sequence[Subscription], name: str, **changes: Any) -> list[Subscription]:
    """A copy of the list with one subscription changed (what-if checks and tests)."""
    if name not in {s.name for s in subscriptions}:
        raise KeyError(name)
    return [replace(s, **changes) if s.name == name else s for s in subscriptions]


def _field(event: Mapping[str, Any], name: str) -> Any:
    """An envelope field, tolerating key casing (captured payloads are not always camelCase)."""
    if name in event:
        return event[name]
    lowered = name.lower()
    return next((v for k, v in event.items() if str(k).lower() == lowered), None)


def lookup(event: Mapping[str, Any], key: str) -> Any:
    """The value at a filter key (``subject``, ``data.api``, ``data.runTags.mlops_owner``), or a marker when absent.

    Envelope names and the ``data`` prefix are matched without regard to case (the docs spell them ``ID``,
    ``Subject``, ``data``); names inside ``data`` are matched exactly, as written in the payload.
    """
    parts = key.split(".")
    head = parts[0].lower()
    if len(parts) == 1:
        if head not in _ENVELOPE:
            return _MISSING
        value = _field(event, _ENVELOPE[head])
        return _MISSING if value is None and not _has(event, _ENVELOPE[head]) else value
    if head != "data":
        return _MISSING
    node: Any = _field(event, "data")
    for part in parts[1:]:
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _has(event: Mapping[str, Any], name: str) -> bool:
    return any(str(k).lower() == name.lower() for k in event)


def _passes(f: AdvancedFilter, event: Mapping[str, Any], arrays: bool) -> bool:
    value = lookup(event, f.key)
    absent = value is _MISSING or value is None
    if f.operator_type == "IsNullOrUndefined":
        return absent
    if f.operator_type == "IsNotNull":
        return not absent
    if absent:
        return f.operator_type in MATCH_WHEN_MISSING
    items = list(value) if isinstance(value, list) and arrays else [value]
    op = f.operator_type
    if op in STRING_MULTI:
        candidates = [v.lower() for v in items if isinstance(v, str)]
        wanted = [str(w).lower() for w in f.values]
        test = {"In": lambda v, w: v == w, "BeginsWith": str.startswith, "EndsWith": str.endswith,
                "Contains": lambda v, w: w in v}[op.removeprefix("String").removeprefix("Not")]
        hit = any(test(v, w) for v in candidates for w in wanted)
        return not hit if op in NEGATIONS else hit
    numbers = [v for v in items if _is_number(v)]
    if op in NUMBER_MULTI:
        hit = any(v == w for v in numbers for w in f.values)
        return not hit if op in NEGATIONS else hit
    if op in NUMBER_RANGE:
        hit = any(lo <= v <= hi for v in numbers for lo, hi in f.values)
        return not hit if op in NEGATIONS else hit
    if op in NUMBER_SINGLE:
        compare = {"NumberGreaterThan": lambda v: v > f.value, "NumberGreaterThanOrEquals": lambda v: v >= f.value,
                   "NumberLessThan": lambda v: v < f.value, "NumberLessThanOrEquals": lambda v: v <= f.value}[op]
        return any(compare(v) for v in numbers)
    if op == "BoolEquals":
        return any(isinstance(v, bool) and v == f.value for v in items)
    raise AssertionError(f"unhandled operator {op}")  # parse() admits only known operators

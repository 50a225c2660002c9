"""Settings and error classification (issue 11, items 6 and 7)."""
from __future__ import annotations

import pytest

from shared.config import Policy, Settings
from shared.errors import InvalidPayload
from shared.policy import Action, on_run_failed


@pytest.mark.parametrize("name", ["MLOPS_MIN_PRIMARY", "MLOPS_MIN_IMPROVEMENT", "MLOPS_GUARD_TOLERANCE",
                                  "MLOPS_DRIFT_PSI_THRESHOLD"])
@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e999"])
def test_a_threshold_that_is_not_a_finite_number_is_refused_at_startup(name, value):
    with pytest.raises(InvalidPayload) as err:
        Settings.from_env({name: value})
    assert err.value.field == name


@pytest.mark.parametrize("name", ["MLOPS_MIN_IMPROVEMENT", "MLOPS_GUARD_TOLERANCE", "MLOPS_DRIFT_PSI_THRESHOLD"])
def test_a_negative_margin_tolerance_or_threshold_is_refused(name):
    with pytest.raises(InvalidPayload) as err:
        Settings.from_env({name: "-0.1"})
    assert err.value.field == name


def test_finite_thresholds_are_kept():
    policy = Settings.from_env({"MLOPS_MIN_PRIMARY": "0.7", "MLOPS_GUARD_TOLERANCE": "0"}).policy
    assert (policy.min_primary, policy.guard_tolerance) == (0.7, 0.0)


@pytest.mark.parametrize("error", [
    "KeyError: 'hotspot_count'",  # a bug in the training script, not a spot eviction
    "ValueError: could not convert string to float: 'transiently'",
    "FileNotFoundError: /data/capacity_plan.csv",
    "AssertionError: spotcheck failed",
])
def test_a_bug_whose_text_merely_contains_a_capacity_word_is_not_retried(error):
    assert on_run_failed("Failed", error, 1, Policy()).action is Action.GIVE_UP


@pytest.mark.parametrize("error", [
    "The node was preempted", "Low priority node evicted", "Spot instance reclaimed by Azure",
    "Job failed: Preemption notice received", "Insufficient capacity in region", "node deallocated",
])
def test_lost_capacity_is_still_retried(error):
    assert on_run_failed("Failed", error, 1, Policy()).action is Action.RETRY

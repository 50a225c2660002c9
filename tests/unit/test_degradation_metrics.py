"""Live AUC and log loss (numpy) against scikit-learn's, on random and adversarial data; labels files; the verdict."""
import math

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from shared.drift.degradation import DEGRADED, HEALTHY, INCONCLUSIVE, auc, evaluate, logloss, read_labels


@pytest.mark.parametrize("seed", range(6))
def test_auc_and_logloss_agree_with_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 3000))
    y = rng.integers(0, 2, n)
    y[0], y[-1] = 0, 1
    p = rng.random(n)
    if seed % 2:  # heavy ties
        p = np.round(p, 1)
    assert auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert logloss(y, p) == pytest.approx(log_loss(y, p), abs=1e-12)


def test_auc_edge_cases():
    assert auc([0, 1], [0.5, 0.5]) == 0.5
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert auc([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == 0.0
    assert math.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert logloss([1, 0], [1.0, 0.0]) == pytest.approx(log_loss([1, 0], [1.0, 0.0]))


def test_labels_files_by_correlation_id_or_the_documented_column():
    key, got = read_labels(["correlationid,label", "a,1", "b,0", ",1", "c,maybe", "d,TRUE"])
    assert key == "correlationid" and got == {"a": 1, "b": 0, "d": 1}
    key, got = read_labels(["customer_id,tenure_months,churn", "C1,3,yes", "C2,40,no"])
    assert key == "customer_id" and got == {"C1": 1, "C2": 0}
    with pytest.raises(ValueError, match="id column"):
        read_labels(["who,label", "a,1"])


def test_the_verdict_needs_enough_rows_both_classes_and_a_training_auc():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    good = np.clip(y * 0.6 + rng.random(400) * 0.4, 0, 1)
    bad = rng.random(400)
    training = {"auc": 0.9, "logloss": 0.3}
    assert evaluate(y, good, training, tolerance=0.05, min_rows=100).status == HEALTHY
    worse = evaluate(y, bad, training, tolerance=0.05, min_rows=100)
    assert worse.status == DEGRADED and worse.drop > 0.3 and worse.rows == 400
    assert evaluate(y[:50], bad[:50], training, tolerance=0.05, min_rows=100).status == INCONCLUSIVE
    assert evaluate(np.ones(400), bad, training, tolerance=0.05, min_rows=100).status == INCONCLUSIVE
    assert evaluate(y, bad, {}, tolerance=0.05, min_rows=100).status == INCONCLUSIVE

"""Degradation once ground truth arrives: live AUC and log loss of served predictions against their labels, numpy
only, compared with the model's training metrics.

Labels land later as CSV (``landing/<asset>-labels/<date>/labels.csv``), one row per scored case: an id column and
the label. The id is the data collector's ``correlationid`` when the file has that column, otherwise the documented
id column of the inputs (``ID_COLUMN``, the churn data's ``customer_id``), which the collector keeps with each input
row. The label column is ``label`` or the training target (``churn``); values 1/0, true/false, yes/no.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

ID_COLUMN = "customer_id"
CORRELATION_ID = "correlationid"
LABEL_COLUMNS = ("label", "churn")
DEGRADED, HEALTHY, INCONCLUSIVE = "degraded", "healthy", "inconclusive"
_TRUE, _FALSE = {"1", "true", "yes", "y", "1.0"}, {"0", "false", "no", "n", "0.0"}


def auc(labels, scores) -> float:
    """Area under the ROC curve: the Mann-Whitney U of the positives' ranks (ties get their average rank), as
    sklearn.metrics.roc_auc_score computes it. NaN when only one class is present."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    positives = int(y.sum())
    negatives = y.size - positives
    if positives == 0 or negatives == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    ranked = s[order]
    ranks = np.empty(s.size)
    # average rank of each run of equal scores: the run [lo, hi) gets (lo + hi + 1) / 2
    starts = np.flatnonzero(np.concatenate(([True], ranked[1:] != ranked[:-1])))
    ends = np.concatenate((starts[1:], [s.size]))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    u = ranks[y].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


def logloss(labels, scores, eps: float = float(np.finfo(np.float64).eps)) -> float:
    """Mean binary cross-entropy with probabilities clipped to [eps, 1 - eps] (machine epsilon, as
    sklearn.metrics.log_loss clips float64 since 1.5)."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(scores, dtype=np.float64), eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def read_labels(lines: Iterable[str]) -> tuple[str, dict[str, int]]:
    """(id column used, {id: 0 or 1}) from CSV lines. Rows with an empty id or an unreadable label are skipped;
    a file with neither id column or no label column is refused (ValueError, naming what it needs)."""
    reader = csv.DictReader(lines)
    header = [h.strip() for h in reader.fieldnames or []]
    lowered = {h.lower(): h for h in header}
    key = lowered.get(CORRELATION_ID) or lowered.get(ID_COLUMN)
    label = next((lowered[c] for c in LABEL_COLUMNS if c in lowered), None)
    if key is None or label is None:
        raise ValueError(f"a labels file needs an id column ({CORRELATION_ID} or {ID_COLUMN}) and a label column "
                         f"({' or '.join(LABEL_COLUMNS)}); it has {', '.join(header) or 'no header'}")
    out: dict[str, int] = {}
    for row in reader:
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
        ident, value = row.get(key, ""), row.get(label, "").lower()
        if ident and value in _TRUE | _FALSE:
            out[ident] = 1 if value in _TRUE else 0
    return key.lower(), out


@dataclass(frozen=True)
class Degradation:
    status: str  # degraded | healthy | inconclusive
    rows: int  # labelled predictions joined
    live_auc: float | None
    train_auc: float | None
    live_logloss: float | None
    train_logloss: float | None
    tolerance: float
    reason: str = ""

    @property
    def drop(self) -> float | None:
        if self.live_auc is None or self.train_auc is None:
            return None
        return self.train_auc - self.live_auc


def evaluate(labels, scores, training: Mapping[str, float], *, tolerance: float, min_rows: int) -> Degradation:
    """Live metrics of ``scores`` against ``labels``, and whether AUC fell more than ``tolerance`` below the
    training AUC. Fewer than ``min_rows`` joined rows, one class only, or no training AUC: inconclusive."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(scores, dtype=np.float64)
    keep = np.isfinite(p)
    y, p = y[keep], p[keep]
    train_auc, train_ll = training.get("auc"), training.get("logloss")
    if y.size < min_rows:
        return Degradation(INCONCLUSIVE, int(y.size), None, train_auc, None, train_ll, tolerance,
                           f"{y.size} labelled predictions, fewer than {min_rows}")
    live_auc, live_ll = auc(y, p), logloss(y, p)
    if math.isnan(live_auc):
        return Degradation(INCONCLUSIVE, int(y.size), None, train_auc, live_ll, train_ll, tolerance,
                           "the labels hold one class only: AUC is undefined")
    if train_auc is None:
        return Degradation(INCONCLUSIVE, int(y.size), live_auc, None, live_ll, train_ll, tolerance,
                           "the model has no training AUC to compare with")
    status = DEGRADED if train_auc - live_auc > tolerance else HEALTHY
    return Degradation(status, int(y.size), live_auc, train_auc, live_ll, train_ll, tolerance,
                       f"live AUC {live_auc:.3f} vs training {train_auc:.3f} (drop {train_auc - live_auc:+.3f}, "
                       f"tolerance {tolerance:g})")

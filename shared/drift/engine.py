"""Drift statistics of a window of production data against a training baseline: numpy only, one pass per column.

A baseline is either a profile (baseline.json, see shared/training/baseline_profile.py) or raw samples
(``Baseline.from_samples``). Against raw samples every statistic is exact. Against a profile:
- PSI, Jensen-Shannon, chi-squared, missing and unseen shares are exact: they are defined over the profile's bins
  (numeric baseline deciles; named categories plus "other"), which the profile stores as counts;
- KS and Wasserstein-1 are computed against the profile's quantile sketch, whose CDF is the linear interpolation of
  ``QUANTILES`` + 1 quantiles. They are exact for that interpolated CDF; the KS error against the raw baseline is at
  most about 1/QUANTILES (tested), and Wasserstein's is bounded by the quantile spacing.
Each statistic has a threshold (``Thresholds``); a feature drifts when any of them fires, and a window with fewer than
``min_rows`` usable values is "inconclusive", never drift. docs/drift.md has the definitions.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from shared.training.baseline_profile import (
    MAX_CATEGORIES,
    Coded,
    categorical_profile,
    is_missing,
    numeric_profile,
    read_profile,
)

logger = logging.getLogger(__name__)

CHUNK = 1 << 16  # values per step of the sketch pass: temporaries of a few MB, cache-sized
PSI_FLOOR = 1e-4  # share floor for empty bins: PSI is undefined for a zero share
PREDICTION = "prediction"
DRIFT, NO_DRIFT, INCONCLUSIVE = "drift", "no_drift", "inconclusive"


@dataclass(frozen=True)
class Thresholds:
    """A statistic fires when its value is above its threshold (chi-squared: p-value below ``chi2_p`` *and*
    Cramér's V at least ``cramers_v``). ``None`` switches a statistic off."""

    psi: float | None = 0.2
    ks: float | None = 0.1
    wasserstein: float | None = 0.1  # W1 / baseline standard deviation
    js: float | None = 0.1  # Jensen-Shannon distance, base 2 (0..1)
    chi2_p: float | None = 0.001
    cramers_v: float = 0.1  # effect-size floor for chi-squared: large windows make tiny shifts "significant"
    missing: float | None = 0.1  # rise in the share of missing values over the baseline's
    unseen: float | None = 0.05  # share of categories the baseline does not name, over the baseline's "other"
    min_rows: int = 100  # fewer usable window (or baseline) values: inconclusive


# ---------------------------------------------------------------------------------------------------------------
# Statistics on sorted, finite samples or on bin counts. Public so the agreement tests can reach them.


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample KS statistic sup|Fa - Fb| of two sorted, non-empty, finite samples (as scipy.stats.ks_2samp).

    The supremum of Fb - Fa is reached at a value of b (right limit), that of Fa - Fb just before one (left limit),
    so only b's distinct values are visited: searchsorted of sorted keys, no pooled sort."""
    na, nb = a.size, b.size
    first, last = _tie_bounds(b)
    idx = np.arange(nb)
    ia_right = np.searchsorted(a, b[last], side="right")
    ia_left = np.searchsorted(a, b[first], side="left")
    # Fa - Fb at the candidate points, computed like scipy (count / n) so the extreme values agree to the bit
    up = ia_left / na - idx[first] / nb  # left limits: (#a < v) / na - (#b < v) / nb
    down = ia_right / na - (idx[last] + 1) / nb  # right limits at v
    return float(max(0.0, up.max(), -down.min()))


def wasserstein_distance(a: np.ndarray, b: np.ndarray) -> float:
    """First Wasserstein distance ∫|Fa - Fb| dx of two sorted, non-empty, finite samples (as scipy's).

    The pooled order comes from inserting b into a (searchsorted), not from sorting the pool."""
    na, nb, n = a.size, b.size, a.size + b.size
    pos = np.searchsorted(a, b, side="right") + np.arange(nb)
    is_b = np.zeros(n, dtype=bool)
    is_b[pos] = True
    pooled = np.empty(n)
    pooled[is_b] = b
    pooled[~is_b] = a
    deltas = np.diff(pooled)
    cb = np.cumsum(is_b[:-1])
    ca = np.arange(1, n) - cb  # where deltas > 0 these are #a <= x and #b <= x, as scipy's searchsorted gives
    return float(np.sum(np.abs(ca / na - cb / nb) * deltas))


def sketch_cdf(knots: np.ndarray, x: np.ndarray, side: str) -> np.ndarray:
    """The CDF interpolated linearly between quantile knots (knot k at probability k/Q): right-continuous values
    (``side="right"``) or left limits (``side="left"``) at the points ``x``; repeated knots are jumps."""
    return _interpolate(knots, x, np.searchsorted(knots, x, side=side))


def _sketch_cdf_sorted(knots: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``sketch_cdf`` at sorted points, both sides at once: (right-continuous values, left limits). The knot counts
    come from placing the few knots among the many points (a bincount and a cumsum) instead of a binary search per
    point, and the two sides differ only at repeated knots (jumps), which are patched."""
    starts = np.searchsorted(x, knots, side="left")  # x[i] >= knot j from index starts[j] on
    right = _interpolate(knots, x, np.cumsum(np.bincount(starts, minlength=x.size + 1)[: x.size]))
    left = right
    jumps = np.unique(knots[1:][knots[1:] == knots[:-1]])
    if jumps.size:
        left = right.copy()
        below = np.searchsorted(knots, jumps, side="left")  # the left limit at a jump v is #(knots < v) / Q
        for lo, hi, k in zip(np.searchsorted(x, jumps, "left"), np.searchsorted(x, jumps, "right"), below,
                             strict=True):
            left[lo:hi] = k / (knots.size - 1)
    return right, left


def _interpolate(knots: np.ndarray, x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """(j + (x - knot j) / (knot j+1 - knot j)) / Q on the segment j = k - 1 holding x (k = knots <= x), clipped to
    [0, 1]: below the first knot that is 0, past the last 1; a zero-width segment contributes 0."""
    q = knots.size - 1
    span = np.diff(knots)
    inverse = np.divide(1.0, span, out=np.zeros(q), where=span > 0)
    seg = k - 1
    np.clip(seg, 0, q - 1, out=seg)
    out = x - knots[seg]
    out *= inverse[seg]
    out += seg
    out /= q
    np.clip(out, 0.0, 1.0, out=out)
    out[k > q] = 1.0
    return out


def ks_statistic_sketch(knots: np.ndarray, b: np.ndarray) -> float:
    """KS statistic of a sorted sample against the sketched CDF."""
    return sketch_distances(knots, b)[0]


def wasserstein_distance_sketch(knots: np.ndarray, b: np.ndarray) -> float:
    """∫|Fa - Fb| dx with Fa the sketched CDF."""
    return sketch_distances(knots, b)[1]


def sketch_distances(knots: np.ndarray, b: np.ndarray, chunk: int = CHUNK) -> tuple[float, float]:
    """(KS, Wasserstein-1) of a sorted, non-empty sample against the sketched CDF Fa, both exact for that CDF.

    The knots and the values of b cut the line into segments on which Fb is constant and Fa linear, so
    sup|Fa - Fb| is reached at a segment's end and ∫|Fa - Fb| over it is a trapezoid, or two triangles where they
    cross. b is walked in chunks (each with the knots that fall in it and the next chunk's first value as its right
    end), so the temporaries stay small whatever the window size."""
    nb, nk = b.size, knots.size
    ks, w = 0.0, 0.0
    for s in range(0, nb, chunk):
        e = min(s + chunk, nb)
        part = b[s:e + 1]  # up to and including the next chunk's first value
        lo = 0 if s == 0 else int(np.searchsorted(knots, b[s], side="left"))
        hi = nk if e == nb else int(np.searchsorted(knots, b[e], side="left"))
        kn = knots[lo:hi]
        m = part.size + kn.size
        is_knot = np.zeros(m, dtype=bool)
        is_knot[np.searchsorted(part, kn, side="left") + np.arange(kn.size)] = True  # a knot before equal values
        x = np.empty(m)
        x[is_knot] = kn
        x[~is_knot] = part
        fb = np.cumsum(~is_knot[:-1])
        fb += s
        fb = fb / nb  # Fb on [x_k, x_k+1)
        right, left = _sketch_cdf_sorted(knots, x)
        width = np.diff(x)
        d0 = right[:-1] - fb
        d1 = left[1:] - fb
        a0, a1 = np.abs(d0), np.abs(d1)
        flat = width == 0  # inside a run of equal values: not a piece of the line
        piece = (a0 + a1) / 2
        cross = np.flatnonzero((d0 * d1 < 0) & ~flat)
        piece[cross] = (d0[cross] ** 2 + d1[cross] ** 2) / (2 * (a0[cross] + a1[cross]))
        piece *= width  # (not np.dot: BLAS threads waking up per chunk cost more than the product)
        w += float(piece.sum())
        np.maximum(a0, a1, out=a0)
        a0[flat] = 0.0
        ks = max(ks, float(a0.max(initial=0.0)))
    return ks, w


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index Σ (a - e) ln(a / e) of two count vectors over the same bins; shares are floored
    at ``PSI_FLOOR``."""
    e = np.maximum(np.asarray(expected, dtype=np.float64) / max(float(np.sum(expected)), 1.0), PSI_FLOOR)
    a = np.maximum(np.asarray(actual, dtype=np.float64) / max(float(np.sum(actual)), 1.0), PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def js_distance(p: np.ndarray, q: np.ndarray, base: float = 2.0) -> float:
    """Jensen-Shannon distance (the square root of the divergence) of two count vectors, in ``base`` (as
    scipy.spatial.distance.jensenshannon)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2.0
    div = (_rel_entr(p, m).sum() + _rel_entr(q, m).sum()) / 2.0 / math.log(base)
    return float(math.sqrt(max(div, 0.0)))


def chi2_homogeneity(expected: np.ndarray, actual: np.ndarray) -> tuple[float, int, float, float]:
    """Pearson's chi-squared test of the 2 × k table (baseline counts, window counts), without Yates' correction;
    all-zero columns are dropped. Returns (statistic, degrees of freedom, p-value, Cramér's V)."""
    table = np.vstack([np.asarray(expected, dtype=np.float64), np.asarray(actual, dtype=np.float64)])
    table = table[:, table.sum(axis=0) > 0]
    total = table.sum()
    dof = table.shape[1] - 1
    if dof < 1 or (table.sum(axis=1) == 0).any():
        return 0.0, max(dof, 0), 1.0, 0.0
    exp = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / total
    stat = float(((table - exp) ** 2 / exp).sum())
    return stat, dof, chi2_sf(stat, dof), math.sqrt(stat / total)


def chi2_sf(x: float, dof: int) -> float:
    """Survival function of the chi-squared distribution with integer ``dof``: the regularized upper incomplete
    gamma Q(dof/2, x/2) in closed form. Even dof: e^-y Σ_{i<a} y^i / i!. Odd dof: erfc(√y) + e^-y Σ_{i<n}
    y^(i+1/2) / Γ(i+3/2), n = (dof-1)/2. All terms are positive (summed in log space), so nothing cancels."""
    if dof < 1:
        raise ValueError("dof must be a positive integer")
    if not x > 0:
        return 1.0
    if math.isinf(x):
        return 0.0
    y = x / 2.0
    log_y = math.log(y)
    if dof % 2 == 0:
        logs = [i * log_y - y - math.lgamma(i + 1) for i in range(dof // 2)]
        head = 0.0
    else:
        logs = [(i + 0.5) * log_y - y - math.lgamma(i + 1.5) for i in range((dof - 1) // 2)]
        head = math.erfc(math.sqrt(y))
    if not logs:
        return head
    top = max(logs)
    return min(1.0, head + math.exp(top) * math.fsum(math.exp(v - top) for v in logs))


def _rel_entr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x)
    pos = x > 0
    out[pos] = x[pos] * np.log(x[pos] / y[pos])
    return out


def _tie_bounds(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the first and the last element of each run of equal values in a sorted array."""
    change = b[1:] != b[:-1]
    first = np.concatenate(([True], change))
    last = np.concatenate((change, [True]))
    return first, last


# ---------------------------------------------------------------------------------------------------------------
# Baselines and results


@dataclass
class Baseline:
    """Per feature (and the predictions, under ``PREDICTION``): its profile and, when built from samples, the
    sorted finite values that make KS and Wasserstein exact."""

    profile: dict
    exact: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_profile(cls, doc: Mapping) -> Baseline:
        return cls(read_profile(doc))

    @classmethod
    def from_samples(cls, numeric: Mapping, categorical: Mapping | None = None, *, predictions=None) -> Baseline:
        features, exact = {}, {}
        columns = dict(numeric)
        if predictions is not None:
            columns[PREDICTION] = predictions
        for name, values in columns.items():
            x = np.asarray(values, dtype=np.float64)
            features[name] = numeric_profile(x)
            exact[name] = np.sort(x[np.isfinite(x)])
        for name, values in (categorical or {}).items():
            features[name] = categorical_profile(values, max_categories=MAX_CATEGORIES)
        rows = max((len(v) for v in [*numeric.values(), *(categorical or {}).values()]), default=0)
        profile = {"schema_version": 2, "rows": rows,
                   "features": {k: v for k, v in features.items() if k != PREDICTION}}
        if PREDICTION in features:
            profile["prediction"] = features[PREDICTION]
        return cls(profile, exact)

    def specs(self) -> dict[str, dict]:
        out = dict(self.profile["features"])
        if self.profile.get("prediction"):
            out[PREDICTION] = self.profile["prediction"]
        return out


@dataclass(frozen=True)
class FeatureResult:
    name: str
    kind: str  # numeric | categorical
    status: str  # drift | no_drift | inconclusive
    rows: int  # usable (non-missing) window values
    baseline_rows: int
    stats: dict[str, float | None]
    fired: dict[str, float]  # statistic -> value / threshold (how far over)
    method: str = "exact"  # exact | sketch (KS and Wasserstein against the quantile sketch)
    reason: str = ""

    @property
    def drifted(self) -> bool:
        return self.status == DRIFT

    @property
    def severity(self) -> float:
        return max(self.fired.values(), default=0.0)

    @property
    def statistic(self) -> str:
        """The statistic that fired furthest over its threshold ("" when none fired)."""
        return max(self.fired, key=self.fired.get) if self.fired else ""

    def signal(self, t: Thresholds) -> tuple[str, float, float] | None:
        """(metric, value, threshold) of the statistic that fired furthest: chi-squared as its p-value, missing and
        unseen as the rise over the baseline's share."""
        stat = self.statistic
        if not stat:
            return None
        if stat == "chi2":
            return "chi2_p", self.stats["chi2_p"], t.chi2_p
        if stat == "missing":
            return "missing", self.stats["missing"] - (self.stats["baseline_missing"] or 0.0), t.missing
        if stat == "unseen":
            return "unseen", self.stats["unseen"] - self.stats["baseline_other"], t.unseen
        return stat, self.stats[stat], getattr(t, stat)

    def to_dict(self, t: Thresholds | None = None) -> dict:
        signal = self.signal(t) if t is not None else None
        return {"feature": self.name, "kind": self.kind, "status": self.status, "rows": self.rows,
                "baseline_rows": self.baseline_rows, "method": self.method, "statistic": self.statistic,
                **({"signal": {"metric": signal[0], "value": _round(signal[1]), "threshold": signal[2]}}
                   if signal else {}),
                "stats": {k: _round(v) for k, v in self.stats.items()},
                "fired": {k: _round(v) for k, v in self.fired.items()}, **({"reason": self.reason} if self.reason else {})}


@dataclass(frozen=True)
class DriftResult:
    status: str
    rows: int
    features: dict[str, FeatureResult]
    thresholds: Thresholds

    @property
    def drifted(self) -> bool:
        return self.status == DRIFT

    def top(self, n: int = 5) -> list[FeatureResult]:
        """Drifted features (the predictions included), furthest over a threshold first."""
        hits = [f for f in self.features.values() if f.drifted]
        return sorted(hits, key=lambda f: (-f.severity, f.name))[:n]

    def to_dict(self, top: int = 5) -> dict:
        return {"status": self.status, "rows": self.rows,
                "top": [f.to_dict(self.thresholds) for f in self.top(top)],
                "features": {k: f.to_dict(self.thresholds) for k, f in self.features.items()}}


def _round(v):
    """Six significant digits (a p-value of 1e-30 stays 1e-30); None and infinities as they are."""
    return None if v is None else (float(f"{v:.6g}") if math.isfinite(v) else v)


# ---------------------------------------------------------------------------------------------------------------
# The comparison


def compare(baseline: Baseline | Mapping, window: Mapping, *, predictions=None, thresholds: Thresholds | None = None,
            workers: int = 2) -> DriftResult:
    """Every baseline feature (and the predictions, when both sides have them) of ``window`` — a mapping of column
    name to values: floats (NaN or None missing) for numeric features, strings or ``Coded`` for categorical ones —
    against ``baseline``. Columns are independent, so up to ``workers`` threads share them (numpy releases the GIL)."""
    base = baseline if isinstance(baseline, Baseline) else Baseline.from_profile(baseline)
    limits = thresholds or Thresholds()
    specs = base.specs()
    columns = dict(window)
    if predictions is not None:
        columns[PREDICTION] = predictions
    extra = sorted(set(columns) - set(specs))
    if extra:
        logger.debug("window columns without a baseline are not compared: %s", ", ".join(extra))

    def one(name: str) -> FeatureResult:
        spec = specs[name]
        if name not in columns:
            return FeatureResult(name, spec["type"], INCONCLUSIVE, 0, int(spec.get("count") or 0), {}, {},
                                 reason="absent from the window")
        if spec["type"] == "numeric":
            return _numeric(name, spec, base.exact.get(name), columns[name], limits)
        return _categorical(name, spec, columns[name], limits)

    names = [n for n in specs if n != PREDICTION or PREDICTION in columns]
    if workers > 1 and len(names) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(one, names))
    else:
        results = [one(n) for n in names]
    features = {r.name: r for r in results}
    rows = max((len(v) for v in columns.values()), default=0)
    if any(r.drifted for r in results):
        status = DRIFT
    elif results and all(r.status == INCONCLUSIVE for r in results):
        status = INCONCLUSIVE
    else:
        status = NO_DRIFT if results else INCONCLUSIVE
    return DriftResult(status, rows, features, limits)


def _numeric(name: str, spec: dict, exact: np.ndarray | None, values, t: Thresholds) -> FeatureResult:
    x = np.asarray(values, dtype=np.float64)
    b = x[np.isfinite(x)]
    b.sort()
    nb, n_base = int(b.size), int(spec.get("count") or 0)
    missing = 1.0 - nb / x.size if x.size else 0.0
    base_missing = _share(spec.get("missing"), n_base)
    stats: dict[str, float | None] = {"missing": missing, "baseline_missing": base_missing}
    knots = spec.get("quantiles")
    method = "exact" if exact is not None else "sketch"
    if nb and n_base:
        edges = np.asarray(spec["edges"], dtype=np.float64)
        counts = np.diff(np.concatenate(([0], np.searchsorted(b, edges, side="left"), [nb])))
        base_counts = np.asarray(spec["counts"], dtype=np.float64)
        stats["psi"] = psi(base_counts, counts)
        stats["js"] = js_distance(base_counts, counts)
        scale = spec.get("std") or 1.0  # a constant baseline: the shift in the feature's own units
        if exact is not None and exact.size:
            stats["ks"] = ks_statistic(exact, b)
            stats["wasserstein_raw"] = wasserstein_distance(exact, b)
        elif knots and len(knots) >= 2:
            stats["ks"], stats["wasserstein_raw"] = sketch_distances(np.asarray(knots, dtype=np.float64), b)
        else:  # a schema-1 baseline has no sketch
            stats["ks"] = stats["wasserstein_raw"] = None
        raw = stats["wasserstein_raw"]
        stats["wasserstein"] = None if raw is None else raw / scale
    return _decide(name, "numeric", nb, n_base, stats, t, method,
                   {"psi": t.psi, "ks": t.ks, "wasserstein": t.wasserstein, "js": t.js})


def _categorical(name: str, spec: dict, values, t: Thresholds) -> FeatureResult:
    named = list(spec["counts"])
    k = len(named)
    lookup = {c: i for i, c in enumerate(named)}
    if isinstance(values, Coded):  # count per code, then fold the codes onto the baseline's bins
        remap = np.array([lookup.get(c, k) for c in values.categories], dtype=np.int64)
        valid = values.codes >= 0
        codes = values.codes if valid.all() else values.codes[valid]
        by_code = np.bincount(codes, minlength=len(values.categories))
        counts = np.bincount(remap, weights=by_code, minlength=k + 1) if remap.size else np.zeros(k + 1)
        total = len(values)
    else:
        values = list(values)
        codes = np.fromiter((-1 if is_missing(v) else lookup.get(str(v), k) for v in values), dtype=np.int64,
                            count=len(values))
        counts = np.bincount(codes[codes >= 0], minlength=k + 1).astype(np.float64)
        total = len(values)
    base_counts = np.array([spec["counts"][c] for c in named] + [spec.get("other") or 0], dtype=np.float64)
    nb, n_base = int(counts.sum()), int(spec.get("count") or 0)
    stats: dict[str, float | None] = {"missing": 1.0 - nb / total if total else 0.0,
                                      "baseline_missing": _share(spec.get("missing"), n_base)}
    if nb and n_base:
        stats["psi"] = psi(base_counts, counts)
        stats["js"] = js_distance(base_counts, counts)
        stat, dof, p, v = chi2_homogeneity(base_counts, counts)
        stats.update({"chi2": stat, "chi2_dof": float(dof), "chi2_p": p, "cramers_v": v,
                      "unseen": counts[k] / nb, "baseline_other": base_counts[k] / base_counts.sum()})
    return _decide(name, "categorical", nb, n_base, stats, t, "exact", {"psi": t.psi, "js": t.js})


def _share(missing, count: int) -> float | None:
    if missing is None:
        return None
    return missing / (missing + count) if missing + count else 0.0


def _decide(name: str, kind: str, nb: int, n_base: int, stats: dict, t: Thresholds, method: str,
            distances: dict[str, float | None]) -> FeatureResult:
    if nb < t.min_rows or n_base < t.min_rows:
        side = "window" if nb < t.min_rows else "baseline"
        return FeatureResult(name, kind, INCONCLUSIVE, nb, n_base, stats, {}, method,
                             reason=f"{min(nb, n_base)} usable {side} values, fewer than {t.min_rows}")
    fired: dict[str, float] = {}
    for stat, limit in distances.items():
        value = stats.get(stat)
        if limit is not None and value is not None and value > limit:
            fired[stat] = value / limit if limit > 0 else math.inf
    if t.missing is not None and stats["missing"] - (stats["baseline_missing"] or 0.0) > t.missing:
        fired["missing"] = (stats["missing"] - (stats["baseline_missing"] or 0.0)) / t.missing
    if kind == "categorical" and "unseen" in stats:
        if t.unseen is not None and stats["unseen"] - stats["baseline_other"] > t.unseen:
            fired["unseen"] = (stats["unseen"] - stats["baseline_other"]) / t.unseen
        if t.chi2_p is not None and stats["chi2_p"] < t.chi2_p and stats["cramers_v"] >= t.cramers_v:
            fired["chi2"] = stats["cramers_v"] / t.cramers_v if t.cramers_v > 0 else math.inf
    return FeatureResult(name, kind, DRIFT if fired else NO_DRIFT, nb, n_base, stats, fired, method)

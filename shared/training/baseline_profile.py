"""The training baseline profile (baseline.json, schema 2): a compact sketch of each feature and of the predictions.

Self-contained (stdlib and numpy only): it is uploaded with train.py as the Azure ML job's code, and the drift engine
(shared/drift/engine.py) reads the same documents through ``read_profile``.

Per numeric feature: non-missing count, missing count, mean, std, min, max, a quantile sketch (``QUANTILES`` + 1
linearly interpolated quantiles from 0 to 1) and a histogram over decile edges (``edges``, ``counts``, ``shares``).
Per categorical feature: counts of the ``MAX_CATEGORIES`` most frequent categories, everything rarer in ``other``,
the missing count, and ``shares`` over the named categories.
Schema 1 documents (no ``schema_version``: numeric ``edges`` + ``shares``, categorical ``shares``, ``rows``) are
upgraded on reading: counts are rebuilt from shares × rows, and the quantile sketch is absent (``None``), so the
statistics that need it (KS, Wasserstein) are reported as unavailable rather than guessed.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

SCHEMA_VERSION = 2
QUANTILES = 500  # sketch resolution: the sketched CDF is within 1/QUANTILES of the true one between knots
BINS = 10  # histogram bins (baseline deciles) for PSI and Jensen-Shannon
MAX_CATEGORIES = 100  # named categories kept per categorical feature; the rest are counted as "other"


class Coded:
    """A dictionary-encoded categorical column: ``codes`` index ``categories``; a negative code is missing."""

    def __init__(self, codes, categories: Sequence[str]) -> None:
        import numpy as np

        self.codes = np.asarray(codes)
        self.categories = [str(c) for c in categories]
        if self.codes.ndim != 1 or not np.issubdtype(self.codes.dtype, np.integer):
            raise ValueError("codes must be a 1-d integer array")
        if self.codes.size and int(self.codes.max()) >= len(self.categories):
            raise ValueError("a code is out of range of the categories")

    def __len__(self) -> int:
        return int(self.codes.size)


def is_missing(value) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def numeric_profile(values, *, quantiles: int = QUANTILES, bins: int = BINS) -> dict:
    """Sketch of one numeric column (a float array; NaN and ±infinity are missing, as in the drift engine)."""
    import numpy as np

    x = np.asarray(values, dtype=np.float64)
    finite = x[np.isfinite(x)]
    missing = int(x.size - finite.size)
    if finite.size == 0:
        return {"type": "numeric", "count": 0, "missing": missing, "mean": None, "std": None, "min": None,
                "max": None, "quantiles": [], "edges": [], "counts": [0], "shares": [0.0]}
    finite = np.sort(finite)
    knots = np.quantile(finite, np.linspace(0.0, 1.0, quantiles + 1))
    edges = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    # bin i holds edges[i-1] <= x < edges[i] (the first and last bins are open-ended)
    below = np.searchsorted(finite, edges, side="left")
    counts = np.diff(np.concatenate(([0], below, [finite.size])))
    return {"type": "numeric", "count": int(finite.size), "missing": missing, "mean": float(finite.mean()),
            "std": float(finite.std()), "min": float(finite[0]), "max": float(finite[-1]),
            "quantiles": knots.tolist(), "edges": edges.tolist(), "counts": counts.tolist(),
            "shares": (counts / finite.size).tolist()}


def categorical_profile(values, *, max_categories: int = MAX_CATEGORIES) -> dict:
    """Frequencies of one categorical column (strings, or ``Coded``); None, "" and NaN are missing."""
    import numpy as np

    if isinstance(values, Coded):
        present = values.codes[values.codes >= 0]
        tally = np.bincount(present, minlength=len(values.categories))
        counts = Counter({c: int(n) for c, n in zip(values.categories, tally, strict=True) if n})
        missing = len(values) - int(present.size)
    else:
        values = list(values)
        kept = [str(v) for v in values if not is_missing(v)]
        counts = Counter(kept)
        missing = len(values) - len(kept)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    named = dict(ranked[:max_categories])
    other = sum(n for _, n in ranked[max_categories:])
    total = sum(counts.values())
    return {"type": "categorical", "count": total, "missing": missing, "counts": named, "other": other,
            "shares": {c: n / total for c, n in named.items()} if total else {}}


def build_profile(numeric: Mapping[str, Iterable], categorical: Mapping[str, Iterable], *, rows: int,
                  prediction=None) -> dict:
    """The baseline document: one sketch per feature and, when given, of the predicted scores."""
    features = {name: numeric_profile(v) for name, v in numeric.items()}
    features.update({name: categorical_profile(v) for name, v in categorical.items()})
    doc = {"schema_version": SCHEMA_VERSION, "rows": int(rows), "features": features}
    if prediction is not None:
        doc["prediction"] = numeric_profile(prediction)
    return doc


class ProfileError(ValueError):
    """The document is not a baseline profile this code can read; the message says why."""


def read_profile(doc: Mapping) -> dict:
    """A schema-2 profile from a schema 1 or 2 document. A newer schema is refused: it may mean something else."""
    version = doc.get("schema_version", 1)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ProfileError(f"baseline schema_version {version!r} is newer than this reader ({SCHEMA_VERSION})")
    if "features" not in doc:
        raise ProfileError("baseline has no 'features'")
    if version == SCHEMA_VERSION:
        return dict(doc)
    rows = int(doc.get("rows", 0))
    features = {}
    for name, spec in doc["features"].items():
        if spec.get("type") == "numeric":
            counts = [int(round(s * rows)) for s in spec["shares"]]
            features[name] = {"type": "numeric", "count": sum(counts), "missing": None, "mean": None, "std": None,
                              "min": None, "max": None, "quantiles": None, "edges": list(spec["edges"]),
                              "counts": counts, "shares": list(spec["shares"])}
        elif spec.get("type") == "categorical":
            counts = {c: int(round(s * rows)) for c, s in spec["shares"].items()}
            features[name] = {"type": "categorical", "count": sum(counts.values()), "missing": None,
                              "counts": counts, "other": 0, "shares": dict(spec["shares"])}
        else:
            raise ProfileError(f"feature {name!r} has an unknown type {spec.get('type')!r}")
    return {"schema_version": SCHEMA_VERSION, "upgraded_from": version, "rows": rows, "features": features}

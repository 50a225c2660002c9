"""What a drift alert shows beyond its signal: the top features, the window, and baseline-against-current shares of
the top feature, small enough to travel in the event and be drawn on the card (shared/cards.py, drift_section).

The chart is data, not a picture: per bin (the profile's decile bins for a number; its most frequent categories
and "other" for a category) the baseline's share and the window's share. The card draws them as bars made of
Adaptive Card columns, so nothing is fetched from a URL.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping

CHART_FACT = "Chart"  # the alert fact carrying the chart as JSON (the card draws it; the FactSet leaves it out)
MAX_BINS = 12
MAX_LABEL = 24
MAX_TOP = 5


def histogram(name: str, spec: Mapping, values) -> dict | None:
    """{"feature", "kind", "bins": [[label, baseline share, window share], ...]} of one feature, or None when the
    profile or the window has nothing to show."""
    import numpy as np

    from shared.training.baseline_profile import Coded, is_missing

    if spec.get("type") == "numeric":
        edges = [float(e) for e in spec.get("edges") or []]
        base = np.asarray(spec.get("counts") or [], dtype=np.float64)
        x = np.asarray(values, dtype=np.float64)
        x = x[np.isfinite(x)]
        if not base.sum() or not x.size or base.size != len(edges) + 1:
            return None
        x.sort()
        counts = np.diff(np.concatenate(([0], np.searchsorted(x, edges, side="left"), [x.size])))
        labels = ([f"< {_num(edges[0])}"] if edges else ["all"]) + \
            [f"{_num(a)} – {_num(b)}" for a, b in zip(edges, edges[1:], strict=False)] + \
            ([f"≥ {_num(edges[-1])}"] if edges else [])
        shares = zip(labels, base / base.sum(), counts / counts.sum(), strict=True)
    elif spec.get("type") == "categorical":
        named = sorted(spec.get("counts") or {}, key=lambda c: -spec["counts"][c])[: MAX_BINS - 1]
        rest = sum(n for c, n in (spec.get("counts") or {}).items() if c not in named) + int(spec.get("other") or 0)
        if isinstance(values, Coded):
            tally = np.bincount(values.codes[values.codes >= 0], minlength=len(values.categories))
            seen = {c: int(n) for c, n in zip(values.categories, tally, strict=True)}
        else:
            seen = {}
            for v in values:
                if not is_missing(v):
                    seen[str(v)] = seen.get(str(v), 0) + 1
        total_base = sum(spec["counts"][c] for c in named) + rest
        total = sum(seen.values())
        if not total_base or not total:
            return None
        other = total - sum(seen.get(c, 0) for c in named)
        rows = [(c, spec["counts"][c], seen.get(c, 0)) for c in named] + [("other", rest, other)]
        shares = ((label, b / total_base, w / total) for label, b, w in rows)
    else:
        return None
    return {"feature": name, "kind": spec["type"],
            "bins": [[label[:MAX_LABEL], round(float(b), 4), round(float(w), 4)] for label, b, w in shares][:MAX_BINS]}


def details(top: list[dict], window: Mapping | None, rows: int, chart: dict | None) -> dict:
    """The compact part of a drift event an alert shows: top features (name, statistic, value, threshold, sample
    sizes), the window, its row count and the chart."""
    out: dict = {"rows": int(rows), "top": []}
    for f in top[:MAX_TOP]:
        signal = f.get("signal") or {}
        out["top"].append({"feature": str(f.get("feature", ""))[:80], "metric": str(signal.get("metric", ""))[:20],
                           "value": signal.get("value"), "threshold": signal.get("threshold"),
                           "rows": f.get("rows"), "baseline_rows": f.get("baseline_rows")})
    if window:
        out["window"] = {k: window[k] for k in ("start", "end", "minutes") if k in window}
    if chart:
        out["chart"] = chart
    return out


def read_details(raw) -> dict:
    """``details`` from an event, checked: anything malformed is dropped (it only decorates the alert)."""
    if not isinstance(raw, Mapping):
        return {}
    out: dict = {}
    if isinstance(raw.get("rows"), int):
        out["rows"] = raw["rows"]
    top = []
    for f in raw.get("top") or []:
        if isinstance(f, Mapping) and isinstance(f.get("feature"), str):
            top.append({"feature": f["feature"][:80], "metric": str(f.get("metric") or "")[:20],
                        "value": _float(f.get("value")), "threshold": _float(f.get("threshold")),
                        "rows": f.get("rows") if isinstance(f.get("rows"), int) else None,
                        "baseline_rows": f.get("baseline_rows") if isinstance(f.get("baseline_rows"), int) else None})
    if top:
        out["top"] = top[:MAX_TOP]
    window = raw.get("window")
    if isinstance(window, Mapping):
        out["window"] = {k: str(window[k])[:40] for k in ("start", "end") if k in window}
        if isinstance(window.get("minutes"), int):
            out["window"]["minutes"] = window["minutes"]
    chart = raw.get("chart")
    if isinstance(chart, Mapping) and isinstance(chart.get("bins"), list):
        bins = [[str(b[0])[:MAX_LABEL], _share(b[1]), _share(b[2])] for b in chart["bins"][:MAX_BINS]
                if isinstance(b, list) and len(b) == 3 and _share(b[1]) is not None and _share(b[2]) is not None]
        if bins:
            out["chart"] = {"feature": str(chart.get("feature", ""))[:80], "kind": str(chart.get("kind", ""))[:12],
                            "bins": bins}
    return out


def facts(detail: Mapping) -> list[tuple[str, str]]:
    """Alert facts: "Top features" and "Window" as text, and the chart as JSON under ``CHART_FACT``."""
    rows: list[tuple[str, str]] = []
    if detail.get("top"):
        parts = []
        for f in detail["top"]:
            op = "<" if f.get("metric") == "chi2_p" else ">"
            value, threshold = f.get("value"), f.get("threshold")
            stat = (f"{f['metric']} {value:.3g} {op} {threshold:g}" if isinstance(value, float)
                    and isinstance(threshold, float) else f.get("metric") or "?")
            sizes = f" ({f['rows']:,} vs {f['baseline_rows']:,} rows)" if f.get("rows") is not None and \
                f.get("baseline_rows") is not None else ""
            parts.append(f"{f['feature']}: {stat}{sizes}")
        rows.append(("Top features", "; ".join(parts)))
    window = detail.get("window") or {}
    if window.get("start") and window.get("end"):
        size = f", {detail['rows']:,} rows" if isinstance(detail.get("rows"), int) else ""
        rows.append(("Window", f"{window['start']} → {window['end']}{size}"))
    elif isinstance(detail.get("rows"), int):
        rows.append(("Window", f"{detail['rows']:,} rows"))
    if detail.get("chart"):
        rows.append((CHART_FACT, json.dumps(detail["chart"], separators=(",", ":"), ensure_ascii=False)))
    return rows


def _num(v: float) -> str:
    return f"{v:.3g}"


def _float(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _share(v) -> float | None:
    f = _float(v)
    return f if f is not None and 0.0 <= f <= 1.0 else None

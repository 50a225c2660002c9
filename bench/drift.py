"""Drift benchmark: one window against a training baseline (default 1,000,000 rows each, 16 numeric + 4 categorical
features), through our engine, a per-column loop of scipy functions, and Evidently's DataDriftPreset.

Each implementation runs in its own subprocess, so its peak RSS (ru_maxrss) is its own; the time is the
computation after the data is loaded. Writes docs/benchmarks-drift.md and prints one summary line.
Run with `make bench`, or `.venv/bin/python bench/drift.py --rows 100000` for a quick look.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NUMERIC, CATEGORICAL = 16, 4
CATEGORIES = 12  # per categorical feature (the window adds one unseen category to the last one)
OUT = ROOT / "docs" / "benchmarks-drift.md"
THREADS = "2"


# ---------------------------------------------------------------------------------------------------------------
# data


def generate(rows: int, folder: Path, seed: int = 13) -> None:
    """Baseline and window, stored column-major (one contiguous row per feature). In the window, four numeric
    features move (mean, scale, tail), one categorical feature is re-weighted and gains an unseen category; 1% of
    numeric values are missing on both sides. Categorical columns are dictionary-encoded (codes + names) for every
    implementation alike."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def numeric(shifted: bool):
        out = np.empty((NUMERIC, rows))
        for j in range(NUMERIC):
            kind = j % 4
            loc = 0.3 if shifted and j == 0 else 0.0
            scale = 1.4 if shifted and j == 1 else 1.0
            if kind == 0:
                out[j] = rng.normal(loc, scale, rows)
            elif kind == 1:
                out[j] = rng.lognormal(loc, 0.5 * scale, rows)
            elif kind == 2:
                out[j] = rng.poisson(4 + 2 * loc, rows).astype(float) * scale  # ties
            else:
                out[j] = rng.gamma(2.0 + loc, scale, rows)
            if shifted and j == 5:
                out[j] += rng.exponential(0.5, rows) * (rng.random(rows) < 0.2)
            out[j, rng.random(rows) < 0.01] = np.nan
        return out

    def categorical(shifted: bool):
        out = np.empty((CATEGORICAL, rows), dtype=np.int32)
        for j in range(CATEGORICAL):
            p = np.linspace(1.0, 3.0, CATEGORIES)
            if shifted and j == 1:
                p = p[::-1]
            k = CATEGORIES
            if shifted and j == 3:
                p, k = np.append(p, p.sum() * 0.1), CATEGORIES + 1
            out[j] = rng.choice(k, rows, p=p / p.sum())
        return out

    np.save(folder / "baseline_num.npy", numeric(False))
    np.save(folder / "baseline_cat.npy", categorical(False))
    np.save(folder / "window_num.npy", numeric(True))
    np.save(folder / "window_cat.npy", categorical(True))
    names = [f"c{i}" for i in range(CATEGORIES + 1)]
    (folder / "meta.json").write_text(json.dumps({"rows": rows, "categories": names}))


def load(folder: Path, side: str):
    import numpy as np

    meta = json.loads((folder / "meta.json").read_text())
    return np.load(folder / f"{side}_num.npy"), np.load(folder / f"{side}_cat.npy"), meta["categories"]


def num_name(j: int) -> str:
    return f"n{j}"


def cat_name(j: int) -> str:
    return f"k{j}"


# ---------------------------------------------------------------------------------------------------------------
# implementations (each runs in a worker subprocess; returns the number of drifted features)


def run_profile(folder: Path) -> int:
    """Build the baseline profile, as training does once per model (timed separately, not part of a check)."""
    from shared.training.baseline_profile import Coded, build_profile

    num, cat, names = load(folder, "baseline")
    t0 = time.perf_counter()
    doc = build_profile({num_name(j): num[j] for j in range(NUMERIC)},
                        {cat_name(j): Coded(cat[j], names) for j in range(CATEGORICAL)}, rows=num.shape[1])
    (folder / "profile.json").write_text(json.dumps(doc))
    return time.perf_counter() - t0, 0


def run_engine(folder: Path):
    """The monitor's path: the window against the stored profile."""
    from shared.drift.engine import compare
    from shared.training.baseline_profile import Coded

    num, cat, names = load(folder, "window")
    profile = json.loads((folder / "profile.json").read_text())
    t0 = time.perf_counter()
    window = {num_name(j): num[j] for j in range(NUMERIC)}
    window.update({cat_name(j): Coded(cat[j], names) for j in range(CATEGORICAL)})
    result = compare(profile, window, workers=2)
    return time.perf_counter() - t0, len(result.top(100))


def run_engine_exact(folder: Path):
    """The engine against the raw baseline (exact KS and Wasserstein), sorting the baseline inside the timing."""
    from shared.drift.engine import Baseline, compare
    from shared.training.baseline_profile import Coded

    bnum, bcat, names = load(folder, "baseline")
    wnum, wcat, _ = load(folder, "window")
    t0 = time.perf_counter()
    base = Baseline.from_samples({num_name(j): bnum[j] for j in range(NUMERIC)},
                                 {cat_name(j): Coded(bcat[j], names) for j in range(CATEGORICAL)})
    window = {num_name(j): wnum[j] for j in range(NUMERIC)}
    window.update({cat_name(j): Coded(wcat[j], names) for j in range(CATEGORICAL)})
    result = compare(base, window, workers=2)
    return time.perf_counter() - t0, len(result.top(100))


def run_scipy(folder: Path):
    """What one would write with scipy: per column ks_2samp, wasserstein_distance, jensenshannon over decile
    histograms (PSI from the same histograms), and chi2_contingency per categorical column."""
    import numpy as np
    from scipy import stats
    from scipy.spatial.distance import jensenshannon

    bnum, bcat, names = load(folder, "baseline")
    wnum, wcat, _ = load(folder, "window")
    t0 = time.perf_counter()
    drifted = 0
    for j in range(NUMERIC):
        a, b = bnum[j][~np.isnan(bnum[j])], wnum[j][~np.isnan(wnum[j])]
        ks = stats.ks_2samp(a, b).statistic
        w = stats.wasserstein_distance(a, b) / a.std()
        edges = np.unique(np.quantile(a, np.linspace(0, 1, 11)))
        edges[0], edges[-1] = -np.inf, np.inf
        ha, hb = np.histogram(a, edges)[0], np.histogram(b, edges)[0]
        js = jensenshannon(ha, hb, base=2)
        pa, pb = np.maximum(ha / ha.sum(), 1e-4), np.maximum(hb / hb.sum(), 1e-4)
        psi = np.sum((pb - pa) * np.log(pb / pa))
        drifted += bool(ks > 0.1 or w > 0.1 or js > 0.1 or psi > 0.2)
    for j in range(CATEGORICAL):
        ca = np.bincount(bcat[j], minlength=len(names))
        cb = np.bincount(wcat[j], minlength=len(names))
        table = np.vstack([ca, cb])
        table = table[:, table.sum(axis=0) > 0]
        chi = stats.chi2_contingency(table, correction=False)
        js = jensenshannon(ca, cb, base=2)
        drifted += bool(js > 0.1 or (chi.pvalue < 0.001 and np.sqrt(chi.statistic / table.sum()) >= 0.1))
    return time.perf_counter() - t0, drifted


def run_evidently(folder: Path):
    """Evidently's DataDriftPreset with its default per-column methods (large data: normed Wasserstein for numbers,
    Jensen-Shannon for categories). Columns become a pandas DataFrame before the timing starts."""
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    def frame(side):
        num, cat, names = load(folder, side)
        cols = {num_name(j): num[j] for j in range(NUMERIC)}
        cols.update({cat_name(j): pd.Categorical.from_codes(cat[j], names) for j in range(CATEGORICAL)})
        return pd.DataFrame(cols)

    ref, cur = frame("baseline"), frame("window")
    definition = DataDefinition(numerical_columns=[num_name(j) for j in range(NUMERIC)],
                                categorical_columns=[cat_name(j) for j in range(CATEGORICAL)])
    t0 = time.perf_counter()
    snapshot = Report([DataDriftPreset()]).run(Dataset.from_pandas(cur, data_definition=definition),
                                               Dataset.from_pandas(ref, data_definition=definition))
    seconds = time.perf_counter() - t0
    count = next(m["value"]["count"] for m in snapshot.dict()["metrics"] if "DriftedColumnsCount" in m["metric_name"])
    return seconds, int(count)


WORKERS = {"profile": run_profile, "engine": run_engine, "engine-exact": run_engine_exact, "scipy": run_scipy,
           "evidently": run_evidently}


def worker(name: str, folder: Path) -> None:
    seconds, drifted = WORKERS[name](folder)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: kilobytes
    print(json.dumps({"seconds": seconds, "peak_mb": peak_kb / 1024, "drifted": drifted}))


def measure(name: str, folder: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=THREADS, OPENBLAS_NUM_THREADS=THREADS, MKL_NUM_THREADS=THREADS,
               NUMEXPR_MAX_THREADS=THREADS, DO_NOT_TRACK="1", EVIDENTLY_DISABLE_TELEMETRY="1")
    run = subprocess.run([sys.executable, __file__, "--worker", name, "--data", str(folder)], capture_output=True,
                         text=True, env=env)
    if run.returncode != 0:
        return {"error": (run.stderr.strip().splitlines() or [f"exit status {run.returncode}"])[-1]}
    return json.loads(run.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------------------
# report


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("numpy", "scipy", "evidently", "pandas"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            out.append(f"{pkg} not installed")
    return ", ".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--skip", action="append", default=[], choices=sorted(WORKERS), help="leave an implementation out")
    ap.add_argument("--out", type=Path, default=OUT, help="markdown table (default docs/benchmarks-drift.md)")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.data)
        return 0

    window_mb = args.rows * (NUMERIC + CATEGORICAL) * 8 / 2**20
    with tempfile.TemporaryDirectory(prefix="drift-bench-") as tmp:
        folder = Path(tmp)
        generate(args.rows, folder)
        results = {"profile": measure("profile", folder)}  # the engine reads the profile this writes
        for name in ("engine", "engine-exact", "scipy", "evidently"):
            if name not in args.skip:
                results[name] = measure(name, folder)
                print(f"  {name}: {results[name]}", file=sys.stderr)

    engine_s = results["engine"].get("seconds")
    rows = []
    notes = {"profile": "baseline profile, built once at training (not part of a check)",
             "engine": "window against the stored profile: the monitor's path (2 threads)",
             "engine-exact": "against the raw baseline, sorting it inside the timing",
             "scipy": "per-column loop: ks_2samp, wasserstein_distance, jensenshannon, chi2_contingency",
             "evidently": "DataDriftPreset, default methods"}
    for name, r in results.items():
        if "error" in r:
            rows.append(f"| {name} | — | — | — | — | failed: {r['error']} |")
            continue
        ratio = f"{r['seconds'] / engine_s:.1f}x" if engine_s and name not in ("engine", "profile") else ""
        rows.append(f"| {name} | {r['seconds']:.2f} | {ratio} | {r['peak_mb']:.0f} | {r['drifted']} | {notes[name]} |")

    summary = f"drift: engine {engine_s:.1f} s"
    for name in ("scipy", "evidently"):
        r = results.get(name, {})
        if "seconds" in r:
            summary += f", {name} {r['seconds']:.1f} s ({r['seconds'] / engine_s:.1f}x)"
    goals = []
    for name, target in (("scipy", 10), ("evidently", 20)):
        r = results.get(name, {})
        if "seconds" in r:
            ratio = r["seconds"] / engine_s
            goals.append(f"- engine ≥ {target}x faster than {name}: {ratio:.1f}x, {'met' if ratio >= target else 'MISSED'}")
    peak = results["engine"].get("peak_mb")
    if peak:
        goals.append(f"- engine peak RSS ≤ 1.5 × the raw float64 window ({1.5 * window_mb:.0f} MB): {peak:.0f} MB, "
                     f"{'met' if peak <= 1.5 * window_mb else 'MISSED'}")

    text = "\n".join([
        "# Drift benchmark",
        "",
        "Generated by `make bench` (`.venv/bin/python bench/drift.py`); do not edit by hand.",
        "",
        f"{args.rows:,} baseline rows and {args.rows:,} window rows × {NUMERIC} numeric + {CATEGORICAL} categorical "
        f"features (raw float64 window: {window_mb:.0f} MB). Each implementation runs in its own process; time is the "
        "computation after loading, peak RSS is the process's maximum resident set (data included).",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores "
        f"({platform.processor() or platform.machine()}), Python {platform.python_version()}, {versions()}.",
        "",
        "| implementation | seconds | vs engine | peak RSS MB | drifted features | what |",
        "|---|---:|---:|---:|---:|---|",
        *rows,
        "",
        "Goals:",
        *goals,
        "",
        f"`{summary}`",
        "",
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

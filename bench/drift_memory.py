"""Peak memory of one in-function drift check, to place MLOPS_DRIFT_OFFLOAD_MB: ``python bench/drift_memory.py``.

Each size runs in a fresh process (peak RSS only grows): it writes a window of churn-shaped rows as collector JSONL
(5 numeric, 4 categorical features, as shared/local/churn.py generates them), then reads it with the collector
reader and compares it with the engine, as the monitor does in the function. It prints the JSONL size, the peak RSS
after imports (the runtime) and at the end, and the peak per MB of JSONL.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
NUMERIC = ("tenure_months", "monthly_charges", "total_charges", "support_calls", "senior_citizen")
CATEGORICAL = ("contract", "payment_method", "internet_service", "paperless_billing")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def write(folder: Path, rows: int, shape: str) -> Path:
    """A window of ``rows`` rows as collector JSONL, and the baseline profile: the parent writes them. ``churn``:
    shared/local/churn.py's rows (5 numeric, 4 categorical features); ``numeric``: 20 numbers of 4 digits, the
    densest case (the most column bytes per JSONL byte)."""
    from shared.local.churn import generate
    from shared.training.baseline_profile import build_profile

    if shape == "churn":
        train = generate(20_000, seed=1)
        profile = build_profile({n: [r[n] for r in train] for n in NUMERIC},
                                {n: [r[n] for r in train] for n in CATEGORICAL}, rows=len(train))
        sample = [{k: v for k, v in r.items() if k != "churn"} for r in generate(2000, seed=2, drift=0.5)]
    else:
        import numpy as np

        rng = np.random.default_rng(1)
        names = [f"x{i}" for i in range(20)]
        profile = build_profile({n: rng.normal(size=20_000) for n in names}, {}, rows=20_000)
        sample = [{n: round(float(v), 2) for n, v in zip(names, rng.normal(0.3, 1, 20), strict=True)}
                  for _ in range(2000)]
    (folder / "baseline.json").write_text(json.dumps(profile))
    hour = folder / "model_inputs" / "2026" / "12" / "02" / "11"
    hour.mkdir(parents=True, exist_ok=True)
    path = hour / "i.jsonl"
    with open(path, "w") as f:  # the sample repeated: the reader's and engine's costs do not depend on values
        for i in range(0, rows, 100):
            batch = [sample[(i + j) % len(sample)] for j in range(min(100, rows - i))]
            f.write(json.dumps({"time": "2026-12-02T11:30:00Z", "data": batch}) + "\n")
    return path


def one(folder: Path, rows: int) -> dict:
    """In a fresh process: read the window and compare it, as the monitor does in the function."""
    from datetime import datetime, timezone

    from shared.drift.collector import CollectorReader
    from shared.drift.engine import Thresholds, compare
    from shared.drift.job import FolderContainer
    from shared.training.baseline_profile import read_profile

    profile = read_profile(json.loads((folder / "baseline.json").read_text()))
    before = _peak_mb()
    reader = CollectorReader(FolderContainer(folder, prefix="modelDataCollector/ep/d/"), max_rows=rows + 1)
    start, end = datetime(2026, 12, 2, 11, tzinfo=timezone.utc), datetime(2026, 12, 2, 12, tzinfo=timezone.utc)
    window = reader.window("ep", "d", profile, start, end)
    columns_mb = sum(c.nbytes if hasattr(c, "nbytes") else c.codes.nbytes for c in window.columns.values()) / 2**20
    result = compare(profile, window.columns, thresholds=Thresholds(), workers=2)
    assert window.rows == rows and result.status in ("drift", "no_drift")
    return {"rows": rows, "columns_mb": columns_mb, "runtime_mb": before, "peak_mb": _peak_mb()}


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--one":
        print(json.dumps(one(Path(sys.argv[2]), int(sys.argv[3]))))
        return
    print("| window | rows | JSONL MB | columns MB | RSS before the window MB | peak RSS MB |"
          " (peak − before) per JSONL MB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for shape, rows in (("churn", 250_000), ("churn", 500_000), ("churn", 1_000_000), ("numeric", 250_000),
                        ("numeric", 500_000)):
        with tempfile.TemporaryDirectory() as tmp:
            jsonl_mb = write(Path(tmp), rows, shape).stat().st_size / 2**20
            out = subprocess.run([sys.executable, __file__, "--one", tmp, str(rows)], check=True,
                                 capture_output=True, text=True, cwd=ROOT)
        r = {**json.loads(out.stdout.strip().splitlines()[-1]), "jsonl_mb": jsonl_mb}
        print(f"| {shape} | {r['rows']:,} | {r['jsonl_mb']:.0f} | {r['columns_mb']:.0f} | {r['runtime_mb']:.0f} | "
              f"{r['peak_mb']:.0f} | {(r['peak_mb'] - r['runtime_mb']) / r['jsonl_mb']:.2f} |")


if __name__ == "__main__":
    main()

"""Cold start of the Function App: what the host pays to import and index function_app, and what the heavy SDKs
would add if they were imported eagerly. Each figure is the median (min, max) of N fresh `python -c` processes.

    python bench/coldstart.py [--runs N]

Checks on the way that indexing the app leaves azure.ai.ml and xgboost unimported (exits non-zero if not).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("azure.ai.ml", "xgboost")

# Each child prints {"import_ms": ..., "loaded": [...]}: the in-process time of its imports, and which heavy
# modules ended up in sys.modules.
_CHILD = """
import json, sys, time
t0 = time.perf_counter()
{body}
ms = (time.perf_counter() - t0) * 1000
heavy = {heavy!r}
print(json.dumps({{"import_ms": ms, "loaded": [m for m in heavy if m in sys.modules]}}))
"""
INDEX = "import function_app\nfunction_app.app.get_functions()"
SCENARIOS = [
    ("python startup (baseline)", "pass"),
    ("(a) import function_app + index", INDEX),
    ("(b) (a) + import azure.ai.ml, xgboost", INDEX + "\nimport azure.ai.ml\nimport xgboost"),
    ("(c) import azure.ai.ml alone", "import azure.ai.ml"),
    ("(c) import xgboost alone", "import xgboost"),
    ("    import azure.data.tables alone", "import azure.data.tables"),
    ("    import azure.eventgrid alone", "import azure.eventgrid"),
    ("    import azure.identity alone", "import azure.identity"),
]


def run_once(body: str) -> tuple[float, dict]:
    code = _CHILD.format(body=body, heavy=HEAVY)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPROFILEIMPORTTIME")}
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = (time.perf_counter() - started) * 1000
    if out.returncode != 0:
        raise SystemExit(f"child failed ({out.returncode}) running:\n{body}\n{out.stderr[-2000:]}")
    return wall, json.loads(out.stdout.strip().splitlines()[-1])


def measure(body: str, runs: int) -> tuple[list[float], list[float], list[str]]:
    run_once(body)  # warm-up: compiled .pyc files and the OS page cache, as on a host that has run before
    walls, imports, loaded = [], [], []
    for _ in range(runs):
        wall, child = run_once(body)
        walls.append(wall)
        imports.append(child["import_ms"])
        loaded = child["loaded"]
    return walls, imports, loaded


def fmt(values: list[float]) -> str:
    return f"{statistics.median(values):8.0f} {min(values):7.0f} {max(values):7.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="fresh processes per scenario (default 7)")
    args = parser.parse_args(argv)
    print(f"cold start, {args.runs} fresh processes each, {sys.executable} (Python {sys.version.split()[0]})")
    print(f"{'scenario':42} {'process ms: median':>18} {'min':>7} {'max':>7}   {'imports ms: median':>18} "
          f"{'min':>7} {'max':>7}")
    failures = []
    for label, body in SCENARIOS:
        walls, imports, loaded = measure(body, args.runs)
        print(f"{label:42} {fmt(walls):>34}   {fmt(imports):>34}")
        if body == INDEX and loaded:
            failures.append(f"indexing function_app imported {', '.join(loaded)}: move those imports into the "
                            "functions that need them")
    print("process ms = the whole `python -c` run (interpreter start included); "
          "imports ms = the timed imports inside it.")
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""Render the figures the reliability scenarios wrote (.reliability/*.json) into the table in
docs/reliability.md, between its figures markers. Run by ``make reliability`` after the full-size suite:

    python -m tests.reliability.figures
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / ".reliability"
DOC = ROOT / "docs" / "reliability.md"
START, END = "<!-- figures:start -->", "<!-- figures:end -->"

ROWS = [  # (label, scenario, how to read the value from its figures)
    ("Events (distinct)", "storm", lambda f: f["events"]),
    ("Duplicates posted on purpose", "storm", lambda f: f["duplicates"]),
    ("HTTP deliveries (duplicates and retries included)", "storm", lambda f: f["deliveries"]),
    ("Concurrent deliverers", "storm", lambda f: f["concurrency"]),
    ("Jobs created / expected (one per data version)", "storm", lambda f: f"{f['jobs_created']} / {f['jobs_expected']}"),
    ("Models registered / expected (one per approved run)", "storm",
     lambda f: f"{f['models_registered']} / {f['models_expected']}"),
    ("Approvals audited again by a retried delivery", "storm", lambda f: f["audit_repeats"]),
    ("Lost events", "storm", lambda f: f["lost"]),
    ("Transient faults injected (rate)", "storm", lambda f: f"{f['faults_injected']} ({f['fault_rate']:.0%})"),
    ("5xx answers (all deliberate, transient)", "storm", lambda f: f["transient_5xx_answers"]),
    ("Storm wall time (s)", "storm", lambda f: f["seconds"]),
    ("Crash points covered / converged", "crash", lambda f: f"{f['crash_points']} / {f['converged']}"),
    ("Fuzz cases", "fuzz", lambda f: f["cases"]),
    ("Fuzz 5xx answers", "fuzz", lambda f: f["server_errors"]),
    ("Slowest fuzz answer (s)", "fuzz", lambda f: f["slowest_seconds"]),
]


def table(figures: dict[str, dict]) -> str:
    lines = ["| Figure | Value | Scenario (scale) |", "|---|---:|---|"]
    for label, scenario, read in ROWS:
        found = figures.get(scenario)
        value = read(found) if found else "not run"
        where = f"{scenario} ({found['scale']})" if found else scenario
        lines.append(f"| {label} | {value} | {where} |")
    return "\n".join(lines)


def main() -> int:
    figures = {p.stem: json.loads(p.read_text()) for p in sorted(SOURCE.glob("*.json"))}
    if not figures:
        print(f"no figures in {SOURCE}: run the reliability suite first", file=sys.stderr)
        return 1
    doc = DOC.read_text()
    head, rest = doc.split(START, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{START}\n{table(figures)}\n{END}{tail}")
    print(f"updated {DOC.relative_to(ROOT)} from {', '.join(sorted(figures))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

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
    ("Table Storage faults injected / requests (503, 429, refused)", "storm",
     lambda f: f"{f['table_faults_injected']} / {f['table_requests']}" if "table_faults_injected" in f else "not run"),
    ("5xx answers (all deliberate, transient)", "storm", lambda f: f["transient_5xx_answers"]),
    ("Storm wall time (s)", "storm", lambda f: f["seconds"]),
    ("Crash points covered / converged", "crash", lambda f: f"{f['crash_points']} / {f['converged']}"),
    ("kill -9: jobs running when the host was killed / attempts retried after restart", "kill9",
     lambda f: f"{f['running_at_kill']} / {f['interrupted_attempts_retried']}"),
    ("kill -9: data versions / jobs completed (one each)", "kill9",
     lambda f: f"{f['data_versions']} / {f['jobs_completed']}"),
    ("kill -9: models registered / approved runs", "kill9", lambda f: f"{f['models']} / {f['approved']}"),
    ("kill -9: lost events", "kill9", lambda f: f["lost"]),
    ("Alerts delivered exactly once / queued (Table Storage and Teams faults)", "alerts",
     lambda f: f"{f['delivered_once']} / {f['alerts']}"),
    ("Faults injected on the alert path (outbox table / Teams webhook)", "alerts",
     lambda f: f"{f['table_faults']} / {f['webhook_faults']}"),
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

"""Checkov's Bicep checks over infra/: zero failures, and every skip is inline with a justification."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.infra.bicep_checks import INFRA, ROOT, bicep_files, parse_file


def _checkov() -> str | None:
    beside = Path(sys.executable).with_name("checkov")
    return str(beside) if beside.exists() else shutil.which("checkov")


@pytest.fixture(scope="session")
def checkov_report() -> dict:
    exe = _checkov()
    if exe is None:
        pytest.skip("checkov is not installed (pip install checkov; it is in pyproject's dev extras)")
    # --skip-download: no network (without it checkov tries to fetch guidelines and hangs offline).
    proc = subprocess.run(
        [exe, "--framework", "bicep", "--skip-download", "-d", str(INFRA), "-o", "json", "--compact"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.stdout.strip(), f"checkov printed nothing (exit {proc.returncode}): {proc.stderr[-2000:]}"
    report = json.loads(proc.stdout)
    # One framework gives one dict; several give a list.
    return report if isinstance(report, dict) else next(r for r in report if r.get("check_type") == "bicep")


def test_checkov_finds_no_failed_check(checkov_report):
    failed = checkov_report.get("results", {}).get("failed_checks", [])
    lines = [f"{c['check_id']} {c['check_name']} @ {c['file_path']}:{c['resource']}" for c in failed]
    assert checkov_report["summary"]["failed"] == 0, "\n".join(lines)


def test_checkov_parses_every_template(checkov_report):
    # An unparsable file would be skipped silently and so "pass": insist that every resource was scanned.
    assert checkov_report["summary"]["parsing_errors"] == 0
    scanned = {c["file_path"].lstrip("/") for kind in ("passed_checks", "failed_checks", "skipped_checks")
               for c in checkov_report["results"].get(kind, [])}
    checked_types = {c["resource"].rsplit(".", 1)[0].lower() for kind in ("passed_checks", "failed_checks", "skipped_checks")
                     for c in checkov_report["results"].get(kind, [])}
    expected = {p.relative_to(INFRA).as_posix() for p in bicep_files()
                if any(not r.get("existing") and r.get("type", "").lower() in checked_types
                       for r in (parse_file(p).get("resources") or {}).values())}
    assert checked_types and expected - scanned == set(), f"checkov scanned nothing in {sorted(expected - scanned)}"


def test_every_checkov_skip_is_inline_and_justified(checkov_report):
    for path in bicep_files():
        for line in path.read_text().splitlines():
            if "checkov:skip" in line:
                assert re.match(r"\s*#checkov:skip=CKV2?_AZURE_\d+: \S.{15,}$", line), f"{path.name}: {line.strip()}"
    for c in checkov_report["results"].get("skipped_checks", []):
        assert c["check_result"].get("suppress_comment", "").strip(), f"{c['check_id']} skipped without a justification"

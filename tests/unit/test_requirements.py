"""requirements.txt (what Azure's remote build installs) bounds every package on both sides, and the versions the
tests ran against are inside those bounds."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement

REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements.txt"


def requirements(text: str) -> list[Requirement]:
    return [Requirement(line.split("#", 1)[0].strip()) for line in text.splitlines()
            if line.split("#", 1)[0].strip()]


def unbounded(reqs: list[Requirement]) -> list[str]:
    """Requirements without a lower bound (>=, >, ~=, ==) or without an upper bound (<, <=, ~=, ==)."""
    problems = []
    for r in reqs:
        ops = {s.operator for s in r.specifier}
        if not ops & {">=", ">", "~=", "=="}:
            problems.append(f"{r.name}: no lower bound")
        if not ops & {"<", "<=", "~=", "=="}:
            problems.append(f"{r.name}: no upper bound (remote build would take any future major version)")
    return problems


def test_every_runtime_requirement_has_a_lower_and_an_upper_bound():
    reqs = requirements(REQUIREMENTS.read_text())
    assert len(reqs) >= 5
    assert unbounded(reqs) == []


def test_the_check_reports_a_requirement_without_an_upper_bound():
    assert unbounded(requirements("numpy>=1.26\nhttpx\n")) == [
        "numpy: no upper bound (remote build would take any future major version)",
        "httpx: no lower bound", "httpx: no upper bound (remote build would take any future major version)"]


def test_the_installed_versions_the_tests_ran_against_are_inside_the_bounds():
    outside = []
    for r in requirements(REQUIREMENTS.read_text()):
        try:
            installed = version(r.name)
        except PackageNotFoundError:
            continue  # not installed here (e.g. a platform-specific wheel); the bounds test still holds
        if installed not in r.specifier:
            outside.append(f"{r.name} {installed} not in {r.specifier}")
    assert outside == []

"""The training data contract: what a landed file must look like before its data version is registered.

A landed file is checked here first (the BlobCreated handler, the local ``land`` command), reading at most the
first ``MAX_HEAD_BYTES`` of it: format (CSV), encoding (UTF-8), the label column present and binary, no id-like
(high-cardinality text) feature columns, enough rows. A file that breaks the contract is refused with one
message that says what is wrong, how to fix it and which version name to land the fixed file under; nothing is
registered and no job runs. docs/data-contract.md describes the contract; the settings are MLOPS_LABEL_COLUMN,
MLOPS_ID_COLUMNS, MLOPS_FEATURE_COLUMNS and MLOPS_MIN_ROWS (shared/config.py).
"""
from __future__ import annotations

import csv
import io
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from shared.errors import InvalidPayload

logger = logging.getLogger(__name__)

MAX_HEAD_BYTES = 8 * 1024 * 1024  # what validation reads of a landed file (a ranged read in Azure)
LABEL_VALUES = {"1": 1, "true": 1, "yes": 1, "1.0": 1, "0": 0, "false": 0, "no": 0, "0.0": 0}  # as train.py reads
ID_MIN_DISTINCT = 20  # a text column with fewer distinct values is never called id-like
ID_SHARE = 0.5  # ... and one whose distinct values exceed this share of the rows is
ID_NAME = re.compile(r"(^|_)(id|uuid|guid|key)$", re.IGNORECASE)  # integer columns named like ids, all distinct


@dataclass(frozen=True)
class Contract:
    """What training needs of a table. ``features`` empty: every column but the label and the id columns."""

    label: str = "churn"
    id_columns: tuple[str, ...] = ("customer_id",)
    features: tuple[str, ...] = ()
    min_rows: int = 20

    def train_args(self) -> tuple[str, ...]:
        """The same contract as train.py arguments (the job reads no settings of its own)."""
        args = ["--label", self.label, "--id-columns", ",".join(self.id_columns)]
        if self.features:
            args += ["--features", ",".join(self.features)]
        return tuple(args)


@dataclass(frozen=True)
class Head:
    """The first bytes of a landed file. ``size`` is the whole file's size when known."""

    name: str
    data: bytes
    size: int | None = None

    @property
    def truncated(self) -> bool:
        return self.size is not None and self.size > len(self.data)


@dataclass(frozen=True)
class Report:
    """What validation found in an accepted file."""

    rows: int  # rows read (at least this many when the head was truncated)
    truncated: bool
    features: tuple[str, ...]
    ignored: tuple[str, ...]  # id columns present in the file, not used for training
    positives: int


@dataclass(frozen=True)
class Problem:
    what: str
    fix: str


class ContractViolation(InvalidPayload):
    """A landed file that breaks the data contract; the message names every problem, its fix and the next step."""

    def __init__(self, message: str, problems: list[Problem]) -> None:
        super().__init__(message, field="data")
        self.problems = problems


class LandingReader(Protocol):
    """Reads the head of a landed file (the local datastore, or Blob Storage with the app's identity)."""

    def head(self, path: str, max_bytes: int = MAX_HEAD_BYTES) -> Head: ...


def next_version(version: str, taken: Iterable[str] = ()) -> str:
    """A version name to land a corrected file under: the next whole number after every numeric version seen, or
    the name with a ``.N`` suffix counted up ("2026-03" → "2026-03.1" → "2026-03.2")."""
    taken = set(taken) | {version}
    if version.isdigit():
        return str(max(int(v) for v in taken if v.isdigit()) + 1)
    base, dot, n = version.rpartition(".")
    stem, count = (base, int(n)) if dot and n.isdigit() else (version, 0)
    while f"{stem}.{count + 1}" in taken:
        count += 1
    return f"{stem}.{count + 1}"


def sniff_format(head: Head) -> str:
    """csv, parquet, json, excel, gzip or zip: from the magic bytes first, then the name."""
    data, name = head.data, head.name.lower()
    if data[:4] == b"PAR1":
        return "parquet"
    if data[:2] == b"\x1f\x8b":
        return "gzip"
    if data[:4] == b"PK\x03\x04":
        return "excel" if name.endswith((".xlsx", ".xlsm")) else "zip"
    stripped = data.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped[:1] in (b"{", b"[") or name.endswith((".json", ".jsonl", ".ndjson")):
        return "json"
    if name.endswith(".parquet"):
        return "parquet"
    return "csv"


def _decode(head: Head) -> tuple[str, Problem | None]:
    data = head.data
    if head.truncated:  # a ranged read may end mid-line (and mid-character): keep whole lines only
        cut = data.rfind(b"\n")
        data = data[:cut + 1] if cut >= 0 else data
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        byte = data[error.start:error.start + 1].hex()
        guess = "Latin-1 or Windows-1252" if 0x80 <= data[error.start] <= 0xFF else "not UTF-8"
        return "", Problem(
            f"the file is not UTF-8: byte 0x{byte} on line {line} (it looks like {guess})",
            "save it as UTF-8 (in a spreadsheet: CSV UTF-8; on the command line: "
            "iconv -f latin1 -t utf-8 old.csv > new.csv)")


def _is_number(value: str) -> bool:
    if value == "":
        return True
    try:
        return not math.isnan(float(value))
    except ValueError:
        return False


def check(head: Head, contract: Contract) -> tuple[Report | None, list[Problem]]:
    """Every problem with the file, each with its fix; a Report when there are none."""
    fmt = sniff_format(head)
    if fmt != "csv":
        return None, [Problem(f"the file is {fmt}, not CSV",
                              "export the table as CSV with a header row (comma-separated, UTF-8)")]
    text, problem = _decode(head)
    if problem:
        return None, [problem]
    rows = list(csv.reader(io.StringIO(text, newline="")))
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        return None, [Problem("the file is empty", "land a CSV with a header row and data rows")]
    header = list(rows[0])  # as train.py's csv.DictReader reads it: " churn" is not "churn"
    body = rows[1:]
    problems: list[Problem] = []
    dupes = sorted({c for c in header if header.count(c) > 1})
    if dupes:
        problems.append(Problem(f"the header repeats column(s) {', '.join(dupes)}", "give every column its own name"))
    if contract.label not in header:
        problems.append(Problem(
            f"no label column {contract.label!r} (columns: {', '.join(map(repr, header[:20]))}"
            f"{', ...' if len(header) > 20 else ''})",
            f"name the 0/1 outcome column {contract.label!r}, or set MLOPS_LABEL_COLUMN to its name"))
    ragged = next((i + 2 for i, r in enumerate(body) if len(r) != len(header)), None)
    if ragged is not None:
        problems.append(Problem(f"line {ragged} has a different number of fields than the header",
                                "quote values that contain commas, and give every row one value per column"))
    missing = [f for f in contract.features if f not in header]
    if missing:
        problems.append(Problem(f"feature column(s) {', '.join(missing)} from MLOPS_FEATURE_COLUMNS are missing",
                                "add them to the file, or change MLOPS_FEATURE_COLUMNS"))
    if problems:
        return None, problems
    columns = {name: [r[i].strip() for r in body] for i, name in enumerate(header)}
    labels = columns[contract.label]
    bad = next(((i + 2, v) for i, v in enumerate(labels) if v.lower() not in LABEL_VALUES), None)
    positives = sum(LABEL_VALUES.get(v.lower(), 0) for v in labels)
    if bad is not None:
        problems.append(Problem(f"label {contract.label!r} must be binary (0/1, true/false, yes/no): line {bad[0]} "
                                f"holds {bad[1][:40]!r}",
                                "give every row a 0 or 1 label; drop rows whose outcome is unknown"))
    elif body and positives in (0, len(labels)):
        problems.append(Problem(f"label {contract.label!r} has a single class ({labels[0]!r} on every row read)",
                                "include rows of both outcomes"))
    features = contract.features or tuple(c for c in header if c != contract.label and c not in contract.id_columns)
    id_like = []
    for name in features:
        values = columns[name]
        distinct = len(set(values))
        text_column = not all(_is_number(v) for v in values)
        if text_column and distinct >= ID_MIN_DISTINCT and distinct > ID_SHARE * len(values):
            id_like.append(f"{name} ({distinct} distinct text values in {len(values)} rows)")
        elif not text_column and ID_NAME.search(name) and distinct == len(values) >= ID_MIN_DISTINCT:
            id_like.append(f"{name} (a different number on every row)")
    if id_like:
        problems.append(Problem(
            f"id-like column(s) would be learned as features: {'; '.join(id_like)}",
            "list them in MLOPS_ID_COLUMNS (they are then ignored), or drop them from the file"))
    if len(body) < contract.min_rows and not head.truncated:
        problems.append(Problem(f"{len(body)} data rows; training needs at least {contract.min_rows}",
                                "land more rows (MLOPS_MIN_ROWS sets the minimum)"))
    if problems:
        return None, problems
    return Report(rows=len(body), truncated=head.truncated, features=tuple(features),
                  ignored=tuple(c for c in contract.id_columns if c in header), positives=positives), []


def validate(head: Head, contract: Contract, *, asset: str, version: str, taken: Iterable[str] = ()) -> Report:
    """The Report of a file that keeps the contract; ContractViolation naming every problem otherwise."""
    report, problems = check(head, contract)
    if report is not None:
        logger.info("%s:%s keeps the data contract: %d rows%s, %d features, ignored %s", asset, version,
                    report.rows, "+" if report.truncated else "", len(report.features), list(report.ignored) or "none")
        return report
    raise ContractViolation(rejection(head.name, problems, asset=asset, version=version, taken=taken), problems)


def rejection(name: str, problems: list[Problem], *, asset: str, version: str, taken: Iterable[str] = ()) -> str:
    """One message: what is wrong, how to fix it, and where to land the fixed file."""
    filename = name.rsplit("/", 1)[-1] or "data.csv"
    what = "; ".join(p.what for p in problems)
    fix = "; ".join(dict.fromkeys(p.fix for p in problems))
    nxt = next_version(version, taken)
    return (f"{asset}:{version} ({filename}) does not keep the data contract, so it was not registered and nothing "
            f"was trained: {what}. Fix: {fix}. Then land the fixed file as {asset}/{nxt}/{filename} "
            f"(see docs/data-contract.md)")


@dataclass
class LocalLandingReader:
    """Heads of files in the embedded workspace's datastore (a blob URL maps to a local path)."""

    resolve: object = field(default=None)  # callable(path) -> Path, e.g. LocalWorkspace.local_path

    def head(self, path: str, max_bytes: int = MAX_HEAD_BYTES) -> Head:
        local = Path(self.resolve(path) if callable(self.resolve) else path)
        if local.is_dir():
            local = _first_file(local, (p for p in local.rglob("*") if p.is_file()))
        with local.open("rb") as fh:
            data = fh.read(max_bytes)
        return Head(name=local.name, data=data, size=local.stat().st_size)


def _first_file(folder: Path, files: Iterable[Path]) -> Path:
    """The first data file under ``folder`` by name; hidden and scratch files and folders (``_``, ``.``) skipped."""
    found = sorted(p for p in files if not any(part.startswith(("_", ".")) for part in p.relative_to(folder).parts))
    if not found:
        raise InvalidPayload("the landed folder holds no data file", field="data")
    return found[0]


def read_file(path: Path, max_bytes: int = MAX_HEAD_BYTES) -> Head:
    """The head of a local file (the `land` command checks a file before it uploads it)."""
    return LocalLandingReader().head(str(path), max_bytes)

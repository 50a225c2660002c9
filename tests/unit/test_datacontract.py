"""The data contract (shared/datacontract.py) on real files: what it accepts, and that every refusal says what is
wrong, how to fix it and which version to land next."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from shared.datacontract import Contract, ContractViolation, Head, check, next_version, read_file, validate
from shared.local.churn import generate

ROOT = Path(__file__).resolve().parents[2]
C = Contract()


def table(rows: list[dict]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


def head(data: bytes, name: str = "data.csv", size: int | None = None) -> Head:
    return Head(name=name, data=data, size=len(data) if size is None else size)


def refused(data: bytes, contract: Contract = C, **kw) -> str:
    with pytest.raises(ContractViolation) as err:
        validate(head(data, **kw), contract, asset="churn", version="3", taken=["4"])
    return str(err.value)


def test_the_documented_example_file_keeps_the_default_contract():
    report = validate(read_file(ROOT / "docs" / "examples" / "customers.csv"), C, asset="churn", version="1")
    assert report.rows == 40 and report.ignored == ("customer_id",) and "customer_id" not in report.features
    assert "churn" not in report.features and len(report.features) == 9


def test_an_account_id_column_is_refused_as_id_like_and_accepted_once_listed_as_an_id():
    rows = [{**r, "account_id": f"A-{i:05d}"} for i, r in enumerate(generate(300, seed=1))]
    message = refused(table(rows))
    assert "id-like" in message and "account_id (300 distinct text values in 300 rows)" in message
    assert "MLOPS_ID_COLUMNS" in message and "churn/5/data.csv" in message and "not registered" in message
    report = validate(head(table(rows)), Contract(id_columns=("customer_id", "account_id")), asset="a", version="1")
    assert "account_id" not in report.features and report.ignored == ("customer_id", "account_id")


def test_a_numeric_id_named_like_one_is_refused_but_a_distinct_measure_is_not():
    rows = [{**r, "account_id": 1000 + i} for i, r in enumerate(generate(100, seed=2))]
    assert "account_id (a different number on every row)" in refused(table(rows))
    # total_charges differs on almost every row too: a measure, not an id
    assert check(head(table(generate(100, seed=2))), C)[1] == []


def test_latin1_gets_a_clear_message_with_the_line_and_the_fix():
    text = "customer_id,city,churn\n" + "".join(f"c{i},{'Zürich' if i == 7 else 'Bern'},{i % 2}\n" for i in range(30))
    message = refused(text.encode("latin-1"))
    assert "not UTF-8: byte 0xfc on line 9" in message and "Latin-1" in message and "iconv" in message


@pytest.mark.parametrize("data, name, kind", [
    (b"PAR1\x15\x04\x15", "data.parquet", "parquet"),
    (b'[{"churn": 1}]', "data.json", "json"),
    (b'{"churn": 1}\n{"churn": 0}\n', "data.jsonl", "json"),
    (b"\x1f\x8b\x08\x00", "data.csv.gz", "gzip"),
    (b"PK\x03\x04", "data.xlsx", "excel"),
])
def test_other_formats_are_named_not_read_as_an_empty_table(data, name, kind):
    message = refused(data, name=name)
    assert f"is {kind}, not CSV" in message and "export the table as CSV" in message


def test_a_real_parquet_file_is_recognised(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.table({"a": [1, 2], "churn": [0, 1]}), tmp_path / "t.parquet")
    assert "is parquet, not CSV" in refused((tmp_path / "t.parquet").read_bytes(), name="t.parquet")


def test_label_missing_non_binary_or_single_class():
    rows = generate(50, seed=3)
    assert "no label column 'churn'" in refused(table([{k: v for k, v in r.items() if k != "churn"} for r in rows]))
    bad = [dict(r) for r in rows]
    bad[4]["churn"] = "maybe"
    assert "line 6 holds 'maybe'" in refused(table(bad))
    assert "single class" in refused(table([{**r, "churn": 0} for r in rows]))
    renamed = [{("left" if k == "churn" else k): v for k, v in r.items()} for r in rows]
    assert validate(head(table(renamed)), Contract(label="left"), asset="a", version="1").positives > 0


def test_too_few_rows_and_every_problem_at_once():
    few = table(generate(10, seed=4))
    assert "10 data rows; training needs at least 20" in refused(few)
    rows = [{**r, "account_id": f"A{i}", "churn": 1} for i, r in enumerate(generate(25, seed=4))]
    message = refused(table(rows), Contract(min_rows=30))
    assert "single class" in message and "id-like" in message and "25 data rows" in message


def test_a_truncated_head_ending_mid_line_and_mid_character_is_read_up_to_its_last_whole_line():
    rows = [{**r, "city": "Zürich"} for r in generate(200, seed=5)]
    data = table(rows)
    cut = data.index("ü".encode(), len(data) // 2) + 1  # inside the two bytes of ü
    report = validate(head(data[:cut], size=len(data)), C, asset="churn", version="1")
    assert report.truncated and 90 < report.rows < 200


def test_missing_configured_features_and_a_ragged_line():
    rows = generate(30, seed=6)
    assert "feature column(s) tenure from MLOPS_FEATURE_COLUMNS are missing" in refused(
        table(rows), Contract(features=("tenure",)))
    data = table(rows).replace(b"\n", b",extra\n", 3)  # the header and lines 2-3 get a 12th field
    assert "line 4 has a different number of fields" in refused(data)


@pytest.mark.parametrize("version, taken, expected", [
    ("3", [], "4"), ("3", ["7", "2026-01"], "8"), ("2026-03", [], "2026-03.1"), ("2026-03.1", [], "2026-03.2"),
    ("v1", ["v1.1"], "v1.2"),
])
def test_next_version(version, taken, expected):
    assert next_version(version, taken) == expected


def test_a_local_folder_is_read_through_its_first_data_file_skipping_scratch_folders(tmp_path):
    folder = tmp_path / "churn" / "2026-11-01"
    (folder / "_temporary" / "0").mkdir(parents=True)
    (folder / "_temporary" / "0" / "part-0000.csv").write_bytes(b"junk")
    (folder / "_SUCCESS").write_bytes(b"")
    (folder / "part-0001.csv").write_bytes(table(generate(50, seed=1)))
    head = read_file(folder)
    assert head.name == "part-0001.csv"
    assert validate(head, C, asset="churn", version="2026-11-01").rows == 50


def test_header_names_are_read_exactly_as_training_reads_them():
    data = table(generate(50, seed=8)).replace(b",churn\n", b", churn\n", 1)
    assert "no label column 'churn' (columns: 'customer_id'" in refused(data) and "' churn'" in refused(data)

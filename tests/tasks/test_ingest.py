"""ingest_csv: every malformed file gets its own one-line DataError; harmless oddities read as the clean file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aviary.config import DataConfig
from aviary.tasks.ingest import DataError, ingest_csv, ingest_csv_task
from aviary.types import Dataset

ROOT = Path(__file__).resolve().parents[2]

CLEAN = b"x,y,class\n0.5,0.5,1\n1,-0.5,0\n-0.5,1,0\n-1,0.5,0\n0.5,-1,0\n-0.5,-0.5,1\n0,-1,1\n"
"""The sample file's rows: data row k is on file line k + 1."""

HEADER = b"x,y,class\n"
GOOD = b"0.5,0.5,1\n1,-0.5,0\n"
"""Two valid rows, lines 2 and 3 after the header."""


def cfg(min_rows: int = 2, path: Path = Path("data.csv")) -> DataConfig:
    return DataConfig(path=path, features=("x", "y"), label="class", min_rows=min_rows)


def ingest(path: Path, config: DataConfig, work_dir: Path) -> Dataset:
    """ingest_csv of `path`, with the rest of `config`."""
    return ingest_csv(config.model_copy(update={"path": path}), work_dir)


def write(tmp_path: Path, content: bytes, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def assert_nothing_written(work_dir: Path) -> None:
    assert not work_dir.exists() or not any(work_dir.iterdir())


def assert_one_line_error(exc: pytest.ExceptionInfo[DataError], path: Path, fragments: tuple[str, ...]) -> None:
    message = str(exc.value)
    assert "\n" not in message and "\r" not in message
    assert message.startswith(f"{path}: ")
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# (id, file content, min_rows, fragments the message must hold). Lines: header = line 1.
MALFORMED = [
    ("empty file", b"", 2, ("empty file", "x, y, class")),
    ("header only", HEADER, 2, ("no data rows", "only the header (line 1)")),
    ("missing label column", b"x,y\n0.5,0.5\n1,1\n", 2, ("column 'class'", "not in the header (line 1)", "'x', 'y'")),
    ("missing feature column", b"x,class\n0.5,1\n1,0\n", 2, ("column 'y'", "not in the header (line 1)")),
    (
        "non-numeric value",
        HEADER + GOOD + b"abc,1,0\n1,1,0\nzz,1,1\n",
        2,
        ("column 'x'", "2 non-numeric values", "first at line 4: 'abc'", "line 6: 'zz'"),
    ),
    ("NaN", HEADER + GOOD + b"1,NaN,0\n", 2, ("column 'y'", "1 NaN value", "first at line 4: 'NaN'")),
    (
        "infinity",
        HEADER + GOOD + b"inf,1,0\n-Infinity,1,1\n",
        2,
        ("column 'x'", "2 infinite values", "first at line 4: 'inf'", "line 5: '-Infinity'"),
    ),
    ("overflow to infinity", HEADER + GOOD + b"1e400,1,0\n", 2, ("column 'x'", "1 infinite value", "line 4: '1e400'")),
    ("empty cell", HEADER + GOOD + b",1,0\n", 2, ("column 'x'", "1 empty cell", "first at line 4")),
    ("empty label", HEADER + GOOD + b"1,1,\n", 2, ("column 'class'", "1 empty cell", "first at line 4")),
    ("label 2", HEADER + GOOD + b"1,1,2\n", 2, ("column 'class'", "1 label not 0 or 1", "first at line 4: '2'")),
    ("label 0.5", HEADER + GOOD + b"1,1,0.5\n", 2, ("column 'class'", "1 label not 0 or 1", "first at line 4: '0.5'")),
    ("label word", HEADER + GOOD + b"1,1,maybe\n", 2, ("column 'class'", "1 label not 0 or 1 (nor true/false, yes/no)", "line 4: 'maybe'")),
    ("one class only", HEADER + b"0.5,0.5,1\n0,0,1\n0,1,1\n", 2, ("column 'class'", "only class 1 present in 3 rows")),
    (
        "semicolon delimited",
        b"x;y;class\n0.5;0.5;1\n1;1;0\n",
        2,
        ("columns 'x', 'y', 'class'", "header (line 1)", "looks ';' delimited"),
    ),
    ("tab delimited", b"x\ty\tclass\n0.5\t0.5\t1\n", 2, ("looks '\\t' delimited",)),
    ("non-UTF-8 value", HEADER + GOOD + b"1\xff,1,0\n", 2, ("column 'x'", "1 value not valid UTF-8", "line 4: b'1\\xff'")),
    ("non-UTF-8 header", b"x,y,cl\xe9ss,class\n0.5,0.5,1,1\n", 2, ("header (line 1) is not valid UTF-8",)),
    (
        "truncated last row",
        HEADER + GOOD + b"1,1",
        2,
        ("column 'class': no value in 1 row with fewer fields than the header's 3", "truncated", "first at line 4: '1,1'"),
    ),
    (
        "too many fields",
        HEADER + GOOD + b"1,1,0,7\n",
        2,
        ("1 row with more fields than the header's 3", "first at line 4: '1,1,0,7'"),
    ),
    ("unclosed quote", HEADER + GOOD + b'"1,1,0\n', 2, ("column 'x'", "quote is never closed", "line 4")),
    ("duplicated header name", b"x,x,class\n0.5,0.5,1\n1,1,0\n", 2, ("column 'x'", "named 2 times", "(line 1)")),
    ("fewer than min_rows", CLEAN, 10, ("7 data rows", "fewer than the 10 required (min_rows)")),
    ("UTF-16 file", "x,y,class\n0.5,0.5,1\n".encode("utf-16"), 2, ("not valid UTF-8", "UTF-16 byte order mark")),
    ("field over csv's size limit", HEADER + GOOD + b"1," + b"9" * 200_000 + b"x,1\n", 2, ("line 4", "field limit")),
    ("leading blank lines", b"\n\n" + HEADER + GOOD + b"1,1,2\n", 2, ("column 'class'", "first at line 6: '2'")),
    ("blank lines keep file line numbers", HEADER + GOOD + b"\n\nabc,1,0\n", 2, ("column 'x'", "line 6: 'abc'")),
    ("CRLF keeps line numbers", (HEADER + GOOD + b"1,1,2\n").replace(b"\n", b"\r\n"), 2, ("line 4: '2'",)),
]


@pytest.mark.parametrize(("content", "min_rows", "fragments"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_file_gives_one_line_error_and_writes_nothing(
    tmp_path: Path, content: bytes, min_rows: int, fragments: tuple[str, ...]
) -> None:
    path = write(tmp_path, content, "bad.csv")
    work_dir = tmp_path / "work"
    with pytest.raises(DataError) as exc:
        ingest(path, cfg(min_rows), work_dir)
    assert_one_line_error(exc, path, fragments)
    assert_nothing_written(work_dir)


def test_missing_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    with pytest.raises(DataError) as exc:
        ingest(path, cfg(), tmp_path / "work")
    assert_one_line_error(exc, path, ("no such file",))
    assert_nothing_written(tmp_path / "work")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    path = tmp_path / "folder.csv"
    path.mkdir()
    with pytest.raises(DataError) as exc:
        ingest(path, cfg(), tmp_path / "work")
    assert_one_line_error(exc, path, ("is a directory",))


def test_error_deep_in_a_large_file_names_its_line(tmp_path: Path) -> None:
    rows = [b"0.5,0.5,1", b"1,1,0"] * 5_000
    rows[7_321] = b"0.5,oops,1"
    path = write(tmp_path, HEADER + b"\n".join(rows) + b"\n")
    with pytest.raises(DataError) as exc:
        ingest(path, cfg(), tmp_path / "work")
    assert_one_line_error(exc, path, ("column 'y'", "1 non-numeric value", "first at line 7323: 'oops'"))


def test_data_error_is_a_value_error() -> None:
    assert issubclass(DataError, ValueError)


# Harmless oddities: each must read as exactly the clean file.
ODDITIES = {
    "crlf": CLEAN.replace(b"\n", b"\r\n"),
    "utf-8 bom": b"\xef\xbb\xbf" + CLEAN,
    "bom and crlf": b"\xef\xbb\xbf" + CLEAN.replace(b"\n", b"\r\n"),
    "no final newline": CLEAN.rstrip(b"\n"),
    "quoted numbers and header": b'"x","y","class"\n' + b"".join(
        b",".join(b'"' + field + b'"' for field in line.split(b",")) + b"\n" for line in CLEAN.splitlines()[1:]
    ),
    "scientific notation": CLEAN.replace(b"0.5,", b"5e-1,").replace(b"1,-0.5", b"1E0,-5.0E-1"),
    "float labels": CLEAN.replace(b",1\n", b",1.0\n").replace(b",0\n", b",0.0\n"),
    "other column order and extra columns": b"class,note,y,x\n"
    + b"".join(
        b"%s,row %d,%s,%s\n" % (c, i, y, x)
        for i, (x, y, c) in enumerate(line.split(b",") for line in CLEAN.splitlines()[1:])
    ),
    "blank lines": CLEAN.replace(b"1,-0.5,0\n", b"1,-0.5,0\n\n"),
    "non-UTF-8 in an ignored column": b"x,y,class,note\n"
    + b"".join(line + b",\xe9t\xe9\n" for line in CLEAN.splitlines()[1:]),
}


@pytest.fixture
def clean_dataset(tmp_path: Path) -> Dataset:
    return ingest(write(tmp_path, CLEAN, "clean.csv"), cfg(), tmp_path / "work")


@pytest.mark.parametrize("content", list(ODDITIES.values()), ids=list(ODDITIES))
def test_oddity_reads_as_the_clean_file(tmp_path: Path, clean_dataset: Dataset, content: bytes) -> None:
    dataset = ingest(write(tmp_path, content, "odd.csv"), cfg(), tmp_path / "work")
    assert dataset.fingerprint == clean_dataset.fingerprint
    assert dataset.path == clean_dataset.path
    assert dataset.rows == 7


def test_dataset_points_at_parquet_of_exactly_the_validated_columns(tmp_path: Path, clean_dataset: Dataset) -> None:
    assert clean_dataset.source == tmp_path / "clean.csv"
    assert clean_dataset.rows == 7
    assert clean_dataset.features == ("x", "y") and clean_dataset.label == "class"
    assert clean_dataset.path == tmp_path / "work" / f"{clean_dataset.fingerprint}.parquet"
    frame = pd.read_parquet(clean_dataset.path)
    assert list(frame.columns) == ["x", "y", "class"]
    assert frame.dtypes.astype(str).tolist() == ["float64", "float64", "int8"]
    expected = pd.read_csv(tmp_path / "clean.csv")
    np.testing.assert_array_equal(frame.to_numpy(), expected.to_numpy())


def test_parquet_is_reused_and_no_temp_files_remain(tmp_path: Path, clean_dataset: Dataset) -> None:
    before = clean_dataset.path.stat().st_mtime_ns
    again = ingest(tmp_path / "clean.csv", cfg(), tmp_path / "work")
    assert again == clean_dataset
    assert again.path.stat().st_mtime_ns == before
    assert [p.name for p in (tmp_path / "work").iterdir()] == [clean_dataset.path.name]


def test_any_value_change_changes_the_fingerprint(tmp_path: Path, clean_dataset: Dataset) -> None:
    nudged = CLEAN.replace(b"-0.5,1,0", b"-0.5000000001,1,0")
    assert ingest(write(tmp_path, nudged, "nudged.csv"), cfg(), tmp_path / "work").fingerprint != clean_dataset.fingerprint
    relabelled = CLEAN.replace(b"0,-1,1", b"0,-1,0")
    assert ingest(write(tmp_path, relabelled, "relabelled.csv"), cfg(), tmp_path / "work").fingerprint != (
        clean_dataset.fingerprint
    )


def test_feature_order_is_part_of_the_fingerprint(tmp_path: Path, clean_dataset: Dataset) -> None:
    swapped = DataConfig(path=Path("clean.csv"), features=("y", "x"), label="class", min_rows=2)
    dataset = ingest(tmp_path / "clean.csv", swapped, tmp_path / "work")
    assert dataset.fingerprint != clean_dataset.fingerprint
    assert list(pd.read_parquet(dataset.path).columns) == ["y", "x", "class"]


def test_task_runs_the_step_under_its_name(tmp_path: Path, clean_dataset: Dataset) -> None:
    assert ingest_csv_task.name == "ingest-csv"
    assert ingest_csv_task.fn(cfg(path=tmp_path / "clean.csv"), tmp_path / "work") == clean_dataset


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aviary.tasks.ingest", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )


def test_cli_summarises_a_valid_file(tmp_path: Path, clean_dataset: Dataset) -> None:
    done = run_cli(str(tmp_path / "clean.csv"), "--features", "x", "y", "--label", "class", "--min-rows", "2")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert len(lines) == 1
    assert "7 rows" in lines[0]
    assert "class 0: 4 (57.1%), class 1: 3 (42.9%)" in lines[0]
    assert lines[0].endswith(f"fingerprint {clean_dataset.fingerprint}")


def test_cli_prints_the_one_line_error_and_exits_1(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + GOOD + b"1,1,2\n", "bad.csv")
    done = run_cli(str(path), "--min-rows", "2")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == f"{path}: column 'class': 1 label not 0 or 1 (nor true/false, yes/no), first at line 4: '2'\n"


def test_cli_default_min_rows_comes_from_data_config(tmp_path: Path) -> None:
    done = run_cli(str(write(tmp_path, CLEAN)))
    assert done.returncode == 1
    assert "fewer than the 100 required" in done.stderr
    assert "Traceback" not in done.stderr

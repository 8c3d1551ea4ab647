"""Ingest parses byte ranges in parallel: the same rows, order and fingerprint at any range size or
thread count, true line numbers from any range, and quoted values that hold a newline still read whole."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from aviary.config import DataConfig
from aviary.tasks import ingest as ingest_module
from aviary.tasks.ingest import DataError, ingest_csv
from aviary.types import Dataset

ROWS = b"0.5,3,true,red,yes\n1.5,4,false,blue,no\n2.5,5,TRUE,red,Yes\n3.5,,False,green,NO\n"
HEADER = b"amount,count,member,colour,label\n"
FEATURES = ("amount", "count", "member", "colour")


def cfg_for(path: Path) -> DataConfig:
    return DataConfig.model_validate(
        {"path": path, "min_rows": 2, "features": FEATURES, "label": "label", "missing": "impute"}
    )


def ingest_in(
    monkeypatch: pytest.MonkeyPatch, path: Path, work: Path, *, chunk: int, parsers: int, block: int = 4 << 20
) -> Dataset:
    monkeypatch.setattr(ingest_module, "CHUNK_BYTES", chunk)
    monkeypatch.setattr(ingest_module, "PARSERS", parsers)
    monkeypatch.setattr(ingest_module, "BLOCK_BYTES", block)
    return ingest_csv(cfg_for(path), work)


def row_groups(dataset: Dataset) -> list[int]:
    meta = pq.ParquetFile(dataset.path).metadata
    return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]


def assert_same_rows(a: Dataset, b: Dataset) -> None:
    """Same columns, types, values and order (NaN equal to NaN, which Arrow's `equals` denies)."""
    left, right = pq.read_table(a.path), pq.read_table(b.path)
    assert left.schema == right.schema
    pd.testing.assert_frame_equal(left.to_pandas(), right.to_pandas())


def test_ranges_and_threads_change_neither_rows_nor_order_nor_fingerprint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "data.csv"
    # Numbered rows (order shows), a run of blank lines longer than a range, Windows line ends.
    body = b"".join(b"%d.25,%d,true,c%d,%s\n" % (i, i % 7, i % 5, b"yes" if i % 3 else b"no") for i in range(6000))
    path.write_bytes((HEADER + ROWS * 500 + b"\n" * 9000 + body).replace(b"\n", b"\r\n"))
    one = ingest_in(monkeypatch, path, tmp_path / "one", chunk=64 << 20, parsers=1)
    serial = ingest_in(monkeypatch, path, tmp_path / "serial", chunk=4096, parsers=1)
    parallel = ingest_in(monkeypatch, path, tmp_path / "parallel", chunk=4096, parsers=3)
    assert len(row_groups(serial)) > 20 and row_groups(one) == [8000]
    assert one.fingerprint == serial.fingerprint == parallel.fingerprint
    assert one.rows == parallel.rows == 8000
    assert_same_rows(serial, one)
    assert_same_rows(parallel, one)
    assert row_groups(serial) == row_groups(parallel)  # cut at fixed offsets, never by timing
    frame = pd.read_parquet(parallel.path)
    assert frame["amount"].iloc[2000:].tolist() == [i + 0.25 for i in range(6000)]
    # Line ends and a byte order mark are not content.
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\r\n", b"\n"))
    assert ingest_in(monkeypatch, path, tmp_path / "lf", chunk=4096, parsers=2).fingerprint == one.fingerprint


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        (b"1.5,4,false,blue,7\n", "column 'label': 1 label not 0 or 1"),
        (b"1.5,4,false\n", "line 3002"),
        (b"1.5,inf,false,blue,no\n", "column 'count'"),
    ],
)
def test_a_bad_row_in_a_later_range_is_named_with_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: bytes, fragment: str
) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(HEADER + ROWS * 750 + bad + ROWS * 750)  # line 3002, the ~14th range of 4 KiB
    work = tmp_path / "work"
    with pytest.raises(DataError) as exc:
        ingest_in(monkeypatch, path, work, chunk=4096, parsers=2)
    message = str(exc.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert fragment in message and "line 3002" in message, message
    assert not work.exists() or not any(work.iterdir())


@pytest.mark.parametrize("first_quote_row", [0, 1500])
def test_a_quoted_newline_reads_whole_wherever_the_ranges_fall(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first_quote_row: int
) -> None:
    path = tmp_path / "quoted.csv"
    lines = ROWS.splitlines(keepends=True) * 800
    # Values with newlines inside quotes, each longer than a range, so ranges are cut inside them.
    for row in range(first_quote_row, len(lines), 97):
        lines[row] = b'%d.5,1,true,"%d%s",no\n' % (row, row, b"\nline" * 1000)
    path.write_bytes(HEADER + b"".join(lines))
    one = ingest_in(monkeypatch, path, tmp_path / "one", chunk=64 << 20, parsers=1)
    cut = ingest_in(monkeypatch, path, tmp_path / "cut", chunk=4096, parsers=2, block=64 << 20)
    # The streaming reader's blocks cut inside quoted values too.
    blocks = ingest_in(monkeypatch, path, tmp_path / "blocks", chunk=4096, parsers=2, block=16 << 10)
    assert one.fingerprint == cut.fingerprint == blocks.fingerprint and one.rows == cut.rows == len(lines)
    assert_same_rows(cut, one)
    assert_same_rows(blocks, one)
    table = pq.read_table(cut.path)
    colours = table.column("colour").to_pylist()
    assert colours[first_quote_row] == f"{first_quote_row}" + "\nline" * 1000
    expected = pd.read_csv(path, keep_default_na=False)["colour"].tolist()
    assert colours == expected


@pytest.mark.parametrize(
    "layout",
    ["late", "twice", "crlf", "after a quote", "short row in the streamed part"],
)
def test_the_careful_pass_from_the_refused_range_says_what_a_pass_from_the_start_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    """The careful pass starts at the refused range (or the streamed part) and counts the lines before it:
    the same one line, counts and line numbers as when the file is one range read from its start."""
    bad, quoted = b"1.5,4,false,blue,7\n", b'2.5,1,true,"two\nlines",no\n'
    if layout == "late":
        body = ROWS * 1500 + bad + ROWS * 3
    elif layout == "twice":
        body = ROWS * 900 + bad + ROWS * 600 + bad + bad
    elif layout == "crlf":
        body = (ROWS * 1500 + bad + ROWS * 3).replace(b"\n", b"\r\n")
    elif layout == "after a quote":
        body = ROWS * 300 + quoted + ROWS * 900 + bad + ROWS * 3
    else:
        body = ROWS * 300 + quoted + ROWS * 900 + b"1.5,4\n" + ROWS * 3
    path = tmp_path / "data.csv"
    path.write_bytes(HEADER + body)
    messages = []
    for chunk in (64 << 20, 4096):
        with pytest.raises(DataError) as exc:
            ingest_in(monkeypatch, path, tmp_path / f"work-{chunk}", chunk=chunk, parsers=2, block=8192)
        messages.append(str(exc.value))
    assert messages[0] == messages[1], messages
    assert "line " in messages[0] and "\n" not in messages[0]
    if layout == "twice":
        assert "3 labels not 0 or 1" in messages[0] and "line 3602" in messages[0], messages[0]


def test_lines_before_counts_line_ends_as_the_careful_reader_splits_them(tmp_path: Path) -> None:
    from aviary.tasks.ingest_errors import lines_before

    data = b"a\nb\r\nc\rd\r\n\r\ne\n" * 3
    path = tmp_path / "ends.csv"
    path.write_bytes(data)
    with path.open(encoding="utf-8", newline="") as handle:
        ends = []
        for line in handle:
            ends.append((ends[-1] if ends else 0) + len(line.encode()))
    for offset in ends:
        for block in (1, 2, 3, 1 << 20):  # a \r\n may straddle two blocks
            assert lines_before(path, offset, block) == ends.index(offset) + 1
    assert lines_before(path, 0) == 0

"""Ingest: read a CSV of numeric features and a 0/1 label, validate it, store it as Parquet named by its content.

The fast path is one pyarrow parse plus a vectorised pandera schema. Only when something is wrong
does a second, careful parse (Python's csv module) find the file lines and the text as written,
so that every problem becomes one readable line. Line numbers are the file's own: the header is line 1.

`python -m tasks.ingest PATH [--features x y] [--label class] [--min-rows N]` checks a file alone.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import sys
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow as pyarrow_lib
import pyarrow.csv as pa_csv
import pyarrow.parquet as pa_parquet
from pandera.errors import SchemaErrors
from prefect import task
from pydantic import ValidationError

from aviary.config import DataConfig
from aviary.ops.cache import ingest_cache_key
from aviary.types import Dataset

SHOWN = 3
"""How many bad lines a message quotes."""

FINGERPRINT_VERSION = b"aviary-ingest-v1"
"""Bumped whenever the fingerprint's recipe changes, so old and new fingerprints never collide."""

_OTHER_DELIMITERS = (";", "\t", "|")


class DataError(ValueError):
    """The file cannot be used as training data. The message is one line: file, column, first bad lines."""


# ----------------------------------------------------------------------------------------------
# The step


def ingest_csv(path: Path, cfg: DataConfig, work_dir: Path) -> Dataset:
    """Validate `path`, then write its feature and label columns to `work_dir/<fingerprint>.parquet`.

    Nothing is written unless the whole file is valid. The same content gives the same file, which
    is reused, so a retried or repeated ingest costs a parse and no write.
    """
    frame = read_validated(path, cfg)
    fingerprint = fingerprint_frame(frame)
    out = _write_parquet(frame, work_dir, fingerprint)
    return Dataset(
        path=out, source=path, rows=len(frame), fingerprint=fingerprint, features=cfg.features, label=cfg.label
    )


@task(name="ingest-csv", cache_key_fn=ingest_cache_key, persist_result=True)
def ingest_csv_task(path: Path, cfg: DataConfig, work_dir: Path) -> Dataset:
    return ingest_csv(path, cfg, work_dir)


def read_validated(path: Path, cfg: DataConfig) -> pd.DataFrame:
    """The feature columns as float64 and the label as int8, in config order, or a DataError."""
    columns = [*cfg.features, cfg.label]
    header = _read_header(path, columns)
    frame = _read_strict(path, columns)
    if frame is None:
        frame = _read_lenient(path, header, columns)
    if frame.empty:
        raise DataError(f"{path}: no data rows, only the header (line {header.line})")
    try:
        # inplace: pandera would otherwise copy the whole frame before checking it.
        _schema(cfg.features, cfg.label, cfg.min_rows).validate(frame, lazy=True, inplace=True)
    except SchemaErrors as exc:
        raise _diagnose_schema(path, header, frame, cfg, exc) from None
    return frame.astype({cfg.label: np.int8})


def _read_strict(path: Path, columns: list[str]) -> pd.DataFrame | None:
    """The fast path: only the wanted columns, parsed straight to float64, no null markers.

    Given the types, pyarrow skips inference, and without pandas' wrapper it reads ~10% faster than
    `pd.read_csv(engine="pyarrow")`. Anything unusual (a word, an empty cell, a short row) fails
    here, and `None` sends the file to the lenient parse, which either accepts it or says what is wrong.
    """
    options = pa_csv.ConvertOptions(
        column_types=dict.fromkeys(columns, pyarrow_lib.float64()),
        include_columns=columns,
        null_values=[],
        quoted_strings_can_be_null=False,
    )
    try:
        table = pa_csv.read_csv(path, convert_options=options)
    except (pyarrow_lib.ArrowException, OSError):
        return None
    # self_destruct frees each Arrow column once converted, so the data is never held twice.
    return table.to_pandas(split_blocks=True, self_destruct=True)


def _read_lenient(path: Path, header: _Header, columns: list[str]) -> pd.DataFrame:
    """pandas' pyarrow engine with type inference: a word stays a string so pandera can point at it."""
    try:
        frame = pd.read_csv(path, engine="pyarrow", usecols=columns)
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, pyarrow_lib.ArrowException) as exc:
        # pyarrow says "Expected 3 columns, got 2: 1,1" without a line number: find it.
        raise _diagnose_parse(path, header, exc) from None
    frame = frame[columns]
    for name in columns:
        # pyarrow reads true/false as bool, which would coerce to 1.0/0.0; they are not numbers here.
        if frame[name].dtype == bool:
            frame[name] = frame[name].astype(str)
    return frame


def fingerprint_frame(frame: pd.DataFrame) -> str:
    """sha256 over the row count and, per column in order, its name, dtype and the sha256 of its raw bytes.

    Exact (no 64-bit row hashes in between, as with hash_pandas_object) and fast: the columns are
    hashed in parallel, as hashlib releases the GIL. It sees only the parsed values, so line
    endings, a BOM, quoting, column order and extra columns in the CSV do not change it.
    """
    names = list(frame.columns)
    arrays = [np.ascontiguousarray(frame[name].to_numpy()) for name in names]
    with ThreadPoolExecutor(max_workers=max(1, min(len(arrays), os.cpu_count() or 1))) as pool:
        digests = list(pool.map(lambda values: hashlib.sha256(values.data).hexdigest(), arrays))
    combined = hashlib.sha256(FINGERPRINT_VERSION)
    combined.update(f"\0rows={len(frame)}".encode())
    for name, values, digest in zip(names, arrays, digests, strict=True):
        combined.update(f"\0{name!r}\0{values.dtype.str}\0{digest}".encode())
    return combined.hexdigest()


def _write_parquet(frame: pd.DataFrame, work_dir: Path, fingerprint: str) -> Path:
    """Write to a unique temp name beside the target, then rename: readers never see half a file."""
    out = work_dir / f"{fingerprint}.parquet"
    if out.is_file():
        return out
    work_dir.mkdir(parents=True, exist_ok=True)
    tmp = work_dir / f".{fingerprint}.{uuid.uuid4().hex}.tmp"
    try:
        table = pyarrow_lib.Table.from_pandas(frame, preserve_index=False)
        # Work files, read once by the next step: random floats gain nothing from dictionaries or
        # compression, which would double the time of the write.
        pa_parquet.write_table(table, tmp, use_dictionary=False, compression="none")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


# ----------------------------------------------------------------------------------------------
# The schema


def _finite(series: pd.Series) -> pd.Series:
    return pd.Series(np.isfinite(series.to_numpy()), index=series.index)


def _zero_or_one(series: pd.Series) -> pd.Series:
    # Two comparisons instead of Check.isin, whose hash-table lookup is ~5x slower on floats.
    values = series.to_numpy()
    return pd.Series((values == 0) | (values == 1), index=series.index)


def _both_classes(series: pd.Series) -> bool:
    values = series.to_numpy()
    return bool((values == 0).any() and (values == 1).any())


@lru_cache(maxsize=16)
def _schema(features: tuple[str, ...], label: str, min_rows: int) -> pa.DataFrameSchema:
    """Built from the config. Labels are checked as float64 so that 0.5 fails instead of truncating to 0."""
    finite = pa.Check(_finite, name="finite")
    columns = {name: pa.Column("float64", coerce=True, nullable=False, checks=finite) for name in features}
    columns[label] = pa.Column(
        "float64",
        coerce=True,
        nullable=False,
        checks=[pa.Check(_zero_or_one, name="zero_or_one"), pa.Check(_both_classes, name="both_classes")],
    )
    return pa.DataFrameSchema(
        columns,
        checks=pa.Check(lambda frame: len(frame) >= min_rows, name="min_rows"),
        strict=False,
        ordered=False,
    )


# ----------------------------------------------------------------------------------------------
# The careful parse, used for the header (cheap) and, for the rows, only on the error path


@dataclass(frozen=True)
class _Record:
    line: int
    """File line where the record starts; the header is line 1 (after any blank lines)."""
    text: str
    fields: list[str]


@dataclass(frozen=True)
class _Header:
    line: int
    names: list[str]

    def position(self, column: str) -> int:
        return self.names.index(column)


def _records(path: Path) -> Iterator[_Record]:
    """Non-blank records as pandas counts them (blank lines skipped), with line numbers and raw text.

    Bytes that are not UTF-8 survive as surrogates, so they can be found and shown.
    """
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        consumed: list[str] = []
        lines_before = 0

        def feed() -> Iterator[str]:
            for physical in handle:
                consumed.append(physical)
                yield physical

        try:
            for fields in csv.reader(feed()):
                text = "".join(consumed).rstrip("\r\n")
                start = lines_before + 1
                lines_before += len(consumed)
                consumed.clear()
                if fields:
                    yield _Record(start, text, fields)
        except csv.Error as exc:  # e.g. a field over csv's 128 KiB limit
            raise DataError(f"{path}: cannot parse as CSV at line {lines_before + 1}: {exc}") from None


def _read_header(path: Path, columns: Sequence[str]) -> _Header:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a CSV file")
    try:
        first = next(_records(path), None)
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    wanted = ", ".join(columns)
    if first is None or not "".join(first.fields).strip():
        raise DataError(f"{path}: empty file, expected a header line naming columns {wanted}")
    header = _Header(first.line, first.fields)
    if _has_undecodable(first.text):
        utf16 = first.text.startswith(("\udcff\udcfe", "\udcfe\udcff"))
        hint = " (it starts with a UTF-16 byte order mark)" if utf16 else ""
        raise DataError(f"{path}: header (line {header.line}) is not valid UTF-8{hint}: {_show(first.text)}")
    seen: dict[str, int] = {}
    for name in header.names:
        seen[name] = seen.get(name, 0) + 1
    duplicated = [name for name, count in seen.items() if count > 1]
    if duplicated:
        name = duplicated[0]
        where = " and ".join(str(i + 1) for i, n in enumerate(header.names) if n == name)
        raise DataError(
            f"{path}: column {name!r}: named {seen[name]} times in the header (line {header.line}), as fields {where}"
        )
    missing = [name for name in columns if name not in seen]
    if missing:
        raise DataError(_missing_message(path, header, first.text, missing))
    return header


def _missing_message(path: Path, header: _Header, text: str, missing: list[str]) -> str:
    which = ", ".join(map(repr, missing))
    noun = "column" if len(missing) == 1 else "columns"
    for delimiter in _OTHER_DELIMITERS:
        if set(missing) <= set(next(csv.reader([text], delimiter=delimiter))):
            return (
                f"{path}: {noun} {which}: not found, the header (line {header.line}) {_show(text)} "
                f"looks {delimiter!r} delimited but only ',' is read"
            )
    found = ", ".join(map(repr, header.names))
    hints = [
        f"{name!r} for {want!r}"
        for want in missing
        for name in header.names
        if name != want and name.strip().casefold() == want.casefold()
    ]
    hint = f" (close: {'; '.join(hints)})" if hints else ""
    return f"{path}: {noun} {which}: not in the header (line {header.line}), which has {found}{hint}"


def _has_undecodable(text: str) -> bool:
    return any("\udc80" <= char <= "\udcff" for char in text)


def _show(text: str, limit: int = 40) -> str:
    """A value as it is in the file, quoted, one line, cut to `limit` characters; bad bytes as b'..'."""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    if _has_undecodable(text):
        return repr(text.encode("utf-8", "surrogateescape"))
    return repr(text)


def _rows(path: Path, wanted: set[int]) -> dict[int, _Record]:
    """The records of data rows `wanted` (0-based, as pandas numbers them), reading no further than needed."""
    found: dict[int, _Record] = {}
    if not wanted:
        return found
    last = max(wanted)
    for index, record in enumerate(_records(path), start=-1):
        if index in wanted:
            found[index] = record
        if index >= last:
            break
    return found


# ----------------------------------------------------------------------------------------------
# From a failure to one line


def _diagnose_parse(path: Path, header: _Header, exc: BaseException) -> DataError:
    """pyarrow refused the file: find the first row whose field count differs from the header's."""
    expected = len(header.names)
    short: list[_Record] = []
    long: list[_Record] = []
    records = _records(path)
    next(records)  # the header
    for record in records:
        if len(record.fields) < expected:
            short.append(record)
        elif len(record.fields) > expected:
            long.append(record)
    for record in short[:1]:
        if record.text.count('"') % 2:
            column = header.names[len(record.fields) - 1]
            return DataError(
                f"{path}: column {column!r}: a quote is never closed, first at line {record.line}: {_show(record.text)}"
            )
    first_short = short[0].line if short else None
    first_long = long[0].line if long else None
    if first_short is not None and (first_long is None or first_short < first_long):
        lost = header.names[len(short[0].fields)]
        shown = ", ".join(f"line {r.line}: {_show(r.text)}" for r in short[:SHOWN])
        return DataError(
            f"{path}: column {lost!r}: no value in {_count(len(short), 'row')} with fewer fields than "
            f"the header's {expected} (truncated?), first at {shown}"
        )
    if long:
        shown = ", ".join(f"line {r.line}: {_show(r.text)}" for r in long[:SHOWN])
        return DataError(f"{path}: {_count(len(long), 'row')} with more fields than the header's {expected}, first at {shown}")
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return DataError(f"{path}: cannot parse as CSV: {detail}")


_KINDS = ("non-numeric", "missing", "infinite", "not 0 or 1", "one class")


def _kind(check: str) -> str | None:
    if check.startswith(("coerce_dtype", "dtype(")):
        return "non-numeric"
    if check == "not_nullable":
        return "missing"
    if check == "finite":
        return "infinite"
    if check == "zero_or_one":
        return "not 0 or 1"
    if check == "both_classes":
        return "one class"
    return None


def _diagnose_schema(path: Path, header: _Header, frame: pd.DataFrame, cfg: DataConfig, exc: SchemaErrors) -> DataError:
    """Report the first problem: columns in config order, and per column the most basic problem first."""
    cases = exc.failure_cases
    kinds = cases["check"].astype(str).map(_kind)
    for column in [*cfg.features, cfg.label]:
        for kind in _KINDS:
            rows = cases.loc[(cases["column"] == column) & (kinds == kind), "index"]
            if rows.empty:
                continue
            if kind == "one class":
                only = int(frame[column].iloc[0])
                return DataError(
                    f"{path}: column {column!r}: only class {only} present in {_count(len(frame), 'row')}; "
                    "both 0 and 1 are needed"
                )
            indices = pd.to_numeric(rows, errors="coerce").dropna().astype(np.int64).unique()
            if len(indices):
                return _value_error(path, header, column, kind, indices)
    if (cases["check"].astype(str) == "min_rows").any():
        return DataError(f"{path}: {_count(len(frame), 'data row')}, fewer than the {cfg.min_rows} required (min_rows)")
    summary = "; ".join(str(line) for line in str(exc).strip().splitlines()[:1])
    return DataError(f"{path}: failed validation: {summary}")


def _value_error(path: Path, header: _Header, column: str, kind: str, indices: np.ndarray) -> DataError:
    """`count what, first at line L: 'text', ...`, quoting the cells as written in the file."""
    first = [int(i) for i in np.sort(indices)[:SHOWN]]
    records = _rows(path, set(first))
    position = header.position(column)
    raw = [(records[i].line, records[i].fields[position]) for i in first if i in records]
    texts = [text for _, text in raw]
    count = len(indices)
    if kind == "non-numeric" and any(map(_has_undecodable, texts)):
        what = _count(count, "value") + " not valid UTF-8"
    elif kind == "non-numeric":
        what = _count(count, "non-numeric value")
    elif kind == "missing" and texts and all(text.strip() == "" for text in texts):
        what = _count(count, "empty cell")
    elif kind == "missing" and texts and all(text.strip() != "" for text in texts):
        what = _count(count, "NaN value")
    elif kind == "missing":
        what = _count(count, "missing value") + " (empty or NaN)"
    elif kind == "infinite":
        what = _count(count, "infinite value")
    else:
        what = _count(count, "label") + " not 0 or 1"
    # Without raw records (the careful parse disagreeing with pyarrow on where rows are), say what is known.
    shown = ", ".join(f"line {line}: {_show(text)}" for line, text in raw) or f"data row {first[0] + 1}"
    return DataError(f"{path}: column {column!r}: {what}, first at {shown}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# ----------------------------------------------------------------------------------------------
# Command line


def _balance(labels: pd.Series) -> str:
    ones = int(labels.sum())
    zeros = len(labels) - ones
    return f"class 0: {zeros} ({zeros / len(labels):.1%}), class 1: {ones} ({ones / len(labels):.1%})"


def main(argv: Sequence[str] | None = None) -> int:
    """Check one file: a one-line summary and exit 0, or the one-line error on stderr and exit 1."""
    defaults = DataConfig.model_validate({})
    parser = argparse.ArgumentParser(prog="python -m tasks.ingest", description="Validate a training CSV.")
    parser.add_argument("path", type=Path)
    parser.add_argument("--features", nargs="+", default=list(defaults.features))
    parser.add_argument("--label", default=defaults.label)
    parser.add_argument("--min-rows", type=int, default=defaults.min_rows)
    args = parser.parse_args(argv)
    try:
        cfg = DataConfig(path=args.path, features=tuple(args.features), label=args.label, min_rows=args.min_rows)
    except ValidationError as exc:
        parser.error("; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors()))
    try:
        frame = read_validated(args.path, cfg)
    except DataError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{args.path}: ok, {len(frame)} rows, {_balance(frame[cfg.label])}, fingerprint {fingerprint_frame(frame)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

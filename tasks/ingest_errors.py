"""From a CSV that ingest cannot use to one readable line: file, column, first bad lines as written.

Only the header is read here on every ingest (cheaply, with Python's csv module); the rows are read
here only when the fast parse or the schema has failed, to find the file lines and the text behind
the failure. Line numbers are the file's own: the header is line 1.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pandera.errors import SchemaErrors

from aviary.config import DataConfig

SHOWN = 3
"""How many bad lines a message quotes."""

_OTHER_DELIMITERS = (";", "\t", "|")


class DataError(ValueError):
    """The file cannot be used as training data. The message is one line: file, column, first bad lines."""


# ----------------------------------------------------------------------------------------------
# The careful parse, used for the header (cheap) and, for the rows, only on the error path


@dataclass(frozen=True)
class _Record:
    line: int
    """File line where the record starts; the header is line 1 (after any blank lines)."""
    text: str
    fields: list[str]


@dataclass(frozen=True)
class Header:
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


def read_header(path: Path, columns: Sequence[str]) -> Header:
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
    header = Header(first.line, first.fields)
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


def _missing_message(path: Path, header: Header, text: str, missing: list[str]) -> str:
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


def diagnose_parse(path: Path, header: Header, exc: BaseException) -> DataError:
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


def diagnose_schema(path: Path, header: Header, frame: pd.DataFrame, cfg: DataConfig, exc: SchemaErrors) -> DataError:
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


def _value_error(path: Path, header: Header, column: str, kind: str, indices: np.ndarray) -> DataError:
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

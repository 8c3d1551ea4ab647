"""From a CSV that ingest cannot use to one readable line: file, column, first bad lines as written.

Only the header is read here on every ingest (cheaply, with Python's csv module); the rows are read
here only when the fast parse has refused a value or found one the rules refuse, to find the file
lines and the text behind it. That pass streams: it keeps counts and the first few bad lines of each
kind, so its memory does not depend on the file. Line numbers are the file's own: the header is line 1.
"""

from __future__ import annotations

import csv
import difflib
import io
import math
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

SHOWN = 3
"""How many bad lines a message quotes."""

NULL_VALUES = ("", "NaN", "nan", "-nan", "-NaN", "NA", "N/A", "n/a", "null", "NULL")
"""Cells that mean "missing" in any column (pandas' common markers)."""

NAN_SPELLINGS = frozenset({"NaN", "nan", "-nan", "-NaN"})


def _casings(word: str) -> list[str]:
    """Every upper/lower-case spelling of `word`: Arrow matches true/false values exactly."""
    spellings = [""]
    for char in word:
        spellings = [s + c for s in spellings for c in dict.fromkeys((char.lower(), char.upper()))]
    return spellings


TRUE_VALUES = ("1", "1.0", *_casings("true"), *_casings("yes"))
FALSE_VALUES = ("0", "0.0", *_casings("false"), *_casings("no"))
"""Spellings of a boolean (and of a label): 1, true and yes are class 1, in any letter case."""

_BOOLEANS = frozenset(TRUE_VALUES) | frozenset(FALSE_VALUES)
_NULLS = frozenset(NULL_VALUES)
_OTHER_DELIMITERS = (";", "\t", "|")
_LISTED = 12
"""Header names quoted in a message about a missing column, at most."""


class DataError(ValueError):
    """The file cannot be used as training data. The message is one line: file, column, first bad lines."""


class Rule(StrEnum):
    """How a column's cells are read, which decides what is wrong with a cell."""

    NUMBER = "number"
    BOOLEAN = "boolean"
    TEXT = "text"
    LABEL = "label"


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
    size: int = 0
    """Bytes up to the end of the header line: the parser's block must hold it whole."""

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
                text = "".join(consumed)
                start = lines_before + 1
                lines_before += len(consumed)
                consumed.clear()
                if fields:
                    yield _Record(start, text.rstrip("\r\n"), fields)
        except csv.Error as exc:  # e.g. a field over csv's 128 KiB limit
            raise DataError(f"{path}: cannot parse as CSV at line {lines_before + 1}: {exc}") from None


def _rows(path: Path, header: Header, offset: int = 0) -> Iterator[tuple[int, list[str]]]:
    """Data records after the header with the file line each starts on; blank lines skipped.

    Leaner than `_records` (no raw text kept), as it may read millions of lines. With `offset` (a
    byte just after a line end, outside any quoted value, past the header), from there on: the lines
    before it are counted, not parsed.
    """
    if not offset:
        handle = path.open(encoding="utf-8-sig", errors="surrogateescape", newline="")
        before = 0
    else:
        before = lines_before(path, offset)
        raw = path.open("rb")
        raw.seek(offset)
        handle = io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="")
    with handle:
        reader = csv.reader(handle)
        last = 0
        try:
            for fields in reader:
                start, last = last + 1, reader.line_num
                if fields and before + start > header.line:
                    yield before + start, fields
        except csv.Error as exc:
            raise DataError(f"{path}: cannot parse as CSV at line {before + last + 1}: {exc}") from None


def lines_before(path: Path, offset: int, block_bytes: int = 8 << 20) -> int:
    """Lines that end before byte `offset`, as Python's reader splits them: at \n, \r\n or a lone \r."""
    lines = 0
    carry = b""
    with path.open("rb") as handle:
        left = offset
        while left > 0:
            block = handle.read(min(left, block_bytes))
            if not block:
                break
            left -= len(block)
            data = carry + block
            # A \r that ends this block may be the first half of a \r\n: it is counted with the next block.
            carry = b"\r" if data.endswith(b"\r") and left > 0 else b""
            data = data[: len(data) - len(carry)]
            lines += data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")
    return lines + len(carry)


def check_regular_file(path: Path) -> None:
    """Refuse what is not a regular file before opening it: a FIFO would block, a device never end."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        what = "a directory"
    elif stat.S_ISFIFO(mode):
        what = "a named pipe (FIFO)"
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        what = "a device"
    elif stat.S_ISSOCK(mode):
        what = "a socket"
    else:
        what = "not a regular file"
    raise DataError(f"{path}: is {what}, not a CSV file; give the path of a regular file")


def read_header(path: Path, columns: Sequence[str]) -> Header:
    """The header, checked: a regular file, UTF-8, no name twice, every wanted column present."""
    check_regular_file(path)
    try:
        first = next(_records(path), None)
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    wanted = ", ".join(columns)
    if first is None or not "".join(first.fields).strip():
        raise DataError(f"{path}: empty file, expected a header line naming columns {wanted}")
    # Bytes to the header's end, generously: its text re-encoded, plus a BOM, blank lines and line ends.
    size = len(first.text.encode("utf-8", "surrogateescape")) + 8 * first.line
    header = Header(first.line, first.fields, size)
    if _has_undecodable(first.text):
        utf16 = first.text.startswith(("\udcff\udcfe", "\udcfe\udcff"))
        hint = " (it starts with a UTF-16 byte order mark)" if utf16 else ""
        raise DataError(f"{path}: header (line {header.line}) is not valid UTF-8{hint}: {_show(first.text)}")
    seen: dict[str, int] = {}
    for name in header.names:
        seen[name] = seen.get(name, 0) + 1
    duplicated = [name for name in columns if seen.get(name, 0) > 1]
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
        if set(missing) <= set(next(csv.reader([text[:100_000]], delimiter=delimiter))):
            return (
                f"{path}: {noun} {which}: not found, the header (line {header.line}) {_show(text)} "
                f"looks {delimiter!r} delimited but only ',' is read"
            )
    names = header.names
    found = ", ".join(map(repr, names[:_LISTED])) + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")
    folded = {name.strip().casefold(): name for name in names}
    hints = []
    for want in missing:
        close = [folded[want.casefold()]] if want.casefold() in folded else []
        close += [n for n in difflib.get_close_matches(want, names, n=3, cutoff=0.6) if n not in close]
        if close:
            hints.append(f"{' or '.join(map(repr, close[:3]))} for {want!r}")
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


def count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# ----------------------------------------------------------------------------------------------
# One streaming pass from a refusal to one line


@dataclass
class _Tally:
    """How many of one kind of problem, and the first few, as (line, text)."""

    n: int = 0
    first: list[tuple[int, str]] = field(default_factory=list)

    def add(self, line: int, text: str) -> None:
        self.n += 1
        if len(self.first) < SHOWN:
            self.first.append((line, text))

    def shown(self) -> str:
        return ", ".join(f"line {line}: {_show(text)}" for line, text in self.first)


# Per column, the order in which problems are reported: the most basic first.
_KINDS = ("undecodable", "non-numeric", "not boolean", "missing", "infinite", "bad label")


def _classifier(rule: Rule, missing_ok: bool) -> Callable[[str], str | None]:
    """What is wrong with one cell under its column's rule, as the fast parse would see it, or None.

    The common case (a valid cell) returns after one test: this runs once per cell of a big file.
    """
    null = None if missing_ok and rule is not Rule.LABEL else "missing"

    def text(cell: str) -> str | None:
        if cell in _NULLS:
            return null
        return "undecodable" if _has_undecodable(cell) else None

    def boolean(cell: str) -> str | None:
        if cell in _BOOLEANS:
            return None
        if cell in _NULLS:
            return null
        if _has_undecodable(cell):
            return "undecodable"
        return "bad label" if rule is Rule.LABEL else "not boolean"

    def number(cell: str) -> str | None:
        try:
            value = float(cell)
        except ValueError:
            if cell in _NULLS:
                return null
            return "undecodable" if _has_undecodable(cell) else "non-numeric"
        if value - value == 0:  # finite
            return None
        if math.isnan(value):
            return null
        return "infinite"

    if rule is Rule.TEXT:
        return text
    if rule is Rule.NUMBER:
        return number
    return boolean


def diagnose(path: Path, header: Header, rules: dict[str, Rule], missing_ok: bool, detail: str,
             offset: int = 0) -> DataError:
    """Read every record once and report the first problem: rows of the wrong length, then columns in
    order, each with its most basic problem first. `detail` is what the fast parse said, for when
    this pass finds nothing it would refuse. `offset`: where the fast parse's refused part starts,
    at a line end outside quotes; the rows before it passed the same rules, so reading starts there."""
    expected = len(header.names)
    short, long = _Tally(), _Tally()
    short_fields: int | None = None
    unclosed: tuple[int, str, int] | None = None
    checks = [(column, header.position(column), _classifier(rule, missing_ok)) for column, rule in rules.items()]
    tallies: dict[tuple[str, str], _Tally] = {}
    for line, fields in _rows(path, header, offset):
        if len(fields) != expected:
            text = ",".join(fields)
            if len(fields) < expected:
                if not short.n:
                    short_fields = len(fields)
                    if any("\n" in f or "\r" in f for f in fields):  # the parser ran to the end inside quotes
                        unclosed = (line, '"' + text, len(fields))
                short.add(line, text)
            else:
                long.add(line, text)
            continue
        for column, position, check in checks:
            kind = check(fields[position])
            if kind is not None:
                tally = tallies.get((column, kind))
                if tally is None:
                    tally = tallies[(column, kind)] = _Tally()
                tally.add(line, fields[position])
    if unclosed is not None:
        line, text, n = unclosed
        return DataError(f"{path}: column {header.names[n - 1]!r}: a quote is never closed, first at line {line}: {_show(text)}")
    if short.n and (not long.n or short.first[0][0] < long.first[0][0]):
        lost = header.names[short_fields or 0]
        return DataError(
            f"{path}: column {lost!r}: no value in {count(short.n, 'row')} with fewer fields than "
            f"the header's {expected} (truncated?), first at {short.shown()}"
        )
    if long.n:
        return DataError(f"{path}: {count(long.n, 'row')} with more fields than the header's {expected}, first at {long.shown()}")
    for column, rule in rules.items():
        for kind in _KINDS:
            tally = tallies.get((column, kind))
            if tally is not None:
                return DataError(f"{path}: column {column!r}: {_what(kind, rule, tally)}, first at {tally.shown()}")
    return DataError(f"{path}: cannot parse as CSV: {detail}")


def _what(kind: str, rule: Rule, tally: _Tally) -> str:
    texts = [text for _, text in tally.first]
    if kind == "undecodable":
        return count(tally.n, "value") + " not valid UTF-8"
    if kind == "non-numeric":
        return count(tally.n, "non-numeric value") + " (list the column in categorical if it holds categories)"
    if kind == "not boolean":
        return count(tally.n, "value") + " not true or false (nor 1/0, yes/no)"
    if kind == "bad label":
        return count(tally.n, "label") + " not 0 or 1 (nor true/false, yes/no)"
    if kind == "infinite":
        return count(tally.n, "infinite value")
    policy = "" if rule is Rule.LABEL else " (or set missing: impute)"
    if all(text.strip() == "" for text in texts):
        return count(tally.n, "empty cell") + policy
    if all(text in NAN_SPELLINGS for text in texts):
        return count(tally.n, "NaN value") + policy
    return count(tally.n, "missing value") + " (empty, NaN or NA)" + policy

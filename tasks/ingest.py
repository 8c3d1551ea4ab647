"""Ingest: read a training CSV in batches, validate it, store it as Parquet named by its content.

Features may be numbers, booleans (true/false, yes/no) or text (categories); the label is 0/1,
true/false or yes/no, in any letter case (1, true and yes are class 1). Column types come from the
first block of rows: numbers are read as float64, true/false words as booleans, anything else as
text; columns listed in `categorical` are always text. The file is cut at line ends into ranges of
CHUNK_BYTES, parsed and checked in parallel threads (pyarrow's parser releases the GIL), a few
ranges ahead at most, while the main thread fingerprints and writes them as Parquet row groups in
file order, so memory does not grow with the file and the result does not depend on the threads.
Only when something is wrong does `ingest_errors` read the file again, carefully, from the refused
range on (the rows before it passed; their lines are only counted), to turn the problem into one
line naming the file, the column and the first bad lines.

`python -m tasks.ingest PATH [--features x y] [--label class] [--min-rows N]` checks a file alone.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import sys
import tempfile
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from prefect import task
from pydantic import ValidationError

from aviary.cache import ingest_cache_key
from aviary.config import DataConfig
from aviary.dataio import ParquetSink
from aviary.tasks.ingest_errors import (
    FALSE_VALUES,
    NULL_VALUES,
    TRUE_VALUES,
    DataError,
    Header,
    Rule,
    count,
    diagnose,
    read_header,
)
from aviary.types import Dataset

FINGERPRINT_VERSION = b"aviary-ingest-v1"
"""Bumped whenever the fingerprint's recipe changes, so old and new fingerprints never collide.
Numeric columns and the label hash as they always have, so numeric data keeps its fingerprint."""

CHUNK_BYTES = 2 << 20
"""Bytes of CSV per range parsed by one thread: ~100,000 rows of three columns, so a 1M-row file
keeps two cores busy to the end and hashing and writing the last range, which nothing overlaps, is short.
Ranges are cut at fixed offsets (then the next line end), never by timing, so a file always gives
the same row groups."""

PARSERS = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
"""Threads parsing ranges; the ranges ahead of the one being written are at most PARSERS + 1."""

BLOCK_BYTES = 4 << 20
"""Bytes per batch of the streaming reader, which reads files that hold a quote character (below)."""

QUOTE = b'"'
"""pyarrow's default quote character. Its parser accepts a newline inside a quoted value (even with
ParseOptions.newlines_in_values False, which only stops it from looking for such newlines when it
cuts blocks), so a line end is a row end only where no quote came before. Ranges are parsed in
parallel up to the first range holding a quote; from there the file is streamed by one reader."""

INGEST_ROW_GROUP = 1 << 20
"""Rows per row group of the ingested copy: few, large groups write fastest; the split regroups them."""

SAMPLE_BYTES = 256 << 10
"""Bytes of CSV whose values decide each column's type: ~12,000 rows of three columns. Inferring
types parses at a third of the speed of a typed read, so a 1 MiB sample cost a tenth of a 1M-row ingest."""

__all__ = ["DataError", "IngestWriteError", "ingest_csv", "check_csv", "ingest_csv", "ingest_csv_task"]


class IngestWriteError(OSError):
    """The Parquet copy could not be written (a full disk, say); nothing was left behind."""


class _Refused(Exception):
    """A batch holds a value the rules refuse: the careful pass finds where, reading from `start` (set
    by `_parts`, which knows where the refused part begins)."""

    def __init__(self, detail: str, start: int = 0) -> None:
        super().__init__(detail)
        self.start = start


# ----------------------------------------------------------------------------------------------
# The step


def ingest_csv(cfg: DataConfig, work_dir: Path) -> Dataset:
    """Validate `cfg.path`, then write its feature and label columns to `work_dir/<fingerprint>.parquet`.

    Nothing is left behind unless the whole file is valid: the Parquet copy is written to a
    temporary name as the batches pass and renamed only at the end. The same content gives the same
    file name; an existing copy is kept.
    """
    return _ingest(cfg, work_dir)[0]


def _ingest(cfg: DataConfig, work_dir: Path) -> tuple[Dataset, int]:
    """The data set and its count of class-1 rows."""
    path = cfg.path
    header = read_header(path, [*cfg.features, cfg.label])
    types = _column_types(path, header, cfg)
    rules = {column: _rule(kind) for column, kind in types.items()}
    rules[cfg.label] = Rule.LABEL
    # Non-nullable columns where nothing can be missing write at twice the speed; numbers are never
    # null (NaN where missing), the label never missing.
    impute = cfg.missing == "impute"
    schema = pa.schema(
        [
            *(pa.field(c, types[c], nullable=impute and not pa.types.is_floating(types[c])) for c in cfg.features),
            pa.field(cfg.label, pa.int8(), nullable=False),
        ]
    )
    stats = _Checks(cfg, schema)
    fingerprint = _Fingerprint(schema)
    try:
        sink = ParquetSink(work_dir / "dataset.parquet", schema, row_group_rows=INGEST_ROW_GROUP)
        with sink:
            # Hashing and writing range k (both release the GIL) overlap with parsing the ranges after it.
            for part in _parts(path, header, cfg, types, stats):
                stats.add(part)
                try:
                    fingerprint.update(part.batch)
                    sink.write(part.batch)
                except OSError as exc:
                    raise _write_error(work_dir, path, exc) from None
            stats.finish(path, header)
            digest = fingerprint.hexdigest(stats.rows)
            try:
                out_path = sink.commit(work_dir / f"{digest}.parquet", keep_existing=True)
            except OSError as exc:
                raise _write_error(work_dir, path, exc) from None
    except _Refused as refused:
        raise diagnose(path, header, rules, cfg.missing == "impute", str(refused), refused.start) from None
    dataset = Dataset(
        path=out_path, source=path, rows=stats.rows, fingerprint=digest, features=cfg.columns, label=cfg.label
    )
    return dataset, stats.ones


@task(name="ingest-csv", cache_key_fn=ingest_cache_key, persist_result=True)
def ingest_csv_task(cfg: DataConfig, work_dir: Path) -> Dataset:
    return ingest_csv(cfg, work_dir)


def check_csv(cfg: DataConfig) -> tuple[Dataset, int]:
    """Check a file alone: the data set (its Parquet copy already gone) and its count of class-1 rows."""
    with tempfile.TemporaryDirectory(prefix="aviary-ingest-") as work_dir:
        return _ingest(cfg, Path(work_dir))


def _write_error(work_dir: Path, path: Path, exc: OSError) -> IngestWriteError:
    return IngestWriteError(exc.errno, f"{work_dir}: cannot write the Parquet copy of {path}: {exc.strerror or exc}")


# ----------------------------------------------------------------------------------------------
# Reading


def _block_bytes(header: Header, least: int) -> int:
    """Room for the header line whole (pyarrow refuses a row that straddles two blocks), however long."""
    return max(least, 2 * header.size + 4096)


def _convert_options(columns: list[str], column_types: dict[str, pa.DataType], booleans: bool) -> pa_csv.ConvertOptions:
    return pa_csv.ConvertOptions(
        column_types=column_types,
        include_columns=columns,
        null_values=list(NULL_VALUES),
        # Without the 0.0/1.0 spellings while types are inferred: a column of 0.0 and 1.0 is a number.
        true_values=list(TRUE_VALUES if booleans else [v for v in TRUE_VALUES if v != "1.0"]),
        false_values=list(FALSE_VALUES if booleans else [v for v in FALSE_VALUES if v != "0.0"]),
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
    )


def _column_types(path: Path, header: Header, cfg: DataConfig) -> dict[str, pa.DataType]:
    """Each feature's Arrow type, from the values in the first block of rows (and `categorical`).

    A column of text is a category, unless most of its values are numbers: then it is a numeric
    column with a few bad cells, which the checks will name (declare it categorical to keep it as text).
    """
    declared = dict.fromkeys(cfg.categorical, pa.string())
    options = _convert_options(list(cfg.features), declared, booleans=False)
    # No threads: a threaded reader parses the blocks after the sample ahead of time, a third of a 1M-row ingest.
    read = pa_csv.ReadOptions(block_size=_block_bytes(header, SAMPLE_BYTES), use_threads=False)
    try:
        with pa_csv.open_csv(path, read_options=read, parse_options=pa_csv.ParseOptions(newlines_in_values=True),
                             convert_options=options) as reader:
            try:
                sample = reader.read_next_batch()
            except StopIteration:
                sample = None
            schema = reader.schema
    except (pa.ArrowException, ValueError) as exc:
        fallback = dict.fromkeys(cfg.features, Rule.TEXT) | {cfg.label: Rule.LABEL}
        raise diagnose(path, header, fallback, cfg.missing == "impute", _detail(exc)) from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    types: dict[str, pa.DataType] = {}
    for column in cfg.features:
        kind = schema.field(column).type
        if column in declared:
            types[column] = pa.string()
        elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
            mostly_numbers = sample is not None and _numeric_share(sample.column(column)) > 0.5
            types[column] = pa.float64() if mostly_numbers else pa.string()
        elif pa.types.is_boolean(kind):
            types[column] = pa.bool_()
        elif pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_null(kind) or pa.types.is_decimal(kind):
            types[column] = pa.float64()  # integers too: a later 2.5 must not break the read
        else:
            types[column] = pa.string()  # dates and times: categories until the model knows better
    return types


def _numeric_share(values: pa.Array) -> float:
    """Share of the non-missing sample values that read as numbers."""
    numbers = total = 0
    for item in pc.value_counts(values.drop_null()).to_pylist():
        total += item["counts"]
        try:
            float(item["values"])
        except ValueError:
            continue
        numbers += item["counts"]
    return numbers / total if total else 0.0


def _rule(kind: pa.DataType) -> Rule:
    if pa.types.is_boolean(kind):
        return Rule.BOOLEAN
    if pa.types.is_floating(kind):
        return Rule.NUMBER
    return Rule.TEXT


def _detail(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass(frozen=True)
class _Part:
    """A checked range or batch, as it is stored, with its counts."""

    batch: pa.RecordBatch
    ones: int
    present: dict[str, int]


@dataclass(frozen=True)
class _Reading:
    """What every range's parse needs."""

    path: Path
    header: Header
    convert: pa_csv.ConvertOptions
    checks: _Checks


def _parts(
    path: Path, header: Header, cfg: DataConfig, types: dict[str, pa.DataType], checks: _Checks
) -> Iterator[_Part]:
    """The file's rows, checked (not yet counted), in file order: ranges parsed in parallel, then any rest streamed."""
    convert = _convert_options([*cfg.features, cfg.label], {**types, cfg.label: pa.bool_()}, booleans=True)
    reading = _Reading(path, header, convert, checks)
    start = 0  # where the part being read starts: a refusal's careful pass reads from there
    try:
        rest = None
        with contextlib.closing(_in_order(reading)) as ranges:
            for start, parsed in ranges:
                part = parsed.result()
                if part is None:
                    rest = start
                    break
                yield part
        if rest is not None:
            # A quote from `rest` on: the ranges ahead are dropped, the rest read by one streaming reader.
            yield from _streamed(reading, rest)
    except _Refused as refused:
        raise _Refused(str(refused), start) from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _in_order(reading: _Reading) -> Generator[tuple[int, Future[_Part | None]]]:
    """(start, range being parsed) in file order, at most PARSERS + 1 ranges parsed ahead of the one taken."""
    chunk = _block_bytes(reading.header, CHUNK_BYTES)  # the first range holds the header whole
    with reading.path.open("rb") as file, ThreadPoolExecutor(PARSERS, thread_name_prefix="ingest-parse") as parsers:
        fd = file.fileno()
        window: deque[tuple[int, Future[_Part | None]]] = deque()
        try:
            for start, end in _ranges(fd, os.fstat(fd).st_size, chunk):
                window.append((start, parsers.submit(_parse_range, reading, fd, start, end)))
                if len(window) > PARSERS:
                    yield window.popleft()
            while window:
                yield window.popleft()
        finally:
            # Ranges still parsing read through `fd`: they finish before it closes.
            for _, future in window:
                future.cancel()
            wait([future for _, future in window])


def _ranges(fd: int, size: int, chunk: int) -> Iterator[tuple[int, int]]:
    """[start, end) byte ranges of about `chunk` bytes, each ending just after a newline (or at the end)."""
    start = 0
    while start < size:
        end = _line_end(fd, size, start + chunk)
        yield start, end
        start = end


def _line_end(fd: int, size: int, offset: int) -> int:
    """The first position at or after `offset` that follows a newline, or the file's size."""
    probe = offset - 1
    while probe < size:
        data = os.pread(fd, 64 << 10, probe)
        if not data:
            break
        found = data.find(b"\n")
        if found >= 0:
            return probe + found + 1
        probe += len(data)
    return size


def _read_range(fd: int, start: int, end: int) -> bytes:
    data = os.pread(fd, end - start, start)
    while len(data) < end - start:  # a short read: rare on a regular file, but allowed
        more = os.pread(fd, end - start - len(data), start + len(data))
        if not more:
            raise OSError(f"file shrank while read at byte {start + len(data)}")
        data += more
    return data


def _parse_range(reading: _Reading, fd: int, start: int, end: int) -> _Part | None:
    """One range parsed and checked; None if it holds a quote (its line ends may not end rows)."""
    data = _read_range(fd, start, end)
    if QUOTE in data:
        return None
    read = pa_csv.ReadOptions(
        use_threads=False,
        block_size=max(len(data), 1),
        # Only the first range starts with the header; the others are named by it.
        column_names=None if start == 0 else reading.header.names,
    )
    try:
        table = pa_csv.read_csv(pa.py_buffer(data), read_options=read, convert_options=reading.convert)
    except (pa.ArrowInvalid, ValueError) as exc:
        # pyarrow says "Expected 3 columns, got 2: 1,1" or "invalid value 'oops'" without a line number.
        raise _Refused(_detail(exc)) from None
    batches = table.combine_chunks().to_batches()
    return reading.checks.check(batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema))


def _streamed(reading: _Reading, start: int) -> Iterator[_Part]:
    """The rows from byte `start` (a line end with no quote before it) to the end, through one reader."""
    read = pa_csv.ReadOptions(
        block_size=_block_bytes(reading.header, BLOCK_BYTES),
        use_threads=True,
        column_names=None if start == 0 else reading.header.names,
    )
    with pa.OSFile(str(reading.path)) as source:
        source.seek(start)
        try:
            # Quotes are in this part of the file, so its blocks must not be cut inside a quoted value.
            quoted = pa_csv.ParseOptions(newlines_in_values=True)
            with pa_csv.open_csv(source, read_options=read, parse_options=quoted,
                                 convert_options=reading.convert) as reader:
                for batch in reader:
                    yield reading.checks.check(batch)
        except (pa.ArrowInvalid, ValueError) as exc:
            raise _Refused(_detail(exc)) from None


# ----------------------------------------------------------------------------------------------
# Checks, batch by batch


class _Checks:
    """The rules a batch must pass, and the counts the whole file must pass at the end."""

    def __init__(self, cfg: DataConfig, schema: pa.Schema) -> None:
        self.cfg = cfg
        self.schema = schema
        self.rows = 0
        self.ones = 0
        self.present = dict.fromkeys(cfg.features, 0)

    def check(self, batch: pa.RecordBatch) -> _Part:
        """The batch as it is stored (label as int8) with its counts, or _Refused. Safe in any thread."""
        impute = self.cfg.missing == "impute"
        label = batch.column(self.cfg.label)
        if label.null_count:
            raise _Refused("empty label")
        present: dict[str, int] = {}
        columns = []
        for column in self.cfg.features:
            values = batch.column(column)
            missing = values.null_count
            if pa.types.is_floating(values.type):
                array = values.to_numpy(zero_copy_only=False)
                finite = np.isfinite(array)
                if not finite.all():
                    if np.isinf(array).any():
                        raise _Refused(f"infinite value in {column!r}")
                    missing = int(len(array) - finite.sum())
                if values.null_count:
                    values = pa.array(array, type=pa.float64())  # NaN where missing
            if missing and not impute:
                raise _Refused(f"missing value in {column!r}")
            present[column] = len(values) - missing
            columns.append(values)
        labels = pc.cast(label, pa.int8())
        ones = int(pc.sum(labels).as_py() or 0)
        return _Part(pa.RecordBatch.from_arrays([*columns, labels], schema=self.schema), ones, present)

    def add(self, part: _Part) -> None:
        """Count a checked part; called in file order."""
        self.rows += part.batch.num_rows
        self.ones += part.ones
        for column, present in part.present.items():
            self.present[column] += present

    def finish(self, path: Path, header: Header) -> None:
        cfg = self.cfg
        if not self.rows:
            raise DataError(f"{path}: no data rows, only the header (line {header.line})")
        for column, present in self.present.items():
            if not present:
                raise DataError(f"{path}: column {column!r}: empty in all {count(self.rows, 'row')}; drop it from features")
        if self.ones in (0, self.rows):
            only = 1 if self.ones else 0
            raise DataError(
                f"{path}: column {cfg.label!r}: only class {only} present in {count(self.rows, 'row')}; "
                "both 0 and 1 are needed"
            )
        if self.rows < cfg.min_rows:
            raise DataError(f"{path}: {count(self.rows, 'data row')}, fewer than the {cfg.min_rows} required (min_rows)")


# ----------------------------------------------------------------------------------------------
# The content fingerprint


class _Fingerprint:
    """sha256 over the row count and, per column in order, its name, type and the sha256 of its values.

    Exact (no 64-bit row hashes in between) and independent of how the rows were batched: each
    column's digest is fed its values batch after batch. Numbers hash as float64 (NaN where
    missing), the label as int8, booleans as int8 (-1 where missing), text as its UTF-8 bytes plus
    each value's length (-1 where missing). It sees only parsed values, so line endings, a BOM,
    quoting, column order and extra columns in the CSV do not change it.
    """

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.values = [hashlib.sha256() for _ in schema]
        self.lengths = [hashlib.sha256() for _ in schema]

    def update(self, batch: pa.RecordBatch) -> None:
        for i, column in enumerate(batch.columns):
            kind = column.type
            if pa.types.is_floating(kind):
                self.values[i].update(np.ascontiguousarray(column.to_numpy(zero_copy_only=False), dtype=np.float64).data)
            elif pa.types.is_boolean(kind):
                codes = pc.fill_null(pc.cast(column, pa.int8()), -1)
                self.values[i].update(np.ascontiguousarray(codes.to_numpy(zero_copy_only=False)).data)
            elif pa.types.is_integer(kind):
                self.values[i].update(np.ascontiguousarray(column.to_numpy(zero_copy_only=False)).data)
            else:
                lengths = pc.fill_null(pc.binary_length(column), -1).to_numpy(zero_copy_only=False)
                self.lengths[i].update(np.ascontiguousarray(lengths, dtype=np.int32).data)
                offsets = np.frombuffer(column.buffers()[1], dtype=np.int32)[column.offset : column.offset + len(column) + 1]
                data = column.buffers()[2]
                if data is not None and len(offsets):
                    self.values[i].update(memoryview(data)[int(offsets[0]) : int(offsets[-1])])

    def hexdigest(self, rows: int) -> str:
        combined = hashlib.sha256(FINGERPRINT_VERSION)
        combined.update(f"\0rows={rows}".encode())
        for i, field in enumerate(self.schema):
            kind = field.type
            if pa.types.is_floating(kind):
                dtype, digest = "<f8", self.values[i].hexdigest()
            elif pa.types.is_boolean(kind):
                dtype, digest = "bool|i1", self.values[i].hexdigest()
            elif pa.types.is_integer(kind):
                dtype, digest = "|i1", self.values[i].hexdigest()
            else:
                dtype, digest = "utf8", f"{self.values[i].hexdigest()}:{self.lengths[i].hexdigest()}"
            combined.update(f"\0{field.name!r}\0{dtype}\0{digest}".encode())
        return combined.hexdigest()


# ----------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    """Check one file: a one-line summary and exit 0, or the one-line error on stderr and exit 1."""
    defaults = DataConfig.model_validate({})
    parser = argparse.ArgumentParser(prog="python -m tasks.ingest", description="Validate a training CSV.")
    parser.add_argument("path", type=Path)
    parser.add_argument("--features", nargs="+", default=list(defaults.features))
    parser.add_argument("--label", default=defaults.label)
    parser.add_argument("--min-rows", type=int, default=defaults.min_rows)
    parser.add_argument("--categorical", nargs="*", default=[])
    parser.add_argument("--missing", choices=("reject", "impute"), default=defaults.missing)
    args = parser.parse_args(argv)
    try:
        cfg = DataConfig.model_validate({
            "path": args.path, "features": tuple(args.features), "label": args.label, "min_rows": args.min_rows,
            "categorical": tuple(args.categorical), "missing": args.missing,
        })
    except ValidationError as exc:
        parser.error("; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors()))
    try:
        dataset, ones = check_csv(cfg)
    except (DataError, IngestWriteError) as exc:
        print(exc, file=sys.stderr)
        return 1
    zeros = dataset.rows - ones
    balance = f"class 0: {zeros} ({zeros / dataset.rows:.1%}), class 1: {ones} ({ones / dataset.rows:.1%})"
    print(f"{args.path}: ok, {dataset.rows} rows, {balance}, fingerprint {dataset.fingerprint}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

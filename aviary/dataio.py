"""Data in batches: Parquet written and read by row group, seeded row hashes, the streaming profile, tf.data.

Memory never grows with the rows: every step holds one batch (or one shuffle buffer) at a time.
Decisions that must not depend on how the rows were batched (which rows are held out, which rows
the quantile sample keeps) are made from a seeded hash of the row's index, never from a random
generator's state, so the same data and seed give the same answer at any batch size.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aviary.profile import DataProfile, FeatureKind, FeatureProfile, input_names
from aviary.types import Dataset

if TYPE_CHECKING:
    import pandas as pd
    import tensorflow as tf

ROW_GROUP_ROWS = 65_536
"""Rows per Parquet row group of a split: small enough that a shuffled row-group order mixes well."""

SHUFFLE_ROWS = 262_144
"""Rows in the training reader's shuffle buffer (whole row groups, shuffled together)."""

SAMPLE_ROWS = 50_000
"""Values per numeric feature kept for quantiles: decile edges to within about 0.5% of rank."""

CATEGORY_LIMIT = 100_000
"""Distinct values counted exactly per categorical column; past it, only the most frequent are kept."""

# Salts: each use of the row hash draws independent numbers from the same seed.
SPLIT_SALT = 1
HOLDOUT_SALT = 2
SAMPLE_SALT = 3

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


# ----------------------------------------------------------------------------------------------
# Seeded row hashes


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection on uint64 whose outputs look independent and uniform."""
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def index_keys(indices: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """One uint64 per row index: a function of (index, seed, salt) alone."""
    base = _mix(np.array([(seed & 0xFFFFFFFFFFFFFFFF) ^ (salt << 56)], dtype=np.uint64))[0]
    with np.errstate(over="ignore"):
        return _mix(indices.astype(np.uint64) * _GOLDEN ^ base)


def row_keys(start: int, count: int, seed: int, salt: int) -> np.ndarray:
    """`index_keys` of the row indices [start, start + count)."""
    return index_keys(np.arange(start, start + count, dtype=np.uint64), seed, salt)


def row_uniforms(start: int, count: int, seed: int, salt: int) -> np.ndarray:
    """Uniform floats in [0, 1), one per row index, from `row_keys`."""
    return (row_keys(start, count, seed, salt) >> np.uint64(11)).astype(np.float64) * 2.0**-53


# ----------------------------------------------------------------------------------------------
# Parquet in row groups


@dataclass
class ParquetSink:
    """A Parquet file written batch by batch to a unique temporary name, renamed into place by `commit`.

    Until `commit`, readers see nothing; `discard` (or an exception inside `with`) removes the
    temporary file, so a failed write, a full disk included, leaves nothing behind.
    """

    final: Path
    schema: pa.Schema
    row_group_rows: int = ROW_GROUP_ROWS
    tmp: Path = field(init=False)
    rows: int = field(init=False, default=0)
    _writer: pq.ParquetWriter | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.final.parent / f".{self.final.name}.{uuid.uuid4().hex}.tmp"
        # Work files, read once or twice by the next steps: random floats gain nothing from
        # dictionaries, compression or statistics, which would double the time of the write.
        self._writer = pq.ParquetWriter(
            self.tmp, self.schema, use_dictionary=False, compression="none", write_statistics=False
        )

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        assert self._writer is not None, "sink already closed"
        if batch.num_rows:
            table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
            self._writer.write_table(table, row_group_size=self.row_group_rows)
            self.rows += batch.num_rows

    def commit(self, final: Path | None = None, *, keep_existing: bool = False) -> Path:
        """Close and rename into place (at `final` if given). With `keep_existing` (a name made of the
        content), a file already there is kept and this copy dropped."""
        assert self._writer is not None, "sink already closed"
        self._writer.close()
        self._writer = None
        target = final or self.final
        if keep_existing and target.is_file():
            self.tmp.unlink(missing_ok=True)
        else:
            os.replace(self.tmp, target)
        return target

    def discard(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(OSError, pa.ArrowException):  # the disk may be full: the file goes anyway
                self._writer.close()
            self._writer = None
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> ParquetSink:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is not None or self._writer is not None:
            self.discard()


def open_parquet(path: Path) -> pq.ParquetFile:
    """A Parquet file read a row group at a time: pyarrow's default pre-buffering reads every row group
    that an `iter_batches` will visit ahead, i.e. the whole file into memory (2.8 GiB peak at 100M rows)."""
    return pq.ParquetFile(path, pre_buffer=False)


def iter_batches(path: Path, columns: Sequence[str] | None = None, batch_rows: int = ROW_GROUP_ROWS) -> Iterator[pa.RecordBatch]:
    """The file's rows in order, `batch_rows` at a time."""
    with open_parquet(path) as file:
        yield from file.iter_batches(batch_size=batch_rows, columns=list(columns) if columns else None)


def head_frame(dataset: Dataset, rows: int) -> pd.DataFrame:
    """The first `rows` rows as a frame (golden set, warmup records): reads one batch, not the file."""
    columns = [*dataset.features, dataset.label]
    for batch in iter_batches(dataset.path, columns, batch_rows=max(1, rows)):
        return batch.slice(0, rows).to_pandas()
    return pa.schema([]).empty_table().to_pandas()


# ----------------------------------------------------------------------------------------------
# Arrow columns to model inputs


def input_array(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Numbers and booleans as float32 with NaN for missing; strings as str objects with "" for missing."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return np.asarray(pc.fill_null(column, "").to_numpy(zero_copy_only=False), dtype=object)
    if not pa.types.is_floating(column.type):
        column = pc.cast(column, pa.float64())
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float32)


def batch_inputs(batch: pa.RecordBatch | pa.Table, features: Sequence[str]) -> dict[str, np.ndarray]:
    names = input_names(features)
    return {names[column]: input_array(batch.column(column)) for column in features}


# ----------------------------------------------------------------------------------------------
# The streaming profile


def _finish_quantiles(values: np.ndarray) -> tuple[float, ...]:
    if not len(values):
        return ()
    return tuple(float(q) for q in np.quantile(values, np.linspace(0.0, 1.0, 11)))


@dataclass
class _NumericStats:
    """Count, mean and M2 merged batch by batch (Chan et al.), min, max, and a seeded bottom-k sample."""

    boolean: bool
    count: int = 0
    missing: int = 0
    mean: float = 0.0
    m2: float = 0.0
    minimum: float = np.inf
    maximum: float = -np.inf
    integral: bool = True
    sample_keys: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.uint64))
    sample_values: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float64))

    def update(self, column: pa.Array, keys: np.ndarray) -> None:
        values = np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        present = ~np.isnan(values)
        self.missing += int(len(values) - present.sum())
        values, keys = values[present], keys[present]
        n = len(values)
        if not n:
            return
        mean = float(values.mean())
        m2 = float(np.square(values - mean).sum())
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total
        self.minimum = min(self.minimum, float(values.min()))
        self.maximum = max(self.maximum, float(values.max()))
        if self.integral and not self.boolean:
            self.integral = bool(np.all(values == np.floor(values)))
        if self.boolean:
            return
        # Bottom-k by hash key: the k rows with the smallest keys, whatever the batching.
        if len(self.sample_keys) >= SAMPLE_ROWS:
            kept = keys < self.sample_keys.max()
            keys, values = keys[kept], values[kept]
        keys = np.concatenate([self.sample_keys, keys])
        values = np.concatenate([self.sample_values, values])
        if len(keys) > SAMPLE_ROWS:
            order = np.argpartition(keys, SAMPLE_ROWS - 1)[:SAMPLE_ROWS]
            keys, values = keys[order], values[order]
        self.sample_keys, self.sample_values = keys, values

    def result(self, column: str, input_name: str) -> FeatureProfile:
        if self.boolean:
            kind = FeatureKind.BOOLEAN
        else:
            kind = FeatureKind.INTEGER if self.integral and self.count else FeatureKind.NUMERIC
        has = self.count > 0
        return FeatureProfile(
            column=column,
            input_name=input_name,
            kind=kind,
            count=self.count,
            missing=self.missing,
            minimum=self.minimum if has else None,
            maximum=self.maximum if has else None,
            mean=self.mean if has else None,
            std=float(np.sqrt(self.m2 / (self.count - 1))) if self.count > 1 else (0.0 if has else None),
            distinct=len({self.minimum, self.maximum}) if self.boolean and has else None,
            quantiles=() if self.boolean else _finish_quantiles(self.sample_values),
        )


@dataclass
class _CategoryStats:
    """Exact counts per value while there are at most CATEGORY_LIMIT of them, then the most frequent."""

    top: int
    count: int = 0
    missing: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    exact: bool = True

    def update(self, column: pa.Array) -> None:
        self.missing += column.null_count
        self.count += len(column) - column.null_count
        for item in pc.value_counts(column.drop_null()).to_pylist():
            value, n = item["values"], item["counts"]
            self.counts[value] = self.counts.get(value, 0) + n
        if len(self.counts) > CATEGORY_LIMIT:
            # Keep half, so pruning runs rarely; counts of values first seen later are undercounted.
            kept = sorted(self.counts.items(), key=lambda kv: -kv[1])[: CATEGORY_LIMIT // 2]
            self.counts = dict(kept)
            self.exact = False

    def result(self, column: str, input_name: str) -> FeatureProfile:
        ranked = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))[: self.top]
        return FeatureProfile(
            column=column,
            input_name=input_name,
            kind=FeatureKind.CATEGORICAL,
            count=self.count,
            missing=self.missing,
            categories=dict(ranked),
            distinct=len(self.counts) if self.exact else None,
        )


class ProfileBuilder:
    """Feed it batches of the training rows with each row's index in the source; `result()` is the profile."""

    def __init__(self, schema: pa.Schema, features: Sequence[str], label: str, *, max_categories: int, seed: int) -> None:
        self.features = tuple(features)
        self.label = label
        self.seed = seed
        self.names = input_names(self.features)
        self.rows = 0
        self.label_counts = {0: 0, 1: 0}
        self.stats: dict[str, _NumericStats | _CategoryStats] = {}
        for column in self.features:
            kind = schema.field(column).type
            if pa.types.is_string(kind) or pa.types.is_large_string(kind):
                self.stats[column] = _CategoryStats(top=max_categories)
            else:
                self.stats[column] = _NumericStats(boolean=pa.types.is_boolean(kind))

    def update(self, batch: pa.RecordBatch, indices: np.ndarray) -> None:
        keys = index_keys(indices, self.seed, SAMPLE_SALT)
        for column, stats in self.stats.items():
            if isinstance(stats, _NumericStats):
                stats.update(batch.column(column), keys)
            else:
                stats.update(batch.column(column))
        ones = int(pc.sum(batch.column(self.label)).as_py() or 0)
        self.label_counts[1] += ones
        self.label_counts[0] += batch.num_rows - ones
        self.rows += batch.num_rows

    def result(self) -> DataProfile:
        return DataProfile(
            rows=self.rows,
            features=tuple(self.stats[c].result(c, self.names[c]) for c in self.features),
            label=self.label,
            label_counts=dict(self.label_counts),
        )


# ----------------------------------------------------------------------------------------------
# tf.data


def _row_groups(path: Path) -> list[tuple[int, int]]:
    """(first row, rows) of each row group."""
    with open_parquet(path) as file:
        sizes = [file.metadata.row_group(i).num_rows for i in range(file.metadata.num_row_groups)]
    starts: list[int] = [0]
    for size in sizes[:-1]:
        starts.append(starts[-1] + size)
    return list(zip(starts, sizes, strict=False))


def _chunks(
    dataset: Dataset,
    *,
    seed: int | None,
    epoch: int,
    part: Literal["all", "fit", "holdout"],
    holdout: float,
    holdout_seed: int,
    buffer_rows: int,
) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Shuffle buffers (or, unshuffled, row groups) of model inputs and labels."""
    groups = _row_groups(dataset.path)
    rng = np.random.default_rng([seed, epoch]) if seed is not None else None
    order = rng.permutation(len(groups)) if rng is not None else np.arange(len(groups))
    columns = [*dataset.features, dataset.label]
    with open_parquet(dataset.path) as file:
        pending: list[pa.Table] = []
        pending_rows = 0
        for position, index in enumerate(order):
            first, rows = groups[index]
            table = file.read_row_group(int(index), columns=columns)
            if part != "all":
                held = row_uniforms(first, rows, holdout_seed, HOLDOUT_SALT) < holdout
                table = table.filter(pa.array(held if part == "holdout" else ~held))
            pending.append(table)
            pending_rows += table.num_rows
            if pending_rows < buffer_rows and position < len(order) - 1:
                continue
            merged = pa.concat_tables(pending)
            pending, pending_rows = [], 0
            if not merged.num_rows:
                continue
            if rng is not None:
                merged = merged.take(pa.array(rng.permutation(merged.num_rows)))
            inputs = batch_inputs(merged, dataset.features)
            labels = merged.column(dataset.label).to_numpy().astype(np.float32)
            yield inputs, labels


def tf_batches(
    dataset: Dataset,
    batch_size: int,
    *,
    seed: int | None = None,
    part: Literal["all", "fit", "holdout"] = "all",
    holdout: float = 0.0,
    holdout_seed: int = 0,
    buffer_rows: int = SHUFFLE_ROWS,
    epoch: Callable[[], int] | None = None,
) -> tf.data.Dataset:
    """A `tf.data.Dataset` of ({input_name: [batch]}, label[batch]) read from the Parquet file's row groups.

    Numbers are float32 with NaN where missing, strings tf.string with "" where missing, labels
    float32. With a `seed`, each pass (epoch) reads the row groups in a new seeded order and shuffles
    rows within a buffer of about `buffer_rows`; without one, rows come in file order. `part` keeps
    all rows, or splits them by a hash of the row index: a `holdout` share for validation and the rest to fit on.

    `epoch` says which pass a new iterator serves (Keras' epoch, from a callback). Without it each
    iterator is the next pass, which holds for a plain loop but not for Keras: its epoch iterator
    also opens a spare iterator at each epoch's end, whose prefetch may or may not start before the
    next epoch's, so counting iterators would make the order, and the model, depend on timing.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    names = input_names(dataset.features)
    schema = pq.read_schema(dataset.path)
    spec: dict[str, Any] = {}
    for column in dataset.features:
        kind = schema.field(column).type
        is_text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
        spec[names[column]] = tf.TensorSpec([None], tf.string if is_text else tf.float32)
    epochs = iter(range(1 << 62))

    def generate() -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        # Each pass iterates the dataset again, which calls this again: a new seeded order each time.
        yield from _chunks(
            dataset,
            seed=seed,
            epoch=epoch() if epoch is not None else next(epochs),
            part=part,
            holdout=holdout,
            holdout_seed=holdout_seed,
            buffer_rows=buffer_rows,
        )

    chunks = tf.data.Dataset.from_generator(generate, output_signature=(spec, tf.TensorSpec([None], tf.float32)))
    return chunks.rebatch(batch_size).prefetch(2)

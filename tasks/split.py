"""Deterministic train/eval split, streamed row group by row group, with the training split's profile.

Each row goes to eval when a seeded hash of its index (its position in the ingested data) falls
below `eval_fraction`: the same data and seed give the same split at any batch size, on any
machine, without holding the table. The draw is independent of the label, so each class keeps its
share in both halves up to sampling noise (about sqrt(f(1-f)/n) of a class of n rows): the split is
stratified in expectation, not to the row. While the training rows are written, their profile
(schema and statistics, `aviary.profile`) is computed in the same pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task

from aviary.config import SplitConfig
from aviary.dataio import ROW_GROUP_ROWS, SPLIT_SALT, ParquetSink, ProfileBuilder, iter_batches, row_uniforms
from aviary.types import Dataset, Split


def eval_mask(first_row: int, rows: int, cfg: SplitConfig) -> np.ndarray:
    """True for the rows [first_row, first_row + rows) that go to the eval set."""
    return row_uniforms(first_row, rows, cfg.seed, SPLIT_SALT) < cfg.eval_fraction


def split_dataset(dataset: Dataset, cfg: SplitConfig, out_dir: Path, batch_rows: int = ROW_GROUP_ROWS) -> Split:
    """Same data and seed, same split; the training half carries its profile. Nothing is left half-written."""
    schema = pq.read_schema(dataset.path)
    profile = ProfileBuilder(schema, dataset.features, dataset.label, max_categories=cfg.max_categories, seed=cfg.seed)
    with ParquetSink(out_dir / "train.parquet", schema) as train, ParquetSink(out_dir / "eval.parquet", schema) as held:
        first = 0
        for batch in iter_batches(dataset.path, [*dataset.features, dataset.label], batch_rows):
            to_eval = eval_mask(first, batch.num_rows, cfg)
            fit = batch.filter(pa.array(~to_eval))
            profile.update(fit, np.arange(first, first + batch.num_rows)[~to_eval])
            train.write(fit)
            held.write(batch.filter(pa.array(to_eval)))
            first += batch.num_rows
        train_rows, eval_rows = train.rows, held.rows
        train_path, eval_path = train.commit(), held.commit()
    return Split(
        train=dataset.model_copy(update={"path": train_path, "rows": train_rows, "profile": profile.result()}),
        eval=dataset.model_copy(update={"path": eval_path, "rows": eval_rows, "profile": None}),
    )


@task(name="split-dataset")
def split_dataset_task(dataset: Dataset, cfg: SplitConfig, out_dir: Path) -> Split:
    return split_dataset(dataset, cfg, out_dir)

"""Deterministic, stratified train/eval split."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import task
from sklearn.model_selection import train_test_split

from aviary.config import SplitConfig
from aviary.types import Dataset, Split


def _write(frame: pd.DataFrame, like: Dataset, path: Path) -> Dataset:
    tmp = path.with_suffix(".tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)
    return like.model_copy(update={"path": path, "rows": len(frame)})


def split_dataset(dataset: Dataset, cfg: SplitConfig, out_dir: Path) -> Split:
    """Same data and seed, same split; each class keeps its share in both halves."""
    frame = pd.read_parquet(dataset.path)
    train, evaluation = train_test_split(
        frame, test_size=cfg.eval_fraction, random_state=cfg.seed, stratify=frame[dataset.label]
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    return Split(
        train=_write(train, dataset, out_dir / "train.parquet"),
        eval=_write(evaluation, dataset, out_dir / "eval.parquet"),
    )


@task(name="split-dataset")
def split_dataset_task(dataset: Dataset, cfg: SplitConfig, out_dir: Path) -> Split:
    return split_dataset(dataset, cfg, out_dir)

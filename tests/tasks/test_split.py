from pathlib import Path

import pandas as pd

from aviary.config import SplitConfig
from aviary.tasks.split import split_dataset, split_dataset_task
from tests.helpers import circle_frame, parquet_dataset


def test_split_is_stratified_disjoint_and_complete(tmp_path: Path) -> None:
    frame = circle_frame(1000, seed=2).reset_index(drop=True)
    dataset = parquet_dataset(frame, tmp_path / "all.parquet")
    split = split_dataset(dataset, SplitConfig(eval_fraction=0.25, seed=1), tmp_path / "out")
    train, evaluation = pd.read_parquet(split.train.path), pd.read_parquet(split.eval.path)
    assert (split.train.rows, split.eval.rows) == (750, 250) == (len(train), len(evaluation))
    both = pd.concat([train, evaluation]).sort_values(["x", "y"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(both, frame.sort_values(["x", "y"]).reset_index(drop=True), check_dtype=False)
    share = frame["class"].mean()
    assert abs(train["class"].mean() - share) < 0.01
    assert abs(evaluation["class"].mean() - share) < 0.01


def test_split_is_deterministic_from_its_seed(tmp_path: Path) -> None:
    dataset = parquet_dataset(circle_frame(500, seed=2), tmp_path / "all.parquet")
    a = split_dataset(dataset, SplitConfig(seed=5), tmp_path / "a")
    b = split_dataset_task.fn(dataset, SplitConfig(seed=5), tmp_path / "b")
    c = split_dataset(dataset, SplitConfig(seed=6), tmp_path / "c")
    pd.testing.assert_frame_equal(pd.read_parquet(a.eval.path), pd.read_parquet(b.eval.path))
    assert not pd.read_parquet(a.eval.path).equals(pd.read_parquet(c.eval.path))

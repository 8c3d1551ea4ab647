"""split_dataset: streamed, deterministic at any batch size, and its profile equal to pandas' on the same rows."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aviary.config import SplitConfig
from aviary.dataio import ParquetSink
from aviary.profile import FeatureKind
from aviary.tasks.split import eval_mask, split_dataset, split_dataset_task
from aviary.types import Dataset
from tests.helpers import circle_frame, parquet_dataset


def mixed_frame(rows: int, seed: int) -> pd.DataFrame:
    """Numbers on very different scales, an integer, a boolean and a category, with some missing."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "small": rng.normal(0.001, 0.0005, rows),
            "big": rng.normal(4000, 900, rows),
            "count": rng.integers(0, 50, rows).astype(np.float64),
            "flag": rng.random(rows) < 0.3,
            "colour": rng.choice(["red", "green", "blue", "teal"], rows, p=[0.5, 0.3, 0.15, 0.05]),
            "class": (rng.random(rows) < 0.2).astype(np.int8),
        }
    )
    frame.loc[rng.random(rows) < 0.05, "big"] = np.nan
    frame["colour"] = frame["colour"].where(rng.random(rows) > 0.02, None)
    return frame


def mixed_dataset(tmp_path: Path, rows: int = 3000) -> tuple[pd.DataFrame, Dataset]:
    frame = mixed_frame(rows, seed=4)
    path = tmp_path / "mixed.parquet"
    frame.to_parquet(path, index=False)
    features = ("small", "big", "count", "flag", "colour")
    return frame, Dataset(path=path, source=path, rows=rows, fingerprint="m", features=features, label="class")


def test_split_is_complete_disjoint_and_keeps_class_shares(tmp_path: Path) -> None:
    frame = circle_frame(4000, seed=2)
    split = split_dataset(parquet_dataset(frame, tmp_path / "all.parquet"), SplitConfig(eval_fraction=0.25, seed=1), tmp_path / "out")
    train, evaluation = pd.read_parquet(split.train.path), pd.read_parquet(split.eval.path)
    assert (split.train.rows, split.eval.rows) == (len(train), len(evaluation))
    assert split.train.rows + split.eval.rows == 4000
    assert abs(split.eval.rows - 1000) < 3 * np.sqrt(4000 * 0.25 * 0.75)  # a Bernoulli draw per row
    both = pd.concat([train, evaluation]).sort_values(["x", "y"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(both, frame.sort_values(["x", "y"]).reset_index(drop=True), check_dtype=False)
    share = frame["class"].mean()
    assert abs(train["class"].mean() - share) < 0.03 and abs(evaluation["class"].mean() - share) < 0.03


def test_split_equals_the_in_memory_mask_at_any_batch_size(tmp_path: Path) -> None:
    frame = circle_frame(2000, seed=3)
    dataset = parquet_dataset(frame, tmp_path / "all.parquet")
    expected = frame[eval_mask(0, len(frame), SplitConfig(seed=5))].reset_index(drop=True)
    for batch_rows in (7, 256, 100_000):
        split = split_dataset(dataset, SplitConfig(seed=5), tmp_path / f"b{batch_rows}", batch_rows=batch_rows)
        pd.testing.assert_frame_equal(pd.read_parquet(split.eval.path), expected, check_dtype=False)


def test_split_is_deterministic_from_its_seed(tmp_path: Path) -> None:
    dataset = parquet_dataset(circle_frame(500, seed=2), tmp_path / "all.parquet")
    a = split_dataset(dataset, SplitConfig(seed=5), tmp_path / "a")
    b = split_dataset_task.fn(dataset, SplitConfig(seed=5), tmp_path / "b")
    c = split_dataset(dataset, SplitConfig(seed=6), tmp_path / "c")
    pd.testing.assert_frame_equal(pd.read_parquet(a.eval.path), pd.read_parquet(b.eval.path))
    assert a.train.profile == b.train.profile
    assert not pd.read_parquet(a.eval.path).equals(pd.read_parquet(c.eval.path))


def test_profile_of_the_training_split_equals_pandas_on_the_same_rows(tmp_path: Path) -> None:
    frame, dataset = mixed_dataset(tmp_path)
    split = split_dataset(dataset, SplitConfig(seed=9, max_categories=3), tmp_path / "out", batch_rows=333)
    train = frame[~eval_mask(0, len(frame), SplitConfig(seed=9))]
    profile = split.train.profile
    assert profile is not None and split.eval.profile is None
    assert profile.rows == len(train) == split.train.rows
    assert profile.label_counts == {0: int((train["class"] == 0).sum()), 1: int((train["class"] == 1).sum())}
    for name in ("small", "big", "count"):
        feature, column = profile.feature(name), train[name]
        assert (feature.count, feature.missing) == (column.count(), column.isna().sum())
        assert (feature.minimum, feature.maximum) == (column.min(), column.max())
        assert feature.mean == pytest.approx(column.mean(), rel=1e-12)
        assert feature.std == pytest.approx(column.std(), rel=1e-9)
        # Fewer rows than the sample holds: the quantiles are exactly those of all rows.
        np.testing.assert_allclose(feature.quantiles, np.nanquantile(column, np.linspace(0, 1, 11)), rtol=1e-12)
    assert profile.feature("small").kind == FeatureKind.NUMERIC
    assert profile.feature("count").kind == FeatureKind.INTEGER
    flag = profile.feature("flag")
    assert flag.kind == FeatureKind.BOOLEAN and flag.mean == pytest.approx(train["flag"].mean())
    colour = profile.feature("colour")
    counts = train["colour"].value_counts()
    assert colour.kind == FeatureKind.CATEGORICAL and colour.distinct == 4
    assert colour.categories == {k: int(v) for k, v in counts.head(3).items()}  # top 3, most frequent first
    assert colour.missing == train["colour"].isna().sum()
    assert profile.feature("big").input_name == "big"


def test_profile_does_not_depend_on_the_batch_size(tmp_path: Path) -> None:
    _, dataset = mixed_dataset(tmp_path)
    a = split_dataset(dataset, SplitConfig(seed=2), tmp_path / "a", batch_rows=64)
    b = split_dataset(dataset, SplitConfig(seed=2), tmp_path / "b", batch_rows=5000)
    assert a.train.profile is not None and b.train.profile is not None
    for fa, fb in zip(a.train.profile.features, b.train.profile.features, strict=True):
        assert fa.model_dump(exclude={"mean", "std"}) == fb.model_dump(exclude={"mean", "std"})
        assert fa.mean == pytest.approx(fb.mean, rel=1e-12) if fa.mean is not None else fb.mean is None


def test_a_full_disk_mid_split_leaves_no_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = parquet_dataset(circle_frame(3000, seed=2), tmp_path / "all.parquet")
    real, calls = ParquetSink.write, []

    def filling(self: ParquetSink, batch: object) -> None:
        calls.append(1)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, batch)  # type: ignore[arg-type]

    monkeypatch.setattr(ParquetSink, "write", filling)
    with pytest.raises(OSError, match="No space left"):
        split_dataset(dataset, SplitConfig(), tmp_path / "out", batch_rows=500)
    assert list((tmp_path / "out").iterdir()) == []

"""Training sets with their profiles, as ingest and split hand them on, from small in-memory frames."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from aviary.profile import DataProfile
from aviary.tasks.preprocess import profile_frame
from aviary.types import Dataset

__all__ = ["dataset_with_profile", "profile_frame"]


def dataset_with_profile(
    frame: pd.DataFrame, path: Path, features: Iterable[str], label: str, categorical: Iterable[str] = ()
) -> tuple[Dataset, DataProfile]:
    features = tuple(features)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    profile = profile_frame(frame, features, label, categorical)
    dataset = Dataset(
        path=path, source=path, rows=len(frame), fingerprint="test", features=features, label=label, profile=profile
    )
    return dataset, profile

"""Profiles of small in-memory frames, as ingest computes them for a training split (for tests and benchmarks)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from aviary.profile import DataProfile, FeatureKind, FeatureProfile, input_names
from aviary.types import Dataset

TOP_CATEGORIES = 100_000


def kind_of(column: pd.Series, declared_categorical: bool) -> FeatureKind:
    if declared_categorical or not (pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column)):
        return FeatureKind.CATEGORICAL
    if pd.api.types.is_bool_dtype(column):
        return FeatureKind.BOOLEAN
    if pd.api.types.is_integer_dtype(column):
        return FeatureKind.INTEGER
    return FeatureKind.NUMERIC


def profile_frame(
    frame: pd.DataFrame, features: Iterable[str], label: str, categorical: Iterable[str] = ()
) -> DataProfile:
    features = list(features)
    names = input_names(features)
    declared = set(categorical)
    profiles = []
    for column in features:
        values = frame[column]
        kind = kind_of(values, column in declared)
        missing = int(values.isna().sum()) + (int((values == "").sum()) if values.dtype == object else 0)
        count = len(values) - missing
        if kind == FeatureKind.CATEGORICAL:
            from aviary.tasks.preprocess import category_strings

            text = pd.Series(category_strings(values))
            counts = text[text != ""].value_counts()
            profiles.append(
                FeatureProfile(
                    column=column, input_name=names[column], kind=kind, count=count, missing=missing,
                    categories={str(k): int(v) for k, v in counts.head(TOP_CATEGORIES).items()}, distinct=len(counts),
                )
            )
            continue
        numbers = values.astype(float).dropna()
        profiles.append(
            FeatureProfile(
                column=column, input_name=names[column], kind=kind, count=count, missing=missing,
                minimum=float(numbers.min()) if count else None, maximum=float(numbers.max()) if count else None,
                mean=float(numbers.mean()) if count else None, std=float(numbers.std(ddof=0)) if count else None,
                quantiles=tuple(float(q) for q in np.quantile(numbers, np.linspace(0, 1, 11))) if count else (),
            )
        )
    labels = frame[label].astype(int).value_counts()
    return DataProfile(
        rows=len(frame), features=tuple(profiles), label=label, label_counts={int(k): int(v) for k, v in labels.items()}
    )


def dataset_with_profile(
    frame: pd.DataFrame, path: Path, features: Iterable[str], label: str, categorical: Iterable[str] = ()
) -> tuple[Dataset, DataProfile]:
    features = tuple(features)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    dataset = Dataset(path=path, source=path, rows=len(frame), fingerprint="test", features=features, label=label)
    return dataset, profile_frame(frame, features, label, categorical)

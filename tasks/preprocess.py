"""Preprocessing layers built from the training split's profile, so the SavedModel takes raw values.

Everything comes from the `DataProfile` that ingest computed while the data streamed past (means and
standard deviations, vocabularies), so building the layers costs no pass over the data, and serving
does exactly what training did: clients send the CSV's values, and an unseen category still gets an answer.

Per feature kind:
- numeric and integer: a missing value (NaN) becomes the training mean, infinities and values beyond
  float32 are clipped, `Normalization` with the training mean and variance, and the result is clipped to
  +-`Z_LIMIT` standard deviations so that no input (1e30, inf) can turn the score into NaN;
- boolean (0/1): missing becomes the training share of ones; not scaled;
- categorical (strings): `StringLookup` over the most frequent training values (at most `max_vocabulary`),
  with one out-of-vocabulary bucket that also takes "" (missing); one-hot up to `one_hot_max` values,
  an `Embedding` above.
A numeric or boolean feature with missing values in the training split (missing policy "impute") also
gets a 0/1 missing indicator.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aviary.profile import DataProfile, FeatureKind, FeatureProfile, input_names
from aviary.types import Dataset

Z_LIMIT = 20.0
"""Normalized values are clipped here: far outside the training range, but never inf or NaN downstream."""

F32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Encoding:
    """How the categorical features are encoded; the training config supplies it."""

    max_vocabulary: int = 1000
    one_hot_max: int = 1001
    embedding_dim: int = 8


def is_categorical(feature: FeatureProfile) -> bool:
    return feature.kind == FeatureKind.CATEGORICAL


def input_dtype(feature: FeatureProfile) -> str:
    """The dtype of the feature's model input and serving signature input."""
    return "string" if is_categorical(feature) else "float32"


def vocabulary(feature: FeatureProfile, max_vocabulary: int) -> list[str]:
    """The most frequent training values, at most `max_vocabulary`; ties break by value, so it is deterministic."""
    ranked = sorted(((count, value) for value, count in feature.categories.items() if value != ""), key=lambda cv: (-cv[0], cv[1]))
    return [value for _, value in ranked[:max_vocabulary]]


def custom_layers() -> dict[str, type]:
    """Small layers Keras lacks, registered so that saved models load again. Built on first use: nothing at import."""
    global _LAYERS
    if _LAYERS is None:
        _LAYERS = _define_layers()
    return _LAYERS


_LAYERS: dict[str, type] | None = None


def _define_layers() -> dict[str, type]:
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="aviary")
    class FillMissing(keras.layers.Layer):
        """NaN becomes `value`; infinities and values beyond float32 become +-float32 max."""

        def __init__(self, value: float, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.value = float(value)

        def call(self, inputs: Any) -> Any:
            filled = ops.where(ops.isnan(inputs), ops.full_like(inputs, self.value), inputs)
            return ops.clip(filled, -F32_MAX, F32_MAX)

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "value": self.value}

    @keras.saving.register_keras_serializable(package="aviary")
    class MissingIndicator(keras.layers.Layer):
        """1.0 where the value is missing (NaN), else 0.0."""

        def call(self, inputs: Any) -> Any:
            return ops.cast(ops.isnan(inputs), "float32")

    @keras.saving.register_keras_serializable(package="aviary")
    class Clip(keras.layers.Layer):
        def __init__(self, limit: float, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.limit = float(limit)

        def call(self, inputs: Any) -> Any:
            return ops.clip(inputs, -self.limit, self.limit)

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "limit": self.limit}

    return {"FillMissing": FillMissing, "MissingIndicator": MissingIndicator, "Clip": Clip}


def load_model(path: Path) -> Any:
    """A saved Keras model with the preprocessing layers above."""
    quiet_tf()
    import keras

    custom_layers()
    return keras.saving.load_model(path)


def _safe_moments(feature: FeatureProfile) -> tuple[float, float]:
    """Mean and variance that float32 can hold: an empty or constant column gets mean 0 / variance 1."""
    mean = feature.mean if feature.mean is not None and math.isfinite(feature.mean) else 0.0
    std = feature.std if feature.std is not None and math.isfinite(feature.std) and feature.std > 0 else 1.0
    mean = float(np.clip(mean, -F32_MAX, F32_MAX))
    return mean, float(min(std * std, F32_MAX))


def build_inputs(profile: DataProfile) -> dict[str, Any]:
    """One scalar Keras input per feature, keyed and named by its input name."""
    import keras

    return {f.input_name: keras.Input(shape=(), name=f.input_name, dtype=input_dtype(f)) for f in profile.features}


def encode_features(inputs: dict[str, Any], profile: DataProfile, encoding: Encoding,
                    seeds: Iterator[int] | None = None) -> Any:
    """The preprocessed, concatenated feature vector of the model's raw inputs; `seeds` seed the
    embeddings' initial weights (unseeded, Keras draws from Python's process-wide `random`)."""
    import keras

    layers = custom_layers()
    parts = []
    for feature in profile.features:
        raw = inputs[feature.input_name]
        name = feature.input_name
        if is_categorical(feature):
            vocab = vocabulary(feature, encoding.max_vocabulary)
            if not vocab:
                raise ValueError(f"column '{feature.column}' has no values in the training data to learn categories from")
            if len(vocab) + 1 <= encoding.one_hot_max:
                lookup = keras.layers.StringLookup(
                    vocabulary=vocab, num_oov_indices=1, output_mode="one_hot", name=f"{name}_lookup"
                )
                parts.append(lookup(raw))
            else:
                ids = keras.layers.StringLookup(vocabulary=vocab, num_oov_indices=1, name=f"{name}_lookup")(raw)
                start = keras.initializers.RandomUniform(-0.05, 0.05, seed=next(seeds) if seeds is not None else None)
                parts.append(keras.layers.Embedding(len(vocab) + 1, encoding.embedding_dim, embeddings_initializer=start,
                                                    name=f"{name}_embedding")(ids))
            continue
        column = keras.layers.Reshape((1,), name=f"{name}_column")(raw)
        mean, variance = _safe_moments(feature)
        filled = layers["FillMissing"](mean, name=f"{name}_fill")(column)
        if feature.kind == FeatureKind.BOOLEAN:
            parts.append(filled)
        else:
            scaled = keras.layers.Normalization(mean=mean, variance=variance, name=f"{name}_normalize")(filled)
            parts.append(layers["Clip"](Z_LIMIT, name=f"{name}_clip")(scaled))
        if feature.missing:
            parts.append(layers["MissingIndicator"](name=f"{name}_missing")(column))
    return parts[0] if len(parts) == 1 else keras.layers.Concatenate(name="features")(parts)


# -- raw values from a frame, as the model and the serving signature take them ----------------------


def frame_inputs(frame: pd.DataFrame, profile: DataProfile) -> dict[str, np.ndarray]:
    """The model's inputs for the rows of `frame` (CSV column names): strings ("" for missing) or float32 (NaN)."""
    inputs: dict[str, np.ndarray] = {}
    for feature in profile.features:
        column = frame[feature.column]
        if is_categorical(feature):
            inputs[feature.input_name] = category_strings(column)
        else:
            inputs[feature.input_name] = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float32)
    return inputs


def category_strings(column: pd.Series) -> np.ndarray:
    """Category values as text; integer codes read as floats (3.0) are written as the CSV had them (3)."""
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        numbers = column.to_numpy(dtype=np.float64)
        whole = np.isfinite(numbers) & (numbers == np.round(numbers))
        text = np.where(whole, np.char.mod("%d", np.where(whole, numbers, 0).astype(np.int64)), column.astype(str))
        return np.where(np.isnan(numbers), "", text).astype(object)
    return column.astype("string").fillna("").to_numpy(dtype=object)


def json_instances(frame: pd.DataFrame, profile: DataProfile) -> list[dict[str, float | str]]:
    """Rows as TF Serving JSON instances under the input names: text for categories, the numbers as written."""
    columns: dict[str, list[Any]] = {}
    for feature in profile.features:
        column = frame[feature.column]
        if is_categorical(feature):
            columns[feature.input_name] = [str(v) for v in category_strings(column)]
        else:
            columns[feature.input_name] = [float(v) for v in pd.to_numeric(column, errors="coerce").to_numpy(np.float64)]
    return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def quiet_tf() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# -- profiles of in-memory frames -------------------------------------------------------------------


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
    """The profile of rows held in memory; ingest computes the same while the file streams past."""
    features = list(features)
    names = input_names(features)
    declared = set(categorical)
    profiles = []
    for column in features:
        values = frame[column]
        kind = kind_of(values, column in declared)
        if kind == FeatureKind.CATEGORICAL:
            text = pd.Series(category_strings(values))
            present = text[text != ""]
            counts = present.value_counts()
            profiles.append(
                FeatureProfile(
                    column=column, input_name=names[column], kind=kind, count=len(present),
                    missing=len(text) - len(present), categories={str(k): int(v) for k, v in counts.items()},
                    distinct=len(counts),
                )
            )
            continue
        numbers = values.astype(float).dropna()
        count = len(numbers)
        profiles.append(
            FeatureProfile(
                column=column, input_name=names[column], kind=kind, count=count, missing=len(values) - count,
                minimum=float(numbers.min()) if count else None, maximum=float(numbers.max()) if count else None,
                mean=float(numbers.mean()) if count else None, std=float(numbers.std(ddof=0)) if count else None,
                quantiles=tuple(float(q) for q in np.quantile(numbers, np.linspace(0, 1, 11))) if count else (),
            )
        )
    labels = frame[label].astype(int).value_counts()
    return DataProfile(
        rows=len(frame), features=tuple(profiles), label=label, label_counts={int(str(k)): int(v) for k, v in labels.items()}
    )


def dataset_profile(dataset: Dataset) -> DataProfile:
    """The profile ingest attached to the data set, or one computed from its Parquet file where none is attached."""
    if dataset.profile is not None:
        return dataset.profile
    frame = pd.read_parquet(dataset.path, columns=[*dataset.features, dataset.label])
    return profile_frame(frame, dataset.features, dataset.label)

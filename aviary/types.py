"""Small typed results that steps hand each other: paths and numbers, never frames or models."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from aviary.profile import DataProfile


class _Result(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Dataset(_Result):
    """A validated data set: `path` is a Parquet file of exactly the feature and label columns.

    Features are float64, bool or string columns (null where missing), the label int8 0/1. A
    training split carries its `profile`, computed while it was written.
    """

    path: Path
    source: Path
    rows: int
    fingerprint: str
    features: tuple[str, ...]
    label: str
    profile: DataProfile | None = None


class Split(_Result):
    train: Dataset
    eval: Dataset


class TrainedModel(_Result):
    path: Path
    epochs_run: int
    final_loss: float
    final_val_loss: float


class EvalReport(_Result):
    threshold: float
    precision: float
    recall: float
    f1: float
    accuracy: float
    roc_auc: float
    pr_auc: float
    confusion_matrix: tuple[tuple[int, int], tuple[int, int]]
    rows: int


class Verdict(_Result):
    blessed: bool
    reasons: tuple[str, ...]
    baseline_version: int | None = None


class ModelVersion(_Result):
    model: str
    version: int
    path: Path

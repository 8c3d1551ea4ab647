"""Small typed results that steps hand each other: paths and numbers, never frames or models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

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
    epoch_limit: int | None = None
    """The epoch bound training ran under, also when the config left it to the data's size."""
    patience: int | None = None
    """The early-stopping patience it ran under, likewise."""
    final_loss: float
    final_val_loss: float
    profile: DataProfile | None = None
    """The training split's profile the model's preprocessing was built from; its features name the inputs."""


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
    failed: tuple[str, ...] = ()
    """The reasons of the rules that failed, so readers can set them apart from those that passed."""
    baseline_version: int | None = None


class ModelVersion(_Result):
    model: str
    version: int
    path: Path


class Provenance(_Result):
    """How a version came about, beyond its data, metrics and verdict: what export records and nothing else."""

    parameters: dict[str, Any] | None = None
    """The run's PipelineConfig as JSON: with the code version, enough to make the version again."""
    parent_version: int | None = None
    """The version it was judged against."""
    tensorboard_run: str | None = None
    """`<model>/v<version>` under `<runs_dir>/tensorboard`."""
    drift_reference: dict[str, Any] | None = None
    """The training data's bins and shares per numeric feature, for the next version's drift check."""


class BehaviourCase(_Result):
    inputs: dict[str, float | str]
    expect: int


class GoldenSet(_Result):
    """Eval rows with what the exported signature answered for them: the post-deploy check's expectations.

    Stored as `assets.extra/aviary_golden.json`; `class` is the on-disk name of `classes`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, serialize_by_alias=True)

    features: tuple[str, ...]
    label: str
    instances: tuple[dict[str, float | str], ...]
    """Raw values keyed by input name, as a client sends them."""
    labels: tuple[int, ...]
    probability: tuple[float, ...]
    classes: tuple[int, ...] = Field(alias="class")
    cases: tuple[BehaviourCase, ...] = ()
    """Behavioural cases, keyed by input name: inputs and the class they must get."""


class VersionMetadata(_Result):
    """`assets.extra/aviary.json`: what a version is and how it was made. Unknown keys are kept out, not refused."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    model: str
    version: int
    content_id: str
    data_fingerprint: str
    data_source: str
    features: tuple[str, ...]
    label: str
    inputs: dict[str, str] = Field(default_factory=dict)
    """Feature column -> the signature's input name (they differ where the header has spaces or symbols)."""
    threshold: float
    metrics: EvalReport
    verdict: Verdict
    parent_version: int | None = None
    config: dict[str, Any] | None = None
    warmup_records: int = 0
    packages: dict[str, str] = Field(default_factory=dict)
    git_commit: str | None = None
    exported_at: str | None = None
    """ISO 8601, UTC."""
    tensorboard_run: str | None = None
    """`<model>/v<version>`: its run under `<runs_dir>/tensorboard`."""
    profile: DataProfile | None = None
    """The training split's schema and statistics, for the next version's data checks."""
    drift_reference: dict[str, Any] | None = None
    """Per numeric feature, bin edges and the training rows' shares in them (tasks/drift.py)."""


class DriftReport(_Result):
    """The training data against the baseline version's: one reason per drifted feature (or one saying none did)."""

    baseline_version: int | None
    reasons: tuple[str, ...] = ()
    drifted: tuple[str, ...] = ()
    blocking: bool = False
    schema_changed: bool = False
    """Allowed by the config: the baseline version cannot take the new inputs, so it is not compared."""
    scores: dict[str, float] = Field(default_factory=dict)

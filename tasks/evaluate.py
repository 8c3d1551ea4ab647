"""Score a model on the eval set at a decision threshold chosen there."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)

from aviary.config import EvalConfig
from aviary.dataio import tf_batches
from aviary.scores import EXACT_ROWS, Scored, collect
from aviary.tasks.preprocess import load_model, quiet_tf
from aviary.types import Dataset, EvalReport, TrainedModel

DEFAULT_THRESHOLD = 0.5
SCORE_BATCH = 65_536


def choose_threshold(
    labels: np.ndarray, scores: np.ndarray, precision_floor: float, weights: np.ndarray | None = None
) -> float:
    """The threshold with the best recall among those whose precision reaches the floor (`weights`: rows per entry)."""
    precision, recall, thresholds = precision_recall_curve(labels, scores, sample_weight=weights)
    # precision/recall have one more entry than thresholds: the last point has no threshold.
    ok = precision[:-1] >= precision_floor
    if not ok.any():
        return DEFAULT_THRESHOLD
    candidates = np.flatnonzero(ok)
    best = candidates[np.lexsort((-thresholds[candidates], -recall[:-1][candidates]))[0]]
    return float(thresholds[best])


def report(labels: np.ndarray, scores: np.ndarray, threshold: float, weights: np.ndarray | None = None) -> EvalReport:
    """Every metric at the threshold; `weights` (rows per entry) for scores counted by level (aviary.scores)."""
    predicted = (scores >= threshold).astype(int)
    labels = labels.astype(int)
    cm = np.rint(confusion_matrix(labels, predicted, labels=[0, 1], sample_weight=weights)).astype(int)
    return EvalReport(
        threshold=threshold,
        precision=float(precision_score(labels, predicted, zero_division=0, sample_weight=weights)),
        recall=float(recall_score(labels, predicted, zero_division=0, sample_weight=weights)),
        f1=float(f1_score(labels, predicted, zero_division=0, sample_weight=weights)),
        accuracy=float(accuracy_score(labels, predicted, sample_weight=weights)),
        roc_auc=float(roc_auc_score(labels, scores, sample_weight=weights)),
        pr_auc=float(average_precision_score(labels, scores, sample_weight=weights)),
        confusion_matrix=((int(cm[0, 0]), int(cm[0, 1])), (int(cm[1, 0]), int(cm[1, 1]))),
        rows=int(len(labels)) if weights is None else int(weights.sum()),
    )


def report_scored(scored: Scored, threshold: float) -> EvalReport:
    return report(scored.labels, scored.scores, threshold, scored.weights)


def predict_keras(model_path: Path, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """Scores of the trained Keras model for raw inputs keyed by input name."""
    model = load_model(model_path)
    data = tf_inputs(inputs)
    return np.asarray(model.predict(data, batch_size=8192, verbose=0)).reshape(-1)


def tf_inputs(inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    import tensorflow as tf

    return {name: tf.constant(values, dtype=tf.string if values.dtype == object else tf.float32) for name, values in inputs.items()}


def score_keras(model_path: Path, eval_set: Dataset, exact_rows: int = EXACT_ROWS) -> Scored:
    """The model's scores for the eval rows with their labels, streamed batch by batch (aviary.scores)."""
    model = load_model(model_path)
    batches = tf_batches(eval_set, SCORE_BATCH)
    return collect(((labels.numpy(), np.asarray(model.predict_on_batch(inputs))) for inputs, labels in batches), exact_rows)


def score_version(version_dir: Path, eval_set: Dataset, exact_rows: int = EXACT_ROWS) -> Scored:
    """An exported version's serving-signature scores for the eval rows, streamed: what TF Serving would answer."""
    quiet_tf()
    import tensorflow as tf

    signature = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    return collect(
        ((labels.numpy(), signature(**inputs)["probability"].numpy()) for inputs, labels in tf_batches(eval_set, SCORE_BATCH)),
        exact_rows,
    )


def evaluate_model(trained: TrainedModel, eval_set: Dataset, cfg: EvalConfig, exact_rows: int = EXACT_ROWS) -> EvalReport:
    """Metrics from streamed predictions, in memory that stops growing past `exact_rows` eval rows (aviary.scores)."""
    scored = score_keras(trained.path, eval_set, exact_rows)
    threshold = choose_threshold(scored.labels, scored.scores, cfg.precision_floor, scored.weights)
    return report_scored(scored, threshold)


def evaluate_version(version_dir: Path, eval_set: Dataset, threshold: float, exact_rows: int = EXACT_ROWS) -> EvalReport:
    """An exported version on this run's eval set, at the threshold it serves with."""
    return report_scored(score_version(version_dir, eval_set, exact_rows), threshold)


@task(name="evaluate-model")
def evaluate_model_task(trained: TrainedModel, eval_set: Dataset, cfg: EvalConfig) -> EvalReport:
    return evaluate_model(trained, eval_set, cfg)


@task(name="evaluate-version")
def evaluate_version_task(version_dir: Path, eval_set: Dataset, threshold: float) -> EvalReport:
    return evaluate_version(version_dir, eval_set, threshold)

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
from aviary.dataio import label_array, tf_batches
from aviary.tasks.preprocess import load_model, quiet_tf
from aviary.types import Dataset, EvalReport, TrainedModel

DEFAULT_THRESHOLD = 0.5
SCORE_BATCH = 65_536


def choose_threshold(labels: np.ndarray, scores: np.ndarray, precision_floor: float) -> float:
    """The threshold with the best recall among those whose precision reaches the floor."""
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    # precision/recall have one more entry than thresholds: the last point has no threshold.
    ok = precision[:-1] >= precision_floor
    if not ok.any():
        return DEFAULT_THRESHOLD
    candidates = np.flatnonzero(ok)
    best = candidates[np.lexsort((-thresholds[candidates], -recall[:-1][candidates]))[0]]
    return float(thresholds[best])


def report(labels: np.ndarray, scores: np.ndarray, threshold: float) -> EvalReport:
    predicted = (scores >= threshold).astype(int)
    labels = labels.astype(int)
    cm = confusion_matrix(labels, predicted, labels=[0, 1])
    return EvalReport(
        threshold=threshold,
        precision=float(precision_score(labels, predicted, zero_division=0)),
        recall=float(recall_score(labels, predicted, zero_division=0)),
        f1=float(f1_score(labels, predicted, zero_division=0)),
        accuracy=float(accuracy_score(labels, predicted)),
        roc_auc=float(roc_auc_score(labels, scores)),
        pr_auc=float(average_precision_score(labels, scores)),
        confusion_matrix=((int(cm[0, 0]), int(cm[0, 1])), (int(cm[1, 0]), int(cm[1, 1]))),
        rows=int(len(labels)),
    )


def predict_keras(model_path: Path, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """Scores of the trained Keras model for raw inputs keyed by input name."""
    model = load_model(model_path)
    data = tf_inputs(inputs)
    return np.asarray(model.predict(data, batch_size=8192, verbose=0)).reshape(-1)


def tf_inputs(inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    import tensorflow as tf

    return {name: tf.constant(values, dtype=tf.string if values.dtype == object else tf.float32) for name, values in inputs.items()}


def score_keras(model_path: Path, eval_set: Dataset) -> np.ndarray:
    """The model's scores for every eval row in file order, streamed in batches: float32, 4 bytes a row."""
    model = load_model(model_path)
    batches = tf_batches(eval_set, SCORE_BATCH).map(lambda inputs, _: inputs)
    return np.asarray(model.predict(batches, verbose=0), dtype=np.float32).reshape(-1)


def score_version(version_dir: Path, eval_set: Dataset) -> np.ndarray:
    """An exported version's serving-signature scores for every eval row, streamed: what TF Serving would answer."""
    quiet_tf()
    import tensorflow as tf

    signature = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    parts = [signature(**inputs)["probability"].numpy().reshape(-1) for inputs, _ in tf_batches(eval_set, SCORE_BATCH)]
    return np.concatenate(parts).astype(np.float32) if parts else np.empty(0, dtype=np.float32)


def evaluate_model(trained: TrainedModel, eval_set: Dataset, cfg: EvalConfig) -> EvalReport:
    """Metrics from streamed predictions; scores and labels are kept as compact arrays (5 bytes a row)."""
    labels, scores = label_array(eval_set), score_keras(trained.path, eval_set)
    return report(labels, scores, choose_threshold(labels, scores, cfg.precision_floor))


def evaluate_version(version_dir: Path, eval_set: Dataset, threshold: float) -> EvalReport:
    """An exported version on this run's eval set, at the threshold it serves with."""
    return report(label_array(eval_set), score_version(version_dir, eval_set), threshold)


@task(name="evaluate-model")
def evaluate_model_task(trained: TrainedModel, eval_set: Dataset, cfg: EvalConfig) -> EvalReport:
    return evaluate_model(trained, eval_set, cfg)


@task(name="evaluate-version")
def evaluate_version_task(version_dir: Path, eval_set: Dataset, threshold: float) -> EvalReport:
    return evaluate_version(version_dir, eval_set, threshold)

"""Train the classifier with Keras; the result is a path, never the model object."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.exceptions import MissingContextError

from aviary.cache import train_cache_key
from aviary.config import TrainConfig
from aviary.dataio import tf_batches
from aviary.profile import input_names
from aviary.types import Dataset, TrainedModel

MODEL_FILE = "model.keras"
VALIDATION_SPLIT = 0.1
VALIDATION_BATCH = 8192
"""Rows per validation batch: no gradients, so as large as is cheap."""


def load_arrays(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    frame = pd.read_parquet(dataset.path, columns=[*dataset.features, dataset.label])
    features = frame[list(dataset.features)].to_numpy(dtype=np.float32)
    labels = frame[dataset.label].to_numpy(dtype=np.float32)
    return features, labels


def build_model(n_features: int, cfg: TrainConfig) -> Any:
    import keras

    model = keras.Sequential(
        [
            keras.Input(shape=(n_features,), name="features"),
            keras.layers.Dense(cfg.hidden_units, activation="relu", name="hidden"),
            keras.layers.Dense(1, activation="sigmoid", name="probability"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=cfg.learning_rate),
        loss="binary_crossentropy",
        metrics=[keras.metrics.BinaryAccuracy(name="accuracy")],
    )
    return model


def model_inputs(inputs: dict[str, Any], features: tuple[str, ...]) -> Any:
    """What the model takes from a batch of the data reader (`aviary.dataio.tf_batches`): the features stacked."""
    import tensorflow as tf

    names = input_names(features)
    return tf.stack([inputs[names[column]] for column in features], axis=1)


def model_batches(dataset: Dataset, batch_size: int, **options: Any) -> Any:
    """(model input, label) batches streamed from the data set's Parquet file."""
    return tf_batches(dataset, batch_size, **options).map(lambda inputs, label: (model_inputs(inputs, dataset.features), label))


EpochCallback = Callable[[int, int, dict[str, float]], None]
"""Called after each epoch with (epoch from 1, the epoch bound, the epoch's losses and metrics)."""


def train_model(train: Dataset, cfg: TrainConfig, run_dir: Path, on_epoch: EpochCallback | None = None) -> TrainedModel:
    """Early stopping watches a validation share of the training set, so the eval set stays unseen.

    Batches stream from the training split's Parquet file (shuffled each epoch from the seed), so
    memory does not grow with the rows; the validation share is chosen by a hash of the row index.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()
    fit = model_batches(train, cfg.batch_size, seed=cfg.seed, part="fit", holdout=VALIDATION_SPLIT, holdout_seed=cfg.seed)
    held = model_batches(train, VALIDATION_BATCH, part="holdout", holdout=VALIDATION_SPLIT, holdout_seed=cfg.seed)
    model = build_model(len(train.features), cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    progress = [] if on_epoch is None else [keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: on_epoch(epoch + 1, cfg.epochs, {k: float(v) for k, v in (logs or {}).items()})
    )]
    history = model.fit(
        fit,
        validation_data=held,
        epochs=cfg.epochs,
        verbose=0,
        callbacks=[
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience, restore_best_weights=True),
            keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard"), write_graph=False),
            *progress,
        ],
    )
    path = run_dir / MODEL_FILE
    model.save(path)
    losses, val_losses = history.history["loss"], history.history["val_loss"]
    return TrainedModel(
        path=path,
        epochs_run=len(losses),
        final_loss=float(losses[-1]),
        final_val_loss=float(min(val_losses)),
    )


@task(name="train-model", cache_key_fn=train_cache_key, persist_result=True)
def train_model_task(train: Dataset, cfg: TrainConfig, run_dir: Path) -> TrainedModel:
    try:
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] = get_run_logger()
    except MissingContextError:  # called through .fn, outside a run
        logger = logging.getLogger(__name__)

    def log_epoch(epoch: int, bound: int, logs: dict[str, float]) -> None:
        numbers = "  ".join(f"{k} {v:.4f}" for k, v in logs.items() if k != "learning_rate")
        # `progress` lets a command line draw a bar from the same record the run's log keeps.
        logger.info("epoch %d/%d: %s", epoch, bound, numbers, extra={"progress": ("training", epoch, bound)})

    return train_model(train, cfg, run_dir, log_epoch)

"""Train the classifier with Keras; the result is a path, never the model object.

The model takes one raw input per feature, keyed by its input name, and starts with preprocessing
layers built from the training split's profile (tasks/preprocess.py), so the saved model, and the
SavedModel exported from it, do to raw values exactly what training did.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.exceptions import MissingContextError

from aviary.cache import train_cache_key
from aviary.config import TrainConfig
from aviary.dataio import tf_batches
from aviary.profile import DataProfile
from aviary.tasks.preprocess import Encoding, build_inputs, dataset_profile, encode_features, frame_inputs
from aviary.types import Dataset, TrainedModel

MODEL_FILE = "model.keras"
VALIDATION_SPLIT = 0.1
VALIDATION_BATCH = 8192
"""Rows per validation batch: no gradients, so as large as is cheap."""


def load_inputs(dataset: Dataset, profile: DataProfile) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The model's raw inputs (by input name) and the 0/1 labels of a data set's rows."""
    frame = pd.read_parquet(dataset.path, columns=[*dataset.features, dataset.label])
    return frame_inputs(frame, profile), frame[dataset.label].to_numpy(dtype=np.float32)


def encoding(cfg: TrainConfig) -> Encoding:
    return Encoding(max_vocabulary=cfg.max_vocabulary, one_hot_max=cfg.one_hot_max, embedding_dim=cfg.embedding_dim)


def layer_seeds(seed: int) -> Iterator[int]:
    """One seed per layer with random initial weights, drawn from the run's seed in build order."""
    rng = np.random.default_rng(seed)
    while True:
        yield int(rng.integers(1, 2**31 - 1))


def build_model(profile: DataProfile, cfg: TrainConfig) -> Any:
    """Preprocessing from the profile, then `cfg.hidden_units` ReLU layers and a sigmoid.

    Every initial weight is seeded from `cfg.seed`: Keras' unseeded initializers draw from Python's
    process-wide `random`, which any other thread of the process may draw from too."""
    import keras

    seeds = layer_seeds(cfg.seed)
    inputs = build_inputs(profile)
    x = encode_features(inputs, profile, encoding(cfg), seeds)
    for i, units in enumerate(cfg.hidden_units):
        x = keras.layers.Dense(units, activation="relu", kernel_initializer=keras.initializers.GlorotUniform(next(seeds)),
                               name="hidden" if i == 0 else f"hidden_{i + 1}")(x)
    probability = keras.layers.Dense(1, activation="sigmoid", kernel_initializer=keras.initializers.GlorotUniform(
        next(seeds)), name="probability")(x)
    model = keras.Model(inputs, probability)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=cfg.learning_rate),
        loss="binary_crossentropy",
        metrics=[keras.metrics.BinaryAccuracy(name="accuracy")],
    )
    return model


def class_weights(profile: DataProfile, mode: str) -> dict[int, float] | None:
    """Balanced: each class's rows weigh rows / (2 * class rows), so both classes count alike in the loss."""
    counts = {c: profile.label_counts.get(c, 0) for c in (0, 1)}
    if mode == "none" or not all(counts.values()):
        return None
    total = sum(counts.values())
    return {c: total / (2 * n) for c, n in counts.items()}


PATIENCE_STEPS = 300
"""Unset patience waits this many gradient steps (rounded up to whole epochs, at least MIN_PATIENCE) for the
validation loss to improve: a fixed count of epochs is a few dozen steps on a few hundred rows, too few to leave a plateau."""
MIN_PATIENCE = 5
DEFAULT_EPOCHS = 40
MIN_STEPS = 20_000
"""An unset epoch bound allows at least this many steps; early stopping still ends small data sets within a few hundred epochs."""


def steps_per_epoch(train: Dataset, cfg: TrainConfig) -> int:
    return max(1, math.ceil(train.rows * (1 - VALIDATION_SPLIT) / cfg.batch_size))


def epochs(train: Dataset, cfg: TrainConfig) -> int:
    """The configured bound, or DEFAULT_EPOCHS, raised on small data sets to MIN_STEPS gradient steps."""
    if cfg.epochs is not None:
        return cfg.epochs
    return max(DEFAULT_EPOCHS, math.ceil(MIN_STEPS / steps_per_epoch(train, cfg)))


def patience(train: Dataset, cfg: TrainConfig) -> int:
    """The configured patience, or enough whole epochs for PATIENCE_STEPS steps."""
    if cfg.patience is not None:
        return cfg.patience
    return max(MIN_PATIENCE, math.ceil(PATIENCE_STEPS / steps_per_epoch(train, cfg)))


def schedule_callbacks(wait: int, cfg: TrainConfig) -> list[Any]:
    """Early stopping on the validation loss (best weights kept), and the learning rate halved after half the wait."""
    import keras

    callbacks: list[Any] = [keras.callbacks.EarlyStopping(monitor="val_loss", patience=wait, restore_best_weights=True)]
    if cfg.reduce_lr_factor < 1:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=cfg.reduce_lr_factor, patience=max(1, wait // 2), min_lr=cfg.learning_rate / 100
        ))
    return callbacks


EpochCallback = Callable[[int, int, dict[str, float]], None]
"""Called after each epoch with (epoch from 1, the epoch bound, the epoch's losses and metrics)."""


def train_model(train: Dataset, cfg: TrainConfig, run_dir: Path, on_epoch: EpochCallback | None = None) -> TrainedModel:
    """Early stopping watches a validation share of the training set, so the eval set stays unseen;
    the weights of the best validation epoch are the ones kept.

    Batches stream from the training split's Parquet file (shuffled each epoch from the seed), so
    memory does not grow with the rows; the validation share is chosen by a hash of the row index.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()
    profile = dataset_profile(train)
    epoch = [0]  # Keras' epoch, which picks each pass's shuffle order
    fit = tf_batches(train, cfg.batch_size, seed=cfg.seed, part="fit", holdout=VALIDATION_SPLIT, holdout_seed=cfg.seed,
                     epoch=lambda: epoch[0])
    held = tf_batches(train, VALIDATION_BATCH, part="holdout", holdout=VALIDATION_SPLIT, holdout_seed=cfg.seed)
    model = build_model(profile, cfg)
    bound, wait = epochs(train, cfg), patience(train, cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    progress = [] if on_epoch is None else [keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: on_epoch(epoch + 1, bound, {k: float(v) for k, v in (logs or {}).items()})
    )]
    history = model.fit(
        fit,
        validation_data=held,
        epochs=bound,
        class_weight=class_weights(profile, cfg.class_weight),
        verbose=0,
        callbacks=[
            keras.callbacks.LambdaCallback(on_epoch_begin=lambda n, logs: epoch.__setitem__(0, n)),
            *schedule_callbacks(wait, cfg),
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
        epoch_limit=bound,
        patience=wait,
        final_loss=float(losses[-1]),
        final_val_loss=float(min(val_losses)),
        profile=profile,
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

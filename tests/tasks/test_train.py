import random
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aviary.config import DataConfig, TrainConfig
from aviary.tasks.evaluate import predict_keras
from aviary.tasks.preprocess import load_model
from aviary.tasks.train import (
    build_model,
    class_weights,
    epochs,
    load_inputs,
    patience,
    schedule_callbacks,
    train_model,
    train_model_task,
)
from aviary.types import Dataset, Split, TrainedModel
from tests.helpers import FAST_TRAIN
from tests.profiles import dataset_with_profile, profile_frame


def test_train_writes_model_and_tensorboard_logs(trained: TrainedModel) -> None:
    assert trained.path.name == "model.keras" and trained.path.is_file()
    assert FAST_TRAIN.epochs is not None and 1 <= trained.epochs_run <= FAST_TRAIN.epochs
    assert trained.final_val_loss < 0.3, "the circle should be learnt"
    assert trained.profile is not None and [f.input_name for f in trained.profile.features] == ["x", "y"]
    events = list((trained.path.parent / "tensorboard").rglob("events.out.tfevents.*"))
    assert events, "TensorBoard logs are written in the run directory"


def test_the_behaviour_cases_of_the_config_hold(trained: TrainedModel) -> None:
    cases = DataConfig().behaviour_cases()
    assert len(cases) == 6
    inputs = {name: np.array([case.inputs[name] for case in cases], dtype=np.float32) for name in ("x", "y")}
    scores = predict_keras(trained.path, inputs)
    assert [int(s >= 0.5) for s in scores] == [case.expect for case in cases]


def test_retraining_with_the_same_seed_gives_the_same_model(
    trained: TrainedModel, circle_split: Split, tmp_path: Path
) -> None:
    """Even while another thread of the process draws from Python's `random` (a client's retry jitter,
    a run-name generator): the initial weights come from the seed alone."""
    stop = threading.Event()
    other = threading.Thread(target=lambda: [random.random() for _ in iter(lambda: stop.wait(0.0001), True)])
    other.start()
    try:
        again = train_model_task.fn(circle_split.train, FAST_TRAIN, tmp_path)
    finally:
        stop.set()
        other.join()
    assert again.epochs_run == trained.epochs_run
    assert again.final_val_loss == trained.final_val_loss
    assert trained.profile is not None
    inputs, _ = load_inputs(circle_split.eval, trained.profile)
    np.testing.assert_array_equal(predict_keras(again.path, inputs), predict_keras(trained.path, inputs))


def test_the_seed_architecture_is_one_config_away() -> None:
    profile = profile_frame(pd.DataFrame({"x": [0.0, 1.0], "y": [1.0, 0.0], "class": [0, 1]}), ["x", "y"], "class")
    model = build_model(profile, TrainConfig(hidden_units=10))  # type: ignore[arg-type]
    dense = [layer for layer in model.layers if layer.__class__.__name__ == "Dense"]
    assert [(layer.name, layer.units) for layer in dense] == [("hidden", 10), ("probability", 1)]
    assert [layer.units for layer in build_model(profile, TrainConfig()).layers if hasattr(layer, "units")] == [64, 32, 1]


def test_balanced_class_weights_count_both_classes_alike() -> None:
    frame = pd.DataFrame({"x": np.arange(100.0), "class": [1] * 10 + [0] * 90})
    profile = profile_frame(frame, ["x"], "class")
    assert class_weights(profile, "balanced") == pytest.approx({0: 100 / 180, 1: 100 / 20})
    assert class_weights(profile, "none") is None


def test_mixed_columns_and_a_header_with_spaces_train_on_raw_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = 600
    colour = rng.choice(["red", "green", "blue"], rows)
    size = rng.normal(1000.0, 300.0, rows)
    frame = pd.DataFrame(
        {"size (m2)": size, "colour": colour, "label": ((colour == "red") ^ (size > 1000)).astype(int)}
    )
    train, _ = dataset_with_profile(frame, tmp_path / "train.parquet", ["size (m2)", "colour"], "label")
    cfg = TrainConfig(epochs=60, learning_rate=0.02, patience=10, seed=1)
    trained = train_model(train, cfg, tmp_path / "run")
    model = load_model(trained.path)
    assert sorted(model.input) == ["colour", "size_m2"] if isinstance(model.input, dict) else True
    inputs = {
        "size_m2": np.array([1500.0, 500.0, 1500.0, 500.0, 1500.0], dtype=np.float32),
        "colour": np.array(["red", "red", "blue", "blue", "purple"], dtype=object),
    }
    scores = predict_keras(trained.path, inputs)
    assert [int(s >= 0.5) for s in scores[:4]] == [0, 1, 1, 0]
    assert np.isfinite(scores).all(), "an unseen category gets an answer"


def _rows(rows: int) -> Dataset:
    return Dataset(path=Path("train.parquet"), source=Path("in.csv"), rows=rows, fingerprint="f", features=("x",), label="y")


def test_unset_patience_and_epoch_bound_count_gradient_steps() -> None:
    cfg = TrainConfig()  # batch 64; 10% of the rows are held out for early stopping
    small, large = _rows(480), _rows(800_000)  # 7 and 11,250 steps per epoch
    assert patience(small, cfg) == 43 and patience(large, cfg) == 5, "300 steps, at least 5 epochs"
    assert epochs(small, cfg) == 2858 and epochs(large, cfg) == 40, "20,000 steps, at least 40 epochs"
    fixed = TrainConfig(epochs=12, patience=3)
    assert (epochs(small, fixed), patience(small, fixed)) == (12, 3), "set values are kept as they are"


def test_the_learning_rate_is_halved_on_a_plateau_unless_turned_off() -> None:
    stop, plateau = schedule_callbacks(10, TrainConfig(learning_rate=0.004))
    assert (stop.patience, stop.restore_best_weights) == (10, True)
    assert (plateau.factor, plateau.patience, plateau.min_lr) == (0.5, 5, pytest.approx(0.00004))
    assert [type(c).__name__ for c in schedule_callbacks(10, TrainConfig(reduce_lr_factor=1))] == ["EarlyStopping"]


def test_a_pass_order_follows_the_epoch_not_how_many_iterators_were_opened(circle_split: Split) -> None:
    """Keras opens a spare iterator at each epoch's end; its prefetch must not shift the next epoch's order."""
    from aviary.dataio import tf_batches

    epoch = [0]
    batches = tf_batches(circle_split.train, 64, seed=7, epoch=lambda: epoch[0])

    def one_pass() -> np.ndarray:
        return np.concatenate([inputs["x"].numpy() for inputs, _ in batches])

    first = one_pass()
    spare = iter(batches)
    next(spare)  # a spare iterator that started reading, as a prefetch would
    assert np.array_equal(one_pass(), first), "the same epoch reads in the same order, spare iterator or not"
    epoch[0] = 1
    second = one_pass()
    assert not np.array_equal(second, first) and np.array_equal(np.sort(second), np.sort(first))

from pathlib import Path

import numpy as np

from aviary.tasks.evaluate import predict_keras
from aviary.tasks.train import load_arrays, train_model_task
from aviary.types import Split, TrainedModel
from tests.helpers import FAST_TRAIN


def test_train_writes_model_and_tensorboard_logs(trained: TrainedModel) -> None:
    assert trained.path.name == "model.keras" and trained.path.is_file()
    assert 1 <= trained.epochs_run <= FAST_TRAIN.epochs
    assert trained.final_val_loss < 0.3, "the circle should be learnt"
    events = list((trained.path.parent / "tensorboard").rglob("events.out.tfevents.*"))
    assert events, "TensorBoard logs are written in the run directory"


def test_retraining_with_the_same_seed_gives_the_same_model(
    trained: TrainedModel, circle_split: Split, tmp_path: Path
) -> None:
    again = train_model_task.fn(circle_split.train, FAST_TRAIN, tmp_path)
    assert again.epochs_run == trained.epochs_run
    assert again.final_val_loss == trained.final_val_loss
    features, _ = load_arrays(circle_split.eval)
    np.testing.assert_array_equal(predict_keras(again.path, features), predict_keras(trained.path, features))

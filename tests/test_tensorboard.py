"""A version's TensorBoard run, read back with TensorBoard's own loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aviary.tensorboard import log_version, run_name, version_logdir


def write_training_logs(run_dir: Path) -> Path:
    from tensorboard.compat.proto import event_pb2
    from tensorboard.plugins.scalar import summary as scalar_summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    logs = run_dir / "tensorboard"
    for sub in ("train", "validation"):
        writer = EventFileWriter(str(logs / sub))
        for epoch, loss in enumerate((0.7, 0.4, 0.2)):
            event = event_pb2.Event(wall_time=1.0, step=epoch)
            event.summary.ParseFromString(scalar_summary.pb("epoch_loss", loss).SerializeToString())
            writer.add_event(event)
        writer.close()
    return logs


def load_runs(logdir: Path) -> dict[str, dict[str, list[str]]]:
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer

    multiplexer = EventMultiplexer().AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    return {run: {"tensors": tags["tensors"]} for run, tags in multiplexer.Runs().items()}


def test_a_version_is_a_named_run_with_hparams_metrics_pr_curve_and_its_training_curves(tmp_path: Path) -> None:
    training = write_training_logs(tmp_path / "runs" / "circle" / "run-1")
    labels = np.array([0, 0, 1, 1, 1, 0])
    scores = np.array([0.1, 0.6, 0.8, 0.7, 0.3, 0.2])
    for version in (3, 4):  # v4 as a cached training: the same original logs, linked again
        log_version(tmp_path / "runs", "circle", version, training, {"epochs": 40, "learning_rate": 0.01},
                    {"f1": 0.9, "precision": 0.95}, labels, scores)
    log_version(tmp_path / "runs", "circle", 4, training, {"epochs": 40}, {"f1": 0.9}, labels, scores)  # a retry

    assert run_name("circle", 4) == "circle/v4"
    assert version_logdir(tmp_path / "runs", "circle", 4) == tmp_path / "runs" / "tensorboard" / "circle" / "v4"
    runs = load_runs(tmp_path / "runs" / "tensorboard")
    assert set(runs) == {"circle/v3", "circle/v3/train", "circle/v3/validation",
                         "circle/v4", "circle/v4/train", "circle/v4/validation"}
    assert {"_hparams_/session_start_info", "eval/f1", "eval/pr_curve"} <= set(runs["circle/v4"]["tensors"])
    assert runs["circle/v4/train"]["tensors"] == ["epoch_loss/scalar_summary"]  # the linked training curves
    assert len(list(version_logdir(tmp_path / "runs", "circle", 4).glob("events.*"))) == 1  # the retry replaced it

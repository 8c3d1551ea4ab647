"""TensorBoard per version: `tensorboard --logdir <runs>/tensorboard` lists one run per version, `<model>/v<version>`.

A version's run holds its hyperparameters (the HParams dashboard), its eval metrics and PR curve, and
links to the training logs under `train/` and `validation/`. A training that came from the cache links
the logs of the run that trained it, so every version has its curves and says where they came from.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

TENSORBOARD_DIR = "tensorboard"
TRAINING_RUNS = ("train", "validation")
"""The subfolders Keras's TensorBoard callback writes."""
PR_THRESHOLDS = 201


def run_name(model: str, version: int) -> str:
    return f"{model}/v{version}"


def version_logdir(runs_dir: Path, model: str, version: int) -> Path:
    return runs_dir / TENSORBOARD_DIR / run_name(model, version)


def _hparam(value: Any) -> bool | int | float | str:
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def log_version(
    runs_dir: Path,
    model: str,
    version: int,
    training_logs: Path,
    hparams: Mapping[str, Any],
    metrics: Mapping[str, float],
    labels: np.ndarray,
    scores: np.ndarray,
    weights: np.ndarray | None = None,
) -> Path:
    """Write the version's run and link its training logs; idempotent, so a retried step changes nothing."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.plugins.hparams import summary_v2 as hp
    from tensorboard.plugins.pr_curve import summary as pr_summary
    from tensorboard.plugins.scalar import summary as scalar_summary
    from tensorboard.plugins.text import summary as text_summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    logdir = version_logdir(runs_dir, model, version)
    logdir.mkdir(parents=True, exist_ok=True)
    for sub in TRAINING_RUNS:
        source, link = training_logs / sub, logdir / sub
        if source.is_dir() and not link.is_symlink():
            link.symlink_to(os.path.relpath(source.resolve(), logdir.resolve()), target_is_directory=True)
    for old in logdir.glob("events.out.tfevents.*"):
        old.unlink()  # a retry writes the run again rather than appending a second copy

    # (tag, summary): the v1 builders suffix their tags ("/scalar_summary"); the plugins go by metadata, not tag.
    summaries = [
        ("_hparams_/session_start_info",
         hp.hparams_pb({k: _hparam(v) for k, v in hparams.items()}, trial_id=run_name(model, version))),
        *((f"eval/{name}", scalar_summary.pb(name, float(value))) for name, value in metrics.items()),
        ("eval/pr_curve", pr_summary.pb("pr_curve", labels=labels.astype(bool), predictions=np.clip(scores, 0, 1),
                                        num_thresholds=PR_THRESHOLDS, weights=weights)),
        ("training_logs", text_summary.pb("training_logs", f"Training curves: `{training_logs}`")),
    ]
    writer = EventFileWriter(str(logdir))
    try:
        now = time.time()
        for tag, summary in summaries:
            event = event_pb2.Event(wall_time=now, step=0)
            # Once TensorFlow is imported the plugins return its Summary class: cross over as bytes.
            event.summary.ParseFromString(summary.SerializeToString())
            event.summary.value[0].tag = tag
            writer.add_event(event)
    finally:
        writer.close()
    return logdir

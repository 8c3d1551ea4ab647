"""The exported signature, called in-process as TF Serving would call it: golden sets and baselines use it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

SIGNATURE = "serving_default"


def predict_saved_model(version_dir: Path, rows: pd.DataFrame, features: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Each output of the serving signature (`probability`, `class`) for these rows, one value per row."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    signature = tf.saved_model.load(str(version_dir)).signatures[SIGNATURE]
    inputs = {name: tf.constant(rows[name].to_numpy(dtype=np.float32)) for name in features}
    return {key: value.numpy().reshape(-1) for key, value in signature(**inputs).items()}

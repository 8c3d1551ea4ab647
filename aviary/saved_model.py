"""The exported signature, called in-process as TF Serving would call it: golden sets and baselines use it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SIGNATURE = "serving_default"


def signature_inputs(rows: pd.DataFrame, inputs: Mapping[str, str], specs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Raw column values under their input names, typed as the signature takes them (strings or float32)."""
    from aviary.tasks.preprocess import category_strings

    values: dict[str, np.ndarray] = {}
    for column, name in inputs.items():
        if specs[name].dtype.name == "string":
            values[name] = category_strings(rows[column])
        else:
            values[name] = pd.to_numeric(rows[column], errors="coerce").to_numpy(dtype=np.float32)
    return values


def predict_saved_model(version_dir: Path, rows: pd.DataFrame, inputs: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Each output of the serving signature (`probability`, `class`) for these rows, one value per row.

    `inputs` maps the rows' columns to the signature's input names (the version's metadata records it).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    signature = tf.saved_model.load(str(version_dir)).signatures[SIGNATURE]
    specs = signature.structured_input_signature[1]
    arrays = signature_inputs(rows, inputs, specs)
    tensors = {name: tf.constant(value, dtype=specs[name].dtype) for name, value in arrays.items()}
    return {key: value.numpy().reshape(-1) for key, value in signature(**tensors).items()}

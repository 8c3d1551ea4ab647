"""Canaries that pass the golden set yet misbehave on live traffic: exported versions re-wrapped in place.

The golden set is regenerated from the wrapped model, so the post-deploy check passes and only the
live analysis can tell.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from aviary.store import GOLDEN_FILE


def rewrap(version_dir: Path, transform: Callable[..., dict[str, object]]) -> None:
    """Replace the version's serving signature by `transform(inputs, outputs, threshold)` of the original."""
    import tensorflow as tf

    meta = json.loads((version_dir / "assets.extra" / "aviary.json").read_text())
    features, threshold = meta["features"], float(meta["threshold"])
    module = tf.Module()
    module.base = tf.saved_model.load(str(version_dir))
    signature = module.base.signatures["serving_default"]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name=name) for name in features])
    def serve(*columns: tf.Tensor) -> dict[str, tf.Tensor]:
        inputs = dict(zip(features, columns, strict=True))
        return transform(inputs, signature(**inputs), threshold)

    with tempfile.TemporaryDirectory(dir=version_dir.parent) as tmp:
        tf.saved_model.save(module, tmp, signatures={"serving_default": serve})
        (version_dir / "saved_model.pb").unlink()
        shutil.rmtree(version_dir / "variables")
        shutil.move(Path(tmp) / "saved_model.pb", version_dir / "saved_model.pb")
        shutil.move(Path(tmp) / "variables", version_dir / "variables")

    golden = json.loads((version_dir / GOLDEN_FILE).read_text())
    reloaded = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    answer = reloaded(**{f: tf.constant([row[f] for row in golden["instances"]], tf.float32) for f in features})
    golden["probability"] = answer["probability"].numpy().astype(float).tolist()
    golden["class"] = answer["class"].numpy().astype(int).tolist()
    (version_dir / GOLDEN_FILE).write_text(json.dumps(golden))


def fail_out_of_range(version_dir: Path, limit: float = 2.0) -> None:
    """A canary that fails every request with x >= `limit`: inputs the golden set never holds."""
    import tensorflow as tf

    def transform(inputs: dict[str, tf.Tensor], outputs: dict[str, tf.Tensor], _t: float) -> dict[str, tf.Tensor]:
        check = tf.debugging.assert_less(inputs["x"], limit, message="feature x out of the trained range")
        with tf.control_dependencies([check]):
            return {key: tf.identity(value) for key, value in outputs.items()}

    rewrap(version_dir, transform)


def drift(version_dir: Path, shift: float = 0.3, ring: tuple[float, float] = (0.5, 1.3)) -> None:
    """A canary whose probabilities sit `shift` above the original's for inputs at a radius within `ring`:
    it agrees with itself (the golden set) and keeps the behavioural cases (deep inside, far outside),
    but not with stable on live traffic near the circle's edge."""
    import tensorflow as tf

    def transform(inputs: dict[str, tf.Tensor], outputs: dict[str, tf.Tensor], threshold: float
                  ) -> dict[str, tf.Tensor]:
        radius = tf.sqrt(inputs["x"] ** 2 + inputs["y"] ** 2)
        inside = tf.logical_and(radius >= ring[0], radius <= ring[1])
        original = outputs["probability"]
        moved = tf.clip_by_value(original + shift, 0.0, 1.0)
        probability = tf.where(tf.reshape(inside, tf.shape(original)), moved, original)
        return {"probability": probability, "class": tf.cast(probability >= threshold, tf.int64)}

    rewrap(version_dir, transform)

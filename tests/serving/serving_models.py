"""Tiny SavedModels for the serving tests, written in TF Serving's <base>/<version>/ layout."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def save_circle_model(path: Path, bias: float = 0.0) -> Path:
    """Named float inputs x, y -> probability (sigmoid of x+y+bias) and class (int64, p > 0.5)."""
    import tensorflow as tf

    class Circle(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bias = tf.Variable(bias, dtype=tf.float32)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x"),
                                      tf.TensorSpec([None], tf.float32, name="y")])
        def serve(self, x: tf.Tensor, y: tf.Tensor) -> dict[str, tf.Tensor]:
            p = tf.sigmoid(x + y + self.bias)
            return {"probability": p, "class": tf.cast(p > 0.5, tf.int64)}

        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="features")])
        def matrix(self, features: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"scores": features * 2.0}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def echo(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"text_bytes": text, "length": tf.strings.length(text)}

    module = Circle()
    tf.saved_model.save(module, str(path), signatures={
        "serving_default": module.serve, "matrix": module.matrix, "echo": module.echo,
    })
    return path


def save_half_plus_two(path: Path) -> Path:
    """y = 0.5x + 2 with predict, classify_x_to_y and regress_x_to_y (Example-parsing) signatures."""
    import tensorflow as tf

    class HalfPlusTwo(tf.Module):
        def _y(self, x: tf.Tensor) -> tf.Tensor:
            return 0.5 * x + 2.0

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def predict(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": self._y(x)}

        def _parse(self, serialized: tf.Tensor) -> tf.Tensor:
            feats = tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([1], tf.float32)})
            return feats["x"]

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def regress(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"outputs": self._y(self._parse(inputs))}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"scores": self._y(self._parse(inputs))}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify_both(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
            x = self._parse(inputs)
            scores = tf.concat([x, self._y(x)], axis=1)
            n = tf.shape(x)[0]
            classes = tf.tile(tf.constant([["x", "y"]]), [n, 1])
            return {"scores": scores, "classes": classes}

    module = HalfPlusTwo()
    tf.saved_model.save(module, str(path), signatures={
        "serving_default": module.predict, "regress_x_to_y": module.regress,
        "classify_x_to_y": module.classify, "classify_both": module.classify_both,
    })
    return path




def write_tfrecords(path: Path, records: Iterable[bytes]) -> None:
    """TFRecord framing via TF's own writer, so the CRCs are real."""
    import tensorflow as tf

    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


def predict_log(model: str, x: float, y: float) -> bytes:
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    entry = prediction_log_pb2.PredictionLog()
    request = entry.predict_log.request
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([x], dtype=tf.float32))
    request.inputs["y"].CopyFrom(tf.make_tensor_proto([y], dtype=tf.float32))
    return entry.SerializeToString()


def corrupt_model(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "saved_model.pb").write_bytes(b"\xff\xfe this is not a SavedModel")
    return path




def save_counter_model(path: Path) -> Path:
    """Counts its calls: `calls` is how many predicts (warmup included) this version has run."""
    import tensorflow as tf

    class Counter(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.count = tf.Variable(0, dtype=tf.int64)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            calls = self.count.assign_add(1)
            return {"calls": tf.fill(tf.shape(x), calls)}

    module = Counter()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def predict_log_x(model: str, x: float) -> bytes:
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    entry = prediction_log_pb2.PredictionLog()
    request = entry.predict_log.request
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([x], dtype=tf.float32))
    return entry.SerializeToString()


def save_slow_model(path: Path, matmuls: int = 40) -> Path:
    """Takes tens of milliseconds per call (chained 256x256 matmuls), for deadline tests."""
    import tensorflow as tf

    class Slow(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = tf.Variable(tf.eye(256) * 0.5)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            acc = tf.eye(256)
            for _ in range(matmuls):
                acc = tf.matmul(acc, self.m) + tf.eye(256)
            return {"y": x + tf.reduce_sum(acc) * 0.0}

    module = Slow()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def save_row_sum_model(path: Path) -> Path:
    """x [batch, width] floats -> total [batch]: a large request with a small answer."""
    import tensorflow as tf

    class RowSum(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"total": tf.reduce_sum(x, axis=1)}

    module = RowSum()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path

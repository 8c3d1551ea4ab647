import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from aviary.config import EvalConfig, ExportConfig
from aviary.store import GOLDEN_FILE, METADATA_FILE, WARMUP_FILE, ModelStore
from aviary.tasks.evaluate import evaluate_model, predict_keras
from aviary.tasks.export import ExportError, export_model, export_model_task
from aviary.tasks.train import load_arrays
from aviary.types import EvalReport, Split, TrainedModel, Verdict

BLESSED = Verdict(blessed=True, reasons=("precision 0.95 >= floor 0.80",))


@pytest.fixture(scope="module")
def evaluation(trained: TrainedModel, circle_split: Split) -> EvalReport:
    return evaluate_model(trained, circle_split.eval, EvalConfig())


def export(trained: TrainedModel, split: Split, evaluation: EvalReport, store: Path, version: int = 1) -> Path:
    cfg = ExportConfig(store=store, model_name="circle", warmup_records=7, golden_rows=50)
    return export_model(trained, split.eval, evaluation, BLESSED, version, cfg).path


def test_export_writes_tf_serving_layout(
    trained: TrainedModel, circle_split: Split, evaluation: EvalReport, tmp_path: Path
) -> None:
    path = export(trained, circle_split, evaluation, tmp_path)
    assert path == tmp_path / "circle" / "1"
    assert (path / "saved_model.pb").is_file() and (path / "variables").is_dir()
    assert [p.name for p in (tmp_path / "circle").iterdir()] == ["1"], "no temporary directory is left behind"
    meta = json.loads((path / METADATA_FILE).read_text())
    assert meta["version"] == 1 and meta["threshold"] == evaluation.threshold
    assert meta["data_fingerprint"] == circle_split.eval.fingerprint
    assert meta["metrics"]["precision"] == evaluation.precision and meta["verdict"]["blessed"]
    assert {"python", "tensorflow", "keras", "prefect"} <= set(meta["packages"])


def test_signature_reproduces_keras_predictions_with_named_inputs_and_outputs(
    trained: TrainedModel, circle_split: Split, evaluation: EvalReport, tmp_path: Path
) -> None:
    path = export(trained, circle_split, evaluation, tmp_path)
    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    assert set(signature.structured_input_signature[1]) == {"x", "y"}
    assert set(signature.structured_outputs) == {"probability", "class"}
    features, _ = load_arrays(circle_split.eval)
    out = signature(x=tf.constant(features[:, 0]), y=tf.constant(features[:, 1]))
    expected = predict_keras(trained.path, features)
    np.testing.assert_allclose(out["probability"].numpy(), expected, atol=1e-6)
    np.testing.assert_array_equal(out["class"].numpy(), (expected >= evaluation.threshold).astype(np.int64))
    deep_inside, far_outside = signature(x=tf.constant([0.0, 1.4]), y=tf.constant([0.05, 1.4]))["class"].numpy()
    assert (deep_inside, far_outside) == (1, 0)


def test_warmup_records_and_golden_set(
    trained: TrainedModel, circle_split: Split, evaluation: EvalReport, tmp_path: Path
) -> None:
    path = export(trained, circle_split, evaluation, tmp_path)
    records = list(tf.data.TFRecordDataset(str(path / WARMUP_FILE)).as_numpy_iterator())
    assert len(records) == 7
    log = prediction_log_pb2.PredictionLog.FromString(records[0])
    assert log.WhichOneof("log_type") == "predict_log"
    assert log.predict_log.request.model_spec.name == "circle"
    assert set(log.predict_log.request.inputs) == {"x", "y"}

    golden = json.loads((path / GOLDEN_FILE).read_text())
    eval_rows = pd.read_parquet(circle_split.eval.path).head(50)
    assert golden["instances"] == eval_rows[["x", "y"]].to_dict(orient="records")
    features = eval_rows[["x", "y"]].to_numpy(dtype=np.float32)
    np.testing.assert_allclose(golden["probability"], predict_keras(trained.path, features), atol=1e-6)
    assert len(golden["class"]) == len(golden["labels"]) == 50


def test_re_export_of_the_same_version_changes_nothing(
    trained: TrainedModel, circle_split: Split, evaluation: EvalReport, tmp_path: Path
) -> None:
    path = export(trained, circle_split, evaluation, tmp_path)
    before = {p: p.stat().st_mtime_ns for p in path.rglob("*")}
    again = export_model_task.fn(
        trained, circle_split.eval, evaluation, BLESSED, 1, ExportConfig(store=tmp_path, model_name="circle")
    )
    assert again.path == path
    assert {p: p.stat().st_mtime_ns for p in path.rglob("*")} == before


def test_existing_version_with_other_content_is_never_overwritten(
    trained: TrainedModel, circle_split: Split, evaluation: EvalReport, tmp_path: Path
) -> None:
    export(trained, circle_split, evaluation, tmp_path)
    other = evaluation.model_copy(update={"threshold": 0.123})
    with pytest.raises(ExportError, match="already exists with other content"):
        export(trained, circle_split, other, tmp_path)
    assert ModelStore(tmp_path, "circle").metadata(1).threshold == evaluation.threshold


def test_a_version_that_is_not_blessed_is_not_exported(
    trained: TrainedModel, circle_split: Split, evaluation: EvalReport, tmp_path: Path
) -> None:
    rejected = Verdict(blessed=False, reasons=("recall 0.50 < floor 0.80",))
    with pytest.raises(ExportError, match="not blessed: recall 0.50 < floor 0.80"):
        export_model(trained, circle_split.eval, evaluation, rejected, 1, ExportConfig(store=tmp_path))
    assert not (tmp_path / "circle").exists()


def test_a_failed_export_leaves_no_partial_version(
    trained: TrainedModel, circle_split: Split, evaluation: EvalReport, tmp_path: Path
) -> None:
    (tmp_path / "corrupt.keras").write_bytes(b"not a keras archive")
    broken = trained.model_copy(update={"path": tmp_path / "corrupt.keras"})
    with pytest.raises(ValueError):
        export(broken, circle_split, evaluation, tmp_path / "store")
    assert list((tmp_path / "store" / "circle").iterdir()) == []

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from aviary.behaviour import Case
from aviary.config import EvalConfig, ExportConfig, TrainConfig
from aviary.store import GOLDEN_FILE, METADATA_FILE, WARMUP_FILE, ModelStore
from aviary.tasks.evaluate import evaluate_model, predict_keras
from aviary.tasks.export import ExportError, export_model, export_model_task
from aviary.tasks.train import load_inputs, train_model
from aviary.types import Dataset, EvalReport, Split, TrainedModel, Verdict
from tests.profiles import dataset_with_profile

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
    inputs, _ = load_inputs(circle_split.eval, trained.profile)  # type: ignore[arg-type]
    out = signature(x=tf.constant(inputs["x"]), y=tf.constant(inputs["y"]))
    expected = predict_keras(trained.path, inputs)
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
    features = {name: eval_rows[name].to_numpy(dtype=np.float32) for name in ("x", "y")}
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
    with pytest.raises(ExportError) as error:
        export(broken, circle_split, evaluation, tmp_path / "store")
    assert str(error.value).startswith("export of circle v1 failed, nothing written: ")
    assert "\n" not in str(error.value) and len(str(error.value)) < 400
    assert list((tmp_path / "store" / "circle").iterdir()) == []


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainedModel, Dataset]:
    """A model on a header with spaces and symbols, a string column, a boolean and missing numbers."""
    rng = np.random.default_rng(5)
    rows = 400
    frame = pd.DataFrame(
        {
            "mean radius": rng.normal(14.0, 3.0, rows),
            "area error": rng.normal(40.0, 40.0, rows),
            "colour": rng.choice(["red", "green", "it's blue"], rows),
            "label": rng.integers(0, 2, rows),
        }
    )
    frame.loc[::7, "area error"] = np.nan
    root = tmp_path_factory.mktemp("mixed")
    features = ("mean radius", "area error", "colour")
    train, _ = dataset_with_profile(frame.iloc[:300], root / "train.parquet", features, "label")
    evaluation, _ = dataset_with_profile(frame.iloc[300:], root / "eval.parquet", features, "label")
    trained = train_model(train, TrainConfig(epochs=2, seed=1), root / "run")
    return trained, evaluation


def test_any_header_exports_valid_typed_inputs_recorded_in_metadata(
    mixed: tuple[TrainedModel, Dataset], tmp_path: Path
) -> None:
    trained, eval_set = mixed
    report = EvalReport(
        threshold=0.5, precision=1, recall=1, f1=1, accuracy=1, roc_auc=1, pr_auc=1, confusion_matrix=((1, 0), (0, 1)), rows=2
    )
    cases = (Case(inputs={"mean radius": 14.0, "area error": 1e30, "colour": "never seen"}, expect=1),)
    cfg = ExportConfig(store=tmp_path, model_name="cells", warmup_records=5, golden_rows=20)
    path = export_model(trained, eval_set, report, BLESSED, 1, cfg, cases=cases).path
    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    specs = signature.structured_input_signature[1]
    assert {name: spec.dtype for name, spec in specs.items()} == {
        "mean_radius": tf.float32, "area_error": tf.float32, "colour": tf.string
    }
    meta = ModelStore(tmp_path, "cells").metadata(1)
    assert meta.inputs == {"mean radius": "mean_radius", "area error": "area_error", "colour": "colour"}
    assert meta.profile is not None and meta.profile.feature("area error").missing > 0

    golden = ModelStore(tmp_path, "cells").golden(1)
    assert set(golden.instances[0]) == {"mean_radius", "area_error", "colour"}
    assert all(isinstance(i["colour"], str) for i in golden.instances)
    assert golden.cases[0].inputs == {"mean_radius": 14.0, "area_error": 1e30, "colour": "never seen"}
    out = signature(
        mean_radius=tf.constant([14.0, np.nan]), area_error=tf.constant([1e30, -np.inf]),
        colour=tf.constant(["never seen", ""]),
    )
    assert np.isfinite(out["probability"].numpy()).all()

    log = prediction_log_pb2.PredictionLog.FromString(
        next(tf.data.TFRecordDataset(str(path / WARMUP_FILE)).as_numpy_iterator())
    )
    assert log.predict_log.request.inputs["colour"].dtype == tf.string.as_datatype_enum

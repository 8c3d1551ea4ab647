"""Export a blessed model as a TF Serving version: SavedModel, warmup records, golden set, metadata.

The version is written to a temporary directory beside its final place and renamed into it,
so TF Serving never sees half a version; a retry with the same version changes nothing.
"""

from __future__ import annotations

import hashlib
import platform
import shutil
import subprocess
import tempfile
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path

import pandas as pd
from prefect import task

from aviary.behaviour import Case
from aviary.config import ExportConfig
from aviary.dataio import head_frame
from aviary.durable import commit_rename, fsync_tree, temp_prefix
from aviary.files import file_digest
from aviary.profile import DataProfile
from aviary.saved_model import SIGNATURE, predict_saved_model
from aviary.store import GOLDEN_FILE, METADATA_FILE, WARMUP_FILE, ModelStore, write_json_atomic
from aviary.tasks.preprocess import (
    dataset_profile,
    frame_inputs,
    input_dtype,
    is_categorical,
    json_instances,
    load_model,
    quiet_tf,
)
from aviary.types import (
    BehaviourCase,
    Dataset,
    EvalReport,
    GoldenSet,
    ModelVersion,
    Provenance,
    TrainedModel,
    Verdict,
    VersionMetadata,
)

PACKAGES = ("tensorflow", "tensorflow-cpu", "keras", "prefect", "pandas", "scikit-learn", "numpy")

NO_PROVENANCE = Provenance()


class ExportError(RuntimeError):
    pass


def _one_line(error: BaseException, limit: int = 300) -> str:
    """TensorFlow's errors run over many lines; the first `limit` characters on one line say enough."""
    text = " ".join(str(error).split())
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def package_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return found


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def write_saved_model(model_path: Path, profile: DataProfile, threshold: float, out: Path) -> None:
    """One named input per feature (float32, or string for categories), raw values in; outputs `probability`
    and `class` at the threshold."""
    quiet_tf()
    import keras
    import tensorflow as tf

    model = load_model(model_path)
    names = [f.input_name for f in profile.features]
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(*columns: tf.Tensor) -> dict[str, tf.Tensor]:
        probability = tf.reshape(model(dict(zip(names, columns, strict=True))), [-1])
        return {"probability": probability, "class": tf.cast(probability >= threshold, tf.int64)}

    archive.add_endpoint(
        name=SIGNATURE,
        fn=serve,
        input_signature=[
            tf.TensorSpec([None], tf.string if input_dtype(f) == "string" else tf.float32, name=f.input_name)
            for f in profile.features
        ],
    )
    archive.write_out(str(out), verbose=False)


def write_warmup(path: Path, model: str, rows: pd.DataFrame, profile: DataProfile) -> int:
    """One single-instance PredictionLog per row, the format TF Serving replays before serving."""
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    path.parent.mkdir(parents=True, exist_ok=True)
    inputs = frame_inputs(rows, profile)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i in range(len(rows)):
            request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model, signature_name=SIGNATURE))
            for name, values in inputs.items():
                dtype = tf.string if values.dtype == object else tf.float32
                request.inputs[name].CopyFrom(tf.make_tensor_proto([values[i]], dtype=dtype))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return len(rows)


def golden_rows(rows: pd.DataFrame, profile: DataProfile, n: int) -> pd.DataFrame:
    """The first `n` eval rows without missing numbers: JSON (and so the post-deploy check) cannot carry NaN."""
    numeric = [f.column for f in profile.features if not is_categorical(f)]
    complete = rows.dropna(subset=numeric) if numeric else rows
    return complete.head(n)


def case_inputs(cases: tuple[Case, ...], profile: DataProfile) -> tuple[BehaviourCase, ...]:
    names = {f.column: f.input_name for f in profile.features}
    return tuple(BehaviourCase(inputs={names[c]: v for c, v in case.inputs.items()}, expect=case.expect) for case in cases)


def export_model(
    trained: TrainedModel,
    eval_set: Dataset,
    evaluation: EvalReport,
    verdict: Verdict,
    version: int,
    cfg: ExportConfig,
    provenance: Provenance = NO_PROVENANCE,
    cases: tuple[Case, ...] = (),
) -> ModelVersion:
    """Anything that fails on the way is one line (ExportError) naming the version, and leaves nothing behind."""
    if not verdict.blessed:
        raise ExportError(f"version {version} is not blessed: {'; '.join(verdict.reasons)}")
    store = ModelStore(cfg.store, cfg.model_name)
    final = store.version_dir(version)
    content_id = hashlib.sha256(
        f"{file_digest(trained.path)}:{evaluation.threshold!r}:{eval_set.fingerprint}".encode()
    ).hexdigest()
    if final.exists():
        existing = store.metadata(version).content_id
        if existing != content_id:
            raise ExportError(f"{final}: version {version} already exists with other content; refusing to overwrite it")
        return ModelVersion(model=cfg.model_name, version=version, path=final)

    profile = trained.profile or dataset_profile(eval_set)
    inputs = {f.column: f.input_name for f in profile.features}
    store.base.mkdir(parents=True, exist_ok=True)
    store.remove_stale_temps()  # what killed exports left behind
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(str(version)), dir=store.base))
    try:
        write_saved_model(trained.path, profile, evaluation.threshold, tmp)
        rows = head_frame(eval_set, max(2 * cfg.golden_rows, cfg.warmup_records))  # not the whole eval set
        golden = golden_rows(rows, profile, cfg.golden_rows)
        served = predict_saved_model(tmp, golden, inputs)
        golden_set = GoldenSet(
            features=eval_set.features,
            label=eval_set.label,
            instances=tuple(json_instances(golden, profile)),
            labels=tuple(golden[eval_set.label].astype(int).tolist()),
            probability=tuple(served["probability"].astype(float).tolist()),
            classes=tuple(served["class"].astype(int).tolist()),
            cases=case_inputs(cases, profile),
        )
        write_json_atomic(tmp / GOLDEN_FILE, golden_set.model_dump(mode="json"))
        warmup = write_warmup(tmp / WARMUP_FILE, cfg.model_name, rows.head(cfg.warmup_records), profile)
        metadata = VersionMetadata(
            model=cfg.model_name,
            version=version,
            parent_version=provenance.parent_version,
            content_id=content_id,
            data_fingerprint=eval_set.fingerprint,
            data_source=str(eval_set.source),
            features=eval_set.features,
            label=eval_set.label,
            inputs=inputs,
            threshold=evaluation.threshold,
            metrics=evaluation,
            verdict=verdict,
            config=provenance.parameters,
            warmup_records=warmup,
            packages=package_versions(),
            git_commit=git_commit(),
            exported_at=datetime.now(UTC).isoformat(timespec="seconds"),
            tensorboard_run=provenance.tensorboard_run,
            profile=profile,
            drift_reference=provenance.drift_reference,
        )
        write_json_atomic(tmp / METADATA_FILE, metadata.model_dump(mode="json"))
        fsync_tree(tmp)  # the version's bytes are on disk before its name is
        commit_rename(tmp, final, "version")  # atomic; fails if a concurrent export won the race
    except Exception as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportError(f"export of {cfg.model_name} v{version} failed, nothing written: {_one_line(error)}") from error
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ModelVersion(model=cfg.model_name, version=version, path=final)


@task(name="export-model")
def export_model_task(
    trained: TrainedModel,
    eval_set: Dataset,
    evaluation: EvalReport,
    verdict: Verdict,
    version: int,
    cfg: ExportConfig,
    provenance: Provenance = NO_PROVENANCE,
    cases: tuple[Case, ...] = (),
) -> ModelVersion:
    return export_model(trained, eval_set, evaluation, verdict, version, cfg, provenance, cases)

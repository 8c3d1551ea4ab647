"""The pipeline's one parameter. Every step receives only its own slice."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$"


def _blank_is_none(value: Any) -> Any:
    empty = value == "" or (isinstance(value, dict) and not any(value.values()))  # a form's empty field or section
    return None if empty else value


def _plain(schema: dict[str, Any]) -> None:
    """An optional value is a plain field in the UI's form, left empty when unset, not a toggle between types."""
    branches = [s for s in schema.pop("anyOf", []) if s.get("type") != "null"]
    if branches:
        schema.update(branches[0])
    schema.pop("default", None)


Unset = BeforeValidator(_blank_is_none)
"""An empty form field means the value is not set."""


RULES = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "pattern", "minLength",
         "maxLength", "uniqueItems")


def rules_for_the_ui(schema: dict[str, Any], *_: Any) -> None:
    """Copy each property's rules under `allOf`, the form of them that Prefect's UI validates before a run exists.

    The UI passes only some schema keys to its validation (not minimum, maximum or pattern: the server then
    refuses one bad field at a time on submit); `allOf` goes through whole, and means the same to any validator.
    """
    for prop in schema.get("properties", {}).values():
        rules = {k: prop[k] for k in RULES if k in prop}
        if rules and rules not in prop.get("allOf", []):
            prop["allOf"] = [*prop.get("allOf", []), rules]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_extra=rules_for_the_ui)


class DataConfig(_Frozen):
    path: Path = Field(Path("data/circle.csv"), description="CSV file to train on.")
    features: tuple[str, ...] = Field(
        ("x", "y"), min_length=1, json_schema_extra={"uniqueItems": True},
        description="Feature columns, in model input order; none of them the label column.",
    )
    label: str = Field(
        "class",
        min_length=1,
        description="Label column: 0/1 (also 0.0/1.0), true/false or yes/no in any letter case; 1, true and yes are "
        "class 1. Not one of the features.",
    )
    min_rows: int = Field(100, ge=2, description="Fewer valid rows than this fails ingest.")
    categorical: tuple[str, ...] = Field(
        (), description="Features read as categories even when they look numeric (codes); text columns always are."
    )
    missing: Literal["reject", "impute"] = Field(
        "reject",
        description="Empty or NaN feature cells: reject fails ingest naming the first; impute keeps them for training to fill.",
    )

    @model_validator(mode="after")
    def _distinct(self) -> DataConfig:
        seen: set[str] = set()
        for name in self.features:
            if name in seen:
                raise ValueError(f"feature {name!r} is listed twice in features")
            seen.add(name)
        if self.label in seen:
            raise ValueError(f"label {self.label!r} is also listed among the features")
        unknown = [name for name in self.categorical if name not in seen]
        if unknown:
            raise ValueError(f"categorical column {unknown[0]!r} is not among the features {list(self.features)}")
        return self


class SplitConfig(_Frozen):
    eval_fraction: float = Field(0.2, gt=0, lt=1, description="Share of rows held out for evaluation.")
    seed: int = Field(42, description="Seed of the split: a hash of each row's index and the seed picks its side.")
    max_categories: int = Field(
        1000, ge=1, le=1_000_000, description="Most frequent values per categorical feature kept in the training profile."
    )


class TrainConfig(_Frozen):
    hidden_units: int = Field(10, ge=1, le=4096, description="Units of the hidden ReLU layer.")
    epochs: int = Field(40, ge=1, le=10_000, description="Upper bound on epochs; early stopping usually ends sooner.")
    batch_size: int = Field(64, ge=1, le=65_536, description="Rows per gradient step.")
    learning_rate: float = Field(0.01, gt=0, le=1, description="Adam learning rate.")
    patience: int = Field(5, ge=0, description="Epochs without validation-loss improvement before stopping.")
    seed: int = Field(42, description="Seeds weights and shuffling, so a re-run gives the same metrics.")


class EvalConfig(_Frozen):
    precision_floor: float = Field(
        0.9, ge=0, le=1,
        description="The threshold is the one with the best recall at or above this precision (0.5 if none reaches it).",
    )


class GateConfig(_Frozen):
    min_precision: float = Field(0.8, ge=0, le=1, description="Precision floor at the chosen threshold; below it the model is rejected.")
    min_recall: float = Field(0.8, ge=0, le=1, description="Recall floor at the chosen threshold; below it the model is rejected.")
    max_regression: float = Field(
        0.02, ge=0, le=1, description="How far a metric may fall below production's on the same eval set."
    )


class ExportConfig(_Frozen):
    store: Path = Field(Path("models"), description="Model store root; a version is the folder store/model/version.")
    model_name: str = Field("circle", pattern=NAME_PATTERN, description="Model name, as TF Serving and Kubernetes see it.")
    warmup_records: int = Field(100, ge=0, le=1000, description="Warmup requests TF Serving replays before serving.")
    golden_rows: int = Field(200, ge=1, le=10_000, description="Eval rows kept, with their predictions, for the post-deploy check.")


class CheckConfig(_Frozen):
    tolerance: float = Field(1e-4, ge=0, description="Largest allowed |served - exported| probability.")
    p95_budget_ms: float = Field(250.0, gt=0, description="p95 latency budget of one predict call.")
    batch_size: int = Field(20, ge=1, le=1000, description="Instances per predict call.")
    request_timeout_s: float = Field(10.0, gt=0, description="Timeout of one predict request, in seconds.")


class LocalConfig(_Frozen):
    host: str = Field("127.0.0.1", description="Interface the local model server listens on.")
    rest_port: int = Field(8501, ge=1, le=65_535, description="REST port of the local model server.")
    grpc_port: int = Field(8500, ge=1, le=65_535, description="gRPC port of the local model server.")
    state_dir: Path = Field(Path(".aviary/serving"), description="Pid file, model config and logs of the local server.")
    grace_s: float = Field(2.0, ge=0, description="How long the old stable version keeps serving after a promotion.")


class ResourcesConfig(_Frozen):
    requests: dict[str, str] = Field(default_factory=dict, description="e.g. {cpu: 250m, memory: 256Mi}")
    limits: dict[str, str] = Field(default_factory=dict, description="e.g. {cpu: '1', memory: 1Gi}")


class KubernetesConfig(_Frozen):
    kubeconfig: Annotated[Path | None, Unset] = Field(
        None, json_schema_extra=_plain, description="Kubeconfig file; empty: $KUBECONFIG or ~/.kube/config."
    )
    context: Annotated[str | None, Unset] = Field(
        None, json_schema_extra=_plain, description="Kubeconfig context; empty: the current one."
    )
    in_cluster: bool = Field(False, description="Use the pod's service account and in-cluster DNS.")
    namespace: str = Field("aviary", pattern=NAME_PATTERN, description="Namespace of the serving Deployments.")
    image: str = Field("tensorflow/serving:2.19.0", description="TF Serving image, pinned by version.")
    replicas: int = Field(
        2, ge=1, le=100, description="Stable replicas, only where the flow creates the stable track (no overlay applied)."
    )
    canary_replicas: int = Field(1, ge=1, le=100, description="Canary replicas; its traffic share is their ratio.")
    canary_weight: Annotated[int | None, Unset] = Field(
        None, ge=0, le=100, json_schema_extra=_plain,
        description="Canary traffic percent through a Gateway API HTTPRoute; empty: by replica ratio, no route.",
    )
    store_claim: str = Field("aviary-models", description="PersistentVolumeClaim that holds the model store.")
    store_mount: str = Field("/models", description="Where the pods mount the store.")
    copy_image: str = Field("busybox:1.36", description="Image of the Job that copies a version onto the volume.")
    copy_timeout_s: float = Field(300.0, gt=0, description="Deadline of the copy Job, in seconds.")
    resources: Annotated[ResourcesConfig | None, Unset] = Field(
        None, json_schema_extra=_plain,
        description="Serving container resources of the Deployments the flow creates; empty: the stable track's.",
    )
    store_uri: Annotated[str | None, Unset] = Field(
        None, json_schema_extra=_plain,
        description="Object-store base TF Serving reads versions from (gs://..., s3://...); empty: the volume.",
    )
    gateway: str = Field("aviary", description="Gateway API Gateway that the canary HTTPRoute attaches to.")


class RolloutConfig(_Frozen):
    target: Literal["none", "local", "kubernetes"] = Field(
        "local", description="Where versions are served: local (this machine) or kubernetes; none stops after export."
    )
    hand_off: bool = Field(
        False,
        description="Leave the rollout to the canary-deploy deployment: the export event carries these settings to it.",
    )
    ready_timeout_s: float = Field(
        120.0, gt=0, description="Deadline for the canary (and a promotion) to become available; on Kubernetes also the progress deadline."
    )
    lock_timeout_s: float = Field(
        60.0, ge=0, description="How long a rollout waits for another rollout of the same model before refusing."
    )
    check: CheckConfig = Field(CheckConfig(), description="The post-deploy check of the canary.")
    local: LocalConfig = Field(LocalConfig(), description="The local model server (target local).")
    kubernetes: KubernetesConfig = Field(KubernetesConfig(), description="TF Serving in Kubernetes (target kubernetes).")


class RetrainConfig(_Frozen):
    """What retraining uses; PipelineConfig adds where and how the version is rolled out."""

    runs_dir: Path = Field(Path("runs"), description="Run directories: splits, trained model, TensorBoard logs.")
    data: DataConfig = Field(DataConfig(), description="The training CSV and its columns.")
    split: SplitConfig = Field(SplitConfig(), description="The train/eval split.")
    train: TrainConfig = Field(TrainConfig(), description="Model size and training.")
    evaluate: EvalConfig = Field(EvalConfig(), description="How the decision threshold is chosen.")
    gate: GateConfig = Field(GateConfig(), description="Rules a new model must pass to be exported.")
    export: ExportConfig = Field(ExportConfig(), description="The model store and what each version carries.")


class PipelineConfig(RetrainConfig):
    """Retraining and the rollout of what it exports, in one run: the command line's and the retrain flow's parameter."""

    rollout: RolloutConfig = Field(RolloutConfig(), description="Where and how a blessed version is canary-deployed.")

"""The pipeline's one parameter. Every step receives only its own slice."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from aviary.behaviour import Case, default_cases

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$"


def _blank_is_none(value: Any) -> Any:
    # A form's empty field, list or section.
    empty = value in ("", [], ()) or (isinstance(value, dict) and not any(value.values()))
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
         "maxLength", "uniqueItems", "minProperties", "maxProperties", "additionalProperties", "propertyNames")


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


FeatureKind = Literal["auto", "categorical"]
"""auto: numbers are numeric, text is categorical; categorical: always categories, even when they look numeric."""


_DEFAULT_FEATURES: dict[str, FeatureKind] = {"x": "auto", "y": "auto"}


def _features_by_column(data: Any) -> Any:
    """Features as one mapping column -> kind: the older spelling (a list of names plus `categorical`) reads into it.

    In the mapping a column is listed once and a categorical column is a feature by construction, so the
    form's schema holds those rules; the list spelling keeps working for configs and the command line.
    """
    if not isinstance(data, dict):
        return data
    data = dict(data)
    features = data.get("features", _DEFAULT_FEATURES)
    categorical = data.get("categorical") or ()
    categorical = (categorical,) if isinstance(categorical, str) else categorical
    if not _names(categorical):
        raise ValueError(f"categorical must be a list of column names, got {categorical!r}")
    if _names(features):
        kinds: dict[str, str] = {}
        for name in features:
            if name in kinds:
                raise ValueError(f"feature {name!r} is listed twice in features")
            kinds[name] = "auto"
        features = kinds
    if isinstance(features, dict):
        features = dict(features)
        for name in categorical:
            if name not in features:
                raise ValueError(f"categorical column {name!r} is not among the features {list(features)}")
            features[name] = "categorical"
    data.pop("categorical", None)  # read into `features`; the property gives it back
    data["features"] = features
    return data


def _names(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(name, str) for name in value)


class DataConfig(_Frozen):
    path: Path = Field(Path("data/circle.csv"), description="CSV file to train on.")
    features: dict[str, FeatureKind] = Field(
        _DEFAULT_FEATURES, min_length=1,
        description="Feature columns, each with its kind: auto (numbers are numeric, text is categorical) or "
        "categorical (categories even when they look numeric, such as codes). Never the label column.",
    )
    label: str = Field(
        "class",
        min_length=1,
        description="Label column: 0/1 (also 0.0/1.0), true/false or yes/no in any letter case; 1, true and yes are "
        "class 1. Not one of the features.",
    )
    min_rows: int = Field(100, ge=2, description="Fewer valid rows than this fails ingest.")
    cases: Annotated[tuple[Case, ...] | None, Unset] = Field(
        None, json_schema_extra=_plain,
        description="Behavioural cases: inputs (by column) and the class they must get, checked in tests and after "
        "every deploy. Empty: the circle's cases when the features are x and y, none otherwise.",
    )
    missing: Literal["reject", "impute"] = Field(
        "reject",
        description="Empty or NaN feature cells: reject fails ingest naming the first; impute keeps them for training to fill.",
    )

    _by_column = model_validator(mode="before")(_features_by_column)

    @model_validator(mode="after")
    def _distinct(self) -> DataConfig:
        # A backstop for configs that skip the schema: JSON Schema cannot compare the label with the features' names.
        if self.label in self.features:
            raise ValueError(f"label {self.label!r} is also listed among the features")
        for i, case in enumerate(self.cases or (), start=1):
            if set(case.inputs) != set(self.features):
                lacks = [f for f in self.features if f not in case.inputs]
                extra = [c for c in case.inputs if c not in self.features]
                what = f"lacks {lacks}" if lacks else f"has columns that are not features: {extra}"
                raise ValueError(f"data.cases[{i}] {what}")
        return self

    @property
    def columns(self) -> tuple[str, ...]:
        """The feature columns, in model input order: as written (a server that keeps JSON in Postgres sorts them).

        The model's inputs are named, so the order changes only how they are concatenated inside it.
        """
        return tuple(self.features)

    @property
    def categorical(self) -> tuple[str, ...]:
        """The features of kind categorical (the older spelling of them is read into `features`)."""
        return tuple(name for name, kind in self.features.items() if kind == "categorical")

    def behaviour_cases(self) -> tuple[Case, ...]:
        return self.cases if self.cases is not None else default_cases(self.columns)


class SplitConfig(_Frozen):
    eval_fraction: float = Field(0.2, gt=0, lt=1, description="Share of rows held out for evaluation.")
    seed: int = Field(42, description="Seed of the split: a hash of each row's index and the seed picks its side.")
    max_categories: int = Field(
        1000, ge=1, le=1_000_000, description="Most frequent values per categorical feature kept in the training profile."
    )


class TrainConfig(_Frozen):
    hidden_units: tuple[int, ...] = Field(
        (64, 32), min_length=1, description="Units of each hidden ReLU layer; [10] is a single layer of 10."
    )
    epochs: Annotated[int | None, Unset] = Field(
        None, ge=1, le=10_000, json_schema_extra=_plain,
        description="Upper bound on epochs; early stopping usually ends sooner. Empty: 40, or more on small data sets, "
        "enough for 20,000 gradient steps.",
    )
    batch_size: int = Field(64, ge=1, le=65_536, description="Rows per gradient step.")
    learning_rate: float = Field(
        0.001, gt=0, le=1,
        description="Adam's starting learning rate (Keras' default; 0.01 fell short of the baselines of benchmarks/bench_quality.py on a few hundred rows).",
    )
    reduce_lr_factor: float = Field(
        0.5, gt=0, le=1,
        description="The learning rate is multiplied by this when the validation loss stalls (Keras' ReduceLROnPlateau, "
        "after half the patience); 1 keeps it constant.",
    )
    patience: Annotated[int | None, Unset] = Field(
        None, ge=0, json_schema_extra=_plain,
        description="Epochs without validation-loss improvement before stopping. Empty: the epochs of 300 gradient steps, "
        "at least 5, so a few hundred rows are not stopped after a few dozen steps.",
    )
    seed: int = Field(42, description="Seeds weights and shuffling, so a re-run gives the same metrics.")
    class_weight: Literal["balanced", "none"] = Field(
        "none",
        description="balanced: each class weighs as much in the loss as the other, whatever its share. Off by default: "
        "it did not raise ROC AUC in benchmarks/bench_quality.py (and cost 0.05 on one set); the threshold is chosen on the eval set anyway.",
    )
    max_vocabulary: int = Field(
        1000, ge=1, le=1_000_000, description="Most frequent values kept per categorical column; the rest share one bucket."
    )
    one_hot_max: int = Field(1001, ge=2, description="Categorical columns with more values than this get an embedding.")
    embedding_dim: int = Field(8, ge=1, le=1024, description="Size of a categorical embedding.")

    @field_validator("hidden_units", mode="before")
    @classmethod
    def _one_layer(cls, value: object) -> object:
        return (value,) if isinstance(value, int) else value

    @field_validator("hidden_units")
    @classmethod
    def _positive(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(not 1 <= units <= 4096 for units in value):
            raise ValueError(f"hidden layer sizes must be 1..4096, got {list(value)}")
        return value


class EvalConfig(_Frozen):
    precision_floor: float = Field(
        0.9, ge=0, le=1,
        description="The threshold is the one with the best recall at or above this precision (0.5 if none reaches it).",
    )


class DriftConfig(_Frozen):

    psi_limit: float = Field(0.25, gt=0, description="Population stability index above which a numeric feature has drifted.")
    js_limit: float = Field(0.2, gt=0, le=1, description="Jensen-Shannon distance (base 2) above which a categorical feature has drifted.")
    label_shift_limit: float = Field(0.1, gt=0, le=1, description="Largest change of the positive-label share.")
    action: Literal["warn", "block"] = Field("warn", description="What drift does to the gate: a warning, or a rejection.")
    allow_schema_change: bool = Field(
        False, description="Train on a changed feature set; the new model is then not compared with production."
    )


class GateConfig(_Frozen):
    min_precision: float = Field(0.8, ge=0, le=1, description="Precision floor at the chosen threshold; below it the model is rejected.")
    min_recall: float = Field(0.8, ge=0, le=1, description="Recall floor at the chosen threshold; below it the model is rejected.")
    max_regression: float = Field(
        0.02, ge=0, le=1, description="How far a metric may fall below production's on the same eval set."
    )
    drift: DriftConfig = Field(DriftConfig(), description="Training data against production's: drift limits and what drift does.")


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
        description="Canary traffic percent through a Gateway API HTTPRoute (with traffic steps, the steps set it); "
        "empty: by replica ratio, no route.",
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
    shadow_image: str = Field(
        "aviary:0.1.0", description="Flow image (`make image`) of the shadow comparator the Gateway mirrors requests "
        "to during traffic steps; used only with canary_weight.")


class ShadowConfig(_Frozen):
    mirror_percent: int = Field(
        20, ge=0, le=100, description="Share of unversioned requests also sent to the canary, whose answers are "
        "compared with stable's and never reach clients; 0 turns the shadow comparison off.")
    min_rows: int = Field(50, ge=1, description="Compared rows a step needs before its shadow figures are judged.")
    min_class_agreement: float = Field(0.98, ge=0, le=1, description="Least share of rows where both classes agree.")
    max_mean_abs_diff: float = Field(0.05, ge=0, le=1, description="Largest mean |canary - stable probability|.")
    max_p99_abs_diff: float = Field(0.25, ge=0, le=1, description="Largest p99 of |canary - stable probability|.")
    max_positive_rate_shift: float = Field(
        0.05, ge=0, le=1, description="Largest |canary - stable| share of rows predicted positive.")


class ApprovalConfig(_Frozen):
    required: bool = Field(False, description="Pause for a person's decision after the last traffic step.")
    timeout_s: int = Field(3600, ge=1, description="How long to wait for the decision.")
    default: Literal["promote", "roll back"] = Field("roll back", description="What happens when none comes in time.")


class CanaryConfig(_Frozen):
    steps: tuple[int, ...] = Field(
        (10, 25, 50), description="Canary share (%) of unversioned requests at each step, then promotion; "
        "empty: the golden-set check alone decides.")
    bake_s: float = Field(6.0, ge=0, description="Least live traffic time per step before it is judged.")
    max_bake_s: float = Field(
        30.0, gt=0, description="Deadline of one analysis: still too few requests by then counts as a failed check.")
    scrape_interval_s: float = Field(1.0, ge=0, description="Seconds between metrics scrapes while baking.")
    min_requests: int = Field(20, ge=1, description="Canary requests a step needs before it is judged.")
    load_rps: float = Field(
        20.0, ge=0, le=1000, description="Requests/s of golden-set rows the rollout itself sends to the model's "
        "default URL while a step bakes (local: 127.0.0.1; Kubernetes: the model's Service, through the API "
        "server's proxy from outside the cluster), so a canary is judged with no client traffic too; 0 turns it off.")
    max_error_rate_delta: float = Field(
        0.02, ge=0, le=1, description="How far the canary's error rate may exceed stable's.")
    max_latency_ratio: float = Field(2.0, ge=1, description="Canary p95 latency budget, as a multiple of stable's...")
    latency_slack_ms: float = Field(10.0, ge=0, description="...plus this, so sub-millisecond noise is no failure.")
    failed_checks: int = Field(2, ge=1, description="Failed analyses that roll the canary back; they never reset.")
    shadow: ShadowConfig = Field(ShadowConfig(), description="Mirrored requests: canary vs stable predictions.")
    approval: ApprovalConfig = Field(ApprovalConfig(), description="An optional human decision before promotion.")

    @model_validator(mode="after")
    def _rising(self) -> CanaryConfig:
        if any(not 0 < s < 100 for s in self.steps) or list(self.steps) != sorted(set(self.steps)):
            raise ValueError(f"steps must rise strictly between 0 and 100 (exclusive), got {list(self.steps)}")
        if self.steps and self.steps[-1] + self.shadow.mirror_percent > 100:
            raise ValueError(f"the last step {self.steps[-1]}% plus mirror_percent {self.shadow.mirror_percent}% "
                             "exceeds 100 (the server splits and mirrors shares of the same requests)")
        if self.max_bake_s < self.bake_s:
            raise ValueError(f"max_bake_s {self.max_bake_s:g} is below bake_s {self.bake_s:g}")
        return self


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
    canary: CanaryConfig = Field(CanaryConfig(), description="Traffic steps, live analysis and approval after the check.")
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

"""The retrain flow: ingest, split, train, evaluate, gate, export, then roll out on the chosen target."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import uuid
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.events import emit_event
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict

from aviary.cache import result_storage
from aviary.config import PipelineConfig
from aviary.faults import crash_point
from aviary.flows.cli import add_config_arguments, config_from_args, one_line
from aviary.flows.rollout import RolloutFailed, rollout
from aviary.prefect_api import own_prefect_api
from aviary.report import final_state, pictures_markdown
from aviary.report import verdict_markdown as verdict_text
from aviary.store import ModelStore
from aviary.tasks.drift import check_drift_task, reference_task
from aviary.tasks.evaluate import evaluate_model_task, evaluate_version_task
from aviary.tasks.export import export_model_task
from aviary.tasks.gate import gate_model_task
from aviary.tasks.ingest import ingest_csv_task
from aviary.tasks.plots import Baseline, draw_pictures_task
from aviary.tasks.preprocess import dataset_profile
from aviary.tasks.split import split_dataset_task
from aviary.tasks.train import train_model_task
from aviary.types import EvalReport, Provenance, Verdict

EXPORTED_EVENT = "aviary.model.exported"
ANNOUNCE_MARK = "export-to-announce"
ANNOUNCED_MARK = "exported-event"


def idempotency_key(model: str, version: int) -> str:
    """One key per version: canary-deploy acts on the export events that carry it at most once."""
    return f"aviary.model.{model}.{version}"


def announce_exports(store: ModelStore) -> list[int]:
    """Emit the export event of each exported version not yet announced; returns those versions.

    At least once: the event goes out before the mark that it went, so a crash in between sends it
    again, and canary-deploy's idempotency key makes the repeat a no-op.
    """
    sent = []
    exported = set(store.versions())
    for version in store.marked_versions(ANNOUNCE_MARK):
        if version not in exported:
            continue  # not exported (yet): its run may still be at work, or died before the rename
        if store.marked(ANNOUNCED_MARK, version) is None:
            metadata = store.metadata(version)
            intent = store.marked(ANNOUNCE_MARK, version) or {}
            rollout_settings = intent.get("rollout", {})
            emit_event(
                event=EXPORTED_EVENT,
                resource={
                    "prefect.resource.id": f"aviary.model.{store.model}.{version}",
                    "aviary.model.name": store.model,
                    "aviary.model.version": str(version),
                    "aviary.model.path": str(store.version_dir(version).resolve()),
                    "aviary.idempotency-key": idempotency_key(store.model, version),
                    "aviary.retrain.flow-run": intent.get("flow_run", ""),
                    "aviary.rollout.hand-off": str(bool(rollout_settings.get("hand_off"))).lower(),
                },
                # The rollout settings travel with the version, so canary-deploy rolls it out where its run meant to.
                payload={"blessed": True, "metrics": metadata.metrics.model_dump(mode="json"), "rollout": rollout_settings},
            )
            crash_point("after-emit")
            store.mark(ANNOUNCED_MARK, version, key=idempotency_key(store.model, version))
            sent.append(version)
        store.unmark(ANNOUNCE_MARK, version)
    return sent


class RetrainResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str
    version: int
    blessed: bool
    reasons: tuple[str, ...]
    metrics: EvalReport
    baseline_version: int | None
    path: Path | None = None
    rollout: str | None = None
    rollout_reason: str | None = None


def metrics_table(
    candidate: EvalReport, baseline: EvalReport | None, version: int, baseline_version: int | None, baseline_role: str
) -> list[dict[str, Any]]:
    rows = []
    for metric in ("precision", "recall", "f1", "accuracy", "roc_auc", "pr_auc", "threshold"):
        row: dict[str, Any] = {"metric": metric, f"v{version}": round(getattr(candidate, metric), 4)}
        if baseline is not None:
            row[f"{baseline_role} v{baseline_version}"] = round(getattr(baseline, metric), 4)
        rows.append(row)
    return rows


def verdict_markdown(model: str, version: int, verdict: Verdict) -> str:
    return verdict_text(model, version, verdict.blessed, verdict.reasons, verdict.failed)


@flow(name="retrain")
def retrain(config: PipelineConfig = PipelineConfig()) -> RetrainResult:
    """Retrain the model from its CSV; export it when the gate blesses it, then roll it out.

    Args:
        config: Data, training, the gate, the store and the rollout; every field is described below.
    """
    logger = get_run_logger()
    model = config.export.model_name
    store = ModelStore(config.export.store, model)
    run_key = flow_run.get_id() or uuid.uuid4().hex
    run_dir = config.runs_dir / model / run_key

    announce_exports(store)  # versions that a killed run exported but never announced
    results = result_storage(config.runs_dir)  # ingest and training are cached across runs, under runs_dir
    dataset = ingest_csv_task.with_options(result_storage=results)(config.data, config.runs_dir / "datasets")
    split = split_dataset_task(dataset, config.split, run_dir / "split")
    profile = split.train.profile or dataset_profile(split.train)
    train_set = split.train.model_copy(update={"profile": profile})

    baseline_version = store.baseline()
    # Never "production vN" for a version that was never promoted.
    baseline_role = "production" if store.aliases().get("production") is not None else "last blessed"
    production = store.metadata(baseline_version) if baseline_version is not None else None
    # A changed schema stops the run here, before any training, unless the config allows it.
    drift = check_drift_task(
        profile,
        train_set.path,
        production.profile if production else None,
        production.drift_reference if production else None,
        config.gate.drift,
        baseline_version,
        baseline_role,
    )
    trained = train_model_task.with_options(result_storage=results)(train_set, config.train, run_dir)
    evaluation = evaluate_model_task(trained, split.eval, config.evaluate)

    baseline = None
    if production is not None and baseline_version is not None and not drift.schema_changed:
        baseline = evaluate_version_task(store.version_dir(baseline_version), split.eval, production.threshold)
    verdict = gate_model_task(
        evaluation, config.gate, baseline, baseline_version if baseline else None, baseline_role, drift
    )

    version = store.reserve_version(run_key)
    key = model.lower()
    create_table_artifact(
        key=f"{key}-metrics",
        table=metrics_table(evaluation, baseline, version, baseline_version, baseline_role),
        description=f"{model} v{version} on {split.eval.rows} eval rows",
    )
    create_markdown_artifact(key=f"{key}-verdict", markdown=verdict_markdown(model, version, verdict))
    judged = None if baseline is None or baseline_version is None else Baseline(
        version=baseline_version, role=baseline_role, report=baseline)
    hparams = {**config.train.model_dump(), "eval_fraction": config.split.eval_fraction,
               "precision_floor": config.evaluate.precision_floor, "data": str(config.data.path)}
    pictures = draw_pictures_task(trained, split.eval, evaluation, judged, store, version, config.runs_dir, hparams)
    create_markdown_artifact(
        key=f"{key}-pictures",
        markdown=pictures_markdown(f"{model} v{version}", {n: p.read_bytes() for n, p in pictures.pictures.items()},
                                   pictures.pictures["pr_curve"].parent),
        description=f"TensorBoard run {pictures.tensorboard_run}",
    )

    result = RetrainResult(
        model=model,
        version=version,
        blessed=verdict.blessed,
        reasons=verdict.reasons,
        metrics=evaluation,
        baseline_version=baseline_version,
    )
    if not verdict.blessed:
        store.record_rejected(
            version,
            {
                "version": version,
                "run": run_key,
                "data_fingerprint": dataset.fingerprint,
                "metrics": evaluation.model_dump(mode="json"),
                "verdict": verdict.model_dump(mode="json"),
                "config": config.model_dump(mode="json"),
                "tensorboard_run": pictures.tensorboard_run,
            },
        )
        why = "; ".join(verdict.failed)
        logger.info("%s v%s rejected: %s", model, version, why)
        # Its own final state, so the runs list tells a rejected model from a shipped one.
        return final_state(result, "Rejected", f"{model} v{version} rejected: {why}")

    parameters = config.model_dump(mode="json")
    # An unset epoch bound or patience is recorded as the value training resolved from the data's size.
    for key, used in (("epochs", trained.epoch_limit), ("patience", trained.patience)):
        if parameters["train"].get(key) is None:
            parameters["train"][key] = used
    provenance = Provenance(
        parameters=parameters,
        parent_version=baseline_version,
        drift_reference=reference_task(train_set.path, profile),
        tensorboard_run=pictures.tensorboard_run,
    )
    # The export is to be announced, even if this run dies after it, with the rollout settings it chose.
    store.mark(ANNOUNCE_MARK, version, run=run_key, flow_run=flow_run.get_id() or "",
               rollout=config.rollout.model_dump(mode="json", exclude_none=True))
    exported = export_model_task(
        trained, split.eval, evaluation, verdict, version, config.export, provenance, config.data.behaviour_cases()
    )
    logger.info("%s v%s exported to %s", model, version, exported.path)
    crash_point("after-export")
    announce_exports(store)
    result = result.model_copy(update={"path": exported.path})
    if config.rollout.target == "none" or config.rollout.hand_off:
        return final_state(result, "Exported", f"{model} v{version} exported; not rolled out here")
    try:
        deployed = rollout(version, config, idempotency_key=idempotency_key(model, version))
    except RolloutFailed as failure:
        result = result.model_copy(update={"rollout": failure.phase, "rollout_reason": str(failure)})
        return final_state(result, failure.phase, str(failure), failed=True)
    result = result.model_copy(update={"rollout": deployed.phase})
    return final_state(result, str(deployed.phase), f"{model} v{version} {deployed.phase}")


# -- command line -----------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flows.retrain", description=retrain.__doc__)
    parser.add_argument("--data", type=Path, help="CSV to train on (default: data/circle.csv)")
    parser.add_argument("--epochs", type=int, help="upper bound on training epochs")
    add_config_arguments(parser)
    return parser


def describe(result: RetrainResult) -> str:
    m = result.metrics
    lines = [
        f"{result.model} v{result.version}: {'BLESSED' if result.blessed else 'REJECTED'}"
        + (f" and exported to {result.path}" if result.path else " (not exported)"),
        f"  precision {m.precision:.4f}  recall {m.recall:.4f}  f1 {m.f1:.4f}  accuracy {m.accuracy:.4f}"
        f"  roc_auc {m.roc_auc:.4f}  pr_auc {m.pr_auc:.4f}  threshold {m.threshold:.4f}",
        *(f"  - {reason}" for reason in result.reasons),
    ]
    if result.rollout:
        lines.append(f"rollout: v{result.version} {result.rollout}")
    return "\n".join(lines)


def try_it(config: PipelineConfig, result: RetrainResult) -> str:
    """A curl line with a real eval row under the signature's input names, and the names that differ from the header."""
    store = ModelStore(config.export.store, result.model)
    example = store.golden(result.version).instances[0]
    renamed = {c: n for c, n in store.metadata(result.version).inputs.items() if c != n}
    local = config.rollout.local
    body = shlex.quote(json.dumps({"instances": [example]}))
    lines = ["try it:", f"  curl -s -d {body} http://{local.host}:{local.rest_port}/v1/models/{result.model}:predict"]
    if renamed:
        lines.append("  inputs: " + ", ".join(f"{column!r} is {name}" for column, name in renamed.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from aviary.quiet import finish_progress

    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        with own_prefect_api():  # with no API configured, a throwaway one that dies with this process
            state = retrain(config, return_state=True)
            outcome = state.result(raise_on_failure=False)
        if not isinstance(outcome, RetrainResult):  # the run failed before it had a result
            raise outcome if isinstance(outcome, BaseException) else RuntimeError(state.message or state.name)
        result = outcome
    except Exception as error:  # noqa: BLE001 - the CLI's contract is one line, not a traceback
        finish_progress()
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 1
    finish_progress()
    print(describe(result))
    if result.rollout_reason:  # rolled back: the stable version keeps serving
        print(f"error: {result.rollout_reason}", file=sys.stderr)
        return 1
    if result.rollout == "Promoted" and config.rollout.target == "local":
        print(try_it(config, result))
    return 0


if __name__ == "__main__":
    from aviary.quiet import command_line

    sys.exit(command_line(main))

"""The rollout flow: canary-deploy an exported version, check it with real predictions, promote or roll back."""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import cast

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger, pause_flow_run
from prefect.artifacts import create_markdown_artifact
from prefect.context import FlowRunContext
from prefect.events import emit_event
from prefect.exceptions import FlowPauseTimeout, NotPausedError
from prefect.flow_runs import resume_flow_run
from pydantic import BaseModel, ConfigDict

from aviary.config import ApprovalConfig, GateConfig, PipelineConfig
from aviary.faults import crash_point
from aviary.flows.cli import add_config_arguments, config_from_args, run_main
from aviary.golden_load import GoldenLoad, is_loopback
from aviary.lock import model_lock, rollout_slot
from aviary.record import build_record, record_markdown, write_record
from aviary.report import final_state
from aviary.rollout import Approval, CheckOutcome, Phase, Rollout, run_rollout
from aviary.saved_model import predict_saved_model
from aviary.store import History, ModelStore
from aviary.targets import build_target
from aviary.targets.base import Endpoint, Serving, Target, TargetError
from aviary.tasks.check import check_predictions_task
from aviary.tasks.evaluate import report
from aviary.tasks.gate import gate_model

DEPLOYED_MARK = "deployed"
"""The store's mark of a finished rollout of a version, with its idempotency key and result."""

OUTCOME_EVENTS = {Phase.PROMOTED: "promoted", Phase.ROLLED_BACK: "rolled-back", Phase.FAILED: "failed"}
"""The suffix of the event a finished rollout emits, by its last phase."""


class RolloutFailed(RuntimeError):
    """The canary was rolled back (or could not be); the message says why."""

    def __init__(self, message: str, phase: str = Phase.ROLLED_BACK) -> None:
        super().__init__(message)
        self.phase = str(phase)


class RolloutResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str
    version: int
    phase: str
    reason: str
    stable_before: int | None
    stable_after: int | None
    record: str | None = None


PAUSE_MARGIN_S = 60
"""The Prefect pause outlives the approval timeout: a pause that expires fails the flow run even when the
default is to promote, so at the timeout the flow resumes itself with the default instead."""


def ask_approval(cfg: ApprovalConfig, model: str, version: int) -> Approval | None:
    """Pause the flow run with a typed form in the Prefect UI; None when nobody answers in time."""
    logger = get_run_logger()
    logger.info("%s v%s passed every traffic step; waiting up to %s s for a decision in the UI (default: %s)",
                model, version, cfg.timeout_s, cfg.default)
    context = FlowRunContext.get()
    assert context is not None and context.flow_run is not None, "approval needs a flow run"
    run_id = context.flow_run.id
    timed_out = threading.Event()

    def take_default() -> None:
        try:
            resume_flow_run(run_id, run_input={"decision": cfg.default, "comment": "no decision in time"})
        except (NotPausedError, FlowPauseTimeout, RuntimeError):
            return  # a person answered first
        timed_out.set()

    timer = threading.Timer(cfg.timeout_s, take_default)
    timer.daemon = True
    timer.start()
    try:
        answer = pause_flow_run(wait_for_input=Approval, timeout=cfg.timeout_s + PAUSE_MARGIN_S,
                                poll_interval=max(1, min(10, cfg.timeout_s // 10)), key=f"approve-{model}-{version}")
    except FlowPauseTimeout:
        return None
    finally:
        timer.cancel()
        timer.join()
    return None if timed_out.is_set() else Approval(decision=answer.decision, comment=answer.comment)


def reconcile(target: Target, store: ModelStore) -> int | None:
    """Bring the target back to the store's aliases, then check the live target agrees; returns production.

    A crashed run's canary goes, a restarted server relearns production. An alias pointing at a
    version not in the store is refused before anything changes.
    """
    production = store.production()
    wanted = Serving(stable=production, canary=None)
    if target.serving(store.model) != wanted:
        target.roll_back(store.model, production)
        now = target.serving(store.model)
        if now != wanted:
            raise TargetError(f"{target.name} serves stable {_v(now.stable)} and canary {_v(now.canary)} after the repair, "
                              f"not production {_v(production)} alone as {store.aliases_file} says")
    if store.aliases().get("canary") is not None:
        store.set_aliases(canary=None)
    return production


def _v(version: int | None) -> str:
    return "nothing" if version is None else f"v{version}"


def judge_against_production(store: ModelStore, version: int, production: int | None, gate: GateConfig) -> str | None:
    """Why `version` may not replace `production` now, or None when it may.

    A rollout never goes backwards by accident: an older version than production is the withdraw
    flow's job, and a candidate gated against another production than the current one is judged
    again, against the current one, on the candidate's golden rows (held-out eval rows it was never
    trained on), with the same gate.
    """
    if production is None or version == production:
        return None
    if version < production:
        return (f"v{version} is older than production v{production}; a rollout never goes backwards "
                "(the rollback flow returns to an earlier version)")
    judged = store.metadata(version).parent_version
    if judged is None or judged == production:
        return None
    golden = store.golden(version)
    rows = pd.DataFrame(list(golden.instances))
    labels = np.asarray(golden.labels)
    if len(set(golden.labels)) < 2:
        return (f"v{version} was judged against v{judged}, but production is now v{production}, and its golden rows "
                "hold one class only, too few to judge it again; retrain to judge it against the current production")
    names = sorted(rows.columns)  # the golden instances are keyed by input name, as a client sends them
    taken = set(store.metadata(production).inputs.values()) or set(golden.features)
    if set(names) != taken:
        return (f"v{version} was judged against v{judged}, but production is now v{production}, which takes other "
                "inputs; retrain to judge it against the current production")
    current = predict_saved_model(store.version_dir(production), rows, {n: n for n in names})["probability"]
    verdict = gate_model(
        report(labels, np.asarray(golden.probability), store.metadata(version).threshold), gate,
        report(labels, np.asarray(current), store.metadata(production).threshold), production,
    )
    if verdict.blessed:
        return None
    failed = "; ".join(r for r in verdict.reasons if "allowed" in r or "< floor" in r)
    return f"v{version} was judged against v{judged}, but production is now v{production}; judged again against it: {failed}"


class RolloutRefused(ValueError):
    """The version may not be rolled out now; the message says why. An expected outcome, not a fault."""


def deploy_version(
    version: int, config: PipelineConfig, target: Target, idempotency_key: str | None = None, going_back: bool = False
) -> RolloutResult:
    """Under the model's lock: reconcile, run the state machine, then record the outcome in the store.

    With an `idempotency_key` (the export event's), a version is acted on at most once: a run that
    finds the key's outcome already recorded returns it and changes nothing. `going_back` is for the
    withdraw flow alone, which returns to an older version on purpose.
    """
    logger = get_run_logger()
    model = config.export.model_name
    store = ModelStore(config.export.store, model)
    if version not in store.versions():
        why = "it was rejected by the gate" if store.rejected(version) else "it was never exported"
        raise ValueError(f"{store.base}: version {version} cannot be deployed: {why}")
    # The Prefect limit keeps rollouts of one model apart across machines; the file lock on this one, always.
    with (
        rollout_slot(model, config.rollout.lock_timeout_s),
        model_lock(store.base / ".rollout.lock", f"model '{model}'", config.rollout.lock_timeout_s),
    ):
        crash_point("rollout-locked")
        done = store.marked(DEPLOYED_MARK, version)
        if idempotency_key is not None and done is not None and done.get("key") == idempotency_key:
            logger.info("%s v%s: %s was already acted on (%s); nothing to do", model, version, idempotency_key, done["phase"])
            return RolloutResult.model_validate(done["result"])
        stable = reconcile(target, store)  # the live target now serves production alone, checked
        if stable == version:
            logger.info("%s v%s is already production on %s; nothing to do", model, version, target.name)
            result = RolloutResult(model=model, version=version, phase=Phase.PROMOTED, reason="already production",
                                   stable_before=stable, stable_after=stable)
            store.mark(DEPLOYED_MARK, version, key=idempotency_key, phase=result.phase, result=result.model_dump(mode="json"))
            return result
        refused = None if going_back else judge_against_production(store, version, stable, config.gate)
        if refused is not None:
            raise RolloutRefused(f"{model} v{version} not rolled out: {refused}")
        golden = store.golden(version)
        target.publish(model, version, store.version_dir(version))
        store.set_aliases(canary=version)

        def check(endpoint: Endpoint) -> CheckOutcome:
            checked = check_predictions_task(endpoint, golden, config.rollout.check, model, version)
            return CheckOutcome(passed=checked.passed, summary=checked.summary)

        def observe(state: Rollout) -> None:
            logger.info("%s v%s: %s (%s)", model, version, state.phase, state.reason)

        canary = config.rollout.canary
        load = None
        if config.rollout.target == "local" and canary.load_rps > 0:
            local = config.rollout.local
            host = "127.0.0.1" if local.host in ("0.0.0.0", "::") else local.host
            url = f"http://{host}:{local.rest_port}/v1/models/{model}:predict"
            if is_loopback(url):
                load = GoldenLoad(url, golden.instances, canary.load_rps).running
            else:
                logger.warning("no golden load while baking: %s is not a loopback address", host)
        elif config.rollout.target == "kubernetes" and canary.load_rps > 0 and hasattr(target, "live_endpoint"):
            # The Service clients call, through the target's transport (the API server's proxy from outside).
            live = GoldenLoad.through(target.live_endpoint(model), golden.instances, canary.load_rps)
            load = live.running
            mirror = target.mirror_endpoint(model) if hasattr(target, "mirror_endpoint") else None
            if mirror is not None and canary.shadow.mirror_percent > 0:
                # That load passes no Gateway: its share goes to the shadow comparator as the route's mirror would.
                shadow = GoldenLoad.through(mirror, golden.instances, canary.load_rps * canary.shadow.mirror_percent / 100)

                @contextlib.contextmanager
                def both(max_seconds: float) -> Iterator[GoldenLoad]:
                    with live.running(max_seconds), shadow.running(max_seconds):
                        yield live

                load = both
        state = run_rollout(target, model, version, stable, check, config.rollout.ready_timeout_s, observe,
                            canary=canary, approve=lambda _s: ask_approval(canary.approval, model, version),
                            load=load)
        if state.phase is Phase.PROMOTED:
            store.set_aliases(production=version, canary=None)
            History(store).record("promoted", version, replaced=stable)
        else:
            # The alias says what the target serves: nothing after a roll back, and after a failed one
            # whatever still answers as the canary, which the next rollout's reconcile removes.
            try:
                still = target.serving(model).canary
            except TargetError:
                still = None
            store.set_aliases(canary=still if still == version else None)
        # The record stays with the version whatever the outcome: why a canary went is on disk.
        record = build_record(state, target.name)
        record_path = write_record(store, record)
        image = record_path.with_suffix(".png")
        create_markdown_artifact(key=f"{model}-rollout",
                                 markdown=record_markdown(record, image if image.exists() else None),
                                 description=f"{model} v{version}: {state.phase}")
        # aviary.rollout.promoted / rolled-back / failed: the notification automation listens for the last two.
        emit_event(
            event=f"aviary.rollout.{OUTCOME_EVENTS.get(state.phase, 'failed')}",
            resource={"prefect.resource.id": f"aviary.model.{model}.{version}", "aviary.model.name": model,
                      "aviary.model.version": str(version)},
            payload={"phase": str(state.phase), "reason": state.reason, "failure": state.failure, "stable": stable},
        )
        result = RolloutResult(model=model, version=version, phase=state.phase, reason=state.reason,
                               stable_before=stable, stable_after=version if state.phase is Phase.PROMOTED else stable,
                               record=str(record_path))
        store.mark(DEPLOYED_MARK, version, key=idempotency_key, phase=result.phase, result=result.model_dump(mode="json"))
    if state.phase is not Phase.PROMOTED:
        left = f"stable v{stable} keeps serving" if stable is not None else "no stable version was serving"
        raise RolloutFailed(f"{model} v{version} {state.phase}: {state.failure}; {left}", state.phase)
    return result


def link_runs(triggered_by: str, model: str, version: int) -> None:
    """The retrain run that exported the version and this canary deploy link to each other in their artifacts.

    Links are relative to the UI, so they work on whichever server holds both runs.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate
    from prefect.runtime import flow_run

    own = flow_run.get_id()
    try:
        retrain_run = uuid.UUID(triggered_by)
    except ValueError:
        get_run_logger().warning("triggered_by %r is not a flow run id; the runs are not linked", triggered_by)
        return
    if own is None:
        return
    with get_client(sync_client=True) as client:
        client.create_artifact(ArtifactCreate(
            key=f"{model}-canary-deploy", type="markdown", flow_run_id=retrain_run,
            description=f"the canary deploy of {model} v{version} that this export started",
            data=f"# Canary deploy of {model} v{version}\n\n[{flow_run.get_name()}](/runs/flow-run/{own}): "
                 "its final state says whether the version was promoted or rolled back.\n",
        ))
    create_markdown_artifact(
        key=f"{model}-exported-by",
        markdown=f"# {model} v{version} was exported by\n\n[its retrain run](/runs/flow-run/{retrain_run}).\n",
    )


@flow(name="rollout")
def rollout(
    version: int, config: PipelineConfig = PipelineConfig(), triggered_by: str = "", idempotency_key: str | None = None
) -> RolloutResult:
    """Canary-deploy an exported version on the configured target; promote it or roll it back.

    `triggered_by`: the retrain run whose export event started this rollout (the canary-deploy trigger sets it).
    `idempotency_key`: the export event's; a version is acted on at most once per key.
    """
    if triggered_by:
        link_runs(triggered_by, config.export.model_name, version)
    try:
        result = deploy_version(version, config, build_target(config), idempotency_key)
    except RolloutFailed as failure:
        # An expected outcome: a red final state named for it, its reason the one line logged, not a traceback.
        # Callers of the flow still get the exception raised: it is the failed state's data.
        return final_state(cast(RolloutResult, failure), failure.phase, str(failure), failed=True)
    return final_state(result, str(result.phase), f"{result.model} v{result.version}: {result.reason}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.rollout", description=rollout.__doc__)
    parser.add_argument("version", type=int, help="the exported version to deploy")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    return run_main(
        lambda: rollout(args.version, config_from_args(args)),
        lambda result: f"{result.model} v{result.version}: {result.phase} ({result.reason})",
    )


if __name__ == "__main__":
    from aviary.quiet import command_line

    sys.exit(command_line(main))

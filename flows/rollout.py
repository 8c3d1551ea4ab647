"""The rollout flow: canary-deploy an exported version, check it with real predictions, promote or roll back."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event
from pydantic import BaseModel, ConfigDict

from aviary.config import PipelineConfig
from aviary.flows.cli import add_config_arguments, config_from_args, run_main
from aviary.lock import model_lock, rollout_slot
from aviary.rollout import CheckOutcome, Phase, Rollout, run_rollout
from aviary.store import History, ModelStore
from aviary.targets import build_target
from aviary.targets.base import Endpoint, Target
from aviary.tasks.check import check_predictions_task

OUTCOME_EVENTS = {Phase.PROMOTED: "promoted", Phase.ROLLED_BACK: "rolled-back", Phase.FAILED: "failed"}
"""The suffix of the event a finished rollout emits, by its last phase."""


class RolloutFailed(RuntimeError):
    """The canary was rolled back (or could not be); the message says why."""


class RolloutResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str
    version: int
    phase: str
    reason: str
    stable_before: int | None
    stable_after: int | None


def timeline_markdown(state: Rollout) -> str:
    rows = [f"# Rollout of {state.model} v{state.version}: {state.phase}", "", "| at (UTC) | phase | why |", "|---|---|---|"]
    for step in state.history:
        at = datetime.fromtimestamp(step.at, UTC).strftime("%H:%M:%S.%f")[:-3]
        rows.append(f"| {at} | {step.phase} | {step.reason.replace('|', '/')} |")
    return "\n".join(rows) + "\n"


def reconcile(target: Target, store: ModelStore) -> None:
    """Bring the target back to the store's aliases: a crashed run's canary goes, a restarted server relearns production."""
    production = store.aliases().get("production")
    serving = target.serving(store.model)
    if serving.canary is not None or serving.stable != production:
        target.roll_back(store.model, production)
    if store.aliases().get("canary") is not None:
        store.set_aliases(canary=None)


def deploy_version(version: int, config: PipelineConfig, target: Target) -> RolloutResult:
    """Under the model's lock: reconcile, run the state machine, then record the outcome in the store."""
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
        reconcile(target, store)
        stable = store.aliases().get("production")
        if stable == version:
            logger.info("%s v%s is already production on %s; nothing to do", model, version, target.name)
            return RolloutResult(model=model, version=version, phase=Phase.PROMOTED, reason="already production",
                                 stable_before=stable, stable_after=stable)
        golden = store.golden(version)
        target.publish(model, version, store.version_dir(version))
        store.set_aliases(canary=version)

        def check(endpoint: Endpoint) -> CheckOutcome:
            report = check_predictions_task(endpoint, golden, config.rollout.check, model, version)
            return CheckOutcome(passed=report.passed, summary=report.summary)

        def observe(state: Rollout) -> None:
            logger.info("%s v%s: %s (%s)", model, version, state.phase, state.reason)

        state = run_rollout(target, model, version, stable, check, config.rollout.ready_timeout_s, observe)
        if state.phase is Phase.PROMOTED:
            store.set_aliases(production=version, canary=None)
            History(store).record("promoted", version, replaced=stable)
        elif state.phase is Phase.ROLLED_BACK:
            store.set_aliases(canary=None)
        create_markdown_artifact(key=f"{model}-rollout", markdown=timeline_markdown(state))
        # aviary.rollout.promoted / rolled-back / failed: the notification automation listens for the last two.
        emit_event(
            event=f"aviary.rollout.{OUTCOME_EVENTS.get(state.phase, 'failed')}",
            resource={"prefect.resource.id": f"aviary.model.{model}.{version}", "aviary.model.name": model,
                      "aviary.model.version": str(version)},
            payload={"phase": str(state.phase), "reason": state.reason, "failure": state.failure, "stable": stable},
        )
    result = RolloutResult(model=model, version=version, phase=state.phase, reason=state.reason,
                           stable_before=stable, stable_after=version if state.phase is Phase.PROMOTED else stable)
    if state.phase is not Phase.PROMOTED:
        left = f"stable v{stable} keeps serving" if stable is not None else "no stable version was serving"
        raise RolloutFailed(f"{model} v{version} {state.phase}: {state.failure}; {left}")
    return result


@flow(name="rollout")
def rollout(version: int, config: PipelineConfig = PipelineConfig()) -> RolloutResult:
    """Canary-deploy an exported version on the configured target; promote it or roll it back."""
    return deploy_version(version, config, build_target(config))


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
    sys.exit(main())

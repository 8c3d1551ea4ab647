"""The withdraw flow: take the production version out of service and put the one before it back.

Not to be confused with a rollout's roll back, which drops a canary and leaves production as it
was. A withdrawal goes through the same checked rollout, so the earlier version is checked before
it serves; the store's history records the withdrawn version, which is never returned to.
The `rollback` deployment and `python -m flows.rollback` run this flow under the name users know.
"""

from __future__ import annotations

import argparse
import sys

from prefect import flow

from aviary.config import PipelineConfig
from aviary.flows.cli import add_config_arguments, config_from_args, run_main
from aviary.flows.rollout import RolloutResult, deploy_version
from aviary.store import History, ModelStore
from aviary.targets import build_target


@flow(name="withdraw")
def withdraw(config: PipelineConfig = PipelineConfig()) -> RolloutResult:
    """Withdraw the production version and promote the one before it."""
    store = ModelStore(config.export.store, config.export.model_name)
    history = History(store)
    current = store.aliases().get("production")
    previous = history.previous_production(current)
    if previous is None:
        now = f"production is v{current}" if current is not None else "nothing is production"
        raise ValueError(f"{store.base}: no earlier production version to return to ({now})")
    result = deploy_version(previous, config, build_target(config), going_back=True)
    if current is not None:
        history.record("withdrawn", current, replaced_by=previous)
    return result


def main(argv: list[str] | None = None, prog: str = "python -m flows.withdraw") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=withdraw.__doc__)
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    return run_main(
        lambda: withdraw(config_from_args(args)),
        lambda result: f"{result.model}: v{result.version} is production again (was v{result.stable_before})",
    )


if __name__ == "__main__":
    from aviary.quiet import command_line

    sys.exit(command_line(main))

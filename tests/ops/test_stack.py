"""Against the real stack: deployments registered, the export event runs canary-deploy, limits and notifications."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment

from aviary.lock import rollout_slot
from tests.helpers import wait_for
from tests.ops.helpers import RunningStack

pytestmark = pytest.mark.slow


@contextmanager
def api(running: RunningStack) -> Iterator[SyncPrefectClient]:
    """Point this process at the stack's API for the block."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: running.stack.api_url}), SyncPrefectClient(running.stack.api_url) as client:
        yield client


def start(running: RunningStack, name: str, parameters: dict[str, Any] | None = None) -> UUID:
    with api(running):
        flow_run = run_deployment(name, parameters=parameters or {}, timeout=0)
    assert isinstance(flow_run, FlowRun)
    return flow_run.id


def finished(client: SyncPrefectClient, flow_run_id: UUID, timeout_s: float = 150) -> FlowRun:
    def final() -> FlowRun | None:
        run = client.read_flow_run(flow_run_id)
        return run if run.state is not None and run.state.is_final() else None

    return wait_for(f"flow run {flow_run_id} to finish", final, timeout_s, every_s=1)


def runs_of(client: SyncPrefectClient, deployment: str) -> list[FlowRun]:
    return client.read_flow_runs(
        flow_run_filter=FlowRunFilter(),
        deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])),
    )


def test_up_registers_four_deployments_a_worker_and_the_rollout_limit(running_stack: RunningStack) -> None:
    with api(running_stack) as client:
        names = {d.name: d for d in client.read_deployments()}
        assert {"retrain-scheduled", "retrain-manual", "canary-deploy", "rollback"} <= set(names)
        (schedule,) = names["retrain-scheduled"].schedules
        assert schedule.schedule.cron == "0 3 * * *" and schedule.schedule.timezone == "Europe/Berlin"  # type: ignore[union-attr]
        assert all(d.work_pool_name == "process" for d in names.values())
        limit = client.read_global_concurrency_limit_by_name("rollout-circle")
        assert limit.limit == 1
        automations = {a.name for a in client.read_automations()}
        assert {"aviary-run-failed", "aviary-rollout-rolled-back", "aviary-zombie-runs"} <= automations
        workers = client.read_workers_for_work_pool("process")
        assert any(str(w.status).upper().endswith("ONLINE") for w in workers)


def test_an_exported_version_is_canary_deployed_by_the_event_trigger(running_stack: RunningStack) -> None:
    retrain_id = start(running_stack, "retrain/retrain-manual")
    with api(running_stack) as client:
        retrain_run = finished(client, retrain_id)
        assert retrain_run.state is not None and retrain_run.state.is_completed(), retrain_run.state
        assert retrain_run.state.name == "Exported"  # not shipped by this run: canary-deploy does that
        version = max(int(p.name) for p in running_stack.store.joinpath("circle").iterdir() if p.name.isdigit())

        def canary() -> FlowRun | None:
            return next((r for r in runs_of(client, "canary-deploy") if r.parameters.get("version") == version), None)

        run = wait_for(f"a canary-deploy run for v{version}", canary, 30)
        assert (run.parameters["model_name"], run.parameters["store"]) == ("circle", str(running_stack.store))
        assert run.parameters["rollout"]["local"]["rest_port"] != 8501
        assert run.parameters["triggered_by"] == str(retrain_id)
        run = finished(client, run.id)
        # The two runs link each other, through an artifact on each.
        links = {a.key: str(a.data) for a in client.read_artifacts() if a.key in ("circle-canary-deploy", "circle-exported-by")}
        assert f"(/runs/flow-run/{run.id})" in links["circle-canary-deploy"]
        assert f"(/runs/flow-run/{retrain_id})" in links["circle-exported-by"]
        # Completed once the local model server (`python -m serving`) is in the tree; until then the
        # target cannot start it, and the rollout fails cleanly. Either way the worker ran it to the end.
        assert run.state is not None
        if not run.state.is_completed():
            assert "local server" in (run.state.message or ""), run.state.message
        else:
            assert run.state.name == "Promoted"
        # Exactly one canary-deploy run for this version: the event is emitted once.
        assert [r.parameters["version"] for r in runs_of(client, "canary-deploy")].count(version) == 1


def test_a_failed_run_notifies_the_webhook(running_stack: RunningStack) -> None:
    """The rollback deployment (the withdraw flow) finds no earlier production version and fails: the server's
    automation posts to the receiver."""
    flow_run_id = start(running_stack, "withdraw/rollback")
    with api(running_stack) as client:
        run = finished(client, flow_run_id)
    assert run.state is not None and run.state.is_failed()
    message = running_stack.receiver.wait_for("withdraw run", run.name, "Failed")
    assert "no earlier production version" in message["body"]


def test_a_rolled_back_canary_notifies_the_webhook(running_stack: RunningStack) -> None:
    from prefect.events import Event
    from prefect.events.clients import PrefectEventsClient

    event = Event(
        event="aviary.rollout.rolled-back",
        resource={"prefect.resource.id": "aviary.model.circle.41", "aviary.model.name": "circle", "aviary.model.version": "41"},
        payload={"phase": "RolledBack", "failure": "p95 612 ms over the 250 ms budget", "stable": 40},
        id=uuid4(),
    )

    async def emit() -> None:
        async with PrefectEventsClient(running_stack.stack.api_url) as events:
            await events.emit(event)

    asyncio.run(emit())
    message = running_stack.receiver.wait_for("circle v41 RolledBack")
    assert "p95 612 ms" in message["body"] and "stable v40 keeps serving" in message["body"]


HOLD_SLOT = """
import sys
from aviary.lock import rollout_slot
with rollout_slot(sys.argv[1], timeout_s=float(sys.argv[2])) as name:
    print("held", name, flush=True)
    sys.stdin.read()
print("released", flush=True)
"""


def hold_slot(running: RunningStack, model: str, timeout_s: float) -> subprocess.Popen[str]:
    """A rollout slot held by another process, as another machine's run would hold it."""
    env = {**os.environ, "PREFECT_API_URL": running.stack.api_url}
    return subprocess.Popen(
        [sys.executable, "-c", HOLD_SLOT, model, str(timeout_s)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        cwd=Path(__file__).resolve().parents[2],
    )


def release(process: subprocess.Popen[str]) -> str:
    out, _ = process.communicate("", timeout=60)
    return out


def test_one_rollout_per_model_through_the_prefect_limit(running_stack: RunningStack) -> None:
    first = hold_slot(running_stack, "circle", 10)
    try:
        assert first.stdout is not None and first.stdout.readline().strip() == "held rollout-circle"
        second = hold_slot(running_stack, "circle", 1)
        _, err = second.communicate(timeout=60)
        assert second.returncode == 1
        assert "model 'circle': another rollout holds the Prefect limit 'rollout-circle'; waited 1 s" in err
        other = hold_slot(running_stack, "another-model", 5)  # the limit is created on first use
        assert "held rollout-another-model" in release(other)
    finally:
        assert "released" in release(first)
    again = hold_slot(running_stack, "circle", 10)
    assert "held rollout-circle" in release(again)


def test_without_an_api_the_file_lock_is_the_guard() -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: None}), rollout_slot("circle", timeout_s=1) as name:
        assert name is None

"""Re-running retrain reuses ingest and training; a re-run flow makes no second version, event or rollout."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from aviary.config import PipelineConfig
from aviary.data.generate import generate, write_csv
from aviary.flows import retrain as retrain_module
from aviary.flows.retrain import retrain
from aviary.store import ModelStore
from tests.helpers import FAST_TRAIN, small_pipeline

pytestmark = pytest.mark.usefixtures("prefect_harness")


def config(tmp_path: Path, data: Path, **train: Any) -> PipelineConfig:
    return small_pipeline(tmp_path, data, train=train)


@pytest.fixture(scope="module")
def csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(generate(rows=1500, seed=5), tmp_path_factory.mktemp("data") / "circle.csv")


def task_states(flow_run_id: UUID) -> dict[str, str]:
    """Task name (without its run suffix) -> state name, for one flow run."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name.rsplit("-", 1)[0]: run.state.name for run in runs if run.state is not None}


def run(cfg: PipelineConfig) -> tuple[Any, UUID]:
    state = retrain(cfg, return_state=True)
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    return state.result(), flow_run_id


def test_unchanged_data_and_config_reuse_ingest_and_training(tmp_path: Path, csv: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = config(tmp_path, csv, epochs=3)  # whether the gate blesses it does not matter here
    first, first_id = run(cfg)
    assert task_states(first_id)["train-model"] == "Completed"
    caplog.set_level(logging.INFO)
    second, second_id = run(cfg)
    states = task_states(second_id)
    assert states["ingest-csv"] == "Cached" and states["train-model"] == "Cached"
    assert states["split-dataset"] == "Completed"  # a cheap step, not cached
    assert "Finished in state Cached(" in caplog.text
    assert second.metrics == first.metrics and second.version == first.version + 1
    assert any((tmp_path / "runs" / "results").iterdir())

    # A changed training config trains again; the unchanged data is still not read twice.
    third, third_id = run(config(tmp_path, csv, epochs=3, hidden_units=(*FAST_TRAIN.hidden_units, 4)))
    states = task_states(third_id)
    assert states["ingest-csv"] == "Cached" and states["train-model"] == "Completed"

    # Changed data: both run again.
    csv2 = write_csv(generate(rows=1500, seed=6), tmp_path / "other.csv")
    _, fourth_id = run(config(tmp_path, csv2, epochs=3))
    states = task_states(fourth_id)
    assert states["ingest-csv"] == "Completed" and states["train-model"] == "Completed"


def test_a_retried_flow_run_reuses_its_version_event_and_export(tmp_path: Path, csv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rollout fails once after export; Prefect retries the flow run, which must not make v2 or a second event."""
    events: list[dict[str, Any]] = []
    rollouts: list[int] = []
    real_emit = retrain_module.emit_event

    def recording_emit(**kwargs: Any) -> Any:
        events.append(kwargs)
        return real_emit(**kwargs)

    def flaky_rollout(version: int, config: PipelineConfig, **_: Any) -> Any:
        rollouts.append(version)
        if len(rollouts) == 1:
            raise ConnectionError("the target went away")
        return type("Deployed", (), {"phase": "Promoted"})()

    monkeypatch.setattr(retrain_module, "emit_event", recording_emit)
    monkeypatch.setattr(retrain_module, "rollout", flaky_rollout)
    cfg = config(tmp_path, csv).model_copy(update={"rollout": PipelineConfig().rollout})  # target local, faked
    result = retrain.with_options(retries=1, retry_delay_seconds=0)(cfg)

    assert (result.version, result.rollout) == (1, "Promoted")
    assert ModelStore(tmp_path / "store", "circle").versions() == [1]
    assert [e["event"] for e in events] == ["aviary.model.exported"]
    assert events[0]["resource"]["aviary.model.version"] == "1"
    assert rollouts == [1, 1]  # the same version both times; the real rollout's lock and no-op make the second safe

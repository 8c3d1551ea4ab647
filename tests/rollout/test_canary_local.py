"""Progressive delivery end to end: the rollout flow, the local server, and clients on the default URL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from aviary.analysis import OK, parse_metrics
from aviary.config import ApprovalConfig, EvalConfig, PipelineConfig
from aviary.flows.rollout import RolloutFailed, rollout
from aviary.record import records
from aviary.rollout import Phase
from aviary.store import ModelStore
from aviary.targets.base import Serving
from aviary.targets.local import LocalTarget
from aviary.tasks.evaluate import evaluate_model
from aviary.tasks.export import export_model
from aviary.types import Split, TrainedModel, Verdict
from benchmarks.canaries import drift, fail_out_of_range
from benchmarks.loadgen import Load, circle_traffic
from tests.helpers import free_port

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]
BLESSED = Verdict(blessed=True, reasons=("test",))
RATE = 50.0


@pytest.fixture
def cfg(tmp_path: Path) -> Iterator[PipelineConfig]:
    config = PipelineConfig.model_validate({
        "export": {"store": tmp_path / "store", "golden_rows": 40, "warmup_records": 5},
        "rollout": {
            "target": "local", "ready_timeout_s": 60, "lock_timeout_s": 0,
            "check": {"p95_budget_ms": 2000},
            "local": {"rest_port": free_port(), "grpc_port": free_port(), "state_dir": tmp_path / "serving",
                      "grace_s": 0.2},
            "canary": {"steps": [10, 25, 50], "bake_s": 2, "max_bake_s": 15, "scrape_interval_s": 0.5,
                       "min_requests": 10, "latency_slack_ms": 200,
                       "shadow": {"mirror_percent": 20, "min_rows": 20}},
        },
    })
    yield config
    LocalTarget(config.rollout.local, config.export.store).stop()


@pytest.fixture
def store(cfg: PipelineConfig, trained: TrainedModel, circle_split: Split) -> ModelStore:
    """v1 is production with no traffic steps (there is no stable to compare with); v2 is exported."""
    evaluation = evaluate_model(trained, circle_split.eval, EvalConfig())
    for version in (1, 2):
        export_model(trained, circle_split.eval, evaluation, BLESSED, version, cfg.export)
    assert rollout(1, cfg).phase == Phase.PROMOTED
    return ModelStore(cfg.export.store, cfg.export.model_name)


def load(cfg: PipelineConfig, out_of_range: float = 0.0) -> Load:
    local = cfg.rollout.local
    return Load(url=f"http://{local.host}:{local.rest_port}/v1/models/circle:predict", rate=RATE,
                max_requests=int(RATE * 90), max_seconds=90, instances=circle_traffic(out_of_range, seed=5))


def errors_by_version(cfg: PipelineConfig) -> dict[int, float]:
    snapshot = parse_metrics(LocalTarget(cfg.rollout.local, cfg.export.store).scrape("circle").values(), "circle")
    return {v: sum(n for status, n in c.requests.items() if status != OK) for v, c in snapshot.versions.items()}


def test_a_good_canary_is_promoted_step_by_step_under_load(cfg: PipelineConfig, store: ModelStore) -> None:
    clients = load(cfg)
    with clients.running():
        result = rollout(2, cfg)
        # the split is judged per version, so look before the old stable is unloaded
    assert result.phase == Phase.PROMOTED and store.aliases() == {"production": 2}
    codes = clients.codes()
    assert len(codes) > 100 and set(codes) == {200}
    (record,) = records(store, 2)
    assert [(s.canary_percent, s.verdict) for s in record.steps] == [(10, "passed"), (25, "passed"), (50, "passed")]
    assert all(s.canary and s.canary["requests"] >= 10 and s.stable and s.stable["errors"] == 0 for s in record.steps)
    assert all(s.shadow and s.shadow["agreement"] == 1.0 for s in record.steps)
    assert result.record is not None and Path(result.record).with_suffix(".png").stat().st_size > 5000


def test_a_canary_failing_on_live_inputs_is_rolled_back_at_its_first_step(
    cfg: PipelineConfig, store: ModelStore
) -> None:
    fail_out_of_range(store.version_dir(2))
    clients = load(cfg, out_of_range=0.3)
    with clients.running():
        with pytest.raises(RolloutFailed, match=r"circle v2 RolledBack: 10% step, check 2/2 failed: canary error rate"):
            rollout(2, cfg)
        assert errors_by_version(cfg).get(1, 0) == 0, "stable's share never fails"
    codes = clients.codes()
    failed = sum(code != 200 for code in codes)
    assert 0 < failed < 0.1 * len(codes), f"{failed}/{len(codes)} client failures: only the canary's share"
    assert store.aliases() == {"production": 1}
    assert LocalTarget(cfg.rollout.local, cfg.export.store).serving("circle") == Serving(stable=1, canary=None)
    (record,) = records(store, 2)
    assert record.outcome == "RolledBack" and {s.canary_percent for s in record.steps} == {10}
    assert "canary error rate" in record.failure


def test_a_canary_drifting_from_stable_is_rolled_back_by_the_shadow_comparison(
    cfg: PipelineConfig, store: ModelStore
) -> None:
    drift(store.version_dir(2), shift=0.3)
    clients = load(cfg)
    # Which shadow rule trips first depends on how many live rows fall near the circle's edge.
    with clients.running(), pytest.raises(RolloutFailed, match=r"failed: shadow (class agreement|mean|p99)"):
        rollout(2, cfg)
    assert set(clients.codes()) == {200}
    assert store.aliases() == {"production": 1}
    (record,) = records(store, 2)
    shadow = record.steps[-1].shadow
    assert shadow is not None and (
        shadow["agreement"] < 0.98 or shadow["mean_abs_diff"] > 0.05 or shadow["p99_abs_diff"] > 0.25), shadow


def test_approval_that_times_out_takes_the_default_and_the_run_completes(
    cfg: PipelineConfig, store: ModelStore
) -> None:
    canary = cfg.rollout.canary.model_copy(update={
        "steps": (50,), "approval": ApprovalConfig(required=True, timeout_s=2, default="promote")})
    approving = cfg.model_copy(update={"rollout": cfg.rollout.model_copy(update={"canary": canary})})
    clients = load(cfg)
    with clients.running():
        state = rollout(2, approving, return_state=True)
    assert state.is_completed(), state
    assert state.result().phase == Phase.PROMOTED
    (record,) = records(store, 2)
    assert record.approval == {"decision": "promote", "why": "no decision within 2 s: default promote"}


def test_with_no_clients_the_rollouts_own_golden_load_earns_a_good_canary_its_promotion(
    cfg: PipelineConfig, store: ModelStore
) -> None:
    result = rollout(2, cfg)
    assert result.phase == Phase.PROMOTED and store.aliases() == {"production": 2}
    (record,) = records(store, 2)
    assert [s.canary_percent for s in record.steps] == [10, 25, 50]
    assert all(s.canary and s.canary["requests"] >= 10 and s.canary["errors"] == 0 for s in record.steps)

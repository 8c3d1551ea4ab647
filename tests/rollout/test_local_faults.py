"""The local target under faults: the live server is the truth, refused configs change nothing, no going backwards."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

from aviary.config import EvalConfig, PipelineConfig
from aviary.flows.rollout import RolloutFailed, RolloutRefused, rollout
from aviary.flows.withdraw import withdraw
from aviary.model_config import ModelEntry, build_model_config
from aviary.rollout import Phase
from aviary.store import GOLDEN_FILE, ModelStore, StoreError
from aviary.targets.base import Serving, TargetError
from aviary.targets.local import LocalTarget
from aviary.tasks.evaluate import evaluate_model
from aviary.tasks.export import export_model
from aviary.types import GoldenSet, Provenance, Split, TrainedModel, Verdict
from tests.rollout.test_local import predict, target

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]
BLESSED = Verdict(blessed=True, reasons=("test",))


def export(cfg: PipelineConfig, trained: TrainedModel, split: Split, version: int, judged_against: int | None = None) -> None:
    evaluation = evaluate_model(trained, split.eval, EvalConfig())
    export_model(trained, split.eval, evaluation, BLESSED, version, cfg.export, Provenance(parent_version=judged_against))


def store_of(cfg: PipelineConfig) -> ModelStore:
    return ModelStore(cfg.export.store, cfg.export.model_name)


def state_files(cfg: PipelineConfig) -> tuple[bytes, bytes]:
    state = cfg.rollout.local.state_dir
    return (state / "models.config").read_bytes(), (state / "models.json").read_bytes()


def reconfigure_behind_our_back(cfg: PipelineConfig, versions: list[int], labels: dict[str, int]) -> None:
    """Someone else reloads the server's config: the target's files no longer say what it serves."""
    local = cfg.rollout.local
    entry = ModelEntry("circle", str(cfg.export.store.resolve() / "circle"), tuple(versions), labels)
    with grpc.insecure_channel(f"{local.host}:{local.grpc_port}") as channel:
        model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
            model_management_pb2.ReloadConfigRequest(config=build_model_config([entry])), timeout=60)


def test_a_refused_config_is_never_written_and_the_server_keeps_the_last_accepted(
    cfg: PipelineConfig, trained: TrainedModel, circle_split: Split, monkeypatch: pytest.MonkeyPatch
) -> None:
    export(cfg, trained, circle_split, 1)
    export(cfg, trained, circle_split, 2, judged_against=1)
    rollout(1, cfg)
    before = state_files(cfg)
    local = target(cfg)
    real = LocalTarget._reload

    def refusing(self: LocalTarget, rec: Any, config: Any) -> None:
        if any(2 in mc.model_version_policy.specific.versions for mc in config.model_config_list.config):
            real(self, rec, config)  # the server takes it half-way, as a failed reload can leave it
            raise TargetError("local server refused the model config: FAILED_PRECONDITION: stubbed refusal")
        real(self, rec, config)

    monkeypatch.setattr(LocalTarget, "_reload", refusing)
    with pytest.raises(TargetError, match="stubbed refusal"):
        local.deploy_canary("circle", 2, 1)
    assert state_files(cfg) == before, "a refused config is not written"
    assert local.serving("circle") == Serving(stable=1, canary=None)
    assert set(local.live("circle").versions) == {1} or local.live("circle").versions.get(2) in ("END", None)
    assert predict(cfg).status_code == 200


def test_drift_is_repaired_in_steps_the_server_accepts(
    cfg: PipelineConfig, trained: TrainedModel, circle_split: Split
) -> None:
    export(cfg, trained, circle_split, 1)
    export(cfg, trained, circle_split, 2, judged_against=1)
    rollout(1, cfg)
    rollout(2, cfg)
    reconfigure_behind_our_back(cfg, [1, 2], {"stable": 2})
    reconfigure_behind_our_back(cfg, [1], {"stable": 1})  # v2, which the store calls production, is unloaded
    assert target(cfg).serving("circle") == Serving(stable=1, canary=None), "serving() asks the live server"

    again = rollout(2, cfg)  # the repair must load v2 before moving `stable` to it
    assert (again.phase, again.reason) == (Phase.PROMOTED, "already production")
    assert target(cfg).serving("circle") == Serving(stable=2, canary=None)
    assert predict(cfg, "/labels/stable").status_code == 200


def test_already_production_is_said_only_when_the_live_server_serves_it(
    cfg: PipelineConfig, trained: TrainedModel, circle_split: Split
) -> None:
    export(cfg, trained, circle_split, 1)
    rollout(1, cfg)
    local = target(cfg)
    pid = local.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    (store_of(cfg).version_dir(1) / "saved_model.pb").write_bytes(b"\x00broken")  # a restart cannot serve it
    with pytest.raises(TargetError, match="v1"):
        rollout(1, cfg)
    assert local.serving("circle").stable is None


def test_a_production_alias_to_a_missing_version_is_refused_and_changes_nothing(
    cfg: PipelineConfig, trained: TrainedModel, circle_split: Split
) -> None:
    export(cfg, trained, circle_split, 1)
    rollout(1, cfg)
    store = store_of(cfg)
    store.aliases_file.write_text('{"production": 9}\n')
    before = (store.aliases_file.read_bytes(), *state_files(cfg))
    with pytest.raises(StoreError, match=r"aliases.json: alias 'production' points at version 9, which is not in the store"):
        rollout(1, cfg)
    assert (store.aliases_file.read_bytes(), *state_files(cfg)) == before

    local = target(cfg)
    pid = local.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    local.ensure_running()  # a restarted server comes back to the last accepted config
    assert predict(cfg).status_code == 200 and local.serving("circle") == Serving(stable=1, canary=None)


def test_a_failed_rollout_leaves_no_alias_the_server_does_not_back(
    cfg: PipelineConfig, trained: TrainedModel, circle_split: Split, monkeypatch: pytest.MonkeyPatch
) -> None:
    export(cfg, trained, circle_split, 1)
    export(cfg, trained, circle_split, 2, judged_against=1)
    rollout(1, cfg)
    store = store_of(cfg)
    golden_file = store.version_dir(2) / GOLDEN_FILE
    golden = GoldenSet.model_validate_json(golden_file.read_bytes())
    golden_file.write_text(golden.model_copy(update={"probability": tuple(1.0 - p for p in golden.probability)}).model_dump_json())

    def server_dies(self: LocalTarget, model: str, stable: int | None) -> None:
        os.kill(self.pid() or 0, signal.SIGKILL)
        raise TargetError("local server went away")

    monkeypatch.setattr(LocalTarget, "roll_back", server_dies)
    with pytest.raises(RolloutFailed, match="Failed"):
        rollout(2, cfg)
    assert target(cfg).serving("circle") == Serving(stable=None, canary=None)
    assert store.aliases() == {"production": 1}, "no canary alias for a canary nothing serves"

    monkeypatch.undo()
    assert rollout(1, cfg).reason == "already production"  # the next run brings the server back in line
    assert target(cfg).serving("circle") == Serving(stable=1, canary=None)


def test_a_rollout_never_goes_backwards(cfg: PipelineConfig, trained: TrainedModel, circle_split: Split) -> None:
    export(cfg, trained, circle_split, 1)
    for version in (2, 3, 4):
        export(cfg, trained, circle_split, version, judged_against=1)  # all judged while v1 was production
    rollout(1, cfg)
    assert rollout(3, cfg).phase == Phase.PROMOTED
    with pytest.raises(RolloutRefused, match="v2 is older than production v3; a rollout never goes backwards"):
        rollout(2, cfg)
    assert store_of(cfg).aliases() == {"production": 3}

    # v4 was judged against v1; production is now v3: judged again against v3 on its golden rows.
    golden_file = store_of(cfg).version_dir(4) / GOLDEN_FILE
    honest = golden_file.read_bytes()
    golden = GoldenSet.model_validate_json(honest)
    golden_file.write_text(golden.model_copy(update={"probability": tuple(1.0 - p for p in golden.probability)}).model_dump_json())
    with pytest.raises(RolloutRefused, match=r"v4 was judged against v1, but production is now v3; judged again against it: .*below production v3"):
        rollout(4, cfg)
    golden_file.write_bytes(honest)
    assert rollout(4, cfg).phase == Phase.PROMOTED, "as good as v3 on the same rows: promoted"

    back = withdraw(cfg)  # going back is the withdraw flow's job
    assert (back.version, back.stable_before) == (3, 4)
    assert requests.get(f"http://127.0.0.1:{cfg.rollout.local.rest_port}/v1/models/circle/labels/stable/metadata",
                        timeout=5).json()["model_spec"]["version"] == "3"


def test_two_first_rollouts_at_once_both_succeed_on_one_server(
    cfg: PipelineConfig, trained: TrainedModel, circle_split: Split
) -> None:
    waits = cfg.model_copy(update={"rollout": cfg.rollout.model_copy(update={"lock_timeout_s": 300})})
    other = waits.model_copy(update={"export": waits.export.model_copy(update={"model_name": "square"})})
    for config in (waits, other):
        export(config, trained, circle_split, 1)
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda c: rollout(1, c), [waits, other, waits]))  # two models, one of them twice
    assert sorted((r.model, r.phase, r.reason == "already production") for r in results) == [
        ("circle", Phase.PROMOTED, False), ("circle", Phase.PROMOTED, True), ("square", Phase.PROMOTED, False)]
    local = target(cfg)
    assert local.serving("circle") == local.serving("square") == Serving(stable=1, canary=None)
    state = cfg.rollout.local.state_dir
    servers = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _serves_from(p, state)]
    assert [int(p.name) for p in servers] == [local.pid()], "one server, recorded in the pid file"


def _serves_from(proc: Path, state_dir: Path) -> bool:
    try:
        args = (proc / "cmdline").read_bytes().decode().split("\0")
    except OSError:
        return False
    return f"--model_config_file={(state_dir / 'models.config').resolve()}" in args

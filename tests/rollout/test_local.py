"""The rollout on the local target, against a real `python -m serving` process on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest
import requests

from aviary.config import EvalConfig, PipelineConfig
from aviary.flows.rollout import RolloutFailed, rollout
from aviary.flows.withdraw import withdraw
from aviary.lock import Busy, model_lock
from aviary.rollout import Phase
from aviary.store import GOLDEN_FILE, ModelStore
from aviary.targets.base import Serving
from aviary.targets.local import LocalTarget
from aviary.tasks.evaluate import evaluate_model
from aviary.tasks.export import export_model
from aviary.types import Split, TrainedModel, Verdict

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]
BLESSED = Verdict(blessed=True, reasons=("test",))


def export_versions(cfg: PipelineConfig, trained: TrainedModel, split: Split, *versions: int) -> ModelStore:
    evaluation = evaluate_model(trained, split.eval, EvalConfig())
    export_cfg = cfg.export
    for v in versions:
        export_model(trained, split.eval, evaluation, BLESSED, v, export_cfg)
    return ModelStore(export_cfg.store, export_cfg.model_name)


def target(cfg: PipelineConfig) -> LocalTarget:
    return LocalTarget(cfg.rollout.local, cfg.export.store)


def predict(cfg: PipelineConfig, path: str = "") -> requests.Response:
    local = cfg.rollout.local
    url = f"http://{local.host}:{local.rest_port}/v1/models/circle{path}:predict"
    return requests.post(url, json={"instances": [{"x": 0.0, "y": 0.0}, {"x": 1.4, "y": 1.4}]}, timeout=10)


def served_versions(cfg: PipelineConfig) -> dict[str, str]:
    local = cfg.rollout.local
    status = requests.get(f"http://{local.host}:{local.rest_port}/v1/models/circle", timeout=5).json()
    return {s["version"]: s["state"] for s in status["model_version_status"]}


def test_first_rollout_promotes_and_serves_predictions(
    cfg: PipelineConfig, trained: TrainedModel, circle_split: Split
) -> None:
    store = export_versions(cfg, trained, circle_split, 1)
    result = rollout(1, cfg)
    assert (result.phase, result.stable_before, result.stable_after) == (Phase.PROMOTED, None, 1)
    assert store.aliases() == {"production": 1}
    answer = predict(cfg)
    assert answer.status_code == 200
    classes = [p["class"] for p in answer.json()["predictions"]]
    assert classes == [1, 0]
    assert predict(cfg, "/labels/stable").json() == answer.json()
    again = rollout(1, cfg)
    assert again.reason == "already production"


def test_promotion_moves_stable_and_withdrawal_puts_the_old_version_back(
    cfg: PipelineConfig, trained: TrainedModel, circle_split: Split
) -> None:
    store = export_versions(cfg, trained, circle_split, 1, 2)
    rollout(1, cfg)
    rollout(2, cfg)
    assert store.aliases() == {"production": 2}
    assert served_versions(cfg)["2"] == "AVAILABLE"
    assert target(cfg).serving("circle").stable == 2
    # the old version is unloaded once the grace period is over
    assert served_versions(cfg).get("1") in (None, "END")

    back = withdraw(cfg)
    assert (back.version, back.stable_before) == (1, 2)
    assert store.aliases() == {"production": 1}


def test_corrupt_canary_is_rolled_back_within_its_deadline(
    cfg: PipelineConfig, trained: TrainedModel, circle_split: Split
) -> None:
    store = export_versions(cfg, trained, circle_split, 1, 2)
    rollout(1, cfg)
    (store.version_dir(2) / "saved_model.pb").write_bytes(b"\x00not a saved model")
    with pytest.raises(RolloutFailed, match=r"circle v2 RolledBack: .*v2 failed to load"):
        rollout(2, cfg.model_copy(update={"rollout": cfg.rollout.model_copy(update={"ready_timeout_s": 30})}))
    assert store.aliases() == {"production": 1}
    assert predict(cfg).status_code == 200
    assert target(cfg).serving("circle").canary is None


def test_wrong_canary_is_rolled_back_while_stable_answers_every_request(
    cfg: PipelineConfig, trained: TrainedModel, circle_split: Split
) -> None:
    store = export_versions(cfg, trained, circle_split, 1, 2)
    rollout(1, cfg)
    golden_file = store.version_dir(2) / GOLDEN_FILE
    golden = json.loads(golden_file.read_text())
    golden["probability"] = [min(1.0, p + 0.2) for p in golden["probability"]]
    golden_file.write_text(json.dumps(golden))

    codes: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            codes.append(predict(cfg, "/labels/stable").status_code)

    worker = threading.Thread(target=hammer)
    worker.start()
    try:
        with pytest.raises(RolloutFailed, match="golden predictions differ from the export"):
            rollout(2, cfg)
    finally:
        stop.set()
        worker.join()
    assert len(codes) > 5 and set(codes) == {200}
    assert store.aliases() == {"production": 1}
    assert target(cfg).serving("circle") == Serving(stable=1, canary=None)


def test_a_killed_server_is_restarted_and_brought_back_to_the_aliases(
    cfg: PipelineConfig, trained: TrainedModel, circle_split: Split
) -> None:
    store = export_versions(cfg, trained, circle_split, 1, 2)
    rollout(1, cfg)
    local = target(cfg)
    pid = local.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    store.set_aliases(canary=2)  # as a run that died mid-rollout would leave it
    result = rollout(2, cfg)
    assert result.phase == Phase.PROMOTED and local.pid() not in (None, pid)
    assert store.aliases() == {"production": 2}


def test_two_rollouts_of_one_model_never_interleave(
    cfg: PipelineConfig, trained: TrainedModel, circle_split: Split
) -> None:
    store = export_versions(cfg, trained, circle_split, 1)
    with model_lock(store.base / ".rollout.lock", "model 'circle'", 0), pytest.raises(
        Busy, match="model 'circle' is locked by another rollout"
    ):
        rollout(1, cfg)
    assert store.aliases() == {}


def test_rollout_of_a_version_not_in_the_store_is_refused(cfg: PipelineConfig) -> None:
    store = ModelStore(cfg.export.store, "circle")
    store.record_rejected(4, {"why": "gate"})
    with pytest.raises(ValueError, match="version 4 cannot be deployed: it was rejected by the gate"):
        rollout(4, cfg)


def test_one_server_serves_models_of_two_stores_each_from_its_own(
    cfg: PipelineConfig, trained: TrainedModel, circle_split: Split, tmp_path: Path
) -> None:
    """circle from one store, then churn from another through the same server (state dir): circle
    keeps serving from its own store, and a restarted server loads both from where they were."""
    export_versions(cfg, trained, circle_split, 1)
    assert rollout(1, cfg).phase == Phase.PROMOTED
    other = cfg.model_copy(update={"export": cfg.export.model_copy(update={"store": tmp_path / "other",
                                                                           "model_name": "churn"})})
    export_versions(other, trained, circle_split, 1)
    assert rollout(1, other).phase == Phase.PROMOTED
    for name in ("circle", "churn"):
        answer = requests.post(f"{target(cfg).rest}/v1/models/{name}:predict",
                               json={"instances": [{"x": 0.0, "y": 0.0}]}, timeout=10)
        assert answer.status_code == 200, (name, answer.text)
    target(cfg).stop()
    assert rollout(1, cfg).phase == Phase.PROMOTED  # starts the server again from the recorded config
    assert target(other).serving("churn") == Serving(stable=1, canary=None)

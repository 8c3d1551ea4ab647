"""Retrain under crashes: exports announced at least once and acted on at most once, caches that heal, no leftovers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prefect import flow

from aviary import faults
from aviary.config import PipelineConfig
from aviary.data.generate import generate, write_csv
from aviary.flows import retrain as retrain_module
from aviary.flows import rollout as rollout_module
from aviary.flows.retrain import idempotency_key, retrain
from aviary.flows.rollout import RolloutResult, deploy_version
from aviary.store import ModelStore
from tests.fakes import FakeTarget
from tests.helpers import free_port, small_pipeline

pytestmark = pytest.mark.usefixtures("prefect_harness")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(generate(rows=1200, seed=21), tmp_path_factory.mktemp("data") / "circle.csv")


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(retrain_module, "emit_event", lambda **kwargs: sent.append(kwargs))
    return sent


def crash_at(monkeypatch: pytest.MonkeyPatch, point: str) -> None:
    monkeypatch.setenv(faults.ENV, point)
    monkeypatch.setenv(faults.MODE_ENV, "raise")


def exported_versions(events: list[dict[str, Any]]) -> list[int]:
    return [int(e["resource"]["aviary.model.version"]) for e in events]


@flow
def canary_deploy(version: int, config: PipelineConfig, target: FakeTarget, key: str) -> RolloutResult:
    """What the canary-deploy deployment runs for one delivery of an export event."""
    return deploy_version(version, config, target, key)


def deliver(events: list[dict[str, Any]], cfg: PipelineConfig, target: FakeTarget, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every event, as the trigger would run canary-deploy for it; the check passes."""
    passed = SimpleNamespace(passed=True, summary="golden predictions match")
    monkeypatch.setattr(rollout_module, "check_predictions_task", lambda *args, **kwargs: passed)
    for event in events:
        resource = event["resource"]
        canary_deploy(int(resource["aviary.model.version"]), cfg, target, resource["aviary.idempotency-key"])


def test_a_crash_between_export_and_event_still_deploys_the_version_once(
    tmp_path: Path, csv: Path, events: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = small_pipeline(tmp_path, csv, train={"epochs": 3}, gate={"min_precision": 0.0, "min_recall": 0.0},
                         rollout={"canary": {"steps": []}})  # the golden-set check alone decides
    crash_at(monkeypatch, "after-export")
    with pytest.raises(faults.Crash):
        retrain(cfg)
    store = ModelStore(cfg.export.store, "circle")
    assert store.versions() == [1] and events == []

    monkeypatch.delenv(faults.ENV)
    second = retrain(cfg)
    assert second.version == 2
    assert exported_versions(events) == [1, 2], "the killed run's export is announced by the next run"
    assert events[0]["resource"]["aviary.idempotency-key"] == idempotency_key("circle", 1)

    target = FakeTarget()
    deliver([*events, events[0]], cfg, target, monkeypatch)  # the first event delivered twice
    assert target.calls.count("deploy_canary") == 2, "each version acted on once, the repeat a no-op"
    assert store.aliases() == {"production": 2}


def test_a_crash_after_the_event_before_its_mark_sends_it_again_and_it_is_acted_on_once(
    tmp_path: Path, csv: Path, events: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = small_pipeline(tmp_path, csv, train={"epochs": 3}, gate={"min_precision": 0.0, "min_recall": 0.0},
                         rollout={"canary": {"steps": []}})  # the golden-set check alone decides
    crash_at(monkeypatch, "after-emit")
    with pytest.raises(faults.Crash):
        retrain(cfg)
    assert exported_versions(events) == [1]
    monkeypatch.delenv(faults.ENV)
    retrain(cfg)
    assert exported_versions(events) == [1, 1, 2], "at least once: sent again, since no mark said it went"

    target = FakeTarget()
    deliver(events, cfg, target, monkeypatch)
    assert target.calls.count("deploy_canary") == 2
    assert ModelStore(cfg.export.store, "circle").marked("deployed", 1) is not None


def test_a_cached_result_whose_files_are_gone_is_computed_again(tmp_path: Path, csv: Path) -> None:
    cfg = small_pipeline(tmp_path, csv, train={"epochs": 3}, gate={"min_precision": 0.0, "min_recall": 0.0},
                         rollout={"canary": {"steps": []}})  # the golden-set check alone decides
    retrain(cfg)
    for parquet in (tmp_path / "runs" / "datasets").rglob("*.parquet"):
        parquet.unlink()
    for run_dir in (tmp_path / "runs" / "circle").iterdir():
        shutil.rmtree(run_dir)  # the trained model the cached training result names
    again = retrain(cfg)
    assert again.version == 2 and again.path is not None and again.path.is_dir()


def prefect_servers(home: Path) -> list[int]:
    """Prefect API servers running with this PREFECT_HOME, whoever started them."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            args = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"prefect.server.api.server:create_app" in args and f"PREFECT_HOME={home}".encode() in environ:
            found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_a_killed_retrain_leaves_no_prefect_server_behind(tmp_path: Path, csv: Path) -> None:
    home = tmp_path / "prefect"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update({"PREFECT_HOME": str(home), faults.ENV: "after-export", "TF_CPP_MIN_LOG_LEVEL": "2"})
    env.pop(faults.MODE_ENV, None)
    relaxed = tmp_path / "cfg.json"
    relaxed.write_text(json.dumps({"gate": {"min_precision": 0.0, "min_recall": 0.0}}))
    run = subprocess.run(
        [sys.executable, "-m", "aviary.flows.retrain", "--data", str(csv), "--epochs", "3", "--target", "none",
         "--config", str(relaxed), "--store", str(tmp_path / "store"), "--runs-dir", str(tmp_path / "runs")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    assert ModelStore(tmp_path / "store", "circle").versions() == [1]
    deadline = time.monotonic() + 15
    while prefect_servers(home) and time.monotonic() < deadline:
        time.sleep(0.2)  # the kernel delivers the parent-death signal; the exit takes a moment
    left = prefect_servers(home)
    for pid in left:  # do not leak them into the rest of the session
        os.kill(pid, signal.SIGKILL)
    assert left == [], "no Prefect server outlives its run"


def test_a_retrain_killed_in_its_rollout_does_not_block_the_next_one(tmp_path: Path, csv: Path) -> None:
    """A command-line run's Prefect API is a throwaway server over a database that outlives it: a rollout
    slot taken there would stay taken after a kill -9. The file lock guards instead, and dies with the run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update({"PREFECT_HOME": str(tmp_path / "prefect"), "TF_CPP_MIN_LOG_LEVEL": "2"})
    env.pop(faults.MODE_ENV, None)
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({
        "gate": {"min_precision": 0.0, "min_recall": 0.0},
        "rollout": {"lock_timeout_s": 5, "canary": {"steps": []},
                    "local": {"rest_port": free_port(), "grpc_port": free_port(), "state_dir": str(tmp_path / "serving")}},
    }))
    args = [sys.executable, "-m", "aviary.flows.retrain", "--data", str(csv), "--epochs", "3", "--target", "local",
            "--config", str(config), "--store", str(tmp_path / "store"), "--runs-dir", str(tmp_path / "runs")]
    try:
        killed = subprocess.run(args, cwd=REPO, env={**env, faults.ENV: "rollout-locked"}, capture_output=True,
                                text=True, timeout=600, check=False)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        again = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
        assert "rollout: v2 Promoted" in again.stdout
        assert ModelStore(tmp_path / "store", "circle").aliases() == {"production": 2}
    finally:
        subprocess.run([sys.executable, "-m", "aviary.targets.local", "stop", "--state-dir", str(tmp_path / "serving")],
                       cwd=REPO, capture_output=True, check=False)

"""The whole retrain flow on small generated data, under a throwaway Prefect API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from prefect.artifacts import Artifact

from aviary.config import PipelineConfig
from aviary.data.generate import generate, write_csv
from aviary.flows.retrain import main, retrain
from aviary.store import ModelStore
from tests.helpers import FAST_TRAIN, free_port, small_pipeline

pytestmark = pytest.mark.usefixtures("prefect_harness")


def config(tmp_path: Path, data: Path, **gate: float) -> PipelineConfig:
    return small_pipeline(tmp_path, data, gate=gate)


@pytest.fixture(scope="module")
def csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(generate(rows=2500, seed=11), tmp_path_factory.mktemp("data") / "circle.csv")


def test_first_run_exports_v1_and_second_run_is_judged_against_it(tmp_path: Path, csv: Path) -> None:
    cfg = config(tmp_path, csv)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"patience": None})})
    first = retrain(cfg)
    assert (first.version, first.blessed, first.baseline_version) == (1, True, None)
    recorded = ModelStore(tmp_path / "store", "circle").metadata(1).config
    assert recorded is not None and recorded["train"]["epochs"] == 25
    assert isinstance(recorded["train"]["patience"], int) and recorded["train"]["patience"] >= 5, "as resolved"
    assert first.path == tmp_path / "store" / "circle" / "1" and (first.path / "saved_model.pb").is_file()
    assert any("floors alone" in r for r in first.reasons)

    second = retrain(cfg)
    assert (second.version, second.blessed, second.baseline_version) == (2, True, 1)
    assert any("last blessed v1" in r for r in second.reasons), "v1 was never promoted (target none)"
    assert ModelStore(tmp_path / "store", "circle").versions() == [1, 2]

    metrics = Artifact.get("circle-metrics")
    assert metrics is not None and "last blessed v1" in str(metrics.data)
    verdict = Artifact.get("circle-verdict")
    assert verdict is not None and str(verdict.data).startswith("# circle v2: blessed")


def test_a_rejected_model_is_recorded_and_not_exported(tmp_path: Path, csv: Path) -> None:
    result = retrain(config(tmp_path, csv, min_precision=1.0, min_recall=1.0))
    assert not result.blessed and result.path is None
    store = ModelStore(tmp_path / "store", "circle")
    assert store.versions() == []
    rejected = store.rejected(result.version)
    assert rejected is not None and rejected["verdict"]["blessed"] is False
    assert any("< floor 1.00" in r for r in rejected["verdict"]["reasons"])


def test_cli_prints_the_version_and_why(tmp_path: Path, csv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps({"train": FAST_TRAIN.model_dump(), "export": {"golden_rows": 20}}))
    code = main(["--data", str(csv), "--store", str(tmp_path / "store"), "--runs-dir", str(tmp_path / "runs"),
                 "--target", "none", "--config", str(cfg_file)])
    out = capsys.readouterr().out
    assert code == 0
    assert f"circle v1: BLESSED and exported to {tmp_path / 'store' / 'circle' / '1'}" in out
    assert "precision" in out and "floors alone decide" in out


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("x,y\n0.1,0.2\n", "class"),
        ("x,y,class\n0.1,nan,1\n0.2,0.3,0\n", "'y'"),
        ("x,y,class\n" + "0.1,0.2,1\n" * 200, "class"),
    ],
    ids=["missing-label", "nan", "one-class"],
)
def test_bad_csv_fails_with_one_line_and_leaves_the_store_untouched(
    tmp_path: Path, content: str, fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    code = main(["--data", str(bad), "--store", str(tmp_path / "store"), "--runs-dir", str(tmp_path / "runs"),
                 "--target", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("error: ") and "bad.csv" in err[-1] and fragment in err[-1]
    assert not (tmp_path / "store").exists()


def test_invalid_config_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model-name", "Bad Name!", "--store", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith("error: invalid config: export.model_name:")


def test_retrain_with_the_local_target_promotes_and_serves(tmp_path: Path, csv: Path) -> None:
    from aviary.targets.local import LocalTarget

    local = {"rest_port": free_port(), "grpc_port": free_port(), "state_dir": tmp_path / "serving"}
    base = config(tmp_path, csv)
    cfg = base.model_copy(
        update={"rollout": base.rollout.model_validate({"target": "local", "local": local,
                                                         "check": {"p95_budget_ms": 2000}})}
    )
    try:
        result = retrain(cfg)
        assert (result.version, result.blessed, result.rollout) == (1, True, "Promoted")
        assert ModelStore(tmp_path / "store", "circle").aliases() == {"production": 1}
        answer = requests.post(
            f"http://127.0.0.1:{local['rest_port']}/v1/models/circle:predict",
            json={"instances": [{"x": 0.5, "y": 0.5}, {"x": -1.4, "y": 1.4}]},
            timeout=10,
        )
        assert [p["class"] for p in answer.json()["predictions"]] == [1, 0]
        check = Artifact.get("circle-check")
        assert check is not None and "passed" in str(check.data)
        timeline = Artifact.get("circle-rollout")
        assert timeline is not None and "| Promoted |" in str(timeline.data)
    finally:
        LocalTarget(cfg.rollout.local, cfg.export.store).stop()

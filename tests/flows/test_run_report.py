"""What a person sees of a run: its final state, pictures, TensorBoard run, comparison, and a quiet terminal."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.artifacts import Artifact

from aviary.config import PipelineConfig
from aviary.data.generate import generate, write_csv
from aviary.flows.compare import compare
from aviary.flows.retrain import retrain
from aviary.report import PICTURE_TITLES
from aviary.store import ModelStore
from aviary.tensorboard import version_logdir
from tests.helpers import FAST_TRAIN, small_pipeline

pytestmark = pytest.mark.usefixtures("prefect_harness")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(generate(rows=2000, seed=5), tmp_path_factory.mktemp("data") / "circle.csv")


def test_each_run_ends_in_a_state_named_for_its_outcome_and_keeps_its_pictures(tmp_path: Path, csv: Path) -> None:
    cfg = small_pipeline(tmp_path, csv)
    first = retrain(cfg, return_state=True)
    assert (first.type.value, first.name, first.message) == ("COMPLETED", "Exported", "circle v1 exported; not rolled out here")

    strict = cfg.model_copy(update={"gate": cfg.gate.model_copy(update={"min_precision": 1.0})})
    rejected = retrain(strict, return_state=True)
    assert (rejected.type.value, rejected.name) == ("COMPLETED", "Rejected")
    assert re.fullmatch(r"circle v2 rejected: precision 0\.\d{4} < floor 1\.00", rejected.message or "")
    verdict = Artifact.get("circle-verdict")
    assert verdict is not None
    assert re.search(r"\*\*Failed\*\*\n\n- ❌ \*\*precision 0\.\d{4} < floor 1\.00\*\*\n\n\*\*Passed\*\*\n\n- ✅ recall",
                     str(verdict.data))

    store = ModelStore(cfg.export.store, "circle")
    for version in (1, 2):  # rejected versions have their pictures too
        assert sorted(p.stem for p in (store.base / "reports" / str(version)).glob("*.png")) == sorted(PICTURE_TITLES)
    pictures = Artifact.get("circle-pictures")
    assert pictures is not None and str(pictures.data).count("data:image/png;base64,iVBORw0KGgo") == len(PICTURE_TITLES)

    # TensorBoard: one run per version, named in its metadata; v2's training came from the cache and links v1's logs.
    assert store.metadata(1).tensorboard_run == "circle/v1"
    assert store.rejected(2)["tensorboard_run"] == "circle/v2"  # type: ignore[index]
    v1, v2 = (version_logdir(cfg.runs_dir, "circle", v) for v in (1, 2))
    assert (v2 / "train").resolve() == (v1 / "train").resolve() and any((v2 / "train").iterdir())

    text = compare(1, 2, cfg.export.store, "circle")
    assert "| status | blessed, never promoted | rejected |" in text and "Same data." in text
    side = Artifact.get("circle-compare")
    assert side is not None and str(side.data).startswith("# circle: v1 beside v2")


def cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """The command line as a user runs it, against this session's Prefect API."""
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TF_"))}
    env.update(PREFECT_API_URL=str(PREFECT_API_URL.value()), PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "aviary.flows.retrain", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


def test_a_bad_csv_prints_exactly_one_line_and_fails(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y\n0.1,0.2\n")
    done = cli(["--data", str(bad), "--store", "store", "--runs-dir", "runs", "--target", "none"], tmp_path)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"error: {bad}: column 'class': not in the header (line 1), which has 'x', 'y'\n"
    assert not (tmp_path / "store").exists()


@pytest.mark.slow
def test_a_successful_run_prints_its_outcome_and_nothing_else(tmp_path: Path, csv: Path) -> None:
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"train": FAST_TRAIN.model_dump(), "export": {"golden_rows": 20, "warmup_records": 5}}))
    done = cli(["--data", str(csv), "--store", "store", "--runs-dir", "runs", "--target", "none", "--config", str(cfg)],
               tmp_path)
    assert (done.returncode, done.stderr) == (0, "")  # no TensorFlow start-up lines, no Prefect log, no traceback
    lines = done.stdout.splitlines()
    assert lines[0] == "circle v1: BLESSED and exported to store/circle/1"
    assert re.fullmatch(r"  precision N  recall N  f1 N  accuracy N  roc_auc N  pr_auc N  threshold N",
                        re.sub(r"[01]\.\d{4}", "N", lines[1]))
    assert [re.sub(r"\d\.\d{4}", "N", line) for line in lines[2:]] == [
        "  - precision N >= floor 0.80", "  - recall N >= floor 0.80",
        "  - no production version to compare with: floors alone decide",
    ]
    PipelineConfig()  # the defaults still validate where the command ran

"""Each version keeps its training data's profile; the next run's data is checked against production's."""

from __future__ import annotations

from pathlib import Path

import pytest

from aviary.data.generate import generate, write_csv
from aviary.flows.retrain import main, retrain
from aviary.store import ModelStore
from tests.helpers import small_pipeline

pytestmark = pytest.mark.usefixtures("prefect_harness")

QUICK = {"epochs": 8, "patience": 2}


def test_drift_is_a_gate_reason_and_a_changed_schema_stops_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    circle = generate(rows=1200, seed=1)
    first = retrain(small_pipeline(tmp_path, write_csv(circle, tmp_path / "v1.csv"), train=QUICK))
    meta = ModelStore(tmp_path / "store", "circle").metadata(first.version)
    assert meta.profile is not None and meta.profile.rows > 0
    assert meta.drift_reference is not None and len(meta.drift_reference["x"]["shares"]) == 11

    # The same circle, but x now mostly on one side: x drifts, y does not.
    shifted = generate(rows=1200, seed=2)
    shifted = shifted[(shifted["x"] > 0.3) | (shifted.index % 4 == 0)]
    second = retrain(
        small_pipeline(tmp_path, write_csv(shifted, tmp_path / "v2.csv"), train=QUICK, gate={"min_precision": 0.5})
    )
    drift = [r for r in second.reasons if r.startswith("drift")]
    assert drift and drift[0].startswith("drift (warning): 'x' PSI ") and "against last blessed v1" in drift[0]
    assert not any("'y'" in r for r in drift)

    blocked = retrain(
        small_pipeline(
            tmp_path, tmp_path / "v2.csv", train=QUICK, gate={"min_precision": 0.5, "drift": {"action": "block"}}
        )
    )
    assert not blocked.blessed and any(r.startswith("drift (blocks): 'x'") for r in blocked.reasons)

    # Another feature set: one line, before any training, nothing new in the store.
    other = circle.rename(columns={"y": "z"})
    versions = ModelStore(tmp_path / "store", "circle").versions()
    code = main(["--data", str(write_csv(other, tmp_path / "v3.csv")), "--store", str(tmp_path / "store"),
                 "--runs-dir", str(tmp_path / "runs"), "--target", "none", "--config", str(features_xz(tmp_path))])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("error: training data schema differs from last blessed v") and "\n" not in err
    assert "new feature(s) 'z'; feature(s) 'y' gone" in err
    assert ModelStore(tmp_path / "store", "circle").versions() == versions


def features_xz(tmp_path: Path) -> Path:
    path = tmp_path / "xz.json"
    path.write_text('{"data": {"features": ["x", "z"]}, "train": {"epochs": 2}}')
    return path

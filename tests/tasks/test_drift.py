from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aviary.tasks.drift import DriftConfig, SchemaChangeError, check_drift, psi, reference
from tests.profiles import dataset_with_profile


def frame(rows: int, seed: int, shift: float = 0.0, red: float = 0.5, positive: float = 0.5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    income = rng.lognormal(10 + shift, 1.0, rows)
    income[rng.random(rows) < 0.05] = np.nan
    return pd.DataFrame(
        {
            "annual income": income,
            "colour": np.where(rng.random(rows) < red, "red", np.where(rng.random(rows) < 0.5, "blue", "green")),
            "label": (rng.random(rows) < positive).astype(int),
        }
    )


FEATURES = ("annual income", "colour")


def profiled(tmp_path: Path, name: str, data: pd.DataFrame):  # type: ignore[no-untyped-def]
    return dataset_with_profile(data, tmp_path / f"{name}.parquet", FEATURES, "label")


def test_same_distribution_does_not_drift(tmp_path: Path) -> None:
    prod_set, prod = profiled(tmp_path, "prod", frame(4000, 1))
    new_set, new = profiled(tmp_path, "new", frame(4000, 2))
    ref = reference(prod_set.path, prod)
    assert len(ref["annual income"]["shares"]) == 11, "10 decile bins and one for missing values"
    assert ref["annual income"]["shares"][-1] == pytest.approx(0.05, abs=0.01)
    report = check_drift(new, new_set.path, prod, ref, DriftConfig(), baseline_version=3)
    assert report.drifted == () and not report.blocking
    assert report.reasons == ("no drift against production v3 (2 features and the label balance checked)",)
    assert report.scores["annual income"] < 0.05 and report.scores["colour"] < 0.05


def test_shifted_numbers_categories_and_labels_are_gate_reasons(tmp_path: Path) -> None:
    prod_set, prod = profiled(tmp_path, "prod", frame(4000, 1))
    new_set, new = profiled(tmp_path, "new", frame(4000, 2, shift=1.0, red=0.95, positive=0.8))
    ref = reference(prod_set.path, prod)
    warn = check_drift(new, new_set.path, prod, ref, DriftConfig(), baseline_version=3)
    assert warn.drifted == ("annual income", "colour", "label") and not warn.blocking
    assert warn.reasons[0].startswith("drift (warning): 'annual income' PSI ")
    assert warn.reasons[0].endswith("> 0.25 against production v3")
    assert warn.reasons[1].startswith("drift (warning): 'colour' JS distance ")
    assert warn.reasons[2].startswith("drift (warning): positive label share 0.8")
    block = check_drift(new, new_set.path, prod, ref, DriftConfig(action="block"), baseline_version=3)
    assert block.blocking and block.reasons[0].startswith("drift (blocks): ")


def test_changed_schema_is_one_line_error(tmp_path: Path) -> None:
    prod_set, prod = profiled(tmp_path, "prod", frame(500, 1))
    changed = frame(500, 2).assign(colour=lambda f: (f["colour"] == "red").astype(float))
    new_set, new = profiled(tmp_path, "new", changed)
    with pytest.raises(SchemaChangeError) as error:
        check_drift(new, new_set.path, prod, reference(prod_set.path, prod), DriftConfig(), baseline_version=2)
    assert str(error.value) == (
        "training data schema differs from production v2: 'colour' is numeric, was categorical "
        "(set gate.drift.allow_schema_change to train a new feature set)"
    )
    allowed = check_drift(new, new_set.path, prod, None, DriftConfig(allow_schema_change=True), 2)
    assert allowed.reasons == ("schema changed from production v2: 'colour' is numeric, was categorical",)


def test_psi_of_equal_shares_is_zero_and_grows_with_shift() -> None:
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert psi([0.5, 0.5], [0.6, 0.4]) < psi([0.5, 0.5], [0.9, 0.1])
    assert np.isfinite(psi([1.0, 0.0], [0.0, 1.0]))

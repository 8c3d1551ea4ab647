"""Checks on the shipped sample file itself: its exact rows, and that its labels follow the circle rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from aviary.config import DataConfig
from aviary.data.generate import inside_circle
from aviary.tasks.ingest import check_csv

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "classification.csv"

EXPECTED = """x,y,class
0.5,0.5,1
1,-0.5,0
-0.5,1,0
-1,0.5,0
0.5,-1,0
-0.5,-0.5,1
0,-1,1
"""


def test_sample_has_exactly_the_issue_rows() -> None:
    assert SAMPLE.read_bytes() == EXPECTED.encode()


def test_sample_labels_follow_the_circle_rule_boundary_included() -> None:
    frame = pd.read_csv(SAMPLE)
    expected = inside_circle(frame["x"].to_numpy(), frame["y"].to_numpy())
    np.testing.assert_array_equal(frame["class"].to_numpy(), expected)
    # (0, -1) lies on the circle and is class 1: the boundary is inside.
    assert frame.loc[(frame["x"] == 0) & (frame["y"] == -1), "class"].tolist() == [1]


def test_sample_passes_ingest_validation() -> None:
    dataset, ones = check_csv(DataConfig(path=SAMPLE, features=("x", "y"), label="class", min_rows=2))
    assert (dataset.rows, ones) == (7, 3)

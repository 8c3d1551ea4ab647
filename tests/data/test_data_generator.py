"""Checks on data/generate.py: deterministic from the seed, labels by the circle rule, noise as asked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aviary.data.generate import HALF_WIDTH, generate, inside_circle, write_csv

ROOT = Path(__file__).resolve().parents[2]


def test_same_seed_same_data() -> None:
    pd.testing.assert_frame_equal(generate(2_000, seed=7, noise=0.1), generate(2_000, seed=7, noise=0.1))


def test_different_seeds_differ() -> None:
    a, b = generate(2_000, seed=1), generate(2_000, seed=2)
    assert not np.array_equal(a[["x", "y"]].to_numpy(), b[["x", "y"]].to_numpy())


def test_without_noise_labels_follow_the_circle_rule() -> None:
    frame = generate(20_000, seed=0, noise=0.0)
    np.testing.assert_array_equal(frame["class"].to_numpy(), inside_circle(frame["x"].to_numpy(), frame["y"].to_numpy()))


def test_points_cover_the_square_and_both_classes() -> None:
    frame = generate(20_000, seed=0)
    assert list(frame.columns) == ["x", "y", "class"]
    assert frame[["x", "y"]].abs().to_numpy().max() <= HALF_WIDTH
    share = frame["class"].mean()
    # pi / 9 ~ 0.349 of the square lies inside the unit circle.
    assert 0.32 < share < 0.38


@pytest.mark.parametrize("noise", [0.01, 0.1, 0.3])
def test_noise_flips_the_requested_fraction(noise: float) -> None:
    frame = generate(20_000, seed=3, noise=noise)
    clean = inside_circle(frame["x"].to_numpy(), frame["y"].to_numpy())
    flipped = float(np.mean(frame["class"].to_numpy() != clean))
    assert flipped == pytest.approx(noise, abs=0.005)


def test_same_points_whatever_the_noise() -> None:
    clean, noisy = generate(1_000, seed=5, noise=0.0), generate(1_000, seed=5, noise=0.2)
    pd.testing.assert_frame_equal(clean[["x", "y"]], noisy[["x", "y"]])


@pytest.mark.parametrize(("rows", "noise"), [(-1, 0.0), (10, -0.1), (10, 1.5)])
def test_rejects_impossible_arguments(rows: int, noise: float) -> None:
    with pytest.raises(ValueError):
        generate(rows, seed=0, noise=noise)


def test_written_csv_rereads_identically(tmp_path: Path) -> None:
    frame = generate(5_000, seed=11, noise=0.05)
    out = write_csv(frame, tmp_path / "sub" / "circle.csv")
    assert out.read_text().splitlines()[0] == "x,y,class"
    back = pd.read_csv(out)
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)
    np.testing.assert_array_equal(back[["x", "y"]].to_numpy(), frame[["x", "y"]].to_numpy())
    assert [p.name for p in out.parent.iterdir()] == ["circle.csv"]


def test_cli_writes_the_same_data_as_the_function(tmp_path: Path) -> None:
    out = tmp_path / "circle.csv"
    done = subprocess.run(
        [sys.executable, "-m", "aviary.data.generate", "--rows", "500", "--seed", "4", "--noise", "0.1", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "500 rows" in done.stdout
    pd.testing.assert_frame_equal(pd.read_csv(out), generate(500, seed=4, noise=0.1), check_dtype=False)


def test_cli_rejects_bad_noise(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "aviary.data.generate", "--rows", "10", "--noise", "2", "--out", str(tmp_path / "c.csv")],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert done.returncode == 2
    assert "noise must be in [0, 1]" in done.stderr
    assert not (tmp_path / "c.csv").exists()

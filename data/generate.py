"""Make circle data at any size: class 1 inside the unit circle (boundary included), 0 outside.

Deterministic from a seed, so a data set is named by (rows, seed, noise) alone, and vectorised,
so a million rows take well under a second. Run as
`python -m data.generate --rows 20000 --seed 0 --noise 0.0 --out data/circle.csv`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

HALF_WIDTH = 1.5
"""Points are uniform in [-1.5, 1.5]²: the circle covers about 35% of it, so both classes are common."""

DECIMALS = 6
"""Coordinates are rounded before labelling: short CSV text that re-reads to the same floats."""

COLUMNS = ("x", "y", "class")


def inside_circle(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The labelling rule, shared with the tests: 1 inside the unit circle or on it, else 0."""
    return (x * x + y * y <= 1.0).astype(np.int8)


def generate(rows: int, seed: int = 0, noise: float = 0.0) -> pd.DataFrame:
    """`rows` points with labels, of which exactly round(noise * rows), chosen at random, are flipped."""
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1], got {noise}")
    rng = np.random.default_rng(seed)
    xy = np.round(rng.uniform(-HALF_WIDTH, HALF_WIDTH, size=(rows, 2)), DECIMALS)
    # Rounding can give -0.0, which prints as "-0.0": normalise so the text is canonical.
    xy += 0.0
    label = inside_circle(xy[:, 0], xy[:, 1])
    flips = round(noise * rows)
    if flips:
        label[rng.choice(rows, size=flips, replace=False)] ^= 1
    return pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "class": label})


def write_csv(frame: pd.DataFrame, out: Path) -> Path:
    """Write `frame` as plain comma-separated text with an unquoted header, via a temp file and rename.

    pyarrow's writer is ~8x faster than `DataFrame.to_csv` and prints floats in their shortest
    round-trip form; it quotes header names, so the header is written by hand.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    table = pa.Table.from_pandas(frame, preserve_index=False)
    try:
        with tmp.open("wb") as sink:
            sink.write((",".join(map(str, frame.columns)) + "\n").encode())
            pa_csv.write_csv(table, sink, pa_csv.WriteOptions(include_header=False, quoting_style="none"))
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.generate", description="Make circle data at any size.")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", type=float, default=0.0, help="fraction of labels flipped, 0 to 1")
    parser.add_argument("--out", type=Path, default=Path("data/circle.csv"))
    args = parser.parse_args(argv)
    try:
        frame = generate(args.rows, args.seed, args.noise)
    except ValueError as exc:
        parser.error(str(exc))
    write_csv(frame, args.out)
    inside = int(frame["class"].sum())
    print(f"{args.out}: {len(frame)} rows, {inside} class 1, {len(frame) - inside} class 0, seed {args.seed}, noise {args.noise}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Does a whole retrain run stay flat in memory and linear in time as the rows grow?

For each size, a circle CSV is generated (in chunks, so this process stays small), then two
variants run, each in its own process so that its peak memory (max RSS) is its own:

- `retrain`: the whole retrain flow from the command line (`flows.retrain.main`: ingest, split,
  train, evaluate, gate, export; rollout target none), one epoch at a large batch;
- `bare`: `pd.read_csv` into in-memory arrays, then a bare `model.fit` of the same model for one
  epoch at the same batch (the reference that holds everything in memory), where it fits.

Seconds per million rows and peak memory are printed per size.

    python -m benchmarks.bench_scale [--rows 1000000 10000000 30000000] [--batch-size 8192] [--bare-max 30000000]
    python -m benchmarks.bench_scale --dir /tmp/bs --rows 1000000 10000000 30000000 100000000 --bare-max 0
        (the whole run alone up to 100M rows: ~2 GB of CSV at a time in --dir)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHUNK_ROWS = 1_000_000


def write_circle_csv(rows: int, out: Path) -> Path:
    """`rows` circle rows (5% label noise), written a million at a time."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    from aviary.data.generate import generate

    with out.open("wb") as sink:
        sink.write(b"x,y,class\n")
        for i, start in enumerate(range(0, rows, CHUNK_ROWS)):
            frame = generate(min(CHUNK_ROWS, rows - start), seed=i, noise=0.05)
            pa_csv.write_csv(pa.Table.from_pandas(frame, preserve_index=False), sink, pa_csv.WriteOptions(include_header=False))
    return out


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_retrain(csv: Path, work: Path, batch_size: int) -> dict[str, object]:
    from aviary.flows.retrain import main

    cfg = work / "config.json"
    cfg.write_text(json.dumps({"train": {"epochs": 1, "batch_size": batch_size, "learning_rate": 0.05, "patience": 0}}))
    start = time.perf_counter()
    code = main(["--data", str(csv), "--store", str(work / "store"), "--runs-dir", str(work / "runs"),
                 "--target", "none", "--config", str(cfg)])
    return {"seconds": time.perf_counter() - start, "peak_mib": _peak_mib(), "exit": code}


def run_bare(csv: Path, batch_size: int) -> dict[str, object]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    import pandas as pd

    from aviary.config import TrainConfig
    from aviary.tasks.preprocess import frame_inputs, profile_frame
    from aviary.tasks.train import build_model

    start = time.perf_counter()
    frame = pd.read_csv(csv)
    profile = profile_frame(frame, ["x", "y"], "class")  # the same preprocessing layers as the flow's model
    features = frame_inputs(frame, profile)
    labels = frame["class"].to_numpy(dtype=np.float32)
    del frame
    loaded = time.perf_counter()
    keras.utils.set_random_seed(0)
    model = build_model(profile, TrainConfig(batch_size=batch_size, learning_rate=0.05))
    model.fit(features, labels, batch_size=batch_size, epochs=1, verbose=0)
    done = time.perf_counter()
    return {"seconds": done - start, "fit_seconds": done - loaded, "peak_mib": _peak_mib(), "exit": 0}


def _child(variant: str, csv: Path, batch_size: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench-scale-run-", dir=csv.parent) as work:
        command = [sys.executable, "-m", "benchmarks.bench_scale", "--variant", variant, "--csv", str(csv),
                   "--work", work, "--batch-size", str(batch_size)]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            # The flow's temporary Prefect server can take a while to start on a busy machine.
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300",
        }
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode or '"exit": 0' not in done.stdout:
        raise SystemExit(f"{variant} on {csv} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_scale", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000, 30_000_000])
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--bare-max", type=int, default=30_000_000, help="largest size the bare variant runs at")
    parser.add_argument("--dir", type=Path, default=None, help="where the CSVs go (default: a temp dir)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--csv", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.variant == "retrain":
        print(json.dumps(run_retrain(args.csv, args.work, args.batch_size)))
        return 0
    if args.variant == "bare":
        print(json.dumps(run_bare(args.csv, args.batch_size)))
        return 0

    print(f"whole retrain run vs bare model.fit, one epoch, batch {args.batch_size}, {os.cpu_count()} CPUs", flush=True)
    print(f"{'rows':>12} {'CSV MiB':>8} {'variant':>8} {'seconds':>8} {'s per M rows':>13} {'peak MiB':>9}", flush=True)
    timings: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-scale-", dir=args.dir) as tmp:
        for rows in args.rows:
            csv = write_circle_csv(rows, Path(tmp) / f"circle-{rows}.csv")
            size = csv.stat().st_size / 2**20
            variants = ["retrain", "bare"] if rows <= args.bare_max else ["retrain"]
            for variant in variants:
                r = _child(variant, csv, args.batch_size)
                seconds, peak = float(r["seconds"]), float(r["peak_mib"])  # type: ignore[arg-type]
                extra = f"  (fit alone {float(r['fit_seconds']):.1f} s)" if "fit_seconds" in r else ""  # type: ignore[arg-type]
                print(f"{rows:>12,} {size:>8.0f} {variant:>8} {seconds:>8.1f} {seconds / rows * 1e6:>13.2f} {peak:>9.0f}{extra}", flush=True)
                if variant == "retrain":
                    timings[rows] = seconds
            csv.unlink()
    if len(timings) > 1:
        small, large = min(timings), max(timings)
        marginal = (timings[large] - timings[small]) / (large - small) * 1e6
        print(f"retrain, marginal: {marginal:.2f} s per million rows from {small:,} to {large:,} rows (fixed costs cancel)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

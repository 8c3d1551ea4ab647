"""Training on 1,000,000 generated rows: our train_model beside a bare `model.fit` on in-memory arrays.

Each variant runs in its own process, so peak memory (max RSS) is its own. Same data file,
same model, batch size, epochs and validation split; the bare run has no callbacks and no files.

    python benchmarks/bench_train.py [--rows 1000000] [--epochs 2] [--batch-size 1024]
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def variant(name: str, parquet: Path, epochs: int, batch_size: int, run_dir: Path) -> dict[str, float]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(ROOT))
    from aviary.config import TrainConfig
    from aviary.tasks.preprocess import dataset_profile
    from aviary.tasks.train import VALIDATION_SPLIT, build_model, load_inputs, train_model
    from aviary.types import Dataset

    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, patience=epochs)
    dataset = Dataset(path=parquet, source=parquet, rows=0, fingerprint="bench", features=("x", "y"), label="class")
    import keras
    import tensorflow as tf  # noqa: F401 - imported before timing, as in both variants

    if name == "ours":
        start = time.perf_counter()
        train_model(dataset, cfg, run_dir)
    else:
        profile = dataset_profile(dataset)
        features, labels = load_inputs(dataset, profile)  # loading is outside the bare timing
        keras.utils.set_random_seed(cfg.seed)
        model = build_model(profile, cfg)
        start = time.perf_counter()
        model.fit(features, labels, batch_size=batch_size, epochs=epochs, validation_split=VALIDATION_SPLIT, verbose=0)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--parquet", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        with tempfile.TemporaryDirectory() as run_dir:
            print(json.dumps(variant(args.variant, args.parquet, args.epochs, args.batch_size, Path(run_dir))))
        return

    sys.path.insert(0, str(ROOT))
    from aviary.data.generate import generate

    with tempfile.TemporaryDirectory() as tmp:
        parquet = Path(tmp) / "train.parquet"
        generate(rows=args.rows, seed=0, noise=0.0).to_parquet(parquet, index=False)
        results = {}
        for name in ("bare", "ours"):
            out = subprocess.run(
                [sys.executable, __file__, "--variant", name, "--parquet", str(parquet), "--rows", str(args.rows),
                 "--epochs", str(args.epochs), "--batch-size", str(args.batch_size)],
                check=True, capture_output=True, text=True,
            )
            results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    rows_trained = args.rows * args.epochs
    print(f"training: {args.rows:,} rows, {args.epochs} epochs, batch {args.batch_size}")
    print(f"{'variant':<8} {'seconds':>8} {'rows/s':>12} {'peak MB':>9}")
    for name, r in results.items():
        print(f"{name:<8} {r['seconds']:>8.2f} {rows_trained / r['seconds']:>12,.0f} {r['max_rss_mb']:>9.0f}")
    ratio = results["ours"]["seconds"] / results["bare"]["seconds"]
    print(f"ours/bare time: {ratio:.3f} (goal <= 1.25)")


if __name__ == "__main__":
    main()

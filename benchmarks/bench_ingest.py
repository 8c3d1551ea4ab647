"""How much does ingest cost over a bare `pandas.read_csv` of the same file?

Generates a circle CSV (1,000,000 rows by default), then times, each in its own subprocess so that
peak memory is its own: bare `pd.read_csv(path)` (C engine), bare `pd.read_csv(path, engine="pyarrow")`,
and our `ingest_csv` cold (fresh work_dir: parse, validate, fingerprint, write Parquet), warm (the
Parquet file for that content exists and is reused) and bad (one bad label ten rows from the end: the
time to the one-line error that names its line). Best of --repeat runs each, after one untimed
warm-up call, in --rounds interleaved rounds, all on one file in one run.

    python -m benchmarks.bench_ingest [--rows 1000000] [--repeat 3] [--rounds 3] [--goal 1.25]
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
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BARE = ("pandas-c", "pandas-pyarrow")
OURS = ("ingest-cold", "ingest-warm", "ingest-bad")


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _variant(name: str, csv: Path, scratch: Path) -> Callable[[int], object]:
    """The call to time; imports happen here, before timing, so they count in neither time nor delta."""
    import pandas as pd

    if name == "pandas-c":
        return lambda _: pd.read_csv(csv)
    if name == "pandas-pyarrow":
        return lambda _: pd.read_csv(csv, engine="pyarrow")

    from aviary.config import DataConfig
    from aviary.tasks.ingest import ingest_csv

    cfg = DataConfig(path=csv, features=("x", "y"), label="class", min_rows=100)
    if name == "ingest-cold":
        return lambda run: ingest_csv(cfg, scratch / f"cold-{run}")
    if name == "ingest-warm":
        return lambda _: ingest_csv(cfg, scratch / "warm")
    if name == "ingest-bad":
        from aviary.tasks.ingest import DataError

        # The same file with one bad label ten rows from its end: the time to the one-line error.
        lines = csv.read_bytes().splitlines(keepends=True)
        lines[-10] = lines[-10].rsplit(b",", 1)[0] + b",7\n"
        bad = scratch / "bad.csv"
        bad.write_bytes(b"".join(lines))
        bad_cfg = cfg.model_copy(update={"path": bad})

        def refused(run: int) -> str:
            try:
                ingest_csv(bad_cfg, scratch / f"bad-{run}")
            except DataError as exc:
                assert f"line {len(lines) - 9}" in str(exc), exc
                return str(exc)
            raise AssertionError("the bad label was not refused")

        return refused
    raise ValueError(f"unknown variant {name!r}")


def run_variant(name: str, csv: Path, repeat: int) -> dict[str, float]:
    """In this process: best wall time of `repeat` calls, and peak RSS over what imports had already used.

    One untimed call comes first, for every variant alike: a fresh process pays page faults and
    allocator growth on its first large read, which is noise next to what is being compared. For
    ingest-warm it is also what puts the Parquet file in place.
    """
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as scratch:
        call = _variant(name, csv, Path(scratch))
        baseline = _peak_rss_mib()
        call(0)
        times, cpu = [], []
        for run in range(1, repeat + 1):
            start, start_cpu = time.perf_counter(), _cpu_s()
            call(run)
            times.append(time.perf_counter() - start)
            cpu.append(_cpu_s() - start_cpu)
        peak = _peak_rss_mib()
    return {"best_s": min(times), "best_cpu_s": min(cpu), "peak_rss_mib": peak, "delta_rss_mib": peak - baseline}


def _in_subprocess(name: str, csv: Path, repeat: int) -> dict[str, float]:
    command = [sys.executable, "-m", "benchmarks.bench_ingest", "--variant", name, "--csv", str(csv), "--repeat", str(repeat)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"variant {name} failed:\n{done.stderr}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_ingest", description="Time ingest against bare read_csv.")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of all variants; the best counts")
    parser.add_argument("--goal", type=float, default=1.25, help="largest acceptable ours / bare pandas-c")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--csv", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.variant:
        print(json.dumps(run_variant(args.variant, args.csv, args.repeat)))
        return 0

    from aviary.data.generate import generate, write_csv

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        csv = write_csv(generate(args.rows, seed=0, noise=0.05), Path(tmp) / "circle.csv")
        size = csv.stat().st_size / 2**20
        print(f"{args.rows:,} rows, {size:.1f} MiB CSV, best of {args.rounds} rounds x {args.repeat} runs, {os.cpu_count()} CPUs, python {sys.version.split()[0]}")
        # Rounds interleave the variants, so a slow spell on a shared machine hits them all alike.
        results: dict[str, dict[str, float]] = {}
        for _ in range(args.rounds):
            for name in (*BARE, *OURS):
                result = _in_subprocess(name, csv, args.repeat)
                kept = results.setdefault(name, result)
                kept["best_s"] = min(kept["best_s"], result["best_s"])
                kept["best_cpu_s"] = min(kept["best_cpu_s"], result["best_cpu_s"])
                kept["peak_rss_mib"] = max(kept["peak_rss_mib"], result["peak_rss_mib"])
                kept["delta_rss_mib"] = max(kept["delta_rss_mib"], result["delta_rss_mib"])

    bare, bare_cpu = results["pandas-c"]["best_s"], results["pandas-c"]["best_cpu_s"]
    # CPU seconds (all threads) beside wall time: on a busy machine they say what the code costs.
    print(f"{'variant':16}{'best s':>9}{'rows/s':>14}{'vs pandas-c':>13}{'CPU s':>8}{'CPU vs':>8}{'peak RSS MiB':>14}{'+ over imports':>16}")
    for name, result in results.items():
        best, cpu = result["best_s"], result["best_cpu_s"]
        print(
            f"{name:16}{best:9.3f}{args.rows / best:14,.0f}{best / bare:12.2f}x{cpu:8.3f}{cpu / bare_cpu:7.2f}x"
            f"{result['peak_rss_mib']:14.0f}{result['delta_rss_mib']:16.0f}"
        )
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    for name in OURS[:2]:  # the goal is for a good file; the bad one's row shows what an error costs
        ratio = results[name]["best_s"] / bare
        same_engine = results[name]["best_s"] / results["pandas-pyarrow"]["best_s"]
        verdict = "meets" if ratio <= args.goal else "misses"
        print(
            f"{name}: {ratio:.2f}x bare pandas-c ({verdict} the {args.goal}x goal), "
            f"{same_engine:.2f}x bare pandas-pyarrow"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

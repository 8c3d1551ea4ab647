"""What Prefect costs a retrain run: the retrain flow against a running server beside its steps as plain functions.

    python benchmarks/bench_prefect.py [--rows 2000] [--epochs 8] [--repeat 5] [--api-url URL]

Without --api-url it starts a Prefect server of its own (ops.stack, a temporary home, a free port)
and stops it at the end. Same process, same data and config for every variant, interleaved; each
repetition gets a fresh store and runs directory so no variant reuses another's work (the cache
is keyed on content, but its results live under the runs directory). One warm-up of each first.
Variants:
  plain           the steps' plain functions, in the flow's order (ingest, split, train, evaluate, gate, export)
  flow            retrain(config), Prefect's default flow heartbeat (every 180 s) on
  flow-no-hb      retrain(config), heartbeats off (PREFECT_FLOWS_HEARTBEAT_FREQUENCY=None)
  flow-cached     retrain(config) again on the same runs directory: ingest and training come from the cache
Overhead per flow run = median(flow) - median(plain).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 1.5


def plain_retrain(config: Any) -> bool:
    """The retrain flow's work without Prefect; True when the gate blessed (and it exported)."""
    from aviary.store import ModelStore
    from aviary.tasks.evaluate import evaluate_model
    from aviary.tasks.export import export_model
    from aviary.tasks.gate import gate_model
    from aviary.tasks.ingest import ingest_csv
    from aviary.tasks.split import split_dataset
    from aviary.tasks.train import train_model
    from aviary.types import Provenance

    model = config.export.model_name
    store = ModelStore(config.export.store, model)
    key = uuid.uuid4().hex
    run_dir = config.runs_dir / model / key
    dataset = ingest_csv(config.data, config.runs_dir / "datasets")
    split = split_dataset(dataset, config.split, run_dir / "split")
    trained = train_model(split.train, config.train, run_dir)
    evaluation = evaluate_model(trained, split.eval, config.evaluate)
    baseline_version = store.baseline()  # None: every repetition has a fresh store
    verdict = gate_model(evaluation, config.gate, None, baseline_version)
    version = store.reserve_version(key)
    if verdict.blessed:
        provenance = Provenance(parameters=config.model_dump(mode="json"), parent_version=baseline_version)
        export_model(trained, split.eval, evaluation, verdict, version, config.export, provenance)
    return verdict.blessed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--api-url", help="a running Prefect server's API (default: start one)")
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    sys.path.insert(0, str(ROOT))
    from prefect.logging import disable_run_logger
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        get_current_settings,
        temporary_settings,
    )

    from aviary.config import PipelineConfig
    from aviary.data.generate import generate, write_csv
    from aviary.flows.retrain import retrain
    from aviary.ops.stack import Stack
    from tests.helpers import free_port

    work = Path(tempfile.mkdtemp(prefix="bench-prefect-"))
    csv = write_csv(generate(rows=args.rows, seed=0), work / "circle.csv")
    stack = None
    api_url = args.api_url
    if api_url is None:
        stack = Stack(home=work / "prefect", port=free_port())
        started = time.perf_counter()
        stack.start_server()
        print(f"started a Prefect server on {stack.url} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        api_url = stack.api_url

    def config(tag: str) -> Any:
        return PipelineConfig.model_validate({
            "data": {"path": csv},
            "train": {"epochs": args.epochs, "patience": args.epochs, "learning_rate": 0.02, "batch_size": 32},
            "export": {"store": work / tag / "models", "warmup_records": 10, "golden_rows": 50},
            "runs_dir": work / tag / "runs",
            "rollout": {"target": "none"},
        })

    def flow_run(cfg: Any) -> bool:
        return bool(retrain(cfg).blessed)

    def no_heartbeat(cfg: Any) -> bool:
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            return flow_run(cfg)

    def plain(cfg: Any) -> bool:
        with disable_run_logger():
            return plain_retrain(cfg)

    variants: dict[str, Callable[[Any], bool]] = {"plain": plain, "flow": flow_run, "flow-no-hb": no_heartbeat}
    times: dict[str, list[float]] = {name: [] for name in [*variants, "flow-cached"]}
    blessed: dict[str, bool] = {}
    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            heartbeat = get_current_settings().flows.heartbeat_frequency
            for name, fn in variants.items():  # warm-up: imports, TF tracing, first API connections
                fn(config(f"warm-{name}"))
            for i in range(args.repeat):
                for name, fn in variants.items():
                    tag = f"{name}-{i}"
                    started = time.perf_counter()
                    blessed[name] = fn(config(tag))
                    times[name].append(time.perf_counter() - started)
                started = time.perf_counter()
                flow_run(config(f"flow-{i}"))  # the same runs dir as `flow` just used: a cached re-run
                times["flow-cached"].append(time.perf_counter() - started)
    finally:
        if stack is not None:
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=5)  # the runs' last logs, before their server goes
            stack.down()

    medians = {name: statistics.median(values) for name, values in times.items()}
    overhead = medians["flow"] - medians["plain"]
    overhead_no_hb = medians["flow-no-hb"] - medians["plain"]
    print(f"{args.rows} rows, {args.epochs} epochs, {args.repeat} repetitions, API {api_url}; blessed: {blessed}")
    print(f"{'variant':<12} {'median s':>9}  runs")
    for name, values in times.items():
        print(f"{name:<12} {medians[name]:>9.3f}  {' '.join(f'{v:.3f}' for v in values)}")
    print(f"Prefect overhead per retrain run: {overhead:.3f} s with heartbeats every {heartbeat} s, "
          f"{overhead_no_hb:.3f} s without (goal <= {GOAL_S} s)")
    print(json.dumps({"medians_s": medians, "overhead_s": overhead, "overhead_no_heartbeat_s": overhead_no_hb,
                      "heartbeat_s": heartbeat, "goal_s": GOAL_S}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

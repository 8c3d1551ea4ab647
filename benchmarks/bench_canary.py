"""Progressive delivery on the local target under steady client load on the default URL.

    python benchmarks/bench_canary.py [--rate 50] [--out-of-range 0.3]

One trained model exported as versions 1-4 in a temporary store; clients call
`/v1/models/circle:predict` (no version, no label) at --rate requests/s throughout. Scenarios:
  golden-only   v2 against v1 with no traffic steps: the golden-set check alone (the bare baseline)
  progressive   v3 against v2 with the default CanaryConfig (steps, bake, live analysis, shadow)
  failing       v4 against v3, default config, v4 failing every request with x >= 2, which is
                --out-of-range of the clients' requests (30%: it fails 30% of its live requests)
Reported per scenario: outcome, the traffic share it ended at, seconds from AVAILABLE to the end,
client requests and failures during the rollout, and stable's errors from the server's metrics.
Goal: progressive promotes within 60 s of AVAILABLE; failing is rolled back at its first step with
client failures only on its share (stable errors 0).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GOAL_S = 60.0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare(root: Path) -> tuple[Any, Any, Any]:
    from aviary.config import EvalConfig, SplitConfig, TrainConfig
    from aviary.data.generate import generate
    from aviary.tasks.evaluate import evaluate_model
    from aviary.tasks.split import split_dataset
    from aviary.tasks.train import train_model
    from aviary.types import Dataset

    frame = generate(rows=3000, seed=1, noise=0.0)
    path = root / "all.parquet"
    frame.to_parquet(path, index=False)
    dataset = Dataset(path=path, source=path, rows=len(frame), fingerprint="bench", features=("x", "y"), label="class")
    split = split_dataset(dataset, SplitConfig(eval_fraction=0.2, seed=3), root / "split")
    trained = train_model(split.train, TrainConfig(epochs=25, batch_size=32, learning_rate=0.02, seed=7), root / "run")
    return split, trained, evaluate_model(trained, split.eval, EvalConfig())


def scenario(name: str, version: int, config: Any, rate: float, out_of_range: float) -> dict[str, Any]:
    from aviary.analysis import OK, parse_metrics
    from aviary.flows.rollout import rollout
    from aviary.record import records
    from aviary.store import ModelStore
    from aviary.targets.local import LocalTarget
    from benchmarks.loadgen import Load, circle_traffic

    local = config.rollout.local
    target = LocalTarget(local, config.export.store)
    store = ModelStore(config.export.store, config.export.model_name)
    stable = store.aliases()["production"]

    def stable_errors() -> float:
        snap = parse_metrics(target.scrape("circle").values(), "circle")
        counters = snap.versions.get(stable)
        return sum(n for s, n in counters.requests.items() if s != OK) if counters else 0.0

    clients = Load(url=f"http://{local.host}:{local.rest_port}/v1/models/circle:predict", rate=rate,
                   max_requests=int(rate * 240), max_seconds=240, instances=circle_traffic(out_of_range, seed=11))
    errors_before = stable_errors()
    with clients.running():
        time.sleep(2)  # clients at their rate before the rollout starts
        started = time.monotonic()
        state = rollout(version, config, return_state=True)
        ended = time.monotonic()
        errors_after = stable_errors()
    record = records(store, version)[-1]
    ready = next(step["at"] for step in record.timeline if step["event"] == "ready")
    codes = clients.codes(since=started)
    during = [code for at, code in clients.answers if started <= at <= ended]
    return {
        "scenario": name,
        "flow_run": state.type.value,
        "outcome": record.outcome,
        "ended_at_share": record.steps[-1].canary_percent if record.steps else 100,
        "steps": [f"{s.canary_percent}%:{s.verdict}" for s in record.steps],
        "available_to_end_s": round(record.finished - ready, 2),
        "rollout_s": round(ended - started, 2),
        "client_requests": len(during),
        "client_failures": sum(code != 200 for code in during),
        "client_failure_rate": round(sum(code != 200 for code in during) / max(1, len(during)), 4),
        "achieved_rate": round(len(codes) / max(1e-9, ended - started), 1),
        "stable_errors": errors_after - errors_before,
        "reason": record.failure or record.reason,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=50.0, help="client requests per second")
    parser.add_argument("--out-of-range", type=float, default=0.3, help="share of requests the failing canary fails")
    args = parser.parse_args()

    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from aviary.config import CanaryConfig, PipelineConfig
    from aviary.flows.rollout import rollout
    from aviary.targets.local import LocalTarget
    from aviary.tasks.export import export_model
    from aviary.types import Verdict
    from benchmarks.canaries import fail_out_of_range

    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(), \
            temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        root = Path(tmp)
        split, trained, evaluation = prepare(root)
        config = PipelineConfig.model_validate({
            "export": {"store": root / "store", "golden_rows": 200, "warmup_records": 20},
            "rollout": {"target": "local", "lock_timeout_s": 0,
                        "local": {"rest_port": free_port(), "grpc_port": free_port(), "state_dir": root / "serving"}},
        })
        for version in (1, 2, 3, 4):
            export_model(trained, split.eval, evaluation, Verdict(blessed=True, reasons=("bench",)), version,
                         config.export)
        fail_out_of_range(config.export.store / "circle" / "4")
        try:
            rollout(1, config)
            golden_only = config.model_copy(update={"rollout": config.rollout.model_copy(
                update={"canary": CanaryConfig(steps=())})})
            rows = [
                scenario("golden-only", 2, golden_only, args.rate, 0.0),
                scenario("progressive", 3, config, args.rate, 0.0),
                scenario("failing", 4, config, args.rate, args.out_of_range),
            ]
        finally:
            LocalTarget(config.rollout.local, config.export.store).stop()

    print(json.dumps(rows, indent=2))
    base, good, bad = rows
    print(f"\n{'scenario':<12} {'outcome':<11} {'share':>5} {'AVAILABLE->end s':>16} {'requests':>8} "
          f"{'failures':>8} {'stable err':>10}")
    for r in rows:
        print(f"{r['scenario']:<12} {r['outcome']:<11} {r['ended_at_share']:>4}% {r['available_to_end_s']:>16} "
              f"{r['client_requests']:>8} {r['client_failures']:>8} {r['stable_errors']:>10g}")
    print(f"\nprogressive / golden-only time from AVAILABLE: "
          f"{good['available_to_end_s'] / max(1e-9, base['available_to_end_s']):.1f}x")
    ok = (good["outcome"] == "Promoted" and good["available_to_end_s"] <= GOAL_S
          and bad["outcome"] == "RolledBack" and bad["ended_at_share"] == CanaryConfig().steps[0]
          and bad["stable_errors"] == 0 and good["client_failures"] == 0)
    print(f"goal (promoted within {GOAL_S:g} s; failing canary rolled back at its first step, stable error-free): "
          f"{'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

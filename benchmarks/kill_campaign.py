"""A randomized kill campaign: `kill -9` of `python -m flows.retrain` (local target) at random moments.

    python benchmarks/kill_campaign.py [--kills 25] [--rows 1000] [--epochs 20] [--seed 0] [--keep DIR]

Everything lives in a temporary directory: data, store, runs, the local server's state dir and a
PREFECT_HOME, on free ports. One full run first measures how long a run takes; then each round
starts a retrain and kills it (SIGKILL, the whole CLI) at a moment drawn uniformly from that span.
After each kill it counts:
  partial versions   numeric version directories without a complete SavedModel, metadata and golden set
  prefect orphans    Prefect API servers of this PREFECT_HOME still running 15 s after the kill
  server orphans     model servers of this state dir that no pid file records (a killed start; the next run adopts it)
At the end one run without a kill must finish, `status` must agree with the store's aliases, `stop` must
leave no process, and no temp directory of a killed export may remain.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GRACE_S = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def processes(marker_args: bytes | None = None, marker_env: bytes | None = None) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes()
            env = (entry / "environ").read_bytes().split(b"\0") if marker_env else []
            state = (entry / "stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue
        if state == "Z":
            continue
        if (marker_args is None or marker_args in args) and (marker_env is None or marker_env in env):
            found.append(int(entry.name))
    return found


def prefect_servers(home: Path) -> list[int]:
    return processes(b"prefect.server.api.server:create_app", f"PREFECT_HOME={home}".encode())


def model_servers(state_dir: Path) -> list[int]:
    return processes(f"--model_config_file={(state_dir / 'models.config').resolve()}".encode())


def recorded_server(state_dir: Path) -> int | None:
    try:
        return int(json.loads((state_dir / "server.pid").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def partial_versions(base: Path) -> list[str]:
    bad: list[str] = []
    if not base.is_dir():
        return bad
    for version in base.iterdir():
        if not version.name.isdigit():
            continue
        needed = [version / "saved_model.pb", version / "variables", version / "assets.extra" / "aviary.json",
                  version / "assets.extra" / "aviary_golden.json"]
        try:
            complete = all(p.exists() for p in needed) and json.loads(needed[2].read_text())["version"] == int(version.name)
        except (OSError, ValueError, KeyError):
            complete = False
        if not complete:
            bad.append(version.name)
    return bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=25)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="work here and keep it, instead of a temporary directory")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = args.keep or Path(tempfile.mkdtemp(prefix="aviary-kills-"))
    work.mkdir(parents=True, exist_ok=True)
    from aviary.data.generate import generate, write_csv

    csv = write_csv(generate(rows=args.rows, seed=args.seed), work / "circle.csv")
    home, state_dir, store = work / "prefect", work / "serving", work / "store"
    config = {
        "train": {"batch_size": 32, "learning_rate": 0.02, "patience": 3},
        "gate": {"min_precision": 0.0, "min_recall": 0.0, "max_regression": 1.0},
        "export": {"golden_rows": 40, "warmup_records": 5},
        "rollout": {"target": "local", "ready_timeout_s": 120, "lock_timeout_s": 120,
                    "check": {"p95_budget_ms": 5000},
                    "local": {"rest_port": free_port(), "grpc_port": free_port(), "state_dir": str(state_dir),
                              "grace_s": 0.2}},
    }
    (work / "config.json").write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API") and not k.startswith("AVIARY_CRASH")}
    env.update({"PREFECT_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "2", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    command = [sys.executable, "-m", "aviary.flows.retrain", "--data", str(csv), "--epochs", str(args.epochs),
               "--config", str(work / "config.json"), "--store", str(store), "--runs-dir", str(work / "runs")]
    local = [sys.executable, "-m", "aviary.targets.local", "--config", str(work / "config.json"), "--store", str(store)]

    def run(kill_after: float | None) -> tuple[int | None, float]:
        started = time.monotonic()
        with open(work / "runs.log", "ab") as log:
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                code = process.wait(timeout=kill_after)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
                code = None
        return code, time.monotonic() - started

    for _ in range(2):  # the second, warm run (a started server, cached ingest and training) sets the span
        code, span = run(None)
        if code != 0:
            print(f"a full run failed with {code}; see {work / 'runs.log'}", file=sys.stderr)
            return 1
    print(f"a full run takes {span:.1f} s; killing at uniform moments in [0.5, {span:.1f}] s")
    kills = finished = 0
    partial_seen: set[str] = set()
    prefect_orphans = server_orphans = 0
    rounds: list[dict[str, Any]] = []
    while kills < args.kills:
        at = rng.uniform(0.5, span)
        code, took = run(at)
        if code is not None:
            finished += 1
            rounds.append({"at": round(at, 1), "finished": code})
            print(f"run finished ({code}) before its kill at {at:.1f} s", flush=True)
            continue
        kills += 1
        deadline = time.monotonic() + GRACE_S
        while prefect_servers(home) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = prefect_servers(home)
        prefect_orphans += len(left)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        unrecorded = [pid for pid in model_servers(state_dir) if pid != recorded_server(state_dir)]
        server_orphans += len(unrecorded)
        partial = partial_versions(store / "circle")
        partial_seen.update(partial)
        rounds.append({"at": round(at, 1), "killed": True, "partial": partial, "prefect_left": len(left),
                       "unrecorded_servers": len(unrecorded)})
        print(f"kill {kills:2d} at {at:5.1f} s: partial versions {partial or 'none'}, Prefect servers left {len(left)}, "
              f"unrecorded model servers {len(unrecorded)}", flush=True)

    code, _ = run(None)
    status = subprocess.run([*local, "status"], cwd=ROOT, env=env, capture_output=True, text=True, check=False).stdout
    aliases = json.loads((store / "circle" / "aliases.json").read_text()) if (store / "circle" / "aliases.json").exists() else {}
    production = aliases.get("production")
    agrees = production is not None and f"stable v{production}" in status and "canary" not in status.split("\n", 1)[-1]
    temps = [p.name for p in (store / "circle").iterdir() if p.name.startswith(".tmp-")]
    stopped = subprocess.run([*local, "stop"], cwd=ROOT, env=env, capture_output=True, text=True, check=False).stdout.strip()
    remaining = model_servers(state_dir) + prefect_servers(home)
    summary = {
        "kills": kills, "runs_that_finished_before_their_kill": finished, "partial_versions_seen": sorted(partial_seen),
        "prefect_servers_left_after_kills": prefect_orphans, "unrecorded_model_servers_after_kills": server_orphans,
        "final_run_exit": code, "versions": sorted(int(p.name) for p in (store / "circle").iterdir() if p.name.isdigit()),
        "aliases": aliases, "status_agrees_with_store": agrees, "temp_dirs_left": temps, "stop": stopped,
        "processes_left_after_stop": remaining, "work": str(work),
    }
    (work / "summary.json").write_text(json.dumps({"summary": summary, "rounds": rounds}, indent=2))
    print(status.strip())
    print(json.dumps(summary, indent=2))
    ok = (not partial_seen and prefect_orphans == 0 and code == 0 and agrees and not temps and not remaining)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""The local Prefect stack in one command: server and UI, work pool, worker, limits, notifications, deployments.

    python -m ops.stack up [--notify-url URL]   # make stack-up
    python -m ops.stack status
    python -m ops.stack deploy --pool kubernetes
    python -m ops.stack down                    # make stack-down

Everything lives under `--home` (default `.aviary/prefect`): the server's PREFECT_HOME (its SQLite
database, the UI it serves), pid and log files of the server and the worker, and `stack.json`.
The server listens on 127.0.0.1 only. `up` is idempotent: a running server or worker is reused,
pools, limits and notifications are created or updated, deployments re-registered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from aviary.ops import deployments
from aviary.process import Background, tail, wait_started

DEFAULT_HOME = Path(".aviary/prefect")
DEFAULT_PORT = 4200
SERVER_START_S = 120.0
"""First start from an empty home takes about 13 s on a quiet machine; a loaded CI runner, much longer."""
WORKER_START_S = 60.0
DEPLOY_S = 300.0
STOP_S = 20.0
POLL_S = 0.25
WORKER_QUERY_S = 2
"""How often the worker asks for scheduled runs (Prefect's default is 10 s): a run started in the UI starts promptly."""


class StackError(RuntimeError):
    """The stack could not be brought up or down; the message says what and where its log is."""


@dataclass(frozen=True)
class Stack:
    home: Path = DEFAULT_HOME
    port: int = DEFAULT_PORT
    host: str = "127.0.0.1"
    root: Path = deployments.ROOT
    """Where deployments are registered from: their flows run in this directory."""
    extra_env: dict[str, str] = field(default_factory=dict)

    # -- where things are ------------------------------------------------
    @property
    def prefect_home(self) -> Path:
        return self.home.resolve()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def pid_file(self, name: str) -> Path:
        return self.prefect_home / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.prefect_home / f"{name}.log"

    def env(self) -> dict[str, str]:
        """The environment of every process of the stack, and of the flow runs the worker starts."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_HOME=str(self.prefect_home),
            PREFECT_API_URL=self.api_url,
            PREFECT_SERVER_API_HOST=self.host,
            PREFECT_SERVER_API_PORT=str(self.port),
            PREFECT_UI_URL=self.url,
            PREFECT_UI_STATIC_DIRECTORY=str(self.prefect_home / "ui"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW="ignore",
            PREFECT_WORKER_QUERY_SECONDS=str(WORKER_QUERY_S),
            TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        )
        env.update(self.extra_env)
        return env

    # -- processes -------------------------------------------------------
    def process(self, name: str) -> Background:
        return Background(self.pid_file(name), self.log_file(name))

    def pid(self, name: str) -> int | None:
        return self.process(name).pid()

    def _spawn(self, name: str, args: Sequence[str]) -> subprocess.Popen[bytes]:
        """`python -m prefect ARGS` in the background, in the project root, with the stack's environment."""
        return self.process(name).start(
            [sys.executable, "-m", "prefect", *args], cwd=self.root, env=self.env(), record={"port": self.port}
        )

    def healthy(self) -> bool:
        try:
            response = httpx.get(f"{self.api_url}/health", timeout=2)
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and response.json() is True

    def start_server(self) -> int:
        pid = self.pid("server")
        if pid is not None and self.healthy():
            return pid
        if _port_taken(self.host, self.port):
            raise StackError(f"{self.host}:{self.port} is taken by something this stack did not start; use --port")
        process = self._spawn("server", ["server", "start", "--host", self.host, "--port", str(self.port)])
        failed = wait_started(process, self.healthy, SERVER_START_S, "prefect server", self.log_file("server"), POLL_S)
        if failed:
            self._stop("server")
            raise StackError(failed)
        return process.pid

    def start_worker(self, pool: str) -> int:
        pid = self.pid("worker")
        if pid is not None:
            return pid
        name = f"aviary-{socket.gethostname()}"
        process = self._spawn("worker", ["worker", "start", "--pool", pool, "--name", name, "--limit", "4"])
        def online() -> bool:
            return asyncio.run(self._worker_online(pool, name))

        failed = wait_started(process, online, WORKER_START_S, "worker", self.log_file("worker"), POLL_S * 4)
        if failed:
            self._stop("worker")
            raise StackError(failed)
        return process.pid

    async def _worker_online(self, pool: str, name: str) -> bool:
        async with self.client() as client:
            workers = await client.read_workers_for_work_pool(pool)
        return any(w.name == name and str(w.status).upper().endswith("ONLINE") for w in workers)

    def _stop(self, name: str) -> bool:
        return self.process(name).stop(STOP_S)

    # -- configuration through the API -----------------------------------
    def client(self) -> Any:
        from prefect.client.orchestration import PrefectClient

        return PrefectClient(self.api_url)

    async def configure(self, pool: str, models: set[str], notify_url: str | None) -> list[str]:
        """Work pool, one rollout limit per model, notifications: what `prefect deploy` does not create."""
        from aviary.lock import ensure_rollout_limit, rollout_limit_name
        from aviary.ops.notify import ensure_notifications, ensure_zombie_detection
        from aviary.ops.pools import ensure_work_pool

        done = []
        async with self.client() as client:
            if await ensure_work_pool(client, pool, pool):
                done.append(f"work pool {pool}")
            for model in sorted(models):
                if await ensure_rollout_limit(client, model):
                    done.append(f"concurrency limit {rollout_limit_name(model)}")
            done.append(f"automation {await ensure_zombie_detection(client)}")
            if notify_url:
                done.extend(f"automation {name}" for name in await ensure_notifications(client, notify_url))
        return done

    def deploy(self, pool: str) -> list[str]:
        """`prefect --no-prompt deploy --all` for the pool's variant of prefect.yaml; then check all arrived."""
        prefect_file = deployments.write_for_pool(pool, self.prefect_home, self.root / "prefect.yaml")
        log = self.log_file("deploy")
        with open(log, "ab") as out:
            done = subprocess.run(  # noqa: S603 - our interpreter, our arguments
                [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.root, env=self.env(), timeout=DEPLOY_S, check=False,
            )
        if done.returncode != 0:
            raise StackError(f"prefect deploy failed ({done.returncode}):\n{tail(log)}")
        expected = [f"{_flow_name(d['entrypoint'])}/{d['name']}" for d in deployments.load(prefect_file)["deployments"]]
        missing = asyncio.run(self._missing_deployments(expected))
        if missing:  # prefect deploy skips what it cannot read and may still exit 0
            raise StackError(f"prefect deploy left out {', '.join(missing)}; see {log}")
        return expected

    async def _missing_deployments(self, names: list[str]) -> list[str]:
        from prefect.exceptions import ObjectNotFound

        missing = []
        async with self.client() as client:
            for name in names:
                try:
                    await client.read_deployment_by_name(name)
                except ObjectNotFound:
                    missing.append(name)
        return missing

    # -- the commands ----------------------------------------------------
    def up(self, notify_url: str | None = None, pool: str = "process", worker: bool = True, deploy: bool = True) -> list[str]:
        steps = [f"server and UI on {self.url} (pid {self.start_server()})"]
        models = deployments.model_names(deployments.load(self.root / "prefect.yaml"))
        steps += asyncio.run(self.configure(pool, models, notify_url))
        if deploy:
            steps += [f"deployment {name}" for name in self.deploy(pool)]
        if worker and pool == "process":
            steps.append(f"worker on pool {pool} (pid {self.start_worker(pool)})")
        (self.prefect_home / "stack.json").write_text(json.dumps({"url": self.url, "api_url": self.api_url, "pool": pool}))
        return steps

    def down(self) -> list[str]:
        """The worker first, so its runs are not left talking to a server that is gone."""
        return [f"stopped {name}" for name in ("worker", "server") if self._stop(name)]

    def status(self) -> list[str]:
        lines = []
        for name in ("server", "worker"):
            pid = self.pid(name)
            lines.append(f"{name}: " + (f"running, pid {pid}" if pid else "not running") + f" (log {self.log_file(name)})")
        if self.pid("server"):
            lines.append(f"UI: {self.url}  API: {self.api_url}  healthy: {self.healthy()}")
        return lines


def _flow_name(entrypoint: str) -> str:
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(entrypoint).name


def _port_taken(host: str, port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((host, port)) == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.stack", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status", "deploy"])
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME, help="PREFECT_HOME, pid and log files (default .aviary/prefect)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="server and UI port on 127.0.0.1 (default 4200)")
    parser.add_argument("--pool", choices=deployments.POOLS, default="process",
                        help="work pool the deployments run on: process (a local worker) or kubernetes (a Job per run)")
    parser.add_argument("--notify-url", default=os.environ.get("AVIARY_NOTIFY_URL"),
                        help="webhook for failed runs and rollbacks (default $AVIARY_NOTIFY_URL; none: no notifications)")
    parser.add_argument("--no-worker", action="store_true", help="start no worker (up)")
    args = parser.parse_args(argv)
    stack = Stack(home=args.home, port=args.port)
    try:
        if args.command == "up":
            lines = stack.up(args.notify_url, pool=args.pool, worker=not args.no_worker)
        elif args.command == "down":
            lines = stack.down() or ["nothing was running"]
        elif args.command == "deploy":
            if not stack.healthy():
                raise StackError(f"no server on {stack.url}: run `python -m ops.stack up` first")
            asyncio.run(stack.configure(args.pool, set(), None))
            lines = [f"deployment {name} on pool {args.pool}" for name in stack.deploy(args.pool)]
        else:
            lines = stack.status()
    except StackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    if args.command == "up":
        print(f"open {stack.url} ; stop with `python -m ops.stack down`")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One real stack per session: a Prefect server, the process work pool and a worker, prefect.yaml deployed.

It runs from a copy of the project in a temporary directory, so the relative paths of the
deployments' parameters (data, models, runs, the local server's state) land there. The copy's
prefect.yaml differs from the real one only in parameter values: small training, and free ports
for the local model server so a test never meets a server someone else runs.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from aviary.ops import deployments
from aviary.ops.stack import Stack

COPIED = ("aviary", "flows", "tasks", "ops", "serving", "data", "prefect.yaml", "pyproject.toml")
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float = 120.0, every_s: float = 0.5) -> T:
    """Poll `probe` until it returns something other than None or False; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(every_s)


@dataclass
class Receiver:
    """A webhook on 127.0.0.1 that keeps what is posted to it."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        messages = self.messages

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                messages.append(json.loads(body or b"{}"))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()

    def wait_for(self, *fragments: str, timeout_s: float = 60.0) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            return next((m for m in list(self.messages) if all(f in json.dumps(m) for f in fragments)), None)

        return wait_for(f"a notification with {fragments} (got {self.messages})", find, timeout_s)


@dataclass(frozen=True)
class RunningStack:
    stack: Stack
    project: Path
    receiver: Receiver

    @property
    def store(self) -> Path:
        return self.project / "models"


def small_parameters(doc: dict[str, Any], rest_port: int, grpc_port: int) -> dict[str, Any]:
    """The project's prefect.yaml with test-sized values; keys and structure untouched."""
    local = {"rest_port": rest_port, "grpc_port": grpc_port, "grace_s": 0}
    for deployment in doc["deployments"]:
        if deployment["name"].startswith("retrain"):
            config = deployment["parameters"]["config"]
            config["train"] = {"epochs": 25, "batch_size": 32, "learning_rate": 0.02, "patience": 5, "seed": 7}
            config["export"] = {"warmup_records": 5, "golden_rows": 20}
        elif deployment["name"] == "canary-deploy":
            deployment["triggers"][0]["parameters"]["config"]["rollout"] = {"local": local, "ready_timeout_s": 60}
        else:
            deployment["parameters"] = {"config": {"rollout": {"local": local}}}
    return doc


@pytest.fixture(scope="session")
def running_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    from aviary.data.generate import generate, write_csv

    project = tmp_path_factory.mktemp("project")
    for name in COPIED:
        source = deployments.ROOT / name
        if source.is_dir():
            shutil.copytree(source, project / name, ignore=shutil.ignore_patterns("__pycache__", "*.csv", "generated"))
        elif source.exists():
            shutil.copy2(source, project / name)
    write_csv(generate(rows=1500, seed=3), project / "data" / "circle.csv")
    doc = small_parameters(deployments.load(project / "prefect.yaml"), free_port(), free_port())
    (project / "prefect.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))

    receiver = Receiver().start()
    stack = Stack(home=project / ".aviary" / "prefect", port=free_port(), root=project)
    try:
        stack.up(notify_url=receiver.url)
        yield RunningStack(stack, project, receiver)
    finally:
        stack.down()
        receiver.stop()
        if (project / ".aviary" / "serving").exists():  # the local model server a canary may have started
            subprocess.run([sys.executable, "-m", "aviary.targets.local", "stop", "--state-dir", ".aviary/serving"],
                           cwd=project, check=False, capture_output=True)

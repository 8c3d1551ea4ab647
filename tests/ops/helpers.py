"""Helpers of the stack tests: a webhook receiver, the running stack, test-sized deployment parameters."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aviary.ops.stack import Stack
from tests.helpers import json_server, wait_for


@dataclass
class Receiver:
    """A webhook on 127.0.0.1 that keeps what is posted to it."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        def keep(body: Any, _: dict[str, str]) -> tuple[int, None]:
            self.messages.append(body)
            return 204, None

        self.server = json_server(keep)
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
            config = deployment.setdefault("parameters", {}).setdefault("config", {})
            config["train"] = {"epochs": 25, "batch_size": 32, "learning_rate": 0.02, "patience": 5, "seed": 7}
            config["export"] = {"warmup_records": 5, "golden_rows": 20}
        elif deployment["name"] == "canary-deploy":
            deployment["triggers"][0]["parameters"]["rollout"] = {"local": local, "ready_timeout_s": 60}
        else:
            deployment["parameters"] = {"rollout": {"local": local}}
    return doc

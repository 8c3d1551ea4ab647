"""Plain helpers every test area imports (`from tests.helpers import ...`); conftest.py files hold fixtures only."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import pytest

from aviary.config import PipelineConfig, TrainConfig
from aviary.types import Dataset

T = TypeVar("T")

FAST_TRAIN = TrainConfig(epochs=25, batch_size=32, learning_rate=0.02, patience=5, seed=7)


_GIVEN: set[int] = set()


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now and that this process has not handed out before:
    the kernel may offer a just-released port again, and two servers of one test must not share one."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


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


JsonAnswer = Callable[[Any, dict[str, str]], tuple[int, Any]]
"""From a POSTed JSON body and its headers to (HTTP status, JSON answer, or None for no body)."""


def json_server(answer: JsonAnswer) -> ThreadingHTTPServer:
    """A JSON-over-POST server on 127.0.0.1, serving from a daemon thread until `.shutdown()`."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status, reply = answer(json.loads(body or b"{}"), dict(self.headers))
            data = b"" if reply is None else json.dumps(reply).encode()
            self.send_response(status)
            if data:
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def circle_frame(rows: int, seed: int) -> pd.DataFrame:
    from aviary.data.generate import generate

    return generate(rows=rows, seed=seed, noise=0.0)


def small_pipeline(tmp_path: Path, data: Path, **sections: dict[str, Any]) -> PipelineConfig:
    """The pipeline on small data with fast training, writing under `tmp_path`; `sections` override config parts."""
    base: dict[str, Any] = {
        "data": {"path": data, "min_rows": 100},
        "train": FAST_TRAIN.model_dump(),
        "export": {"store": tmp_path / "store", "warmup_records": 10, "golden_rows": 40},
        "runs_dir": tmp_path / "runs",
        "rollout": {"target": "none"},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return PipelineConfig.model_validate(base)


def parquet_dataset(frame: pd.DataFrame, path: Path, fingerprint: str = "test") -> Dataset:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return Dataset(path=path, source=path, rows=len(frame), fingerprint=fingerprint, features=("x", "y"), label="class")

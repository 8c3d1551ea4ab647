"""Fixtures: tiny models made once per session, and model servers run in-process on free ports."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import serving_models as sm

from tests.helpers import free_port

__all__ = ["free_port"]  # the serving tests take it from here



def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02) -> Any:
    """Polls until predicate() is truthy; fails the test at the deadline (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as exc:  # noqa: BLE001 - keep polling through transient errors
            last = exc
        else:
            if last:
                return last
        threading.Event().wait(interval)
    raise AssertionError(f"condition not met within {timeout}s; last value: {last!r}")


@dataclass
class Store:
    root: Path
    circle_v1: Path
    circle_v2: Path
    hpt: Path

    def add_version(self, model_dir: Path, version: int, source: Path) -> Path:
        """Copies a version in atomically (temp dir + rename), as the exporter does."""
        target = model_dir / str(version)
        tmp = model_dir / f".tmp-{version}"
        shutil.copytree(source, tmp)
        tmp.rename(target)
        return target


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    root = tmp_path_factory.mktemp("store")
    src = root / "_src"
    circle_v1 = sm.save_circle_model(src / "circle_v1", bias=0.0)
    circle_v2 = sm.save_circle_model(src / "circle_v2", bias=1.0)
    hpt = sm.save_half_plus_two(src / "hpt")
    return Store(root, circle_v1, circle_v2, hpt)


@dataclass
class Running:
    server: Any
    thread: threading.Thread
    host: str

    @property
    def rest(self) -> str:
        return f"http://{self.host}:{self.server.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{self.server.grpc_port}"

    def stop(self) -> None:
        self.server.request_stop()
        self.thread.join(10)
        assert not self.thread.is_alive(), "server thread did not stop"


def start_server(args: list[str]) -> Running:
    """Runs ModelServer in a thread exactly as `python -m serving <args>` would, minus signals."""
    from aviary.serving.server import ModelServer, parse_flags

    flags = parse_flags(["--port", str(free_port()), "--rest_api_port", str(free_port()), *args])
    server = ModelServer(flags)
    server.load_initial()
    server.start_pollers()
    ready = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(server.serve(ready))
        except BaseException as exc:  # noqa: BLE001 - surfaced to the test below
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(20), "server did not start"
    assert not errors, errors
    return Running(server, thread, flags.host)


def write_config(path: Path, text: str) -> Path:
    """Writes atomically, so a polling server never reads half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


@pytest.fixture(scope="session")
def main_store(store: Store) -> Path:
    """circle (versions 1, 2; labels stable->1, canary->2) and hpt (version 123)."""
    base = store.root / "main"
    store.add_version(base / "circle", 1, store.circle_v1)
    store.add_version(base / "circle", 2, store.circle_v2)
    store.add_version(base / "hpt", 123, store.hpt)
    return base


@pytest.fixture(scope="session")
def server(main_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    cfg_dir = tmp_path_factory.mktemp("cfg")
    config = write_config(cfg_dir / "models.pbtxt", f"""
model_config_list {{
  config {{
    name: 'circle' base_path: '{main_store / "circle"}' model_platform: 'tensorflow'
    model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
    version_labels {{ key: 'stable' value: 1 }}
    version_labels {{ key: 'canary' value: 2 }}
  }}
  config {{ name: 'hpt' base_path: '{main_store / "hpt"}' model_platform: 'tensorflow' }}
}}
""")
    monitoring = cfg_dir / "monitoring.pbtxt"
    monitoring.write_text('prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }\n')
    running = start_server([
        f"--model_config_file={config}", "--allow_version_labels_for_unavailable_models=true",
        f"--monitoring_config_file={monitoring}", "--max_request_bytes=1000000",
    ])
    yield running
    running.stop()


@pytest.fixture(scope="session")
def http() -> Iterator[Any]:
    import requests

    with requests.Session() as session:
        yield session

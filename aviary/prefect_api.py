"""A throwaway Prefect API for a command-line run, that dies with the run even when it is killed.

With no `PREFECT_API_URL`, Prefect starts a temporary server of its own in a child process and
stops it at exit; a `kill -9` skips that, and the server runs on with nobody to stop it. The flows'
command lines start that server themselves instead, as a child that the kernel kills when its parent
dies (Linux's parent-death signal), and point Prefect at it for the run.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

OWNER_ENV = "AVIARY_PREFECT_API_OWNER"
"""Set in the server's environment to the pid of the run that owns it, so leftovers can be counted."""
START_TIMEOUT_S = 120.0
_THROWAWAY: set[str] = set()
PR_SET_PDEATHSIG = 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with(parent: int) -> None:
    """In the child, before exec: SIGKILL when the parent dies; exit now if it already has."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def start_server(port: int) -> subprocess.Popen[bytes]:
    """`prefect server` as Prefect's own ephemeral mode runs it (no UI), tied to this process's life."""
    import prefect
    from prefect.settings import get_current_settings

    env = {
        **os.environ,
        **get_current_settings().to_environment_variables(exclude_unset=True),
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        OWNER_ENV: str(os.getpid()),
    }
    command = [
        sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parent.parent),
        "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
        "--log-level", "error", "--lifespan", "on",
    ]
    parent = os.getpid()
    return subprocess.Popen(  # noqa: S603 - our interpreter, Prefect's own server
        command, env=env, stdin=subprocess.DEVNULL, preexec_fn=lambda: _die_with(parent)  # noqa: PLW1509 - before threads start
    )


def _drain() -> None:
    """Send the logs and events still queued while the server is there to take them."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=5)


def throwaway(url: str | None) -> bool:
    """Whether `url` is this process's own throwaway API: nothing else shares it."""
    return url in _THROWAWAY


@contextmanager
def own_prefect_api() -> Iterator[str | None]:
    """For the block, a Prefect API: the configured one (yields None), else our own child server (yields its URL)."""
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    if get_current_settings().api.url:
        yield None
        return
    port = _free_port()
    process = start_server(port)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the temporary Prefect server exited with code {process.returncode} before it answered")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() >= deadline:
                raise RuntimeError(f"the temporary Prefect server did not answer on {url} within {START_TIMEOUT_S:g} s")
            time.sleep(0.1)
        _THROWAWAY.add(url)
        with temporary_settings(updates={PREFECT_API_URL: url}):
            try:
                yield url
            finally:
                _drain()
                _THROWAWAY.discard(url)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

"""One rollout per model at a time, on one machine: an advisory file lock with a deadline."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

POLL_S = 0.2


class Busy(RuntimeError):
    pass


@contextmanager
def model_lock(path: Path, what: str, timeout_s: float) -> Iterator[None]:
    """Wait up to `timeout_s` for the lock, then refuse with who holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 4096, 0).decode(errors="replace") or "{}"
                    raise Busy(f"{what} is locked by another rollout {json.loads(holder)}; waited {timeout_s:g} s") from None
                time.sleep(POLL_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock

"""Background processes found again through pid files: the local model server and the Prefect stack.

A process is started in its own session, so stopping it stops its children too, with its output
appended to a log file and its pid (and whatever the caller adds) in a JSON pid file.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

POLL_S = 0.1


def alive(pid: int) -> bool:
    """Whether `pid` runs; a child of ours that exited is reaped, or it would linger as a zombie that looks alive."""
    with contextlib.suppress(ChildProcessError):  # not our child: nothing to reap
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def terminate_group(pid: int, timeout_s: float) -> bool:
    """SIGTERM the process group `pid` leads, SIGKILL it after `timeout_s`, and return once its leader is
    gone; False if there was no such group."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    if alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        while alive(pid):
            time.sleep(POLL_S)
    return True


def tail(path: Path, lines: int = 15) -> str:
    """The end of a log, for an error message."""
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass(frozen=True)
class Background:
    """One named background process: where its pid and its log live."""

    pid_file: Path
    log_file: Path

    def pid(self) -> int | None:
        """The recorded pid while that process runs, else None."""
        try:
            pid = int(json.loads(self.pid_file.read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return pid if alive(pid) else None

    def start(
        self,
        command: Sequence[str],
        cwd: Path,
        env: Mapping[str, str] | None = None,
        record: Mapping[str, Any] | None = None,
        write_pid: bool = True,
    ) -> subprocess.Popen[bytes]:
        """Start `command` in its own session, output appended to the log; the pid file gets `record` too.

        With `write_pid=False` the caller writes the pid file itself (`write`), once the process is up.
        """
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen(  # noqa: S603 - callers pass our interpreter and our arguments
                list(command), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=cwd, env=None if env is None else dict(env), start_new_session=True,
            )
        if write_pid:
            self.write(process.pid, {**(record or {}), "started": time.time()})
        return process

    def write(self, pid: int, record: Mapping[str, Any]) -> None:
        """The pid file, durably: `{"pid": pid, **record}`."""
        from aviary.durable import write_json_atomic

        write_json_atomic(self.pid_file, {**record, "pid": pid})

    def stop(self, timeout_s: float) -> bool:
        """SIGTERM the process group, SIGKILL it after `timeout_s`; True if it was running."""
        pid = self.pid()
        self.pid_file.unlink(missing_ok=True)
        return pid is not None and terminate_group(pid, timeout_s)


def wait_started(
    process: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    timeout_s: float,
    what: str,
    log_file: Path,
    poll_s: float = POLL_S,
) -> str | None:
    """Poll `ready` until it holds: None, or why not (the process exited, or the deadline passed).

    The caller stops what did not start with `Background.stop`, which also drops its pid file.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"{what} exited with code {process.returncode}:\n{tail(log_file)}"
        if ready():
            return None
        time.sleep(poll_s)
    return f"{what} not ready within {timeout_s:g} s; see {log_file}"

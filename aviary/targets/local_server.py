"""The local model server process: started once, known for sure, stopped only when it is ours.

A server is ours when it answers on the configured REST port with the instance id we gave it
(`--instance_id`, echoed as the `X-Aviary-Instance` header) and its process runs with that id and
this state directory's model config file. The pid file is written only once such a server answers,
and records what identifies it: pid, ports, start time and instance id. Starting holds a file lock,
so two rollouts that both find no server start one between them and the other uses it. A server
that came up while its starter was killed (before the pid file was written) is found again by its
command line and adopted; anything else on the port is refused with one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

from aviary import faults
from aviary.config import LocalConfig
from aviary.lock import Busy, model_lock
from aviary.process import Background, alive, tail, terminate_group
from aviary.targets.base import TargetError

START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0
POLL_S = 0.1
PORT_WAIT_S = 10.0
INSTANCE_HEADER = "X-Aviary-Instance"
PROBE_PATH = "/v1/models/_aviary_probe"
METRICS_PATH = "/monitoring/prometheus/metrics"
PORT_ADVICE = "choose another with rollout.local.rest_port and rollout.local.grpc_port (--rest-port/--grpc-port)"


@dataclass(frozen=True)
class ServerRecord:
    """What identifies a running server; the content of the pid file."""

    pid: int
    host: str
    rest_port: int
    grpc_port: int
    started: float
    instance: str

    @property
    def rest(self) -> str:
        return f"http://{self.host}:{self.rest_port}"


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _reap_group(pid: int) -> None:
    """Kill what is left of a dead server's process group (a helper it spawned outlives a SIGKILL of the server).

    The server led its own session, so the group's id is its pid; Linux does not hand out a pid that
    is still a live group's id, so this reaches only that server's leftovers.
    """
    if alive(pid):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class LocalServer:
    def __init__(self, cfg: LocalConfig, config_file: Path, python: str = sys.executable) -> None:
        self.cfg = cfg
        self.state_dir = cfg.state_dir
        self.config_file = config_file
        self.python = python
        self.rest = f"http://{cfg.host}:{cfg.rest_port}"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "server.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "server.log"

    @property
    def process(self) -> Background:
        return Background(self.pid_file, self.log_file)

    @property
    def lock_file(self) -> Path:
        return self.state_dir / "server.lock"

    # -- what answers ------------------------------------------------------
    def probe(self) -> str | None:
        """The instance id of whatever answers HTTP on the REST port: '' for a server that gives none, None for nothing."""
        try:
            response = requests.get(f"{self.rest}{PROBE_PATH}", timeout=2)
        except requests.RequestException:
            return None
        return response.headers.get(INSTANCE_HEADER, "")

    def record(self) -> ServerRecord | None:
        """The pid file, as written; None when there is none or it cannot be read."""
        try:
            return ServerRecord(**json.loads(self.pid_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _ours(self, pid: int, instance: str) -> bool:
        """Whether `pid` runs the server we started with `instance`, from this state directory."""
        args = _cmdline(pid)
        return f"--instance_id={instance}" in args and f"--model_config_file={self.config_file.resolve()}" in args

    def running(self, patience_s: float = 10.0) -> ServerRecord | None:
        """The recorded server, if it runs, is ours, listens on the configured ports and answers as itself.

        A busy server may miss one probe: it has `patience_s` to answer before it counts as hung.
        """
        rec = self.record()
        if rec is None or (rec.host, rec.rest_port, rec.grpc_port) != (self.cfg.host, self.cfg.rest_port, self.cfg.grpc_port):
            return None
        deadline = time.monotonic() + patience_s
        while alive(rec.pid) and self._ours(rec.pid, rec.instance):
            answer = self.probe()
            if answer == rec.instance:
                return rec
            if answer is not None or time.monotonic() >= deadline:
                return None
            time.sleep(POLL_S)
        return None

    def check(self) -> ServerRecord:
        """The server to talk to, or a one-line refusal; called before every reload."""
        rec = self.running()
        if rec is None:
            raise TargetError(self.describe())
        return rec

    def _unrecorded(self) -> list[tuple[int, str]]:
        """(pid, instance) of each server process started from this state directory, recorded or not."""
        config = f"--model_config_file={self.config_file.resolve()}"
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            args = _cmdline(int(entry.name))
            if config in args:
                ids = [a.split("=", 1)[1] for a in args if a.startswith("--instance_id=")]
                if ids and alive(int(entry.name)):
                    found.append((int(entry.name), ids[0]))
        return found

    def _orphan(self, instance: str) -> int | None:
        """A process of ours serving `instance` that no pid file records (its starter was killed)."""
        return next((pid for pid, found in self._unrecorded() if found == instance), None)

    def _adopt(self) -> ServerRecord | None:
        """A server of ours that a killed run started: wait for it to answer, then record it."""
        for pid, instance in self._unrecorded():
            deadline = time.monotonic() + START_TIMEOUT_S
            while alive(pid) and time.monotonic() < deadline:
                answer = self.probe()
                if answer == instance:
                    return self._write_record(pid, instance, started=time.time())
                if answer is not None:
                    break  # the port answers as someone else: this one will never bind it
                time.sleep(POLL_S)
            if alive(pid):
                terminate_group(pid, STOP_TIMEOUT_S)
        return None

    def describe(self) -> str:
        """One line of truth about the server this config names."""
        rec = self.record()
        answer = self.probe()
        mismatch = rec is not None and (rec.rest_port, rec.grpc_port) != (self.cfg.rest_port, self.cfg.grpc_port)
        if mismatch and rec is not None and alive(rec.pid) and self._ours(rec.pid, rec.instance):
            return (f"the server of {self.state_dir} runs on REST port {rec.rest_port} and gRPC port {rec.grpc_port}, "
                    f"not the configured {self.cfg.rest_port} and {self.cfg.grpc_port}; stop it first")
        live = self.running()
        if live is not None:
            return f"running, pid {live.pid}, instance {live.instance}, REST {live.rest}, gRPC port {live.grpc_port}"
        orphan = self._orphan(answer) if answer else None
        if orphan is not None:
            return (f"running, pid {orphan}, instance {answer}, REST {self.rest}, but no pid file records it "
                    "(its starter was killed); `start` or the next rollout adopts it")
        if answer is not None:
            return (f"port {self.cfg.rest_port} is taken by a server this target did not start"
                    f"{f' (instance {answer})' if answer else ''}; stop it or {PORT_ADVICE}")
        return "not running"

    # -- start and stop ------------------------------------------------------
    def ensure(self) -> ServerRecord:
        """The running server, started if there is none; one start at a time per state directory."""
        rec = self.running()
        if rec is not None:
            return rec
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            with model_lock(self.lock_file, f"the local server in {self.state_dir}", START_TIMEOUT_S + 10):
                return self._ensure_locked()
        except Busy as error:
            raise TargetError(str(error)) from error

    def _ensure_locked(self) -> ServerRecord:
        rec = self.running()
        if rec is not None:
            return rec  # another rollout started it while we waited for the lock
        old = self.record()
        if old is not None and alive(old.pid) and self._ours(old.pid, old.instance):
            # Ours but not answering on the configured ports (hung, or started with other ports): replace it.
            terminate_group(old.pid, STOP_TIMEOUT_S)
        elif old is not None:
            _reap_group(old.pid)
        self.pid_file.unlink(missing_ok=True)
        adopted = self._adopt()  # ours, started by a run killed before it wrote the pid file
        if adopted is not None:
            return adopted
        if self.probe() is not None:
            raise TargetError(self.describe())
        deadline = time.monotonic() + PORT_WAIT_S  # a server that was just killed lets go of its port a moment later
        while not _port_free(self.cfg.host, self.cfg.grpc_port):
            if time.monotonic() >= deadline:
                raise TargetError(f"gRPC port {self.cfg.grpc_port} is taken by another process; stop it or {PORT_ADVICE}")
            time.sleep(POLL_S)
        return self._start()

    def _start(self) -> ServerRecord:
        instance = uuid.uuid4().hex
        monitoring = self.state_dir / "monitoring.config"
        monitoring.write_text(f'prometheus_config {{ enable: true path: "{METRICS_PATH}" }}\n')
        command = [
            self.python, "-m", "aviary.serving",
            f"--host={self.cfg.host}",
            f"--port={self.cfg.grpc_port}",
            f"--rest_api_port={self.cfg.rest_port}",
            f"--model_config_file={self.config_file.resolve()}",
            "--allow_version_labels_for_unavailable_models=true",
            f"--monitoring_config_file={monitoring.resolve()}",
            f"--instance_id={instance}",
        ]
        started = time.time()
        process = self.process.start(command, cwd=Path(__file__).resolve().parents[2], write_pid=False)
        faults.crash_point("server-started")
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                said = tail(self.log_file, 1)  # the server's own last word: a port in use, a bad config
                raise TargetError(f"local server exited with code {process.returncode} before it answered"
                                  + (f": {said}" if said else "") + f"; see {self.log_file}")
            answer = self.probe()
            if answer == instance:
                return self._write_record(process.pid, instance, started)
            if answer is not None:  # someone else took the port while ours started
                terminate_group(process.pid, STOP_TIMEOUT_S)
                raise TargetError(self.describe())
            time.sleep(POLL_S)
        terminate_group(process.pid, STOP_TIMEOUT_S)
        raise TargetError(f"local server did not answer on {self.rest} within {START_TIMEOUT_S:.0f} s; see {self.log_file}")

    def _write_record(self, pid: int, instance: str, started: float) -> ServerRecord:
        rec = ServerRecord(pid=pid, host=self.cfg.host, rest_port=self.cfg.rest_port, grpc_port=self.cfg.grpc_port,
                           started=started, instance=instance)
        self.process.write(pid, asdict(rec))
        return rec

    def stop(self) -> str:
        """Stop this state directory's server; says what it did. A server that is not ours is never signalled."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with model_lock(self.lock_file, f"the local server in {self.state_dir}", START_TIMEOUT_S + 10):
            rec = self.record()
            if rec is not None and alive(rec.pid) and self._ours(rec.pid, rec.instance):
                terminate_group(rec.pid, STOP_TIMEOUT_S)
                self.pid_file.unlink(missing_ok=True)
                return f"stopped pid {rec.pid} (instance {rec.instance})"
            if rec is not None:
                _reap_group(rec.pid)
            self.pid_file.unlink(missing_ok=True)
            answer = self.probe()
            if answer:
                pid = self._orphan(answer)
                if pid is not None:
                    terminate_group(pid, STOP_TIMEOUT_S)
                    return f"stopped pid {pid} (instance {answer}), which no pid file recorded"
            if answer is not None:
                return f"not running; port {self.cfg.rest_port} is taken by a server this target did not start, left alone"
            return "not running"

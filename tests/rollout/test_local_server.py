"""One local server, known for sure: started once, adopted after a killed start, never confused with another."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from aviary.config import LocalConfig
from aviary.process import alive
from aviary.targets.base import TargetError
from aviary.targets.local import LocalTarget
from tests.helpers import free_port

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalConfig]:
    cfg = LocalConfig(rest_port=free_port(), grpc_port=free_port(), state_dir=tmp_path / "serving")
    yield cfg
    LocalTarget(cfg, tmp_path / "store").stop()


def cli(cfg: LocalConfig, command: str, **env: str) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "aviary.targets.local", command, "--state-dir", str(cfg.state_dir),
            "--rest-port", str(cfg.rest_port), "--grpc-port", str(cfg.grpc_port), "--store", str(cfg.state_dir / "store")]
    return subprocess.Popen(args, cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def run_cli(cfg: LocalConfig, command: str, **env: str) -> tuple[int, str]:
    process = cli(cfg, command, **env)
    out, err = process.communicate(timeout=180)
    return process.returncode, (out + err).strip()


def servers_of(cfg: LocalConfig) -> list[int]:
    """Pids of every server process started from this state directory, recorded or not."""
    config = f"--model_config_file={(cfg.state_dir / 'models.config').resolve()}"
    found = []
    for entry in Path("/proc").iterdir():
        try:
            args = (entry / "cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if entry.name.isdigit() and config in args and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


@pytest.fixture
def foreign(local: LocalConfig) -> Iterator[http.server.HTTPServer]:
    """Something else answering HTTP on the configured REST port."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            body = json.dumps({"error": "not a model server"}).encode()
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer((local.host, local.rest_port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_two_processes_starting_at_once_share_one_server(local: LocalConfig) -> None:
    starts = [cli(local, "start") for _ in range(2)]
    outputs = [p.communicate(timeout=180) for p in starts]
    assert [p.returncode for p in starts] == [0, 0], outputs
    pids = servers_of(local)
    assert len(pids) == 1
    for out, _ in outputs:
        assert out.startswith(f"running, pid {pids[0]},")
    record = json.loads((local.state_dir / "server.pid").read_text())
    assert (record["pid"], record["rest_port"], record["grpc_port"]) == (pids[0], local.rest_port, local.grpc_port)
    assert record["instance"] and record["started"] > 0

    assert run_cli(local, "stop") == (0, f"stopped pid {pids[0]} (instance {record['instance']})")
    assert servers_of(local) == [] and not (local.state_dir / "server.pid").exists()
    assert run_cli(local, "status") == (0, "not running")


def test_a_start_killed_before_the_pid_file_leaves_a_server_that_is_found_and_adopted(local: LocalConfig) -> None:
    code, _ = run_cli(local, "start", AVIARY_CRASH_AT="server-started")
    assert code == -signal.SIGKILL
    assert not (local.state_dir / "server.pid").exists(), "the pid file is written only once the server answers"
    target = LocalTarget(local, local.state_dir / "store")
    orphan = [pid for pid in servers_of(local)]
    assert len(orphan) == 1
    target.server.ensure()  # poll until the orphan answers, as the next rollout would
    code, out = run_cli(local, "status")
    assert code == 0 and out.startswith(f"running, pid {orphan[0]},")

    assert target.pid() == orphan[0] and servers_of(local) == orphan, "adopted, not a second server"
    assert json.loads((local.state_dir / "server.pid").read_text())["pid"] == orphan[0]
    assert run_cli(local, "stop")[1].startswith(f"stopped pid {orphan[0]}")
    assert servers_of(local) == []


def test_a_foreign_server_on_the_port_is_refused_with_one_line_and_left_alone(
    local: LocalConfig, foreign: http.server.HTTPServer
) -> None:
    target = LocalTarget(local, local.state_dir / "store")
    with pytest.raises(TargetError, match=rf"^port {local.rest_port} is taken by a server this target did not start; "
                                          r"stop it or choose another with rollout.local.rest_port"):
        target.deploy_canary("circle", 1, None)
    assert not (local.state_dir / "server.pid").exists() and not (local.state_dir / "models.json").exists()
    assert servers_of(local) == []
    code, out = run_cli(local, "status")
    assert code == 0 and out.startswith(f"port {local.rest_port} is taken by a server this target did not start")
    assert run_cli(local, "stop")[1].endswith("left alone")
    assert target.serving("circle").stable is None


def test_a_pid_file_naming_another_live_process_is_never_trusted_or_signalled(
    local: LocalConfig, foreign: http.server.HTTPServer
) -> None:
    bystander = subprocess.Popen(["sleep", "120"])
    try:
        local.state_dir.mkdir(parents=True)
        (local.state_dir / "server.pid").write_text(json.dumps(
            {"pid": bystander.pid, "host": local.host, "rest_port": local.rest_port, "grpc_port": local.grpc_port,
             "started": 0.0, "instance": "recorded"}))
        target = LocalTarget(local, local.state_dir / "store")
        assert target.pid() is None
        with pytest.raises(TargetError, match=f"port {local.rest_port} is taken"):
            target.roll_back("circle", None)
        assert run_cli(local, "stop")[1].startswith("not running")
        assert bystander.poll() is None, "a process the pid file names but that is not our server is never signalled"
    finally:
        bystander.kill()
        bystander.wait()


def test_a_server_of_another_state_dir_on_the_port_is_not_reconfigured(local: LocalConfig, tmp_path: Path) -> None:
    other = local.model_copy(update={"state_dir": tmp_path / "other"})
    owner = LocalTarget(other, tmp_path / "store")
    try:
        owner.ensure_running()
        intruder = LocalTarget(local, tmp_path / "store")
        with pytest.raises(TargetError, match=f"port {local.rest_port} is taken by a server this target did not start"):
            intruder.roll_back("circle", None)
        assert not (local.state_dir / "models.json").exists()
        assert owner.pid() is not None
    finally:
        owner.stop()


def test_a_rest_port_held_by_a_listener_that_answers_nothing_is_named_in_the_one_line_error(
    local: LocalConfig,
) -> None:
    with socket.socket() as taken:
        taken.bind((local.host, 0))  # held while the gRPC port is drawn, so the two cannot be the same
        taken.listen()
        cfg = local.model_copy(update={"rest_port": taken.getsockname()[1], "grpc_port": free_port()})
        target = LocalTarget(cfg, cfg.state_dir / "store")
        with pytest.raises(TargetError, match=rf"exited with code 1 before it answered: .*{cfg.rest_port}.*in use") as error:
            target.deploy_canary("circle", 1, None)
    assert "\n" not in str(error.value)
    assert servers_of(cfg) == []

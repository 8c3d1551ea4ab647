"""The embedded target: the local TF-Serving-compatible server (`python -m serving`) on 127.0.0.1.

One server runs in the background for every model; it is found again through its pid file and
its status API, and started when needed. Its model config file is the target's whole state, so a
restarted server comes back serving what it served. Version labels `stable` and `canary` are
TF Serving's own: a label may only point at an AVAILABLE version, so a canary is loaded first
and labelled once it serves.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import requests

from aviary.config import LocalConfig
from aviary.model_config import ModelEntry, build_model_config, render_model_configs
from aviary.process import Background, wait_started
from aviary.store import write_json_atomic
from aviary.targets.base import Endpoint, NotReady, Serving, TargetError, Track

START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0
POLL_S = 0.1
METRICS_PATH = "/monitoring/prometheus/metrics"


class LocalTarget:
    name = "local"

    def __init__(self, cfg: LocalConfig, store_root: Path, python: str = sys.executable) -> None:
        self.cfg = cfg
        self.store_root = store_root.resolve()
        self.python = python
        self.state_dir = cfg.state_dir
        self.rest = f"http://{cfg.host}:{cfg.rest_port}"

    # -- files -----------------------------------------------------------
    @property
    def pid_file(self) -> Path:
        return self.state_dir / "server.pid"

    @property
    def config_file(self) -> Path:
        return self.state_dir / "models.config"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "models.json"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "server.log"

    def _models(self) -> dict[str, dict[str, Any]]:
        return json.loads(self.state_file.read_text()) if self.state_file.exists() else {}

    def _entries(self, models: dict[str, dict[str, Any]]) -> list[ModelEntry]:
        return [
            ModelEntry(name, str(self.store_root / name), tuple(m["versions"]), dict(m["labels"]))
            for name, m in sorted(models.items())
            if m["versions"]
        ]

    def _apply(self, model: str, versions: list[int], labels: dict[str, int]) -> None:
        """Write the config file (the state a restart comes back to), then have the server reload it now."""
        models = self._models()
        models[model] = {"versions": sorted(set(versions)), "labels": labels}
        entries = self._entries(models)
        config = build_model_config(entries)  # validates labels before anything is written
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.config_file.with_suffix(".tmp")
        tmp.write_text(render_model_configs(entries))
        tmp.replace(self.config_file)
        write_json_atomic(self.state_file, models)
        self.ensure_running()
        self._reload(config, loading=len(versions) > len(labels))

    def _reload(self, config: Any, loading: bool) -> None:
        import grpc
        from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

        with grpc.insecure_channel(f"{self.cfg.host}:{self.cfg.grpc_port}") as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            try:
                stub.HandleReloadConfigRequest(
                    model_management_pb2.ReloadConfigRequest(config=config), timeout=START_TIMEOUT_S
                )
            except grpc.RpcError as error:
                code, details = error.code(), error.details()
                # A version that fails to load shows END in its status; wait_ready reports it within its deadline.
                if loading and code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    return
                raise TargetError(f"local server at {self.cfg.host}:{self.cfg.grpc_port} refused the model config: "
                                  f"{code.name}: {details}") from error

    # -- the server process ------------------------------------------------
    @property
    def process(self) -> Background:
        return Background(self.pid_file, self.log_file)

    def pid(self) -> int | None:
        """The server's pid when it runs and answers, else None."""
        pid = self.process.pid()
        return pid if pid is not None and self._answers() else None

    def _answers(self) -> bool:
        try:
            response = requests.get(f"{self.rest}/v1/models/_aviary_probe", timeout=2)
        except requests.RequestException:
            return False
        return response.headers.get("Content-Type", "").startswith("application/json")

    def ensure_running(self) -> int:
        pid = self.pid()
        if pid is not None:
            return pid
        if self._answers():
            raise TargetError(f"port {self.cfg.rest_port} is taken by a server this target did not start")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.config_file.exists():
            self.config_file.write_text(render_model_configs(self._entries(self._models())))
        monitoring = self.state_dir / "monitoring.config"
        monitoring.write_text(f'prometheus_config {{ enable: true path: "{METRICS_PATH}" }}\n')
        command = [
            self.python, "-m", "aviary.serving",
            f"--host={self.cfg.host}",
            f"--port={self.cfg.grpc_port}",
            f"--rest_api_port={self.cfg.rest_port}",
            f"--model_config_file={self.config_file.resolve()}",
            "--model_config_file_poll_wait_seconds=1",
            "--allow_version_labels_for_unavailable_models=true",
            f"--monitoring_config_file={monitoring.resolve()}",
        ]
        process = self.process.start(
            command, cwd=Path(__file__).resolve().parents[2],
            record={"rest_port": self.cfg.rest_port, "grpc_port": self.cfg.grpc_port},
        )
        failed = wait_started(process, self._answers, START_TIMEOUT_S, f"local server on {self.rest}", self.log_file, POLL_S)
        if failed:
            self.process.stop(STOP_TIMEOUT_S)
            raise TargetError(failed)
        return process.pid

    def stop(self) -> bool:
        """Stop the background server; True if one was running."""
        return self.process.stop(STOP_TIMEOUT_S)

    # -- the Target interface ----------------------------------------------
    def _status(self, model: str, version: int) -> tuple[str, str]:
        try:
            response = requests.get(f"{self.rest}/v1/models/{model}/versions/{version}", timeout=5)
        except requests.RequestException as error:
            return "UNREACHABLE", str(error)
        if response.status_code != 200:
            return "UNKNOWN", response.json().get("error", response.text)
        status = response.json()["model_version_status"][0]
        return status["state"], status["status"].get("error_message", "")

    def publish(self, model: str, version: int, path: Path) -> None:
        """The server reads the store itself."""
        if path.resolve() != self.store_root / model / str(version):
            raise TargetError(f"{path} is not in the store {self.store_root} that the local server reads")

    def deploy_canary(self, model: str, version: int, stable: int | None) -> None:
        versions = [version] if stable is None else [stable, version]
        self._apply(model, versions, {} if stable is None else {"stable": stable})

    def wait_ready(self, model: str, version: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        state, detail = "UNKNOWN", ""
        while time.monotonic() < deadline:
            state, detail = self._status(model, version)
            if state == "AVAILABLE":
                current = self._models()[model]
                self._apply(model, current["versions"], {**current["labels"], "canary": version})
                return
            if state == "END":
                raise NotReady(f"{model} v{version} failed to load: {detail}")
            time.sleep(POLL_S)
        raise NotReady(f"{model} v{version} not AVAILABLE within {timeout_s:g} s (last state {state} {detail})".strip())

    def endpoint(self, model: str, track: Track) -> Endpoint:
        return Endpoint(url=f"{self.rest}/v1/models/{model}/labels/{track}")

    def promote(self, model: str, version: int) -> None:
        current = self._models().get(model, {"versions": [version], "labels": {}})
        # Move `stable` first; the old version keeps answering in-flight requests for the grace period.
        self._apply(model, current["versions"], {"stable": version})
        if len(current["versions"]) > 1 and self.cfg.grace_s:
            time.sleep(self.cfg.grace_s)  # an intentional grace period, not a wait for a condition
        self._apply(model, [version], {"stable": version})

    def roll_back(self, model: str, stable: int | None) -> None:
        if stable is None:
            self._apply(model, [], {})
        else:
            self._apply(model, [stable], {"stable": stable})

    def serving(self, model: str) -> Serving:
        labels = self._models().get(model, {}).get("labels", {})
        if self.pid() is None:
            return Serving(stable=None, canary=None)
        return Serving(stable=labels.get("stable"), canary=labels.get("canary"))

    # -- progressive delivery: the server's traffic split and its metrics -----
    traffic_split = True

    def set_traffic(self, model: str, canary_percent: int, mirror_percent: int) -> None:
        """The local server's traffic split (an extension of TF Serving's API, off until this turns it on)."""
        url = f"{self.rest}/v1/models/{model}/traffic"
        body = {"canary_percent": canary_percent, "mirror_percent": mirror_percent}
        try:
            response = requests.post(url, json=body, timeout=10)
        except requests.RequestException as error:
            raise TargetError(f"local server: POST {url} failed: {error}") from error
        if response.status_code != 200:
            raise TargetError(f"local server refused the traffic split {body} for {model}: "
                              f"HTTP {response.status_code}: {response.text[:200]}")

    def scrape(self, model: str) -> list[str]:
        url = f"{self.rest}{METRICS_PATH}"
        try:
            response = requests.get(url, timeout=10)
        except requests.RequestException as error:
            raise TargetError(f"local server: GET {url} failed: {error}") from error
        if response.status_code != 200:
            raise TargetError(f"local server: GET {url} answered HTTP {response.status_code}")
        return [response.text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aviary.targets.local", description="The local model server.")
    parser.add_argument("command", choices=["status", "start", "stop"])
    parser.add_argument("--state-dir", type=Path, default=LocalConfig().state_dir)
    parser.add_argument("--store", type=Path, default=Path("models"))
    args = parser.parse_args(argv)
    target = LocalTarget(LocalConfig(state_dir=args.state_dir), args.store)
    if args.command == "stop":
        print("stopped" if target.stop() else "not running")
    elif args.command == "start":
        print(f"running, pid {target.ensure_running()}, REST {target.rest}")
    else:
        pid = target.pid()
        print(f"running, pid {pid}, REST {target.rest}" if pid else "not running")
        for model, m in target._models().items():
            print(f"  {model}: versions {m['versions']} labels {m['labels']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The embedded target: the local TF-Serving-compatible server (`python -m serving`) on 127.0.0.1.

One server runs in the background for every model; `LocalServer` starts it once, knows it for sure
(pid, ports, instance id) and refuses anything else on the port. The live server is the truth: what
is served (versions, their states, the `stable` and `canary` labels) is read from its status API
before the target acts or reports. The model config files record the last config the server
accepted, so a restarted server comes back serving what it served; a config the server refuses is
never written, and the last accepted one is sent back. Version labels are TF Serving's own: a label
may only move to an AVAILABLE version, so a version is loaded first and labelled once it serves.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from aviary.config import LocalConfig, PipelineConfig
from aviary.durable import write_bytes_atomic, write_json_atomic
from aviary.lock import Busy, model_lock
from aviary.model_config import ModelEntry, build_model_config, render_model_configs
from aviary.targets.base import Endpoint, NotReady, Serving, TargetError, Track
from aviary.targets.local_server import METRICS_PATH, START_TIMEOUT_S, LocalServer, ServerRecord

POLL_S = 0.1
LABELS: tuple[Track, ...] = ("stable", "canary")


@dataclass(frozen=True)
class Live:
    """What the server serves for one model: each version's state, and the version each label answers with."""

    versions: dict[int, str]
    labels: dict[str, int]
    errors: dict[int, str]


class LocalTarget:
    name = "local"

    def __init__(self, cfg: LocalConfig, store_root: Path, python: str = sys.executable) -> None:
        self.cfg = cfg
        self.store_root = store_root.resolve()
        self.state_dir = cfg.state_dir
        self.server = LocalServer(cfg, self.config_file, python)
        self.rest = self.server.rest

    # -- files -----------------------------------------------------------
    @property
    def pid_file(self) -> Path:
        return self.server.pid_file

    @property
    def config_file(self) -> Path:
        return self.state_dir / "models.config"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "models.json"

    @property
    def log_file(self) -> Path:
        return self.server.log_file

    def _models(self) -> dict[str, dict[str, Any]]:
        """The last config the server accepted, by model: versions, labels, and the folder it reads them
        from (each model's own store: one server may serve models of several stores)."""
        if not self.state_file.exists():
            return {}
        try:
            models = json.loads(self.state_file.read_text())
            return {name: {"versions": [int(v) for v in m["versions"]], "labels": {k: int(v) for k, v in m["labels"].items()},
                           "base_path": str(m.get("base_path") or self.store_root / name)}
                    for name, m in models.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise TargetError(f"{self.state_file}: unreadable record of the served config ({error}); "
                              "remove it and run a rollout to rebuild it") from None

    def _entries(self, models: dict[str, dict[str, Any]]) -> list[ModelEntry]:
        return [
            ModelEntry(name, m["base_path"], tuple(m["versions"]), dict(m["labels"]))
            for name, m in sorted(models.items())
            if m["versions"]
        ]

    def _record(self, models: dict[str, dict[str, Any]]) -> None:
        """Write what the server accepted: the config file a restart loads, and its record by model."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(self.config_file, render_model_configs(self._entries(models)).encode(), "model-config")
        write_json_atomic(self.state_file, {k: v for k, v in models.items() if v["versions"]}, "model-state")

    @contextmanager
    def _config_lock(self) -> Iterator[None]:
        """One config change at a time per server: a reload replaces every model's config, not one."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            with model_lock(self.state_dir / "config.lock", f"the model config in {self.state_dir}", 2 * START_TIMEOUT_S):
                yield
        except Busy as error:
            raise TargetError(str(error)) from error

    def _apply(self, model: str, versions: list[int], labels: dict[str, int]) -> None:
        """Have the server take the new config; record it only once the server accepted it."""
        with self._config_lock():
            accepted = self._models()
            proposed = {**accepted, model: {"versions": sorted(set(versions)), "labels": dict(labels),
                                            "base_path": str(self.store_root / model)}}
            config = build_model_config(self._entries(proposed))  # validates labels before anything changes
            rec = self.ensure_server()
            try:
                self._reload(rec, config)
            except TargetError as refused:
                restored = self._restore(rec, accepted)
                for version in sorted(set(versions), reverse=True):
                    state, detail = self._status(model, version)
                    if state == "END" and detail:
                        raise NotReady(f"{model} v{version} failed to load: {detail}{restored}") from refused
                raise TargetError(f"{refused}{restored}") from refused
            self._record(proposed)

    def _restore(self, rec: ServerRecord, accepted: dict[str, dict[str, Any]]) -> str:
        """Send the last accepted config back, so the server is where the files say it is; '' or what went wrong."""
        try:
            self._reload(rec, build_model_config(self._entries(accepted)))
        except TargetError as again:
            return f" (the last accepted config could not be restored either: {again})"
        return ""

    def _reload(self, rec: ServerRecord, config: Any) -> None:
        import grpc
        from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

        self.server.check()  # never reconfigure a server this target did not start
        with grpc.insecure_channel(f"{rec.host}:{rec.grpc_port}") as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            try:
                response = stub.HandleReloadConfigRequest(
                    model_management_pb2.ReloadConfigRequest(config=config), timeout=START_TIMEOUT_S
                )
            except grpc.RpcError as error:
                raise TargetError(f"local server at {rec.host}:{rec.grpc_port} refused the model config: "
                                  f"{error.code().name}: {error.details()}") from error
        if response.status.error_code:
            raise TargetError(f"local server at {rec.host}:{rec.grpc_port} refused the model config: "
                              f"{response.status.error_message}")

    # -- the server process ------------------------------------------------
    def pid(self) -> int | None:
        """The server's pid when it runs, is ours and answers, else None."""
        rec = self.server.running()
        return rec.pid if rec else None

    def ensure_server(self) -> ServerRecord:
        """The running server, started (from the last accepted config) if there is none."""
        rec = self.server.running()
        if rec is not None:
            return rec
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # A restart serves the last accepted config: the file is rendered again from its record.
        write_bytes_atomic(self.config_file, render_model_configs(self._entries(self._models())).encode())
        return self.server.ensure()

    def ensure_running(self) -> int:
        return self.ensure_server().pid

    def stop(self) -> bool:
        """Stop the background server; True if one of ours was running."""
        return self.server.stop().startswith("stopped")

    # -- what the server serves ----------------------------------------------
    def live(self, model: str) -> Live:
        """Ask the server what it serves for `model`; empty when it serves nothing of it or is not running."""
        if self.server.running() is None:
            return Live({}, {}, {})
        try:
            response = requests.get(f"{self.rest}/v1/models/{model}", timeout=5)
        except requests.RequestException as error:
            raise TargetError(f"local server at {self.rest} did not answer a status request: {error}") from error
        if response.status_code == 404:
            return Live({}, {}, {})
        if response.status_code != 200:
            raise TargetError(f"local server at {self.rest}: status of {model}: HTTP {response.status_code} {response.text[:200]}")
        versions, errors = {}, {}
        for status in response.json()["model_version_status"]:
            versions[int(status["version"])] = status["state"]
            if status["status"].get("error_message"):
                errors[int(status["version"])] = status["status"]["error_message"]
        labels: dict[str, int] = {}
        for label in LABELS:
            try:
                meta = requests.get(f"{self.rest}/v1/models/{model}/labels/{label}/metadata", timeout=5)
            except requests.RequestException as error:
                raise TargetError(f"local server at {self.rest} did not answer a metadata request: {error}") from error
            if meta.status_code == 200:
                labels[label] = int(meta.json()["model_spec"]["version"])
        return Live(versions, labels, errors)

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
        """Serve `stable` alone under its label, in steps the server accepts: load it, then move the label."""
        if stable is None:
            self._apply(model, [], {})
            return
        live = self.live(model)
        if live.versions.get(stable) != "AVAILABLE":
            # A label moves only to an AVAILABLE version: load `stable` beside whatever answers as stable now.
            keep = live.labels.get("stable")
            self._apply(model, [stable] if keep is None else [keep, stable], {} if keep is None else {"stable": keep})
            state, detail = self._status(model, stable)
            if state != "AVAILABLE":
                raise NotReady(f"{model} v{stable} did not load: {state} {detail}".strip())
        self._apply(model, [stable], {"stable": stable})

    def serving(self, model: str) -> Serving:
        """What the live server answers under the labels; nothing when no server of ours runs."""
        labels = self.live(model).labels
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

    def keep_traffic(self, model: str) -> None:
        """Nothing to hold: the one server keeps the split it was given."""

    def scrape(self, model: str) -> dict[str, str]:
        url = f"{self.rest}{METRICS_PATH}"
        try:
            response = requests.get(url, timeout=10)
        except requests.RequestException as error:
            raise TargetError(f"local server: GET {url} failed: {error}") from error
        if response.status_code != 200:
            raise TargetError(f"local server: GET {url} answered HTTP {response.status_code}")
        return {self.rest: response.text}


def _config(args: argparse.Namespace) -> tuple[LocalConfig, Path]:
    """The same config the flows take (a PipelineConfig JSON), with the server's options on top."""
    base = PipelineConfig.model_validate(json.loads(args.config.read_text())) if args.config else PipelineConfig()
    overrides = {k: v for k, v in {"host": args.host, "rest_port": args.rest_port, "grpc_port": args.grpc_port,
                                   "state_dir": args.state_dir}.items() if v is not None}
    local = base.rollout.local.model_validate({**base.rollout.local.model_dump(), **overrides})
    return local, args.store or base.export.store


def status_lines(target: LocalTarget) -> list[str]:
    """The server's state and, per model, what it serves now, asked of the server itself."""
    lines = [target.server.describe()]
    if target.server.running() is None:
        return lines
    for model, accepted in target._models().items():
        live = target.live(model)
        shown = ", ".join(f"v{v} {state}" for v, state in sorted(live.versions.items()) if state != "END" or v in live.errors)
        unloaded = sum(1 for v, state in live.versions.items() if state == "END" and v not in live.errors)
        versions = ", ".join(p for p in (shown, f"{unloaded} unloaded" if unloaded else "") if p) or "nothing"
        labels = ", ".join(f"{k} v{v}" for k, v in sorted(live.labels.items())) or "no labels"
        drift = "" if live.labels == accepted["labels"] else f" (last accepted config: labels {accepted['labels']})"
        lines.append(f"  {model}: {versions}; {labels}{drift}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aviary.targets.local", description="The local model server.")
    parser.add_argument("command", choices=["status", "start", "stop"])
    parser.add_argument("--config", type=Path, help="the flows' JSON PipelineConfig; its rollout.local and export.store")
    parser.add_argument("--state-dir", type=Path, help="pid file, model config and logs (default: .aviary/serving)")
    parser.add_argument("--store", type=Path, help="model store root (default: models)")
    parser.add_argument("--host", help="interface to listen on (default: 127.0.0.1)")
    parser.add_argument("--rest-port", type=int, help="REST port (default: 8501)")
    parser.add_argument("--grpc-port", type=int, help="gRPC port (default: 8500)")
    args = parser.parse_args(argv)
    try:
        local, store = _config(args)
        target = LocalTarget(local, store)
        if args.command == "stop":
            print(target.server.stop())
        elif args.command == "start":
            target.ensure_server()
            print(target.server.describe())
        else:
            print("\n".join(status_lines(target)))
    except (TargetError, ValueError, OSError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

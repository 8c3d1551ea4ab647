"""A small test kubelet: binds every pod to one fake Node and reports it through `pods/status`.

- A serving pod gets an address of the pod network, which answers as TF Serving started with the
  pod's model-config ConfigMap would (read once, at start; see podproxy.py). It is Ready while its
  readinessProbe's httpGet answers 2xx there (ContainersReady), and every condition its readinessGates
  name is True, as a kubelet computes Ready. A pod whose ConfigMap is missing waits in ContainerCreating.
- Status is written as the kubelet writes it: a strategic-merge patch of the conditions it owns, so a
  readiness gate's condition that someone else set stays.
- A pod whose container runs the project's own server (`python -m aviary.serving`: the shadow
  comparator) runs it for real inside the pod network, its volumes mapped as a Job's; its address
  forwards to that process as it is.
- A pod whose image is in `unpullable` stays Pending in ImagePullBackOff.
- A run-to-completion pod (a Job's) runs its shell command on this machine, its volumes mapped to
  folders: the claim to the store volume, projected ConfigMaps to files, emptyDirs to temp folders.
- A pod being deleted is removed at once, as a kubelet does once its containers stopped.
"""

from __future__ import annotations

import base64
import datetime
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import requests

from .control_plane import ControlPlane
from .podnet import PodNetwork

NODE = "aviary-test-node"
Obj = dict[str, Any]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class TestKubelet(threading.Thread):
    def __init__(self, plane: ControlPlane, network: PodNetwork | None, volume: Path, interval_s: float = 0.1) -> None:
        super().__init__(name="test-kubelet", daemon=True)
        self.plane = plane
        self.network = network
        self.volume = volume
        self.interval_s = interval_s
        self.session = plane.admin()
        self.unpullable: set[str] = set()
        self.errors: list[str] = []
        self.job_output: list[str] = []
        self.probe_failures: list[str] = []
        self._stop_event = threading.Event()
        self._ips: dict[str, str] = {}
        self._reported: dict[str, Obj] = {}
        self._jobs: dict[str, threading.Thread] = {}
        self._pod_configs: dict[str, Any] = {}  # pod IP -> model config the pod started with, or its own server
        self._servers: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}  # pod uid -> its server, its folders
        self._ports = itertools.count(8700, 2)

    # Lifecycle.

    def __enter__(self) -> TestKubelet:
        self._register_node()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_event.set()
        self.join(timeout=10)
        for uid in list(self._servers):
            self._stop_server(uid)

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self._sync()
            except Exception as error:  # noqa: BLE001 - keep syncing; the tests see the errors
                self.errors.append(f"{type(error).__name__}: {error}")
                del self.errors[:-20]
            self._stop_event.wait(self.interval_s)

    # The API.

    def _url(self, path: str) -> str:
        return f"{self.plane.url}{path}"

    def _register_node(self) -> None:
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE, "labels": {
            "kubernetes.io/hostname": NODE, "topology.kubernetes.io/zone": "test"}}}
        response = self.session.post(self._url("/api/v1/nodes"), json=node, timeout=10)
        if response.status_code not in (201, 409):
            response.raise_for_status()
        status = {"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                             "lastHeartbeatTime": _now(), "lastTransitionTime": _now()}],
                             "capacity": {"cpu": "64", "memory": "256Gi", "pods": "110"},
                             "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "110"}}}
        self.session.patch(self._url(f"/api/v1/nodes/{NODE}/status"), json=status,
                           headers={"Content-Type": "application/merge-patch+json"}, timeout=10).raise_for_status()

    def _sync(self) -> None:
        pods = self.session.get(self._url("/api/v1/pods"), timeout=10).json().get("items") or []
        live = {p["metadata"]["uid"] for p in pods}
        for uid in [uid for uid in self._ips if uid not in live]:
            self._pod_configs.pop(self._ips.pop(uid), None)
        for uid in [uid for uid in self._servers if uid not in live]:
            self._stop_server(uid)
        for pod in pods:
            meta = pod["metadata"]
            if meta.get("namespace", "").startswith("kube-"):
                continue
            if meta.get("deletionTimestamp"):
                self._remove(pod)
            elif not pod["spec"].get("nodeName"):
                self._bind(pod)
            elif (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            elif self._unpullable(pod):
                self._report(pod, self._waiting(pod, "ImagePullBackOff",
                                                f'Back-off pulling image "{self._unpullable(pod)}"'))
            elif pod["spec"].get("restartPolicy") == "Never":
                self._run_job_pod(pod)
            else:
                self._report(pod, self._serving_status(pod))

    def _pod_path(self, pod: Obj, sub: str = "") -> str:
        meta = pod["metadata"]
        return f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}{sub}"

    def _remove(self, pod: Obj) -> None:
        self.session.delete(self._url(self._pod_path(pod)), json={"gracePeriodSeconds": 0},
                            params={"gracePeriodSeconds": "0"}, timeout=10)
        self._reported.pop(pod["metadata"]["uid"], None)
        self._stop_server(pod["metadata"]["uid"])

    def _bind(self, pod: Obj) -> None:
        binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod["metadata"]["name"]},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": NODE}}
        response = self.session.post(self._url(self._pod_path(pod, "/binding")), json=binding, timeout=10)
        if response.status_code not in (201, 409):
            response.raise_for_status()

    def _report(self, pod: Obj, status: Obj) -> None:
        uid = pod["metadata"]["uid"]
        if self._reported.get(uid) == status:
            return
        stamped = {**status, "conditions": [{**c, "lastTransitionTime": _now()} for c in status.get("conditions", [])]}
        if "startTime" not in (pod.get("status") or {}):
            stamped["startTime"] = _now()
        response = self.session.patch(self._url(self._pod_path(pod, "/status")), json={"status": stamped},
                                      headers={"Content-Type": "application/strategic-merge-patch+json"}, timeout=10)
        if response.status_code == 404:
            return
        response.raise_for_status()
        self._reported[uid] = status

    # Pod states.

    def _unpullable(self, pod: Obj) -> str:
        for container in pod["spec"]["containers"]:
            if container["image"] in self.unpullable:
                return str(container["image"])
        return ""

    @staticmethod
    def _conditions(pod: Obj, ready: bool) -> list[Obj]:
        """The conditions a kubelet owns: Ready needs ready containers and every readiness gate's
        condition True in the pod's status (which others set, the kubelet only reads)."""
        flag = "True" if ready else "False"
        held = [g["conditionType"] for g in pod["spec"].get("readinessGates") or []
                if not any(c.get("type") == g["conditionType"] and c.get("status") == "True"
                           for c in (pod.get("status") or {}).get("conditions") or [])]
        gate: Obj = {"type": "Ready", "status": flag}
        if ready and held:
            gate = {"type": "Ready", "status": "False", "reason": "ReadinessGatesNotReady",
                    "message": f'the status of pod readiness gate "{held[0]}" is not "True"'}
        return [{"type": "PodScheduled", "status": "True"}, {"type": "Initialized", "status": "True"},
                {"type": "ContainersReady", "status": flag}, gate]

    def _waiting(self, pod: Obj, reason: str, message: str) -> Obj:
        return {
            "phase": "Pending", "hostIP": "127.0.0.1", "conditions": self._conditions(pod, False),
            "containerStatuses": [{"name": c["name"], "image": c["image"], "imageID": "", "ready": False,
                                   "restartCount": 0, "started": False,
                                   "state": {"waiting": {"reason": reason, "message": message}}}
                                  for c in pod["spec"]["containers"]],
        }

    def _ip(self, pod: Obj) -> str:
        uid = pod["metadata"]["uid"]
        if uid not in self._ips:
            assert self.network is not None, "no pod network: serving pods cannot get addresses"
            used = set(self._ips.values())
            free = [ip for ip in self.network.pods if ip not in used]
            assert free, "the pod network is out of addresses"
            self._ips[uid] = free[0]
        return self._ips[uid]

    def _serving_status(self, pod: Obj) -> Obj:
        config = self._model_config(pod)
        if config is None:
            return self._waiting(pod, "ContainerCreating", "")
        ip = self._ip(pod)
        if ip not in self._pod_configs:  # the container starts: TF Serving reads its config once
            if self._runs_server(pod):
                self._pod_configs[ip] = {"upstream": self._start_server(pod)}
            else:
                self._pod_configs[ip] = f"{config}\n# pod {pod['metadata']['uid']}\n"  # a new pod's counters start at 0
            assert self.network is not None
            tmp = self.network.pins.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._pod_configs))
            tmp.replace(self.network.pins)
        ready = self._probe(ip, pod)
        return {
            "phase": "Running", "hostIP": "127.0.0.1", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": self._conditions(pod, ready),
            "containerStatuses": [{"name": c["name"], "image": c["image"], "imageID": f"docker.io/{c['image']}",
                                   "ready": ready, "restartCount": 0, "started": True,
                                   "state": {"running": {"startedAt": "2026-01-01T00:00:01Z"}}}
                                  for c in pod["spec"]["containers"]],
        }

    def _model_config(self, pod: Obj) -> str | None:
        names = [v["configMap"]["name"] for v in pod["spec"].get("volumes") or [] if "configMap" in v]
        if not names:
            return ""
        response = self.session.get(self._url(f"/api/v1/namespaces/{pod['metadata']['namespace']}/configmaps/{names[0]}"),
                                    timeout=10)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return "\n".join((response.json().get("data") or {}).values())

    def _probe(self, ip: str, pod: Obj) -> bool:
        """The container's readinessProbe, as the kubelet runs it (httpGet only; none: ready)."""
        (container,) = [c for c in pod["spec"]["containers"] if c["name"] == "serving"] or pod["spec"]["containers"][:1]
        get = (container.get("readinessProbe") or {}).get("httpGet")
        if not get:
            return True
        port = get["port"]
        if isinstance(port, str):
            port = next(p["containerPort"] for p in container.get("ports") or [] if p.get("name") == port)
        try:
            answer = requests.get(f"http://{ip}:{port}{get.get('path', '/')}", timeout=2)
        except requests.RequestException as error:
            self.probe_failures.append(f"{pod['metadata']['name']} {ip}: {error}")
            return False
        if not 200 <= answer.status_code < 400:
            self.probe_failures.append(f"{pod['metadata']['name']} {ip}: {answer.status_code} {answer.text[:200]}")
            del self.probe_failures[:-50]
        return 200 <= answer.status_code < 400

    # Pods of the project's own server.

    @staticmethod
    def _runs_server(pod: Obj) -> bool:
        return any((c.get("command") or [])[1:] == ["-m", "aviary.serving"] for c in pod["spec"]["containers"])

    def _start_server(self, pod: Obj) -> str:
        """The container's command on this machine, inside the pod network, on ports of its own."""
        assert self.network is not None
        (container,) = pod["spec"]["containers"]
        scratch = Path(tempfile.mkdtemp(prefix="pod-"))
        mounts = self._volumes(pod, scratch)
        paths = {m["mountPath"]: mounts[m["name"]] for m in container.get("volumeMounts") or []}
        # Whole path components only: /etc/aviary/models.config holds no mount /models.
        pattern = re.compile(r"(?<![\w./-])(" + "|".join(re.escape(m) for m in sorted(paths, key=len, reverse=True))
                             + r")(?![\w.-])")

        def local(text: str) -> str:
            return pattern.sub(lambda match: str(paths[match.group(1)]), text) if paths else text

        for volume in pod["spec"].get("volumes") or []:  # config files name paths inside the pod too
            if "configMap" in volume:
                for file in mounts[volume["name"]].iterdir():
                    file.write_text(local(file.read_text()))
        port = next(self._ports)
        argv = [sys.executable, *[local(a) for a in [*container["command"][1:], *(container.get("args") or [])]],
                "--host=127.0.0.1", f"--port={port}", f"--rest_api_port={port + 1}"]
        assert self.network is not None
        with open(self.network.log.with_name(f"pod-{pod['metadata']['name']}.log"), "wb") as out:
            process = subprocess.Popen(  # noqa: S603 - our own interpreter and server
                ["ip", "netns", "exec", self.network.namespace, *argv], stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, start_new_session=True,
            )
        self._servers[pod["metadata"]["uid"]] = (process, scratch)
        return f"http://127.0.0.1:{port + 1}"

    def _stop_server(self, uid: str) -> None:
        if uid not in self._servers:
            return
        process, scratch = self._servers.pop(uid)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        shutil.rmtree(scratch, ignore_errors=True)

    # Run-to-completion pods.

    def _run_job_pod(self, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        if uid in self._jobs:
            return
        self._report(pod, {"phase": "Running", "hostIP": "127.0.0.1", "conditions": self._conditions(pod, True)})
        thread = threading.Thread(target=self._execute, args=(pod,), daemon=True)
        self._jobs[uid] = thread
        thread.start()

    def _execute(self, pod: Obj) -> None:
        (container,) = pod["spec"]["containers"]
        with tempfile.TemporaryDirectory(prefix="pod-") as scratch:
            mounts = self._volumes(pod, Path(scratch))
            paths = {m["mountPath"]: mounts[m["name"]] for m in container.get("volumeMounts") or []}

            pattern = re.compile("|".join(re.escape(m) for m in sorted(paths, key=len, reverse=True)))

            def local(text: str) -> str:  # one pass, so a replaced path is never replaced again
                return pattern.sub(lambda match: str(paths[match.group(0)]), text) if paths else text

            env = {"PATH": "/usr/bin:/bin", "HOSTNAME": pod["metadata"]["name"]}
            env.update({e["name"]: local(str(e.get("value", ""))) for e in container.get("env") or []})
            argv = [local(a) for a in [*(container.get("command") or []), *(container.get("args") or [])]]
            result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)  # noqa: S603
        code = result.returncode
        terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                      "startedAt": _now(), "finishedAt": _now()}
        self.job_output.append(f"{pod['metadata']['name']} exit {code}: {result.stdout[-300:]} {result.stderr[-300:]}")
        status = {"phase": "Succeeded" if code == 0 else "Failed", "hostIP": "127.0.0.1",
                  "conditions": self._conditions(pod, False),
                  "containerStatuses": [{"name": container["name"], "image": container["image"], "imageID": "",
                                         "ready": False, "restartCount": 0, "started": False,
                                         "state": {"terminated": terminated}}]}
        try:
            self._report(pod, status)
        except requests.RequestException as error:
            self.errors.append(f"job pod status: {error}")

    def _volumes(self, pod: Obj, scratch: Path) -> dict[str, Path]:
        namespace = pod["metadata"]["namespace"]
        folders: dict[str, Path] = {}
        for volume in pod["spec"].get("volumes") or []:
            name = volume["name"]
            if "persistentVolumeClaim" in volume:
                folders[name] = self.volume  # every claim is the one store volume
                continue
            folder = scratch / name
            folder.mkdir()
            folders[name] = folder
            if "configMap" in volume:  # every key a file
                data = self.session.get(self._url(f"/api/v1/namespaces/{namespace}/configmaps/{volume['configMap']['name']}"),
                                        timeout=10).json()
                for key, text in (data.get("data") or {}).items():
                    (folder / key).write_text(text)
            for source in (volume.get("projected") or {}).get("sources") or []:
                cm = source.get("configMap")
                if not cm:
                    continue
                data = self.session.get(self._url(f"/api/v1/namespaces/{namespace}/configmaps/{cm['name']}"),
                                        timeout=10).json()
                for item in cm.get("items") or []:
                    if item["key"] in (data.get("binaryData") or {}):
                        (folder / item["path"]).write_bytes(base64.b64decode(data["binaryData"][item["key"]]))
                    else:
                        (folder / item["path"]).write_text((data.get("data") or {}).get(item["key"], ""))
        return folders


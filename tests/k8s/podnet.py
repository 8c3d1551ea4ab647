"""Pod addresses that answer: a network namespace owning a block of 203.0.113.0/24 (a documentation
range, checked unused on this machine), with `python -m aviary.serving` inside.

The API server's service proxy dials a pod IP from the host; a veth pair routes the block into the
namespace, where a local route makes every address of it the namespace's own. One TF-Serving-compatible
server there serves the whole volume; `podproxy.py` in front of it, on every pod address, answers
as that pod's TF Serving would, from the config the kubelet started the pod with. Needs root.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.helpers import wait_for

POD_RANGE = ipaddress.ip_network("203.0.113.0/24")  # TEST-NET-3: only ever routed into the test's namespace
REST_PORT = 8501  # the pods' port: podproxy.py
UPSTREAM_PORT = 8601  # the one server behind it
HERE = Path(__file__).resolve().parent
SERVER_START_S = 180.0


def unavailable() -> str:
    """Why pod addresses cannot be served here, or ''."""
    if os.geteuid() != 0:
        return "serving pod IPs needs a network namespace, which needs root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is missing"
    return ""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=10)  # noqa: S603,S607


@dataclass
class PodNetwork:
    namespace: str
    pods: list[str]  # addresses the kubelet hands out
    volume: Path
    process: subprocess.Popen[bytes]
    proxy: subprocess.Popen[bytes]
    log: Path
    pins: Path  # pod IP -> the model config its TF Serving started with (written by the kubelet)

    def url(self, ip: str) -> str:
        return f"http://{ip}:{REST_PORT}"

    def answers(self) -> bool:
        assert self.process.poll() is None, f"pod server exited with {self.process.returncode}: {self.log.read_text()[-2000:]}"
        assert self.proxy.poll() is None, f"pod proxy exited with {self.proxy.returncode}"
        try:
            return requests.get(f"http://{self.pods[0]}:{UPSTREAM_PORT}/v1/models/none", timeout=2).status_code == 404
        except requests.RequestException:
            return False


def _in_use() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network this machine has an address in or a route to (the gateway included)."""
    used: list[ipaddress.IPv4Network] = []
    for entry in json.loads(_ip("-j", "-4", "addr", "show").stdout or "[]"):
        for info in entry.get("addr_info") or []:
            used.append(ipaddress.ip_network(f"{info['local']}/{info.get('prefixlen', 32)}", strict=False))
    for route in json.loads(_ip("-j", "-4", "route", "show", "table", "all").stdout or "[]"):
        if route.get("gateway"):
            used.append(ipaddress.ip_network(f"{route['gateway']}/32"))
        if route.get("dst") not in (None, "default"):
            network = ipaddress.ip_network(route["dst"] if "/" in route["dst"] else f"{route['dst']}/32", strict=False)
            if isinstance(network, ipaddress.IPv4Network) and network.prefixlen > 0:
                used.append(network)
    return used


def _free_block() -> ipaddress.IPv4Network:
    """A /26 of a documentation range that nothing on this machine uses (some machines sit in
    192.0.2.0/24 themselves), so the test never shadows a real address or the gateway."""
    used = _in_use()
    for block in POD_RANGE.subnets(new_prefix=26):
        if not any(block.overlaps(net) for net in used):
            return block
    raise RuntimeError(f"no /26 of {POD_RANGE} is free on this machine; remove stale test namespaces (ip netns list)")


@contextmanager
def pod_network(root: Path, volume: Path, models: Sequence[str]) -> Iterator[PodNetwork]:
    block = _free_block()
    hosts = list(block.hosts())
    name = f"aviary-test-{os.getpid()}"
    host_if, ns_if = f"avh{os.getpid() % 100000}", f"avn{os.getpid() % 100000}"
    host_ip, ns_ip = str(hosts[-1]), str(hosts[-2])  # the link, outside the pods' /27
    pods_net = str(next(block.subnets(new_prefix=27)))
    processes: list[subprocess.Popen[bytes]] = []
    _ip("netns", "add", name)
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", name)
        _ip("addr", "add", f"{host_ip}/32", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("route", "add", pods_net, "via", ns_ip, "dev", host_if, "onlink")
        inside = ("netns", "exec", name, "ip")
        _ip(*inside, "link", "set", "lo", "up")
        _ip(*inside, "addr", "add", f"{ns_ip}/32", "dev", ns_if)
        _ip(*inside, "link", "set", ns_if, "up")
        _ip(*inside, "route", "add", host_ip, "dev", ns_if)
        _ip(*inside, "route", "add", "local", pods_net, "dev", "lo")
        for model in models:
            (volume / model).mkdir(parents=True, exist_ok=True)
        config = root / "pods.config"
        config.write_text("model_config_list {\n" + "".join(
            f'  config {{ name: "{m}" base_path: "{volume / m}" model_platform: "tensorflow" '
            'model_version_policy { all {} } }\n' for m in models) + "}\n")
        log = root / "pods-serving.log"
        pins = root / "pins.json"
        pins.write_text("{}")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        with open(log, "wb") as out:
            for argv in (
                [sys.executable, "-m", "aviary.serving", "--host=0.0.0.0", f"--port={UPSTREAM_PORT - 1}",
                 f"--rest_api_port={UPSTREAM_PORT}", f"--model_config_file={config}", "--file_system_poll_wait_seconds=1"],
                [sys.executable, str(HERE / "podproxy.py"), str(REST_PORT), f"http://127.0.0.1:{UPSTREAM_PORT}", str(pins)],
            ):
                processes.append(subprocess.Popen(  # noqa: S603 - our own interpreter and scripts
                    ["ip", "netns", "exec", name, *argv], stdout=out, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                ))
        pods = [str(ip) for ip in ipaddress.ip_network(pods_net).hosts()]
        yield PodNetwork(name, pods, volume, processes[0], processes[1], log, pins)
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        _ip("link", "del", host_if, check=False)  # takes its peer and the route with it
        _ip("netns", "del", name, check=False)


def wait_answering(network: PodNetwork) -> None:
    wait_for("pod server in the network namespace", network.answers, timeout_s=SERVER_START_S, every_s=0.2)

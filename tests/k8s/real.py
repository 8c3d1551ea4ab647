"""The real-control-plane tier's world: one control plane, pod network and test kubelet per session,
one namespace per test, bootstrapped from an overlay and driven with the project Role's token."""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from aviary.config import PipelineConfig
from aviary.store import ModelStore
from aviary.targets import kube_objects as objects
from tests.helpers import wait_for

from .control_plane import ControlPlane, assets, control_plane, kubeconfig
from .kubelet import TestKubelet
from .podnet import PodNetwork, pod_network, unavailable
from .podproxy import POD_HEADER

REPO = Path(__file__).resolve().parents[2]
MODEL = "circle"  # the environment overlays' model
SECOND = "fraud"  # k8s/examples/fraud: a second model in the same namespace
ROLE = "aviary-rollout"
_names = itertools.count(1)
STEPS: dict[str, Any] = {"bake_s": 1, "max_bake_s": 20, "scrape_interval_s": 0.5, "min_requests": 10,
                         "latency_slack_ms": 500, "load_rps": 15}
"""Traffic steps in seconds, not minutes: short bakes, and latency judged loosely on a busy test machine."""


@dataclass
class RealCluster:
    plane: ControlPlane
    network: PodNetwork
    kubelet: TestKubelet
    volume: Path
    exported: Path  # a store holding versions 1..3 of MODEL and 1..2 of SECOND


def skip_unless_possible() -> None:
    """Skip, with the reason, where the binaries (or root, for the pod network) are missing."""
    binaries, why = assets()
    if not binaries:
        pytest.skip(f"real control plane tier: {why}")
    if reason := unavailable():
        pytest.skip(f"real control plane tier: {reason}")


def start(root: Path) -> Iterator[tuple[ControlPlane, PodNetwork, TestKubelet, Path]]:
    skip_unless_possible()
    binaries, _why = assets()
    volume = root / "volume"
    volume.mkdir()
    with control_plane(root / "plane", binaries) as plane, pod_network(root, volume, (MODEL, SECOND)) as network, \
            TestKubelet(plane, network, volume) as kubelet:
        yield plane, network, kubelet, volume


@dataclass
class Namespace:
    """One test's namespace: what the overlay made, the Role's kubeconfig, a store copy, and the model
    this view of it works on (`for_model` gives the same namespace for another)."""

    cluster: RealCluster
    name: str
    overlay: str
    kubeconfig: Path
    store_root: Path
    model: str = MODEL

    @property
    def plane(self) -> ControlPlane:
        return self.cluster.plane

    @property
    def store(self) -> ModelStore:
        return ModelStore(self.store_root, self.model)

    def config(self, **kube: Any) -> PipelineConfig:
        rollout = kube.pop("rollout", {})
        return PipelineConfig.model_validate({
            "export": {"store": self.store_root, "model_name": self.model, "golden_rows": 20, "warmup_records": 2},
            "rollout": {"target": "kubernetes", "ready_timeout_s": 60, "lock_timeout_s": 0,
                        "check": {"p95_budget_ms": 3000}, "canary": STEPS, **rollout,
                        "kubernetes": {"kubeconfig": self.kubeconfig, "namespace": self.name, "copy_timeout_s": 90,
                                       **kube}},
        })

    # Reading the cluster as an admin would (kubectl), never through the flow's eyes.

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        result = self.plane.kubectl("-n", self.name, "get", kind, name, "-o", "json", "--show-managed-fields",
                                   check=False)
        if result.returncode != 0:
            assert "NotFound" in result.stderr, result.stderr
            return None
        return dict(yaml.safe_load(result.stdout))

    def items(self, kind: str, selector: str = "") -> list[dict[str, Any]]:
        args = ["-n", self.name, "get", kind, "-o", "json"] + (["-l", selector] if selector else [])
        return list(yaml.safe_load(self.plane.kubectl(*args).stdout)["items"])

    def for_model(self, model: str) -> Namespace:
        return dataclasses.replace(self, model=model)

    def apply_overlay(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.plane.kubectl("apply", "-k", str(self.kustomization), *extra, check=False)

    def apply(self, kustomization: str, *extra: str) -> subprocess.CompletedProcess[str]:
        """`kubectl apply -k` of a kustomization under k8s/ (e.g. examples/fraud), into this namespace."""
        folder = in_namespace(self.kubeconfig.parent / kustomization.replace("/", "-"), REPO / "k8s" / kustomization,
                              self.name)
        return self.plane.kubectl("apply", "-k", str(folder), *extra, check=False)

    @property
    def kustomization(self) -> Path:
        return self.kubeconfig.parent / "overlay"

    def pinned(self) -> tuple[list[int], str | None, str | None]:
        """The stable ConfigMap's pinned versions, the Deployment's version annotation, its template hash."""
        cm = self.get("configmap", objects.config_name(self.model, "stable"))
        dep = self.get("deployment", objects.deployment_name(self.model, "stable"))
        versions = objects.pinned_versions((cm or {}).get("data", {}).get(objects.CONFIG_FILE, "")) if cm else []
        annotations = ((dep or {}).get("metadata") or {}).get("annotations") or {}
        template = (((dep or {}).get("spec") or {}).get("template") or {}).get("metadata", {}).get("annotations") or {}
        return versions, annotations.get(objects.VERSION_KEY), template.get(objects.HASH_KEY)

    def live_pods(self, track: str) -> list[dict[str, Any]]:
        return [p for p in self.items("pods", f"app=aviary-serving,model={self.model},track={track}")
                if not p["metadata"].get("deletionTimestamp")]

    def endpoint_ips(self, service: str) -> set[str]:
        ep = self.get("endpoints", service) or {}
        return {a["ip"] for s in ep.get("subsets") or [] for a in s.get("addresses") or []}

    def slice_endpoints(self, service: str) -> dict[str, bool]:
        """Every pod address the Service's EndpointSlices list, with whether it is ready (takes traffic)."""
        return {address: bool((e.get("conditions") or {}).get("ready"))
                for s in self.items("endpointslices", f"kubernetes.io/service-name={service}")
                for e in s.get("endpoints") or [] for address in e.get("addresses") or []}

    def reached(self, service: str, requests_: int) -> set[str]:
        """The pod addresses that answered `requests_` predictions sent to the Service, as a client would."""
        answers = [self.proxy(service, f"/v1/models/{self.model}:predict", {"instances": [{"x": 0.1, "y": 0.2}]})
                   for _ in range(requests_)]
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
        return {a.headers[POD_HEADER] for a in answers}

    def proxy(self, service: str, path: str, body: dict[str, Any] | None = None) -> requests.Response:
        """Through the API server's service proxy with the Role's token, as the check goes."""
        token = yaml.safe_load(self.kubeconfig.read_text())["users"][0]["user"]["token"]
        url = f"{self.plane.url}/api/v1/namespaces/{self.name}/services/{service}:rest/proxy{path}"
        session = requests.Session()
        session.trust_env = False
        kwargs: dict[str, Any] = {"headers": {"Authorization": f"Bearer {token}"}, "verify": str(self.plane.pki.ca),
                                  "timeout": 10}
        return session.post(url, json=body, **kwargs) if body is not None else session.get(url, **kwargs)


def in_namespace(folder: Path, source: Path, namespace: str) -> Path:
    """A kustomization putting `source` into `namespace`, as a user's own overlay would."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": namespace,
        "resources": [os.path.relpath(source, folder)],
    }))
    return folder


def new_namespace(cluster: RealCluster, tmp_path: Path, overlay: str = "dev") -> Namespace:
    name = f"t{next(_names)}-aviary"
    folder = tmp_path / "k8s"
    in_namespace(folder / "overlay", REPO / "k8s" / "overlays" / overlay, name)
    plane = cluster.plane
    plane.kubectl("apply", "-k", str(folder / "overlay"))

    def token() -> str | None:
        try:
            return plane.token(name, ROLE)
        except requests.HTTPError:
            return None

    wait_for(f"service account {ROLE} in {name}", lambda: token() is not None, timeout_s=30, every_s=0.1)
    config = kubeconfig(folder / "role.kubeconfig", plane.url, plane.pki.ca, token=token(), namespace=name)
    store_root = tmp_path / "store"
    shutil.copytree(cluster.exported, store_root)
    return Namespace(cluster, name, overlay, config, store_root)


def temp_root() -> Path:
    return Path(tempfile.mkdtemp(prefix="aviary-k8s-"))

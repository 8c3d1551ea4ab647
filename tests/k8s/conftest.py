"""Fixtures for the Kubernetes target: an API emulator on 127.0.0.1 and a real client pointed at it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
import requests
from kubernetes.client import ApiClient, Configuration

from aviary.config import KubernetesConfig
from aviary.targets.kubernetes import KubernetesTarget

from .emulator import EmulatorThread

TOKEN = "test-token"


@pytest.fixture
def kube() -> Iterator[EmulatorThread]:
    with EmulatorThread() as server:
        server.emulator.token = TOKEN
        yield server


@pytest.fixture
def kube_client(kube: EmulatorThread) -> Iterator[ApiClient]:
    configuration = Configuration(host=kube.url)
    configuration.api_key = {"BearerToken": TOKEN}
    configuration.api_key_prefix = {"BearerToken": "Bearer"}
    with ApiClient(configuration) as client:
        yield client


def make_target(client: ApiClient, **overrides: Any) -> KubernetesTarget:
    """Short waits and backoff, so every test runs in well under a second."""
    cfg_fields = set(KubernetesConfig.model_fields)
    cfg = KubernetesConfig(**{k: v for k, v in overrides.items() if k in cfg_fields})
    options: dict[str, Any] = {"poll_interval_s": 0.01, "backoff_s": 0.01, "max_backoff_s": 0.05,
                               "request_timeout_s": 2.0, "promote_timeout_s": 1.0}
    options.update({k: v for k, v in overrides.items() if k not in cfg_fields})
    return KubernetesTarget(client, cfg, model="circle", **options)


@pytest.fixture
def kube_target(kube_client: ApiClient) -> KubernetesTarget:
    return make_target(kube_client)


class KubeReader:
    """Reads objects back from the emulator over HTTP, as any client would."""

    PATHS: ClassVar[dict[str, str]] = {
        "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
        "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
        "Service": "/api/v1/namespaces/{ns}/services",
        "Job": "/apis/batch/v1/namespaces/{ns}/jobs",
        "HTTPRoute": "/apis/gateway.networking.k8s.io/v1/namespaces/{ns}/httproutes",
        "Pod": "/api/v1/namespaces/{ns}/pods",
    }

    def __init__(self, server: EmulatorThread, namespace: str = "aviary") -> None:
        self.server = server
        self.namespace = namespace
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {TOKEN}"

    def url(self, kind: str, name: str | None = None) -> str:
        base = self.server.url + self.PATHS[kind].format(ns=self.namespace)
        return base if name is None else f"{base}/{name}"

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        response = self.session.get(self.url(kind, name), timeout=5)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return dict(response.json())

    def names(self, kind: str) -> set[str]:
        response = self.session.get(self.url(kind), timeout=5)
        response.raise_for_status()
        return {item["metadata"]["name"] for item in response.json()["items"]}

    def set_status(self, kind: str, name: str, status: dict[str, Any]) -> None:
        """Play the controller: merge `status` into the object's status subresource."""
        response = self.session.patch(
            self.url(kind, name) + "/status", json={"status": status},
            headers={"Content-Type": "application/merge-patch+json"}, timeout=5,
        )
        response.raise_for_status()

    def seed(self, obj: dict[str, Any]) -> None:
        """Create an object as another field manager (kubectl) would."""
        response = self.session.patch(
            self.url(obj["kind"], obj["metadata"]["name"]), params={"fieldManager": "kubectl", "force": "true"},
            data=json.dumps(obj), headers={"Content-Type": "application/apply-patch+yaml"}, timeout=5,
        )
        response.raise_for_status()


@pytest.fixture
def kube_read(kube: EmulatorThread) -> KubeReader:
    return KubeReader(kube)


# The real-control-plane tier (test_real_*.py): one control plane per session.


@pytest.fixture(scope="session")
def real_cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from aviary.config import EvalConfig, ExportConfig
    from aviary.tasks.evaluate import evaluate_model
    from aviary.tasks.export import export_model
    from aviary.types import Verdict

    from .podnet import wait_answering
    from .real import MODEL, SECOND, RealCluster, skip_unless_possible, start

    skip_unless_possible()
    request.getfixturevalue("prefect_harness")  # first: its server starts slowly on a busy machine
    root = tmp_path_factory.mktemp("real-k8s")
    world = start(root)
    plane, network, kubelet, volume = next(world)
    try:
        trained = request.getfixturevalue("trained")  # trains while the pod server imports TensorFlow
        split = request.getfixturevalue("circle_split")
        store = root / "exported"
        evaluation = evaluate_model(trained, split.eval, EvalConfig())
        for model, versions in ((MODEL, (1, 2, 3)), (SECOND, (1, 2))):
            cfg = ExportConfig(store=store, model_name=model, golden_rows=20, warmup_records=2)
            for version in versions:
                export_model(trained, split.eval, evaluation, Verdict(blessed=True, reasons=("test",)), version, cfg)
        wait_answering(network)
        yield RealCluster(plane, network, kubelet, volume, store)
        assert not kubelet.errors, kubelet.errors
    finally:
        world.close()

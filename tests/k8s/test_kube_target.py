"""What only the emulator can do on demand: 409/429/5xx answers and slow ones, to test the
target's retries and give-ups. Everything else runs against the real API server (test_real_*.py).
Plus the target's client-side rules, which need no server at all."""

from __future__ import annotations

import pytest
from kubernetes.client import ApiClient

from aviary.targets.base import Serving, TargetError
from aviary.targets.kubernetes import KubernetesTarget

from .conftest import KubeReader, make_target
from .emulator import EmulatorThread, ready_status


def requests_to(kube: EmulatorThread, method: str, path_end: str) -> int:
    return sum(1 for r in kube.emulator._requests if r.method == method and str(r.url.path).endswith(path_end))


def test_kube_transient_api_errors_are_retried(kube: EmulatorThread, kube_client: ApiClient,
                                               kube_read: KubeReader) -> None:
    target = make_target(kube_client, request_timeout_s=0.2)
    kube.emulator.fail("PATCH", r"/deployments/circle-canary$", 409, times=2)
    kube.emulator.fail("PATCH", r"/configmaps/circle-canary-config$", 429, retry_after="0")
    kube.emulator.fail("PATCH", r"/services/circle$", 500)
    kube.emulator.fail("PATCH", r"/services/circle-stable$", 503)
    kube.emulator.fail("PATCH", r"/services/circle-canary$", 504, delay_s=0.5)  # past the client's timeout

    target.deploy_canary("circle", 1, None)

    canary = kube_read.get("Deployment", "circle-canary")
    assert canary is not None and canary["metadata"]["annotations"]["aviary.dev/version"] == "1"
    assert requests_to(kube, "PATCH", "/deployments/circle-canary") == 3
    assert requests_to(kube, "PATCH", "/configmaps/circle-canary-config") == 2
    assert requests_to(kube, "PATCH", "/services/circle-canary") == 2
    kube.emulator.fail("GET", r"/deployments/circle-canary$", 502, times=2)
    assert target.serving("circle") == Serving(stable=None, canary=1)


def test_kube_persistent_server_errors_give_up_clearly(kube: EmulatorThread, kube_target: KubernetesTarget) -> None:
    kube.emulator.fail("PATCH", r"/services/circle$", 503, times=100)
    with pytest.raises(TargetError, match=r'^cannot patch services "circle" in namespace "aviary": '
                                          r"HTTP 503 after 5 attempts: injected HTTP 503$"):
        kube_target.deploy_canary("circle", 1, None)
    assert requests_to(kube, "PATCH", "/services/circle") == 5


def test_kube_endpoint_reaches_a_track_through_the_service_proxy(kube: EmulatorThread,
                                                                kube_target: KubernetesTarget) -> None:
    endpoint = kube_target.endpoint("circle", "canary")
    assert endpoint.url == f"{kube.url}/api/v1/namespaces/aviary/services/circle-canary:rest/proxy/v1/models/circle"
    assert endpoint.headers == {"authorization": "Bearer test-token"}
    assert kube_target.endpoint("circle", "stable").url.endswith("/services/circle-stable:rest/proxy/v1/models/circle")


def test_kube_endpoint_in_cluster_uses_service_dns(kube_client: ApiClient) -> None:
    target = make_target(kube_client, in_cluster=True)
    endpoint = target.endpoint("circle", "canary")
    assert endpoint.url == "http://circle-canary.aviary.svc:8501/v1/models/circle"
    assert endpoint.headers == {}


def test_kube_target_refuses_another_model(kube_target: KubernetesTarget) -> None:
    with pytest.raises(TargetError, match="built for model 'circle', not 'square'"):
        kube_target.deploy_canary("square", 1, None)


def test_kube_auto_controller_status_is_what_kubectl_accepts() -> None:
    from aviary.targets.kube_status import rollout_state

    deployment = {"metadata": {"name": "d", "generation": 3}, "spec": {"replicas": 2}}
    assert rollout_state({**deployment, "status": ready_status(deployment)}).done


def test_kube_shadow_comparator_only_with_the_gateway_and_untouched_when_absent(
        kube: EmulatorThread, kube_client: ApiClient, kube_target: KubernetesTarget) -> None:
    """No comparator, no call to its objects: a Role from before the comparator can still roll back."""
    kube_target.deploy_canary("circle", 1, None)
    kube_target.roll_back("circle", None)
    assert requests_to(kube, "DELETE", "/services/circle-shadow") == 0
    assert kube_target.mirror_endpoint("circle") is None
    assert kube_target.shadow_unavailable.startswith("kubernetes: a Service cannot mirror")
    gateway = make_target(kube_client, canary_weight=20)
    assert gateway.shadow_unavailable == ""
    endpoint = gateway.mirror_endpoint("circle")
    assert endpoint is not None and endpoint.url.endswith("/services/circle-shadow:rest/proxy/v1/models/circle")

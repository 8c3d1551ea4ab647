"""KubernetesTarget against the API emulator, through the real `kubernetes` client over HTTP.

The tests play the Deployment controller (status subresource) and read every object back."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import kubernetes_validate
import pytest
import requests
from kubernetes.client import ApiClient

from aviary.model_config import parse_model_config
from aviary.targets.base import NotReady, Serving, TargetError
from aviary.targets.kubernetes import KubernetesTarget

from .conftest import KubeReader, make_target
from .emulator import EmulatorThread, ready_status

CANARY_OBJECTS = (("Deployment", "circle-canary"), ("ConfigMap", "circle-canary-config"))


def served_config(read: KubeReader, track: str) -> tuple[list[int], dict[str, int], str]:
    cm = read.get("ConfigMap", f"circle-{track}-config")
    assert cm is not None
    model = parse_model_config(cm["data"]["models.config"]).model_config_list.config[0]
    return list(model.model_version_policy.specific.versions), dict(model.version_labels), model.base_path


def assert_canary_gone(read: KubeReader) -> None:
    for kind, name in CANARY_OBJECTS:
        assert read.get(kind, name) is None, f"{kind} {name} left behind"


def assert_served(read: KubeReader, track: str, version: int) -> dict[str, Any]:
    deployment = read.get("Deployment", f"circle-{track}")
    assert deployment is not None
    assert deployment["metadata"]["annotations"]["aviary.dev/version"] == str(version)
    assert deployment["spec"]["template"]["metadata"]["annotations"]["aviary.dev/version"] == str(version)
    assert served_config(read, track)[:2] == ([version], {track: version})
    return deployment


def with_stable(kube: EmulatorThread, target: KubernetesTarget, version: int) -> None:
    """A cluster that already serves `version` as stable, rolled out by the flow before."""
    kube.emulator.auto_ready = True
    target.deploy_canary("circle", version, None)
    target.wait_ready("circle", version, 1)
    target.promote("circle", version)
    kube.emulator.auto_ready = False


def in_thread(fn: Callable[[], None]) -> tuple[threading.Thread, list[Exception]]:
    errors: list[Exception] = []

    def run() -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001  (handed back to the test thread)
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def requests_to(kube: EmulatorThread, method: str, path_end: str) -> int:
    return sum(1 for r in kube.emulator._requests if r.method == method and str(r.url.path).endswith(path_end))


def test_kube_first_deploy_creates_canary_track(kube: EmulatorThread, kube_target: KubernetesTarget,
                                                kube_read: KubeReader) -> None:
    kube_target.deploy_canary("circle", 1, None)

    canary = assert_served(kube_read, "canary", 1)
    assert canary["spec"]["replicas"] == 1
    assert canary["spec"]["selector"] == {"matchLabels": {"app": "aviary-serving", "model": "circle", "track": "canary"}}
    assert canary["metadata"]["managedFields"][0]["manager"] == "aviary"
    assert served_config(kube_read, "canary")[2] == "/models/circle"
    assert kube_read.names("Service") == {"circle", "circle-stable", "circle-canary"}
    assert kube_read.get("Deployment", "circle-stable") is None
    assert kube_target.serving("circle") == Serving(stable=None, canary=1)
    applies = [r for r in kube.emulator._requests if r.method == "PATCH"]
    assert applies and all(r.params == {"fieldManager": "aviary", "force": "true"} for r in applies)
    assert all(r.headers["Content-Type"] == "application/apply-patch+yaml" for r in applies)


def test_kube_applied_objects_pass_strict_schemas(kube: EmulatorThread, kube_target: KubernetesTarget) -> None:
    kube_target.deploy_canary("circle", 4, 3)
    applied = [r.data for r in kube.emulator._requests if r.method == "PATCH" and r.data["kind"] != "HTTPRoute"]
    assert {o["kind"] for o in applied} == {"Service", "ConfigMap", "Deployment"}
    for obj in applied:
        kubernetes_validate.validate(obj, "1.37", strict=True)


def test_kube_canary_beside_stable(kube: EmulatorThread, kube_target: KubernetesTarget, kube_read: KubeReader) -> None:
    with_stable(kube, kube_target, 1)
    kube_target.deploy_canary("circle", 2, 1)

    assert_served(kube_read, "stable", 1)
    canary = assert_served(kube_read, "canary", 2)
    stable = kube_read.get("Deployment", "circle-stable")
    assert stable is not None and stable["spec"]["replicas"] == 2 and canary["spec"]["replicas"] == 1
    assert kube_target.serving("circle") == Serving(stable=1, canary=2)


def test_kube_rollout_progress_waits_for_available_replicas(kube: EmulatorThread, kube_target: KubernetesTarget,
                                                            kube_read: KubeReader) -> None:
    kube_target.deploy_canary("circle", 1, None)
    thread, errors = in_thread(lambda: kube_target.wait_ready("circle", 1, 10))

    wait_for(lambda: requests_to(kube, "GET", "/deployments/circle-canary") >= 3)
    assert thread.is_alive()  # observedGeneration not reported yet
    kube_read.set_status("Deployment", "circle-canary",
                         {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 0})
    seen = requests_to(kube, "GET", "/deployments/circle-canary")
    wait_for(lambda: requests_to(kube, "GET", "/deployments/circle-canary") >= seen + 3)
    assert thread.is_alive()  # updated but not available
    kube_read.set_status("Deployment", "circle-canary", {"availableReplicas": 1, "readyReplicas": 1})

    thread.join(5)
    assert not thread.is_alive() and not errors


def test_kube_promote_rolls_stable_and_removes_canary(kube: EmulatorThread, kube_target: KubernetesTarget,
                                                      kube_read: KubeReader) -> None:
    with_stable(kube, kube_target, 1)
    before = kube_read.get("Deployment", "circle-stable")
    assert before is not None
    kube.emulator.auto_ready = True
    kube_target.deploy_canary("circle", 2, 1)
    kube_target.wait_ready("circle", 2, 1)

    kube_target.promote("circle", 2)

    after = assert_served(kube_read, "stable", 2)
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    hash_key = "aviary.dev/config-hash"
    assert after["spec"]["template"]["metadata"]["annotations"][hash_key] != \
        before["spec"]["template"]["metadata"]["annotations"][hash_key]
    assert after["spec"]["selector"] == before["spec"]["selector"]
    assert_canary_gone(kube_read)
    assert kube_target.serving("circle") == Serving(stable=2, canary=None)


def test_kube_promote_waits_for_the_stable_rollout(kube: EmulatorThread, kube_read: KubeReader,
                                                   kube_client: ApiClient) -> None:
    target = make_target(kube_client, promote_timeout_s=0.1)
    with_stable(kube, target, 1)
    kube.emulator.auto_ready = True
    target.deploy_canary("circle", 2, 1)
    kube.emulator.auto_ready = False  # the stable Deployment will not roll

    with pytest.raises(NotReady, match=r"stable circle v2: not ready after 0.1s"):
        target.promote("circle", 2)
    assert kube_read.get("Deployment", "circle-canary") is not None  # still serving until rolled back

    target.roll_back("circle", 1)
    assert_served(kube_read, "stable", 1)
    assert_canary_gone(kube_read)


def test_kube_rollout_past_deadline_raises_not_ready_and_rollback_leaves_nothing(
    kube: EmulatorThread, kube_target: KubernetesTarget, kube_read: KubeReader
) -> None:
    with_stable(kube, kube_target, 1)
    stable_before = kube_read.get("Deployment", "circle-stable")
    kube_target.deploy_canary("circle", 2, 1)
    kube_read.set_status("Deployment", "circle-canary",
                         {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 0})
    kube_read.seed({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "circle-canary-7d9f-x2", "labels": {"app": "aviary-serving", "model": "circle",
                                                                  "track": "canary"}},
        "spec": {"containers": [{"name": "serving", "image": "tensorflow/serving:2.19.0"}]},
    })
    kube_read.set_status("Pod", "circle-canary-7d9f-x2", {"containerStatuses": [{
        "name": "serving", "ready": False, "restartCount": 0, "image": "tensorflow/serving:2.19.0", "imageID": "",
        "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}]})

    started = time.monotonic()
    with pytest.raises(NotReady) as caught:
        kube_target.wait_ready("circle", 2, 0.3)
    assert 0.3 <= time.monotonic() - started < 2
    message = str(caught.value)
    assert "canary circle v2: not ready after 0.3s: 0 of 1 updated replicas of circle-canary available" in message
    assert "pod circle-canary-7d9f-x2: ImagePullBackOff: Back-off pulling image" in message

    kube_target.roll_back("circle", 1)
    assert_canary_gone(kube_read)
    assert kube_read.get("Deployment", "circle-stable") == stable_before
    assert kube_target.serving("circle") == Serving(stable=1, canary=None)


def test_kube_progress_deadline_exceeded_fails_at_once(kube_target: KubernetesTarget, kube_read: KubeReader) -> None:
    kube_target.deploy_canary("circle", 1, None)
    kube_read.set_status("Deployment", "circle-canary", {
        "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 0,
        "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                        "message": 'ReplicaSet "circle-canary-5c7" has timed out progressing.'}],
    })
    started = time.monotonic()
    with pytest.raises(NotReady, match="exceeded its progress deadline: ReplicaSet"):
        kube_target.wait_ready("circle", 1, 30)
    assert time.monotonic() - started < 2


def test_kube_canary_rollback_leaves_stable_untouched(kube: EmulatorThread, kube_target: KubernetesTarget,
                                                      kube_read: KubeReader) -> None:
    with_stable(kube, kube_target, 1)
    stable_before = kube_read.get("Deployment", "circle-stable")
    config_before = kube_read.get("ConfigMap", "circle-stable-config")
    kube.emulator.auto_ready = True
    kube_target.deploy_canary("circle", 2, 1)
    kube_target.wait_ready("circle", 2, 1)
    stable_patches = requests_to(kube, "PATCH", "/deployments/circle-stable")

    kube_target.roll_back("circle", 1)

    stable_after = kube_read.get("Deployment", "circle-stable")
    assert stable_before is not None and stable_after is not None
    assert stable_after["spec"] == stable_before["spec"]
    assert stable_after["metadata"]["generation"] == stable_before["metadata"]["generation"]
    assert stable_after["metadata"]["resourceVersion"] == stable_before["metadata"]["resourceVersion"]
    assert kube_read.get("ConfigMap", "circle-stable-config") == config_before
    assert requests_to(kube, "PATCH", "/deployments/circle-stable") == stable_patches
    assert_canary_gone(kube_read)
    kube_target.roll_back("circle", 1)  # again: nothing left to remove, no error


def test_kube_transient_api_errors_are_retried(kube: EmulatorThread, kube_client: ApiClient,
                                               kube_read: KubeReader) -> None:
    target = make_target(kube_client, request_timeout_s=0.2)
    kube.emulator.fail("PATCH", r"/deployments/circle-canary$", 409, times=2)
    kube.emulator.fail("PATCH", r"/configmaps/circle-canary-config$", 429, retry_after="0")
    kube.emulator.fail("PATCH", r"/services/circle$", 500)
    kube.emulator.fail("PATCH", r"/services/circle-stable$", 503)
    kube.emulator.fail("PATCH", r"/services/circle-canary$", 504, delay_s=0.5)  # past the client's timeout

    target.deploy_canary("circle", 1, None)

    assert_served(kube_read, "canary", 1)
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


def test_kube_forbidden_is_one_clear_line(kube: EmulatorThread, kube_target: KubernetesTarget) -> None:
    kube.emulator.forbid("patch", "deployments", "circle-canary")
    with pytest.raises(TargetError) as caught:
        kube_target.deploy_canary("circle", 1, None)
    assert str(caught.value) == ('forbidden: cannot patch deployments.apps "circle-canary" in namespace "aviary" '
                                 "(HTTP 403): check the aviary Role")
    assert requests_to(kube, "PATCH", "/deployments/circle-canary") == 1  # refused, not retried


def test_kube_unauthorized_is_one_clear_line(kube: EmulatorThread, kube_target: KubernetesTarget) -> None:
    kube.emulator.token = "another-token"
    with pytest.raises(TargetError, match=r'^unauthorized: cannot get deployments.apps "circle-stable" in '
                                          r'namespace "aviary" \(HTTP 401\): the API server refused'):
        kube_target.serving("circle")


def test_kube_missing_namespace_is_named(kube_client: ApiClient) -> None:
    target = make_target(kube_client, namespace="nope")
    with pytest.raises(TargetError, match=r'^namespace "nope" not found: cannot patch services "circle" \(HTTP 404\)'):
        target.deploy_canary("circle", 1, None)


def test_kube_rerunning_the_same_rollout_changes_nothing(kube: EmulatorThread, kube_target: KubernetesTarget,
                                                         kube_read: KubeReader) -> None:
    with_stable(kube, kube_target, 1)
    kube_target.deploy_canary("circle", 2, 1)

    def snapshot() -> dict[tuple[str, str], Any]:
        return {(k, n): kube_read.get(k, n) for k in ("Deployment", "ConfigMap", "Service")
                for n in kube_read.names(k)}

    def history() -> dict[Any, int]:
        return {key: len(obj.history) for key, obj in kube.emulator.objects.items()}

    before, versions = snapshot(), kube.call(history)
    kube_target.deploy_canary("circle", 2, 1)
    assert snapshot() == before  # same objects, same generation and resourceVersion
    assert kube.call(history) == versions  # no write recorded at all

    kube.emulator.auto_ready = True
    kube_target.promote("circle", 2)
    after_promote = snapshot()
    kube_target.promote("circle", 2)
    assert snapshot() == after_promote


def test_kube_endpoint_reaches_canary_through_service_proxy(kube: EmulatorThread, kube_target: KubernetesTarget
                                                            ) -> None:
    kube_target.deploy_canary("circle", 1, None)
    endpoint = kube_target.endpoint("circle", "canary")
    assert endpoint.url == f"{kube.url}/api/v1/namespaces/aviary/services/circle-canary:rest/proxy/v1/models/circle"
    assert endpoint.headers == {"authorization": "Bearer test-token"}
    response = requests.get(endpoint.url, headers=dict(endpoint.headers), verify=endpoint.verify, timeout=5)
    assert response.status_code == 200
    assert response.json()["served_by"] == "circle-canary"
    assert response.json()["model_version_status"][0]["state"] == "AVAILABLE"
    assert kube_target.endpoint("circle", "stable").url.endswith("/services/circle-stable:rest/proxy/v1/models/circle")


def test_kube_endpoint_in_cluster_uses_service_dns(kube_client: ApiClient) -> None:
    target = make_target(kube_client, in_cluster=True)
    endpoint = target.endpoint("circle", "canary")
    assert endpoint.url == "http://circle-canary.aviary.svc:8501/v1/models/circle"
    assert endpoint.headers == {}


def test_kube_canary_weight_goes_through_httproute(kube: EmulatorThread, kube_client: ApiClient,
                                                   kube_read: KubeReader) -> None:
    target = make_target(kube_client, canary_weight=20, gateway="edge")
    target.deploy_canary("circle", 1, None)
    route = kube_read.get("HTTPRoute", "circle")
    assert route is not None
    assert route["spec"]["parentRefs"] == [{"name": "edge"}]
    assert [(b["name"], b["weight"]) for b in route["spec"]["rules"][0]["backendRefs"]] == \
        [("circle-stable", 80), ("circle-canary", 20)]

    target.roll_back("circle", None)
    route = kube_read.get("HTTPRoute", "circle")
    assert route is not None
    assert [(b["name"], b["weight"]) for b in route["spec"]["rules"][0]["backendRefs"]] == [("circle-stable", 100)]
    assert_canary_gone(kube_read)


def test_kube_selector_is_never_changed(kube: EmulatorThread, kube_target: KubernetesTarget,
                                        kube_read: KubeReader) -> None:
    kube_read.seed({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "circle-canary"},
        "spec": {"selector": {"matchLabels": {"app": "something-else"}},
                 "template": {"metadata": {"labels": {"app": "something-else"}},
                              "spec": {"containers": [{"name": "x", "image": "busybox:1.36"}]}}},
    })
    with pytest.raises(TargetError, match=r'^invalid: cannot patch deployments.apps "circle-canary" .*immutable'):
        kube_target.deploy_canary("circle", 1, None)
    existing = kube_read.get("Deployment", "circle-canary")
    assert existing is not None and existing["spec"]["selector"] == {"matchLabels": {"app": "something-else"}}


def test_kube_target_refuses_another_model(kube_target: KubernetesTarget) -> None:
    with pytest.raises(TargetError, match="built for model 'circle', not 'square'"):
        kube_target.deploy_canary("square", 1, None)


def test_kube_auto_controller_status_is_what_kubectl_accepts() -> None:
    from aviary.targets.kube_status import rollout_state

    deployment = {"metadata": {"name": "d", "generation": 3}, "spec": {"replicas": 2}}
    assert rollout_state({**deployment, "status": ready_status(deployment)}).done

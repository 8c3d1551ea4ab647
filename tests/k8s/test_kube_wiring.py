"""What ties the target to the rest: credentials from a kubeconfig, the manifests' pod spec,
the Role (exactly what a rollout uses), and kubectl's rollout-status rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient

from aviary.config import KubernetesConfig
from aviary.targets import kube_objects as objects
from aviary.targets.base import NotReady, TargetError
from aviary.targets.kube_status import rollout_state
from aviary.targets.kubernetes import KubernetesTarget

from . import kustomize
from .conftest import TOKEN, KubeReader, make_target
from .emulator import EmulatorThread
from .test_kube_target import in_thread, wait_for, with_stable
from .test_kube_upload import export_dir

K8S = Path(__file__).resolve().parents[2] / "k8s"


def write_kubeconfig(path: Path, url: str, token: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "other",
        "clusters": [{"name": "emu", "cluster": {"server": url}},
                     {"name": "nowhere", "cluster": {"server": "http://127.0.0.1:9"}}],
        "users": [{"name": "flow", "user": {"token": token}}],
        "contexts": [{"name": "kind-aviary", "context": {"cluster": "emu", "user": "flow"}},
                     {"name": "other", "context": {"cluster": "nowhere", "user": "flow"}}],
    }))
    return path


def test_kube_from_config_uses_kubeconfig_and_context(kube: EmulatorThread, kube_read: KubeReader,
                                                      tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "config", kube.url, TOKEN)
    cfg = KubernetesConfig.model_validate({"kubeconfig": kubeconfig, "context": "kind-aviary"})
    target = KubernetesTarget.from_config(cfg, "circle", poll_interval_s=0.01)
    target.deploy_canary("circle", 5, None)
    assert kube_read.get("Deployment", "circle-canary") is not None
    assert target.endpoint("circle", "canary").headers == {"authorization": f"Bearer {TOKEN}"}


def test_kube_from_config_reports_bad_credentials(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="cannot load Kubernetes credentials from kubeconfig"):
        KubernetesTarget.from_config(KubernetesConfig.model_validate({"kubeconfig": tmp_path / "missing"}), "circle")
    with pytest.raises(TargetError, match="in-cluster service account"):
        KubernetesTarget.from_config(KubernetesConfig.model_validate({"in_cluster": True}), "circle")


def test_kube_manifest_stable_deployment_matches_the_target(kube: EmulatorThread, kube_target: KubernetesTarget,
                                                            kube_read: KubeReader) -> None:
    """k8s/base bootstraps what the flow would apply, less the pinned version."""
    (manifest,) = [o for o in kustomize.render(K8S / "base") if o["kind"] == "Deployment"]
    with_stable(kube, kube_target, 1)
    applied = kube_read.get("Deployment", "circle-stable")
    assert applied is not None
    ours, theirs = applied["spec"], manifest["spec"]
    assert ours["template"]["spec"] == theirs["template"]["spec"]
    assert ours["template"]["metadata"]["labels"] == theirs["template"]["metadata"]["labels"]
    assert {k: v for k, v in ours.items() if k != "template"} == {k: v for k, v in theirs.items() if k != "template"}
    services = {o["metadata"]["name"]: o for o in kustomize.render(K8S / "base") if o["kind"] == "Service"}
    for name, service in services.items():
        live = kube_read.get("Service", name)
        assert live is not None and live["spec"] == service["spec"]


def role_rules() -> set[tuple[str, str, str]]:
    docs = yaml.safe_load_all((K8S / "base" / "rbac.yaml").read_text())
    (role,) = [d for d in docs if d["kind"] == "Role"]
    return {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def used_permissions(kube: EmulatorThread) -> set[tuple[str, str, str]]:
    """What the flow's requests needed, the way the API server authorizes them (the target's own
    client, and the check calling through the service proxy; not the test's reads)."""
    used: set[tuple[str, str, str]] = set()
    for request in kube.emulator._requests:
        resource = request.resource
        if resource is None or resource.plural is None or resource.group is None:
            continue
        is_proxy = bool(request.subresource and request.subresource.startswith("proxy"))
        if not is_proxy and not request.headers.get("User-Agent", "").startswith("OpenAPI-Generator"):
            continue
        method = str(request.method.value if hasattr(request.method, "value") else request.method)
        if request.subresource and request.subresource.startswith("proxy"):
            used.add((resource.group, f"{resource.plural}/proxy", "get" if method == "GET" else "create"))
            continue
        verb = {"GET": "get" if request.name else "list", "PATCH": "patch", "DELETE": "delete", "POST": "create"}
        used.add((resource.group, resource.plural, verb[method]))
        if method == "PATCH":
            used.add((resource.group, resource.plural, "create"))  # apply creates what is missing
    return used


def test_kube_role_allows_exactly_what_a_rollout_uses(kube: EmulatorThread, kube_client: ApiClient,
                                                      kube_read: KubeReader, tmp_path: Path) -> None:
    import requests

    target = make_target(kube_client, canary_weight=10)
    with_stable(kube, target, 1)
    target.deploy_canary("circle", 2, 1)
    with pytest.raises(NotReady):
        target.wait_ready("circle", 2, 0.05)  # reads the pods for the reason
    endpoint = target.endpoint("circle", "canary")
    requests.get(endpoint.url, headers=dict(endpoint.headers), timeout=5)
    requests.post(endpoint.url + ":predict", headers=dict(endpoint.headers), json={"instances": []}, timeout=5)
    target.roll_back("circle", 1)
    thread, errors = in_thread(lambda: target.upload_version("circle", 2, export_dir(tmp_path), timeout_s=5))
    wait_for(lambda: bool(kube_read.names("Job")))
    (job,) = kube_read.names("Job")
    kube_read.set_status("Job", job, {"succeeded": 1})
    thread.join(5)
    assert not errors

    assert used_permissions(kube) == role_rules()


@pytest.mark.parametrize(("status", "spec_replicas", "done", "failed", "message"), [
    ({}, 1, False, False, "waiting for the controller to observe generation 2"),
    ({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 1, "availableReplicas": 2}, 2, False, False,
     "1 of 2 replicas of d updated"),
    ({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 2}, 2, False, False,
     "1 old replicas of d pending termination"),
    ({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1}, 2, False, False,
     "1 of 2 updated replicas of d available"),
    ({"observedGeneration": 2, "conditions": [{"type": "Progressing", "reason": "ProgressDeadlineExceeded"}]}, 2,
     False, True, "exceeded its progress deadline"),
    ({"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}, 2, True, False,
     "rolled out"),
])
def test_kube_rollout_state_follows_kubectl(status: dict[str, Any], spec_replicas: int, done: bool, failed: bool,
                                            message: str) -> None:
    state = rollout_state({"metadata": {"name": "d", "generation": 2}, "spec": {"replicas": spec_replicas},
                           "status": status})
    assert (state.done, state.failed) == (done, failed)
    assert message in state.message


def test_kube_objects_keep_selectors_to_three_labels() -> None:
    for track in ("stable", "canary"):
        deployment = objects.deployment(namespace="aviary", model="circle", track=track, version=1, config_hash="h",
                                        image="tensorflow/serving:2.19.0", replicas=1, store_claim="c",
                                        store_mount="/models")
        assert deployment["spec"]["selector"]["matchLabels"] == {"app": "aviary-serving", "model": "circle",
                                                                 "track": track}

"""What ties the target to the rest: credentials from a kubeconfig, the manifests' pod spec,
the Role (exactly what a rollout uses), and kubectl's rollout-status rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from aviary.config import KubernetesConfig
from aviary.targets import kube_objects as objects
from aviary.targets.base import TargetError
from aviary.targets.kube_status import rollout_state
from aviary.targets.kubernetes import KubernetesTarget

from . import kustomize
from .conftest import TOKEN, KubeReader
from .emulator import EmulatorThread

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


@pytest.mark.parametrize("model", ["circle", "fraud"])
def test_kube_manifest_stable_deployment_is_the_canary_pod_spec(model: str, tmp_path: Path) -> None:
    """k8s/components/serving's stable Deployment, for any model name, and the canary the flow builds
    run one pod spec, track aside; the manifest leaves out what the flow owns (the version pin, the
    progress deadline)."""
    rendered = kustomize.render(kustomize.stack(tmp_path / "stack", model))
    (manifest,) = [o for o in rendered if o["kind"] == "Deployment"]
    built = objects.deployment(namespace="aviary", model=model, track="canary", version=1, config_hash="h",
                               image="tensorflow/serving:2.19.0", replicas=2, store_claim="aviary-models",
                               store_mount="/models", ready_timeout_s=120)
    as_stable = yaml.safe_load(yaml.safe_dump(built).replace("canary", "stable"))
    ours, theirs = as_stable["spec"], manifest["spec"]
    assert ours["template"]["spec"] == theirs["template"]["spec"]
    assert ours["template"]["metadata"]["labels"] == theirs["template"]["metadata"]["labels"]
    pin = {objects.VERSION_KEY, objects.HASH_KEY}
    assert {k: v for k, v in ours["template"]["metadata"]["annotations"].items() if k not in pin} == \
        theirs["template"]["metadata"]["annotations"]
    assert "progressDeadlineSeconds" not in theirs
    assert {k: v for k, v in ours.items() if k not in ("template", "progressDeadlineSeconds")} == \
        {k: v for k, v in theirs.items() if k != "template"}
    services = {o["metadata"]["name"]: o for o in rendered if o["kind"] == "Service"}
    for track in (None, "stable", "canary"):
        assert objects.service("aviary", model, track)["spec"] == services[objects.service_name(model, track)]["spec"]


def test_kube_overlays_ship_no_model_config_for_the_flow_to_fight_over() -> None:
    """model.yaml is read by kustomize, never applied: no ConfigMap reaches the cluster."""
    for kustomization in ("overlays/dev", "overlays/prod", "examples/fraud"):
        rendered = kustomize.render(K8S / kustomization)
        assert not [o for o in rendered if o["kind"] == "ConfigMap"]


@pytest.mark.parametrize("model", ["circle", "fraud"])
def test_kube_track_config_names_the_model_and_turns_prometheus_on_where_pods_are_scraped(model: str) -> None:
    """The flow's ConfigMap, as TF Serving parses it: the model under its own name, one pinned
    version with the track's label, and Prometheus metrics on the path the scrape annotations give."""
    from aviary.model_config import parse_model_config
    from aviary.serving import configpb

    text = objects.model_config_text(model, f"/models/{model}", 3, "stable")
    data = objects.config_map("aviary", model, "stable", text)["data"]
    (entry,) = parse_model_config(data[objects.CONFIG_FILE]).model_config_list.config
    assert (entry.name, entry.base_path) == (model, f"/models/{model}")
    assert list(entry.model_version_policy.specific.versions) == [3] and dict(entry.version_labels) == {"stable": 3}
    monitoring = configpb.parse_text(data[objects.MONITORING_FILE], configpb.monitoring_config(), "monitoring.config")
    assert monitoring.prometheus_config.enable is True
    assert monitoring.prometheus_config.path == objects.SCRAPE_ANNOTATIONS["prometheus.io/path"]
    assert objects.SCRAPE_ANNOTATIONS["prometheus.io/port"] == str(objects.REST_PORT)
    assert objects.SCRAPE_ANNOTATIONS["prometheus.io/scrape"] == "true"


def role_rules() -> set[tuple[str, str, str]]:
    docs = yaml.safe_load_all((K8S / "base" / "rbac.yaml").read_text())
    (role,) = [d for d in docs if d["kind"] == "Role"]
    return {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def test_kube_role_is_narrow() -> None:
    """What it allows is proven enough by the real tier, which runs every flow with its token alone."""
    rules = role_rules()
    assert not [r for r in rules if "*" in r]
    assert not {resource for _group, resource, _verb in rules} & {"secrets", "pods/exec", "pods/log", "roles",
                                                                   "rolebindings"}


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
    ({"observedGeneration": 2, "conditions": [{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                                              "message": 'pods "x" is forbidden: exceeded quota'}]}, 2,
     False, True, "cannot create pods (ReplicaFailure): pods \"x\" is forbidden: exceeded quota"),
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
                                        store_mount="/models", ready_timeout_s=60)
        assert deployment["spec"]["selector"]["matchLabels"] == {"app": "aviary-serving", "model": "circle",
                                                                 "track": track}

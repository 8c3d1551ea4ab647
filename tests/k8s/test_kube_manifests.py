"""The k8s/ kustomizations: they render, every object passes the official 1.37 schemas in strict
mode, they hold what an operator expects (pinned image, probes, metrics, hardening, RBAC, PDB), and
each names its model once, in model.yaml, with every name, label and probe path derived from it
exactly as the flow derives them (aviary/targets/kube_objects.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from aviary.targets import kube_objects as objects

from . import kustomize
from .kustomize import K8S

OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())
# Every kustomization a user applies: the environments, and the second model beside them.
APPLIED = [f"overlays/{name}" for name in OVERLAYS] + ["examples/fraud"]
SERVING = {"Deployment", "Service", "PodDisruptionBudget"}


def by_kind(rendered: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in rendered if o["kind"] == kind}


@pytest.fixture(scope="module", params=APPLIED)
def applied(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    """(model, rendered objects) of one kustomization."""
    directory = K8S / request.param
    return kustomize.model_of(directory), kustomize.render(directory)


def test_kube_overlays_exist() -> None:
    assert {"dev", "prod"} <= set(OVERLAYS)
    assert [kustomize.model_of(K8S / "overlays" / o) for o in OVERLAYS] == ["circle"] * len(OVERLAYS)
    assert kustomize.model_of(K8S / "examples" / "fraud") == "fraud"


def test_kube_objects_pass_strict_schemas(applied: tuple[str, list[dict[str, Any]]]) -> None:
    _model, rendered = applied
    assert rendered
    for obj in rendered:
        kubernetes_validate.validate(obj, "1.37", strict=True)


def test_kube_objects_namespaced_in_aviary(applied: tuple[str, list[dict[str, Any]]]) -> None:
    _model, rendered = applied
    for obj in rendered:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "aviary", obj["metadata"]["name"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "aviary"


def test_kube_serving_deployment(applied: tuple[str, list[dict[str, Any]]]) -> None:
    model, rendered = applied
    deployment = by_kind(rendered, "Deployment")[objects.deployment_name(model, "stable")]
    labels = objects.selector(model, "stable")
    assert deployment["metadata"]["labels"]["model"] == model
    assert deployment["spec"]["selector"] == {"matchLabels": labels}
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"] == labels
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = spec["containers"]
    image, _, tag = container["image"].partition(":")
    assert image == "tensorflow/serving" and tag and tag != "latest"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"grpc": 8500, "rest": 8501}
    # Ready only once the pinned version is AVAILABLE; a slow load is the startupProbe's, not liveness's.
    available = {"path": f"/v1/models/{model}/labels/stable/metadata", "port": "rest"}
    assert available["path"] == objects.probe_path(model, "stable")
    assert container["readinessProbe"]["httpGet"] == available == container["startupProbe"]["httpGet"]
    assert container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"] >= 300
    assert container["livenessProbe"] == {"tcpSocket": {"port": "grpc"}, "periodSeconds": 10, "failureThreshold": 6}
    # Prometheus: TF Serving's monitoring config (the flow's ConfigMap) on, the pods annotated for scraping.
    assert f"--monitoring_config_file={objects.CONFIG_DIR}/{objects.MONITORING_FILE}" in container["args"]
    assert pod["metadata"]["annotations"] == dict(objects.SCRAPE_ANNOTATIONS)
    assert container["resources"]["requests"] and container["resources"]["limits"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["store"]["mountPath"] == "/models" and mounts["store"]["readOnly"] is True
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["store"]["persistentVolumeClaim"]["claimName"] == "aviary-models"
    # The flow's ConfigMap (see test_kube_wiring): the only thing that says what stable serves.
    assert volumes["config"]["configMap"]["name"] == objects.config_name(model, "stable")


def test_kube_services_and_pdb(applied: tuple[str, list[dict[str, Any]]]) -> None:
    model, rendered = applied
    services = by_kind(rendered, "Service")
    assert set(services) == {objects.service_name(model, t) for t in (None, "stable", "canary")}
    for track in (None, "stable", "canary"):
        svc = services[objects.service_name(model, track)]
        assert svc["spec"] == objects.service("aviary", model, track)["spec"]
        assert svc["metadata"]["labels"]["model"] == model
    (pdb,) = by_kind(rendered, "PodDisruptionBudget").values()
    assert pdb["metadata"]["name"] == objects.deployment_name(model, "stable")
    assert pdb["spec"]["selector"]["matchLabels"] == objects.selector(model, "stable")


def test_kube_prod_spreads_its_own_models_pods() -> None:
    rendered = kustomize.render(K8S / "overlays" / "prod")
    pod = by_kind(rendered, "Deployment")["circle-stable"]["spec"]["template"]["spec"]
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["labelSelector"]["matchLabels"] == objects.selector("circle", "stable")


def test_kube_environment_overlays_carry_the_namespace_and_rbac() -> None:
    for overlay in OVERLAYS:
        rendered = kustomize.render(K8S / "overlays" / overlay)
        assert "aviary-rollout" in by_kind(rendered, "ServiceAccount")
        binding = by_kind(rendered, "RoleBinding")["aviary-rollout"]
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "aviary-rollout"}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "aviary-rollout", "namespace": "aviary"}]
        role = by_kind(rendered, "Role")["aviary-rollout"]
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        assert not by_kind(rendered, "ClusterRole")
        assert "aviary-models" in by_kind(rendered, "PersistentVolumeClaim")


def test_kube_second_model_adds_only_its_serving_stack() -> None:
    """It shares the namespace, the Role and the store with the environment's model: applying it
    can never resize the store or touch the other model's objects."""
    rendered = kustomize.render(K8S / "examples" / "fraud")
    assert {o["kind"] for o in rendered} == SERVING
    assert all(o["metadata"]["labels"]["model"] == "fraud" for o in rendered)
    dev = kustomize.render(K8S / "overlays" / "dev")
    assert not {(o["kind"], o["metadata"]["name"]) for o in rendered} & {(o["kind"], o["metadata"]["name"]) for o in dev}


def test_kube_model_named_once_per_kustomization() -> None:
    """No manifest but a model.yaml names a model; a model.yaml holds nothing applied."""
    for path in sorted(K8S.rglob("*.yaml")):
        text = path.read_text()
        if path.name == "model.yaml":
            (doc,) = [d for d in yaml.safe_load_all(text) if d]
            assert doc["metadata"]["annotations"] == {"config.kubernetes.io/local-config": "true"}
            continue
        for name in ("circle", "fraud"):
            assert name not in text, f"{path.relative_to(K8S)} names the model {name}"


@pytest.mark.parametrize("model", ["circle", "fraud", "fraud-v2"])
def test_kube_any_model_name_renders_the_flows_names(model: str, tmp_path: Path) -> None:
    rendered = kustomize.render(kustomize.stack(tmp_path / "stack", model))
    names = {(o["kind"], o["metadata"]["name"]) for o in rendered}
    assert names == {("Deployment", objects.deployment_name(model, "stable")),
                     ("PodDisruptionBudget", objects.deployment_name(model, "stable")),
                     *(("Service", objects.service_name(model, t)) for t in (None, "stable", "canary"))}
    text = yaml.safe_dump_all(rendered)
    assert "MODEL" not in text

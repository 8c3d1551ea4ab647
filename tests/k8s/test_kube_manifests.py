"""The k8s/ kustomize overlays: they render, every object passes the official 1.37 schemas in
strict mode, and they hold what the issue asks (pinned image, probes, hardening, RBAC, PDB)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from . import kustomize

K8S = Path(__file__).resolve().parents[2] / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return kustomize.render(K8S / "overlays" / request.param)


def test_kube_overlays_exist() -> None:
    assert {"dev", "prod"} <= set(OVERLAYS)


def test_kube_overlay_objects_pass_strict_schemas(rendered: list[dict[str, Any]]) -> None:
    assert rendered
    for obj in rendered:
        kubernetes_validate.validate(obj, "1.37", strict=True)


def test_kube_overlay_namespaced_in_aviary(rendered: list[dict[str, Any]]) -> None:
    for obj in rendered:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "aviary", obj["metadata"]["name"]


def test_kube_overlay_serving_deployment(rendered: list[dict[str, Any]]) -> None:
    deployment = by_kind(rendered, "Deployment")["circle-stable"]
    labels = {"app": "aviary-serving", "model": "circle", "track": "stable"}
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
    available = {"path": "/v1/models/circle/labels/stable/metadata", "port": "rest"}
    assert container["readinessProbe"]["httpGet"] == available == container["startupProbe"]["httpGet"]
    assert container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"] >= 300
    assert "--monitoring_config_file=/etc/aviary/monitoring.config" in container["args"]
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/monitoring/prometheus/metrics"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["store"]["mountPath"] == "/models" and mounts["store"]["readOnly"] is True
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["store"]["persistentVolumeClaim"]["claimName"] == "aviary-models"
    assert volumes["config"]["configMap"]["name"] == "circle-stable-config"  # the flow's: see test_kube_wiring


def test_kube_overlay_services_pdb_and_store(rendered: list[dict[str, Any]]) -> None:
    services = by_kind(rendered, "Service")
    assert services["circle"]["spec"]["selector"] == {"app": "aviary-serving", "model": "circle"}
    for track in ("stable", "canary"):
        svc = services[f"circle-{track}"]
        assert svc["spec"]["selector"]["track"] == track
        assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"grpc": 8500, "rest": 8501}
    pdb = by_kind(rendered, "PodDisruptionBudget")["circle-stable"]
    assert pdb["spec"]["selector"]["matchLabels"]["track"] == "stable"
    assert "aviary-models" in by_kind(rendered, "PersistentVolumeClaim")


def test_kube_overlay_rbac(rendered: list[dict[str, Any]]) -> None:
    assert "aviary-rollout" in by_kind(rendered, "ServiceAccount")
    binding = by_kind(rendered, "RoleBinding")["aviary-rollout"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "aviary-rollout"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "aviary-rollout", "namespace": "aviary"}]
    role = by_kind(rendered, "Role")["aviary-rollout"]
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
    assert not by_kind(rendered, "ClusterRole")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kube_python_renderer_matches_kubectl(overlay: str) -> None:
    if kustomize.kubectl() is None:
        pytest.skip("no kubectl on PATH: only the Python renderer is available")
    real = kustomize.render_with_kubectl(K8S / "overlays" / overlay)
    ours = kustomize.render_in_python(K8S / "overlays" / overlay)
    assert {kustomize._key(o): o for o in ours} == {kustomize._key(o): o for o in real}

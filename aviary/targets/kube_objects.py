"""The Kubernetes objects of one model's serving tracks, as plain dicts ready for server-side apply.

Pure functions: names, labels, manifests. Who owns what (see docs/kubernetes.md): the overlays in
k8s/ own the stable Deployment's shape (replicas, resources, topology, probes); the flow owns its
version pin (`stable_pin`: two annotations and the progress deadline), the track ConfigMaps and the
whole canary Deployment, which `deployment` builds. tests/k8s checks k8s/components/serving, rendered
for any model name, against these builders.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any, Literal

from aviary.model_config import render_model_config

Track = Literal["stable", "canary"]
Obj = dict[str, Any]

APP = "aviary-serving"
MANAGER = "aviary"
BOOTSTRAP_MANAGER = "aviary-bootstrap"
VERSION_KEY = "aviary.dev/version"
LIVE_GATE = "aviary.dev/live"
"""The canary's readiness gate without the Gateway API: its pods join the live Service only once the
flow sets this pod condition True, at the first traffic step."""
HASH_KEY = "aviary.dev/config-hash"
CONFIG_FILE = "models.config"
MONITORING_FILE = "monitoring.config"
METRICS_PATH = "/monitoring/prometheus/metrics"
CONFIG_DIR = "/etc/aviary"
GRPC_PORT = 8500
REST_PORT = 8501
DEFAULT_RESOURCES: Mapping[str, Mapping[str, str]] = {
    "requests": {"cpu": "250m", "memory": "256Mi"},
    "limits": {"cpu": "1", "memory": "1Gi"},
}
RUN_AS = 1000
SCRAPE_ANNOTATIONS: Mapping[str, str] = {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": str(REST_PORT),
    "prometheus.io/path": METRICS_PATH,
}


def deployment_name(model: str, track: Track) -> str:
    return f"{model}-{track}"


def config_name(model: str, track: Track) -> str:
    return f"{model}-{track}-config"


def service_name(model: str, track: Track | None) -> str:
    """`<model>` takes live traffic over both tracks; `<model>-<track>` reaches one track."""
    return model if track is None else f"{model}-{track}"


def selector(model: str, track: Track) -> dict[str, str]:
    """A Deployment's selector: immutable once created, so it is exactly these three labels, always."""
    return {"app": APP, "model": model, "track": track}


def content_hash(data: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(dict(data), sort_keys=True).encode()).hexdigest()[:16]


def model_config_text(model: str, base_path: str, version: int, track: Track) -> str:
    """One pinned version, labelled with its track, so `/v1/models/<m>/labels/<track>` works too."""
    return render_model_config(model, base_path, [version], {track: version})


def monitoring_config_text() -> str:
    """TF Serving's MonitoringConfig: Prometheus metrics on the REST port."""
    return f'prometheus_config {{\n  enable: true\n  path: "{METRICS_PATH}"\n}}\n'


def config_map(namespace: str, model: str, track: Track, text: str) -> Obj:
    """A track's TF Serving config files. The flow alone writes them (the overlays ship none), so
    re-applying an overlay can never unpin what a track serves."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": config_name(model, track), "namespace": namespace, "labels": selector(model, track)},
        "data": {CONFIG_FILE: text, MONITORING_FILE: monitoring_config_text()},
    }


def pinned_versions(text: str) -> list[int]:
    """The versions a model config file pins (its `specific` policy); [] when it pins none."""
    from aviary.model_config import parse_model_config

    try:
        parsed = parse_model_config(text)
    except Exception:  # noqa: BLE001 - a config someone else wrote pins nothing we can vouch for
        return []
    return [int(v) for c in parsed.model_config_list.config for v in c.model_version_policy.specific.versions]


def pod_security() -> Obj:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security() -> Obj:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def probe_path(model: str, track: Track) -> str:
    """Answers 200 only once the version the track's label points at is AVAILABLE: metadata needs a
    loaded servable, and a label resolves only to its pinned version."""
    return f"/v1/models/{model}/labels/{track}/metadata"


def serving_container(model: str, track: Track, image: str, store_mount: str, resources: Mapping[str, Any]) -> Obj:
    return {
        "name": "serving",
        "image": image,
        "command": ["/usr/bin/tensorflow_model_server"],
        "args": [
            f"--port={GRPC_PORT}",
            f"--rest_api_port={REST_PORT}",
            f"--model_config_file={CONFIG_DIR}/{CONFIG_FILE}",
            f"--monitoring_config_file={CONFIG_DIR}/{MONITORING_FILE}",
            # The config labels a version that is still loading when the server starts.
            "--allow_version_labels_for_unavailable_models=true",
            "--enable_model_warmup=true",
        ],
        "ports": [
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "rest", "containerPort": REST_PORT, "protocol": "TCP"},
        ],
        # A large model may load (and warm up) for minutes: up to 10 before liveness counts.
        "startupProbe": {
            "httpGet": {"path": probe_path(model, track), "port": "rest"},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 120,
        },
        "readinessProbe": {
            "httpGet": {"path": probe_path(model, track), "port": "rest"},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "tcpSocket": {"port": "grpc"},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "resources": json.loads(json.dumps(resources)),
        "securityContext": container_security(),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "store", "mountPath": store_mount, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }


SHADOW = "shadow"


def shadow_name(model: str) -> str:
    """The shadow comparator's Deployment, Service and (with `-config`) ConfigMap."""
    return f"{model}-{SHADOW}"


def shadow_selector(model: str) -> dict[str, str]:
    """Its own `app`: no Service of the tracks (`<model>` selects every `aviary-serving` pod of the
    model) ever sends it client traffic."""
    return {"app": f"aviary-{SHADOW}", "model": model}


def shadow_config_text(model: str, base_path: str, stable: int, canary: int) -> str:
    """Both versions, labelled: the project's server routes unversioned requests to `stable` and
    mirrors them to `canary` (its traffic split, `--mirror_percent`)."""
    return render_model_config(model, base_path, sorted({stable, canary}), {"stable": stable, "canary": canary})


def shadow_objects(*, namespace: str, model: str, stable: int, canary: int, base_path: str, image: str,
                   store_claim: str, store_mount: str, ready_timeout_s: float,
                   resources: Mapping[str, Any] = DEFAULT_RESOURCES) -> list[Obj]:
    """ConfigMap, Deployment and Service of the shadow comparator: one pod of the project's own server
    (the flow image) that answers each request the Gateway mirrors to it with stable (the Gateway
    drops that answer), runs the canary on the same inputs and exports the comparison as
    `:aviary:serving:shadow:*` series."""
    name, labels = shadow_name(model), shadow_selector(model)
    data = {CONFIG_FILE: shadow_config_text(model, base_path, stable, canary), MONITORING_FILE: monitoring_config_text()}
    config: Obj = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": f"{name}-config", "namespace": namespace, "labels": dict(labels)},
        "data": data,
    }
    container = serving_container(model, "canary", image, store_mount, resources)
    container["command"] = ["python", "-m", "aviary.serving"]
    container["args"] = [
        "--host=0.0.0.0", f"--port={GRPC_PORT}", f"--rest_api_port={REST_PORT}",
        f"--model_config_file={CONFIG_DIR}/{CONFIG_FILE}", f"--monitoring_config_file={CONFIG_DIR}/{MONITORING_FILE}",
        "--allow_version_labels_for_unavailable_models=true", "--mirror_percent=100",
    ]
    template_annotations = {VERSION_KEY: str(canary), HASH_KEY: content_hash(data)}
    deployment: Obj = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels),
                     "annotations": {VERSION_KEY: str(canary)}},
        "spec": {
            "replicas": 1,
            "revisionHistoryLimit": 1,
            "progressDeadlineSeconds": progress_deadline_s(ready_timeout_s),
            "selector": {"matchLabels": dict(labels)},
            "template": {
                "metadata": {"labels": dict(labels), "annotations": template_annotations},
                "spec": {
                    "serviceAccountName": "default",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 10,
                    "securityContext": pod_security(),
                    "containers": [container],
                    "volumes": [
                        {"name": "config", "configMap": {"name": f"{name}-config"}},
                        {"name": "store", "persistentVolumeClaim": {"claimName": store_claim, "readOnly": True}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
                    ],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": {"selector": dict(labels),
                 "ports": [{"name": "rest", "port": REST_PORT, "targetPort": "rest", "protocol": "TCP"}]},
    }
    return [config, deployment, service]


def progress_deadline_s(ready_timeout_s: float) -> int:
    return max(1, int(ready_timeout_s + 0.999))


def deployment(
    *,
    namespace: str,
    model: str,
    track: Track,
    version: int,
    config_hash: str,
    image: str,
    replicas: int,
    store_claim: str,
    store_mount: str,
    ready_timeout_s: float,
    resources: Mapping[str, Any] = DEFAULT_RESOURCES,
    gated: bool = False,
) -> Obj:
    """A whole track serving one pinned version: the canary, or a stable track the flow creates in a
    namespace no overlay bootstrapped. The config hash in the pod template rolls the pods whenever
    the ConfigMap changes (TF Serving reads its config file only at start). `gated`: the pods carry
    the `LIVE_GATE` readiness gate, so they are Ready (in any Service's ready endpoints) only once
    the flow opens it."""
    labels = selector(model, track)
    pod_spec: Obj = {
        "serviceAccountName": "default",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "securityContext": pod_security(),
        "containers": [serving_container(model, track, image, store_mount, resources)],
        "volumes": [
            {"name": "config", "configMap": {"name": config_name(model, track)}},
            {"name": "store", "persistentVolumeClaim": {"claimName": store_claim, "readOnly": True}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        ],
    }
    if gated:
        pod_spec["readinessGates"] = [{"conditionType": LIVE_GATE}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(model, track),
            "namespace": namespace,
            "labels": labels,
            "annotations": {VERSION_KEY: str(version)},
        },
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": progress_deadline_s(ready_timeout_s),
            "selector": {"matchLabels": labels},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {**SCRAPE_ANNOTATIONS, VERSION_KEY: str(version), HASH_KEY: config_hash},
                },
                "spec": pod_spec,
            },
        },
    }


def stable_pin(namespace: str, model: str, version: int, config_hash: str, ready_timeout_s: float) -> Obj:
    """All the flow applies to an existing stable Deployment: which version it serves (the annotations
    roll the pods onto the ConfigMap's new content) and how long a rollout may take. Replicas,
    resources, topology and probes stay the overlay's."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(model, "stable"),
            "namespace": namespace,
            "annotations": {VERSION_KEY: str(version)},
        },
        "spec": {
            "progressDeadlineSeconds": progress_deadline_s(ready_timeout_s),
            "template": {"metadata": {"annotations": {VERSION_KEY: str(version), HASH_KEY: config_hash}}},
        },
    }


def service(namespace: str, model: str, track: Track | None, publish_not_ready: bool | None = None) -> Obj:
    """`publish_not_ready` (the canary's own Service, set either way by the flow): the Service lists
    pods that are not Ready too, so the check reaches a gated canary that takes no live traffic."""
    labels = {"app": APP, "model": model}
    if track is not None:
        labels["track"] = track
    spec: Obj = {
        "selector": dict(labels),
        "ports": [
            {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
            {"name": "rest", "port": REST_PORT, "targetPort": "rest", "protocol": "TCP"},
        ],
    }
    if publish_not_ready is not None:
        spec["publishNotReadyAddresses"] = publish_not_ready
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service_name(model, track), "namespace": namespace, "labels": dict(labels)},
        "spec": spec,
    }


def live_condition(now: str) -> Obj:
    """The `LIVE_GATE` pod condition opened, as a strategic-merge patch of `pods/status` (merged by type,
    so the kubelet's own conditions stay as they are). Nothing closes it: a step of 0% removes the pods."""
    return {"status": {"conditions": [{"type": LIVE_GATE, "status": "True", "reason": "CanaryTrafficStep",
                                       "lastTransitionTime": now}]}}


def gated(deployment: Mapping[str, Any] | None) -> bool:
    """Whether a Deployment's pods wait for the `LIVE_GATE` (from the live object, not the config)."""
    spec = ((((deployment or {}).get("spec") or {}).get("template") or {}).get("spec")) or {}
    return any(g.get("conditionType") == LIVE_GATE for g in spec.get("readinessGates") or [])


def http_route(namespace: str, model: str, gateway: str, canary_weight: int | None, mirror_percent: int = 0) -> Obj:
    """Gateway API route over the per-track Services; `canary_weight` None sends everything to stable.
    `mirror_percent` also copies that share of requests to the shadow comparator (RequestMirror's
    `percent`, Gateway API v1.2+); the Gateway drops its answers."""
    backends: list[Obj] = [
        {"name": service_name(model, "stable"), "port": REST_PORT, "weight": 100 - (canary_weight or 0)}
    ]
    if canary_weight is not None:
        backends.append({"name": service_name(model, "canary"), "port": REST_PORT, "weight": canary_weight})
    rule: Obj = {"matches": [{"path": {"type": "PathPrefix", "value": f"/v1/models/{model}"}}], "backendRefs": backends}
    if mirror_percent > 0:
        rule["filters"] = [{"type": "RequestMirror", "requestMirror": {
            "backendRef": {"name": shadow_name(model), "port": REST_PORT}, "percent": mirror_percent}}]
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": model, "namespace": namespace, "labels": {"app": APP, "model": model}},
        "spec": {
            "parentRefs": [{"name": gateway}],
            "rules": [rule],
        },
    }


MAX_CANARY_REPLICAS = 100


def canary_replicas(percent: int, stable_replicas: int) -> tuple[int, int]:
    """Canary replicas whose ratio beside `stable_replicas` comes nearest `percent` of a Service's
    traffic (at least one: a canary with no pods takes nothing to judge), and the share they give."""
    if percent <= 0:
        return 0, 0
    stable = max(1, stable_replicas)
    wanted = percent * stable / (100 - percent) if percent < 100 else MAX_CANARY_REPLICAS
    candidates = {min(MAX_CANARY_REPLICAS, max(1, n)) for n in (math.floor(wanted), math.ceil(wanted))}
    replicas = min(candidates, key=lambda n: (abs(100 * n / (stable + n) - percent), n))
    return replicas, round(100 * replicas / (stable + replicas))

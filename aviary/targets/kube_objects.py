"""The Kubernetes objects of one model's serving tracks, as plain dicts ready for server-side apply.

Pure functions: names, labels, manifests. k8s/base holds the same stable Deployment for
`kubectl apply -k`; tests/k8s checks the two agree, so one pod spec serves both.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from aviary.model_config import render_model_config

Track = Literal["stable", "canary"]
Obj = dict[str, Any]

APP = "aviary-serving"
MANAGER = "aviary"
VERSION_KEY = "aviary.dev/version"
HASH_KEY = "aviary.dev/config-hash"
CONFIG_FILE = "models.config"
CONFIG_DIR = "/etc/aviary"
GRPC_PORT = 8500
REST_PORT = 8501
DEFAULT_RESOURCES: Mapping[str, Mapping[str, str]] = {
    "requests": {"cpu": "250m", "memory": "256Mi"},
    "limits": {"cpu": "1", "memory": "1Gi"},
}
RUN_AS = 1000


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


def config_map(namespace: str, model: str, track: Track, text: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": config_name(model, track), "namespace": namespace, "labels": selector(model, track)},
        "data": {CONFIG_FILE: text},
    }


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


def serving_container(model: str, image: str, store_mount: str, resources: Mapping[str, Any]) -> Obj:
    return {
        "name": "serving",
        "image": image,
        "command": ["/usr/bin/tensorflow_model_server"],
        "args": [
            f"--port={GRPC_PORT}",
            f"--rest_api_port={REST_PORT}",
            f"--model_config_file={CONFIG_DIR}/{CONFIG_FILE}",
            "--enable_model_warmup=true",
        ],
        "ports": [
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "rest", "containerPort": REST_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": {
            "httpGet": {"path": f"/v1/models/{model}", "port": "rest"},
            "initialDelaySeconds": 2,
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "tcpSocket": {"port": "grpc"},
            "initialDelaySeconds": 10,
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
    resources: Mapping[str, Any] = DEFAULT_RESOURCES,
) -> Obj:
    """One track serving one pinned version. The config hash in the pod template rolls the pods
    whenever the ConfigMap changes (TF Serving reads its config file only at start)."""
    labels = selector(model, track)
    annotations = {VERSION_KEY: str(version), HASH_KEY: config_hash}
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
            "progressDeadlineSeconds": 300,
            "selector": {"matchLabels": labels},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels, "annotations": annotations},
                "spec": {
                    "serviceAccountName": "default",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": pod_security(),
                    "containers": [serving_container(model, image, store_mount, resources)],
                    "volumes": [
                        {"name": "config", "configMap": {"name": config_name(model, track)}},
                        {"name": "store", "persistentVolumeClaim": {"claimName": store_claim, "readOnly": True}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
                    ],
                },
            },
        },
    }


def service(namespace: str, model: str, track: Track | None) -> Obj:
    labels = {"app": APP, "model": model}
    if track is not None:
        labels["track"] = track
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service_name(model, track), "namespace": namespace, "labels": dict(labels)},
        "spec": {
            "selector": dict(labels),
            "ports": [
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
                {"name": "rest", "port": REST_PORT, "targetPort": "rest", "protocol": "TCP"},
            ],
        },
    }


def http_route(namespace: str, model: str, gateway: str, canary_weight: int | None) -> Obj:
    """Gateway API route over the per-track Services; `canary_weight` None sends everything to stable."""
    backends: list[Obj] = [
        {"name": service_name(model, "stable"), "port": REST_PORT, "weight": 100 - (canary_weight or 0)}
    ]
    if canary_weight is not None:
        backends.append({"name": service_name(model, "canary"), "port": REST_PORT, "weight": canary_weight})
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": model, "namespace": namespace, "labels": {"app": APP, "model": model}},
        "spec": {
            "parentRefs": [{"name": gateway}],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": f"/v1/models/{model}"}}],
                    "backendRefs": backends,
                }
            ],
        },
    }


# Copying a version onto the store volume from outside the cluster (see docs/kubernetes.md).

COPY_APP = "aviary-copy"
CHUNK_KEY = "part"
CHUNK_DIR = "/aviary/chunks"
COPY_SCRIPT = """\
set -eu
dst="$STORE/$MODEL/$VERSION"
if [ -d "$dst" ]; then echo "$dst already exists: nothing to copy"; exit 0; fi
mkdir -p "$STORE/$MODEL"
tmp="$STORE/$MODEL/.tmp-$VERSION-$HOSTNAME"
rm -rf "$tmp"
mkdir "$tmp"
cat "$CHUNKS"/part-* > /tmp/version.tar.gz
echo "$SHA256  /tmp/version.tar.gz" | sha256sum -c -
tar -xzf /tmp/version.tar.gz -C "$tmp"
mv "$tmp" "$dst"
echo "copied $dst"
"""


def copy_name(model: str, version: int, digest: str) -> str:
    """Content-addressed, so a re-run with the same files finds its finished Job (a Job's pod
    template is immutable) and different files never reuse one."""
    return f"{model}-copy-v{version}-{digest[:10]}"


def copy_labels(model: str, version: int) -> dict[str, str]:
    return {"app": COPY_APP, "model": model, VERSION_KEY: str(version)}


def chunk_config_maps(namespace: str, model: str, version: int, digest: str, chunks: Sequence[str]) -> list[Obj]:
    """The version's tar.gz, base64 in `binaryData`, split under the ConfigMap size limit."""
    name = copy_name(model, version, digest)
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"{name}-{i}", "namespace": namespace, "labels": copy_labels(model, version)},
            "binaryData": {CHUNK_KEY: chunk},
        }
        for i, chunk in enumerate(chunks)
    ]


def copy_job(
    *,
    namespace: str,
    model: str,
    version: int,
    digest: str,
    chunk_count: int,
    image: str,
    store_claim: str,
    store_mount: str,
    deadline_s: int,
    tmp_size: str,
) -> Obj:
    """One pod that unpacks the chunks into a temporary directory on the volume, checks the
    digest, and renames it to `<store>/<model>/<version>`: TF Serving never sees half a version."""
    name = copy_name(model, version, digest)
    labels = copy_labels(model, version)
    sources = [
        {"configMap": {"name": f"{name}-{i}", "items": [{"key": CHUNK_KEY, "path": f"part-{i:05d}"}]}}
        for i in range(chunk_count)
    ]
    env = {"STORE": store_mount, "MODEL": model, "VERSION": str(version), "SHA256": digest, "CHUNKS": CHUNK_DIR}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "backoffLimit": 1,
            "activeDeadlineSeconds": deadline_s,
            "ttlSecondsAfterFinished": 3600,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": pod_security(),
                    "containers": [
                        {
                            "name": "copy",
                            "image": image,
                            "command": ["/bin/sh", "-c", COPY_SCRIPT],
                            "env": [{"name": k, "value": v} for k, v in env.items()],
                            "resources": {
                                "requests": {"cpu": "50m", "memory": "32Mi"},
                                "limits": {"cpu": "500m", "memory": "128Mi"},
                            },
                            "securityContext": container_security(),
                            "volumeMounts": [
                                {"name": "store", "mountPath": store_mount},
                                {"name": "chunks", "mountPath": CHUNK_DIR, "readOnly": True},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "store", "persistentVolumeClaim": {"claimName": store_claim}},
                        {"name": "chunks", "projected": {"sources": sources}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": tmp_size}},
                    ],
                },
            },
        },
    }

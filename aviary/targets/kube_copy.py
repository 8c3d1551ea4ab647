"""Copying an exported version onto the store volume from outside the cluster (see docs/kubernetes.md).

The version's tar.gz goes into ConfigMap chunks; a Job (`copy_image`) unpacks them into a temporary
directory on the volume, checks the digest and renames it to `<store>/<model>/<version>`, so TF
Serving never sees half a version. Everything but the version on the volume is deleted afterwards.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import logging
import math
import tarfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aviary.targets.base import NotReady, TargetError
from aviary.targets.kube_api import KubeApi
from aviary.targets.kube_objects import VERSION_KEY, Obj, container_security, pod_security
from aviary.targets.kube_status import pod_problems

log = logging.getLogger(__name__)

CHUNK_BYTES = 768 * 1024  # raw bytes per ConfigMap: base64 and metadata stay well under the 1 MiB limit


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


class VersionCopier:
    """Runs the copy Job in one namespace through the target's `KubeApi`."""

    def __init__(
        self,
        api: KubeApi,
        *,
        image: str,
        store_claim: str,
        store_mount: str,
        timeout_s: float,
        max_bytes: int = 32 * 1024 * 1024,
        poll_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api = api
        self.image = image
        self.store_claim = store_claim
        self.store_mount = store_mount
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.poll_interval_s = poll_interval_s
        self._clock = clock
        self._sleep = sleep

    def copy(self, model: str, version: int, path: Path, timeout_s: float | None = None) -> None:
        """Copy `path` to `<store>/<model>/<version>` on the claim; a re-run with the same files is a no-op."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        if not path.is_dir():
            raise TargetError(f"cannot upload {model} v{version}: {path} is not a directory")
        payload = tar_gz(path)
        if len(payload) > self.max_bytes:
            raise TargetError(
                f"cannot upload {model} v{version}: {len(payload)} bytes compressed is over the "
                f"{self.max_bytes}-byte limit for ConfigMap transfer; run the flow in the cluster "
                "or serve from an object store (store_uri)"
            )
        digest = hashlib.sha256(payload).hexdigest()
        chunks = [
            base64.b64encode(payload[i : i + CHUNK_BYTES]).decode()
            for i in range(0, len(payload), CHUNK_BYTES)
        ]
        namespace = self.api.namespace
        maps = chunk_config_maps(namespace, model, version, digest, chunks)
        job = copy_job(
            namespace=namespace, model=model, version=version, digest=digest, chunk_count=len(chunks),
            image=self.image, store_claim=self.store_claim, store_mount=self.store_mount,
            deadline_s=max(1, math.ceil(timeout_s)), tmp_size=f"{max(16, 2 * len(payload) // 2**20 + 16)}Mi",
        )
        name = job["metadata"]["name"]
        previous = self.api.get("Job", name)
        if previous is not None and job_condition(previous, "Failed") is not None:
            self.api.delete("Job", name)  # a failed copy of the same files: start it afresh
        try:
            for config_map in maps:
                self.api.apply(config_map)
            self.api.apply(job)
            self._wait(name, timeout_s)
        finally:
            for config_map in maps:
                self.api.delete("ConfigMap", config_map["metadata"]["name"])
        self.api.delete("Job", name)
        log.info("uploaded %s v%d to volume %s (%d bytes)", model, version, self.store_claim, len(payload))

    def _wait(self, name: str, timeout_s: float) -> None:
        """Until the Job completes; a failure or the deadline names what its pods last said
        (ImagePullBackOff, unschedulable...), as a slow copy and a stuck pod look alike from outside."""
        deadline = self._clock() + timeout_s
        seen: list[str] = []
        logs = f"kubectl -n {self.api.namespace} describe job/{name}"
        while True:
            job = self.api.get("Job", name)
            if job is None:
                raise TargetError(f"copy job {name} disappeared from namespace {self.api.namespace!r}")
            status = job.get("status") or {}
            if job_condition(job, "Complete") is not None or int(status.get("succeeded") or 0) > 0:
                return
            problems = self._pod_problems(name)
            seen = problems or seen
            why = f"; {'; '.join(seen)}" if seen else ""
            failed = job_condition(job, "Failed")
            if failed is not None:
                reason = failed.get("message") or failed.get("reason") or "failed"
                raise TargetError(f"copy job {name} failed: {reason}{why}; see {logs}")
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise NotReady(f"copy job {name} did not finish within {timeout_s:g}s{why or '; its pod reports no problem'}"
                               f" (rollout.kubernetes.copy_timeout_s); see {logs}")
            self._sleep(min(self.poll_interval_s, remaining))

    def _pod_problems(self, name: str) -> list[str]:
        try:
            return pod_problems(self.api.list("Pod", {"job-name": name}))
        except TargetError as e:  # the Job's own state matters more than the diagnosis
            return [f"(pods unreadable: {e})"]


def job_condition(job: Obj, kind: str) -> dict[str, Any] | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return dict(condition)
    return None


def tar_gz(path: Path) -> bytes:
    """A reproducible archive of a directory (sorted, no owners or times), so equal files give an
    equal digest and a re-run applies identical objects."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for file in sorted(p for p in path.rglob("*")):
            info = tar.gettarinfo(str(file), arcname=str(file.relative_to(path)))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            info.mode = 0o755 if file.is_dir() else 0o644
            if file.is_file():
                with file.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
    return gzip.compress(raw.getvalue(), mtime=0)

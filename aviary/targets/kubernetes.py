"""The `kubernetes` target: TF Serving Deployments per track, applied with server-side apply.

A canary is its own Deployment (`<model>-canary`) beside the stable one (`<model>-stable`), each
serving one pinned version through its own ConfigMap. Both sit behind the `<model>` Service, so
the canary's share of live traffic is its replica ratio, or a Gateway API HTTPRoute weight when
`canary_weight` is set. Every wait polls with a deadline. See docs/kubernetes.md.
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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kubernetes.client import ApiClient, Configuration

from aviary.config import KubernetesConfig
from aviary.targets import kube_objects as objects
from aviary.targets.base import Endpoint, NotReady, Serving, TargetError, Track
from aviary.targets.kube_api import KubeApi
from aviary.targets.kube_status import pod_problems, rollout_state

log = logging.getLogger(__name__)

CHUNK_BYTES = 768 * 1024  # raw bytes per ConfigMap: base64 and metadata stay well under the 1 MiB limit


class KubernetesTarget:
    """Rolls a model version out on a cluster through the `ApiClient` the flow built."""

    name = "kubernetes"

    def __init__(
        self,
        api_client: ApiClient,
        cfg: KubernetesConfig,
        *,
        model: str | None = None,
        promote_timeout_s: float = 300.0,
        resources: Mapping[str, Any] | None = None,
        max_upload_bytes: int = 32 * 1024 * 1024,
        poll_interval_s: float = 1.0,
        attempts: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        request_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """`cfg.store_uri` (e.g. `gs://bucket/models`) makes TF Serving read versions from an object store
        instead of the `store_claim` volume; `cfg.gateway` is the HTTPRoute's parent Gateway, used only
        when `cfg.canary_weight` is set. The rest tunes waits and retries (tests shorten them)."""
        self.api_client = api_client
        self.cfg = cfg
        self.model = model
        self.store_uri = cfg.store_uri.rstrip("/") if cfg.store_uri else None
        self.gateway = cfg.gateway
        self.promote_timeout_s = promote_timeout_s
        self.resources = resources or objects.DEFAULT_RESOURCES
        self.max_upload_bytes = max_upload_bytes
        self.poll_interval_s = poll_interval_s
        self._clock = clock
        self._sleep = sleep
        self.api = KubeApi(
            api_client, cfg.namespace, field_manager=objects.MANAGER, attempts=attempts, backoff_s=backoff_s,
            max_backoff_s=max_backoff_s, request_timeout_s=request_timeout_s, sleep=sleep,
        )

    @classmethod
    def from_config(cls, cfg: KubernetesConfig, model: str, **kwargs: Any) -> KubernetesTarget:
        """Credentials from the pod's service account when `in_cluster`, else the kubeconfig file
        (`kubeconfig`, or $KUBECONFIG / ~/.kube/config) and `context` (or the current one)."""
        from kubernetes import config as kube_config

        configuration = Configuration()
        try:
            if cfg.in_cluster:
                kube_config.load_incluster_config(client_configuration=configuration)
            else:
                kube_config.load_kube_config(
                    config_file=str(cfg.kubeconfig) if cfg.kubeconfig else None,
                    context=cfg.context,
                    client_configuration=configuration,
                    persist_config=False,
                )
        except (kube_config.ConfigException, OSError) as e:
            where = "in-cluster service account" if cfg.in_cluster else f"kubeconfig {cfg.kubeconfig or '(default)'}"
            raise TargetError(f"cannot load Kubernetes credentials from {where}: {e}") from e
        return cls(ApiClient(configuration), cfg, model=model, **kwargs)

    # The Target protocol.

    def deploy_canary(self, model: str, version: int, stable: int | None) -> None:
        self._check_model(model)
        for track in (None, "stable", "canary"):
            self.api.apply(objects.service(self.cfg.namespace, model, track))
        self._apply_track(model, "canary", version, self.cfg.canary_replicas)
        if self.cfg.canary_weight is not None:
            self._apply_route(model, self.cfg.canary_weight)
        log.info("canary %s v%d applied beside stable v%s", objects.deployment_name(model, "canary"), version, stable)

    def wait_ready(self, model: str, version: int, timeout_s: float) -> None:
        self._check_model(model)
        self._wait_rolled_out(model, "canary", version, timeout_s)

    def endpoint(self, model: str, track: Track) -> Endpoint:
        """In the cluster: the track's Service by DNS. Outside: the API server's service proxy, with
        the client's own credentials (bearer token or client certificate) and CA."""
        self._check_model(model)
        svc = objects.service_name(model, track)
        suffix = f"/v1/models/{model}"
        if self.cfg.in_cluster:
            return Endpoint(url=f"http://{svc}.{self.cfg.namespace}.svc:{objects.REST_PORT}{suffix}")
        conf: Configuration = self.api_client.configuration
        auth: dict[str, dict[str, Any]] = dict(conf.auth_settings())  # type: ignore[arg-type]
        headers = {str(a["key"]): str(a["value"]) for a in auth.values() if a.get("in") == "header"}
        verify: bool | str = conf.ssl_ca_cert if conf.verify_ssl and conf.ssl_ca_cert else bool(conf.verify_ssl)
        cert = (conf.cert_file, conf.key_file) if conf.cert_file and conf.key_file else None
        url = f"{conf.host.rstrip('/')}/api/v1/namespaces/{self.cfg.namespace}/services/{svc}:rest/proxy{suffix}"
        return Endpoint(url=url, headers=headers, verify=verify, cert=cert)

    def promote(self, model: str, version: int) -> None:
        """Roll the stable Deployment to `version` (surge first, so it serves throughout), then retire
        the canary. A stable rollout that fails raises NotReady with the canary still in place."""
        self._check_model(model)
        self._apply_track(model, "stable", version, self.cfg.replicas)
        self._wait_rolled_out(model, "stable", version, self.promote_timeout_s)
        self._remove_canary(model)
        log.info("promoted %s v%d", model, version)

    def roll_back(self, model: str, stable: int | None) -> None:
        """Remove the canary (route weight, Deployment, ConfigMap). The stable track is left as it is,
        unless a failed promotion already moved it off `stable`: then it is rolled back to `stable`."""
        self._check_model(model)
        self._remove_canary(model)
        current = self._version(model, "stable")
        if stable is not None and current is not None and current != stable:
            log.warning("stable serves v%d after a failed promotion: rolling it back to v%d", current, stable)
            self._apply_track(model, "stable", stable, self.cfg.replicas)

    def serving(self, model: str) -> Serving:
        self._check_model(model)
        return Serving(stable=self._version(model, "stable"), canary=self._version(model, "canary"))

    # Progressive delivery: not yet here. The canary's share is its replica ratio (or `canary_weight`)
    # from the start, and the rollout judges it by the golden-set check alone.
    traffic_split = False

    def set_traffic(self, model: str, canary_percent: int, mirror_percent: int) -> None:
        raise TargetError("kubernetes: traffic steps are not yet supported; the canary's share is its replica "
                          "ratio or rollout.kubernetes.canary_weight")

    def scrape(self, model: str) -> list[str]:
        raise TargetError("kubernetes: reading the pods' metrics is not yet supported")

    # Getting a version's files onto the store volume from outside the cluster.

    def publish(self, model: str, version: int, path: Path) -> None:
        """In the cluster the export already wrote to the mounted volume; with `store_uri` TF Serving
        reads the object store; otherwise the version is copied onto the volume by a Job."""
        if self.needs_upload:
            self.upload_version(model, version, path)

    @property
    def needs_upload(self) -> bool:
        """Whether the flow must call `upload_version` after export: the flow runs outside the cluster
        and the pods read the store volume (not an object store the flow wrote to)."""
        return not self.cfg.in_cluster and self.store_uri is None

    def upload_version(self, model: str, version: int, path: Path, timeout_s: float = 300.0) -> None:
        """Copy an exported version directory onto the `store_claim` volume: its tar.gz goes into
        ConfigMap chunks, and a Job (`copy_image`) unpacks them into a temporary directory on the
        volume, checks the digest and renames it to `<store>/<model>/<version>`. Everything but
        the version on the volume is deleted afterwards; a re-run with the same files is a no-op."""
        self._check_model(model)
        if not path.is_dir():
            raise TargetError(f"cannot upload {model} v{version}: {path} is not a directory")
        payload = _tar_gz(path)
        if len(payload) > self.max_upload_bytes:
            raise TargetError(
                f"cannot upload {model} v{version}: {len(payload)} bytes compressed is over the "
                f"{self.max_upload_bytes}-byte limit for ConfigMap transfer; run the flow in the cluster "
                "or serve from an object store (store_uri)"
            )
        digest = hashlib.sha256(payload).hexdigest()
        chunks = [
            base64.b64encode(payload[i : i + CHUNK_BYTES]).decode()
            for i in range(0, len(payload), CHUNK_BYTES)
        ]
        maps = objects.chunk_config_maps(self.cfg.namespace, model, version, digest, chunks)
        job = objects.copy_job(
            namespace=self.cfg.namespace, model=model, version=version, digest=digest, chunk_count=len(chunks),
            image=self.cfg.copy_image, store_claim=self.cfg.store_claim, store_mount=self.cfg.store_mount,
            deadline_s=max(1, math.ceil(timeout_s)), tmp_size=f"{max(16, 2 * len(payload) // 2**20 + 16)}Mi",
        )
        name = job["metadata"]["name"]
        previous = self.api.get("Job", name)
        if previous is not None and _job_failed(previous):
            self.api.delete("Job", name)  # a failed copy of the same files: start it afresh
        try:
            for config_map in maps:
                self.api.apply(config_map)
            self.api.apply(job)
            self._wait_job(name, timeout_s)
        finally:
            for config_map in maps:
                self.api.delete("ConfigMap", config_map["metadata"]["name"])
        self.api.delete("Job", name)
        log.info("uploaded %s v%d to volume %s (%d bytes)", model, version, self.cfg.store_claim, len(payload))

    # Internals.

    def _check_model(self, model: str) -> None:
        if self.model is not None and model != self.model:
            raise TargetError(f"this Kubernetes target was built for model {self.model!r}, not {model!r}")

    def _base_path(self, model: str) -> str:
        return f"{self.store_uri or self.cfg.store_mount.rstrip('/')}/{model}"

    def _apply_track(self, model: str, track: Track, version: int, replicas: int) -> None:
        text = objects.model_config_text(model, self._base_path(model), version, track)
        config_map = objects.config_map(self.cfg.namespace, model, track, text)
        self.api.apply(config_map)
        self.api.apply(
            objects.deployment(
                namespace=self.cfg.namespace, model=model, track=track, version=version,
                config_hash=objects.content_hash(config_map["data"]), image=self.cfg.image, replicas=replicas,
                store_claim=self.cfg.store_claim, store_mount=self.cfg.store_mount, resources=self.resources,
            )
        )

    def _apply_route(self, model: str, canary_weight: int | None) -> None:
        self.api.apply(objects.http_route(self.cfg.namespace, model, self.gateway, canary_weight))

    def _remove_canary(self, model: str) -> None:
        if self.cfg.canary_weight is not None:
            self._apply_route(model, None)  # traffic off the canary before its pods go
        self.api.delete("Deployment", objects.deployment_name(model, "canary"))
        self.api.delete("ConfigMap", objects.config_name(model, "canary"))

    def _version(self, model: str, track: Track) -> int | None:
        deployment = self.api.get("Deployment", objects.deployment_name(model, track))
        value = ((deployment or {}).get("metadata", {}).get("annotations") or {}).get(objects.VERSION_KEY)
        return int(value) if value is not None and str(value).isdigit() else None

    def _wait_rolled_out(self, model: str, track: Track, version: int, timeout_s: float) -> None:
        name = objects.deployment_name(model, track)
        deadline = self._clock() + timeout_s
        while True:
            deployment = self.api.get("Deployment", name)
            if deployment is None:
                raise NotReady(f"{track} deployment {name} not found in namespace {self.cfg.namespace!r}")
            served = (deployment["metadata"].get("annotations") or {}).get(objects.VERSION_KEY)
            if served != str(version):
                raise NotReady(f"{track} deployment {name} serves version {served}, not {version}")
            state = rollout_state(deployment)
            if state.done:
                return
            if state.failed:
                raise NotReady(self._not_ready(model, track, version, state.message))
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise NotReady(self._not_ready(model, track, version, f"not ready after {timeout_s:g}s: {state.message}"))
            self._sleep(min(self.poll_interval_s, remaining))

    def _not_ready(self, model: str, track: Track, version: int, message: str) -> str:
        try:
            problems = pod_problems(self.api.list("Pod", objects.selector(model, track)))
        except TargetError as e:  # the reason for the failure matters more than the diagnosis
            problems = [f"(pods unreadable: {e})"]
        detail = "; ".join(problems)
        return f"{track} {model} v{version}: {message}" + (f"; {detail}" if detail else "")

    def _wait_job(self, name: str, timeout_s: float) -> None:
        deadline = self._clock() + timeout_s
        while True:
            job = self.api.get("Job", name)
            if job is None:
                raise TargetError(f"copy job {name} disappeared from namespace {self.cfg.namespace!r}")
            status = job.get("status") or {}
            if _job_condition(job, "Complete") is not None or int(status.get("succeeded") or 0) > 0:
                return
            failed = _job_failed(job)
            if failed is not None:
                reason = failed.get("message") or failed.get("reason") or "failed"
                raise TargetError(
                    f"copy job {name} failed: {reason}; see kubectl -n {self.cfg.namespace} logs job/{name}"
                )
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise NotReady(f"copy job {name} did not finish within {timeout_s:g}s")
            self._sleep(min(self.poll_interval_s, remaining))


def _job_condition(job: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return dict(condition)
    return None


def _job_failed(job: dict[str, Any]) -> dict[str, Any] | None:
    return _job_condition(job, "Failed")


def _tar_gz(path: Path) -> bytes:
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

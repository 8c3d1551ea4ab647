"""The `kubernetes` target: TF Serving Deployments per track, applied with server-side apply.

A canary is its own Deployment (`<model>-canary`) beside the stable one (`<model>-stable`), each
serving one pinned version through its own ConfigMap. Both sit behind the `<model>` Service. With
a Gateway API HTTPRoute (`canary_weight` set) the route's weights give the canary its share;
without one the canary's pods carry a readiness gate that keeps them out of the live Service until
the first traffic step opens it, and from then on its share is its replica ratio. Traffic steps
scale the canary (opening the gate) or set the weight, and each step is judged on every serving
pod's metrics. The overlays own the stable Deployment's shape; the flow owns only
its pin. Every wait polls with a deadline. See docs/kubernetes.md.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kubernetes.client import ApiClient, Configuration

from aviary.config import KubernetesConfig
from aviary.targets import kube_objects as objects
from aviary.targets.base import Endpoint, NotReady, Serving, TargetError, Track
from aviary.targets.kube_api import KubeApi
from aviary.targets.kube_copy import VersionCopier
from aviary.targets.kube_metrics import relabel, shadow_series
from aviary.targets.kube_status import RolloutState, gated_rollout_state, has_condition, pod_problems, rollout_state

log = logging.getLogger(__name__)

GATEWAY_API = ("gateway.networking.k8s.io", "v1", "httproutes")


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
        when `cfg.canary_weight` is set. `promote_timeout_s` (the rollout's ready timeout) is also every
        Deployment's progress deadline. The rest tunes waits and retries (tests shorten them)."""
        self.api_client = api_client
        self.cfg = cfg
        self.model = model
        self.store_uri = cfg.store_uri.rstrip("/") if cfg.store_uri else None
        self.gateway = cfg.gateway
        self.promote_timeout_s = promote_timeout_s
        self.poll_interval_s = poll_interval_s
        self._clock = clock
        self._sleep = sleep
        self._gateway_checked = False
        self._traffic: tuple[int, int] | None = None  # the last set_traffic: (canary %, mirror %)
        self.api = KubeApi(
            api_client, cfg.namespace, field_manager=objects.MANAGER, attempts=attempts, backoff_s=backoff_s,
            max_backoff_s=max_backoff_s, request_timeout_s=request_timeout_s, sleep=sleep,
        )
        self.copier = VersionCopier(
            self.api, image=cfg.copy_image, store_claim=cfg.store_claim, store_mount=cfg.store_mount,
            timeout_s=cfg.copy_timeout_s, max_bytes=max_upload_bytes, poll_interval_s=poll_interval_s,
            clock=clock, sleep=sleep,
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
        self._check_gateway_api()
        for track in (None, "stable", "canary"):
            publish = self._gated if track == "canary" else None
            self.api.apply(objects.service(self.cfg.namespace, model, track, publish))
        self._apply_canary(model, version, self.cfg.canary_replicas)
        if self.cfg.canary_weight is not None:
            self._remove_shadow(model)  # a crashed run's comparator compared another pair
            if self._traffic is None:
                self._apply_route(model, self.cfg.canary_weight)
            else:  # traffic steps: the share set_traffic gave (0 while the canary is checked)
                canary_percent, mirror_percent = self._traffic
                self._apply_route(model, canary_percent or None, mirror_percent)
        log.info("canary %s v%d applied beside stable v%s", objects.deployment_name(model, "canary"), version, stable)

    def wait_ready(self, model: str, version: int, timeout_s: float) -> None:
        """Until every canary pod answers; a gated canary's pods stay out of the live Service."""
        self._check_model(model)
        self._wait_rolled_out(model, "canary", version, timeout_s)

    def endpoint(self, model: str, track: Track) -> Endpoint:
        """In the cluster: the track's Service by DNS. Outside: the API server's service proxy, with
        the client's own credentials (bearer token or client certificate) and CA."""
        self._check_model(model)
        return self._endpoint(model, track)

    def _endpoint(self, model: str, track: Track | None, svc: str | None = None) -> Endpoint:
        svc = svc or objects.service_name(model, track)
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
        """Pin the stable Deployment to `version` (surge first, so it serves throughout), then retire
        the canary. A stable rollout that fails raises NotReady with the canary still in place."""
        self._check_model(model)
        self._pin_stable(model, version)
        self._wait_rolled_out(model, "stable", version, self.promote_timeout_s)
        self._remove_canary(model)
        log.info("promoted %s v%d", model, version)

    def roll_back(self, model: str, stable: int | None) -> None:
        """Remove the canary (route weight, Deployment, ConfigMap, pods). The stable track is left as it
        is when it verifiably serves `stable`; otherwise (a failed promotion, an overlay re-applied over
        the pin, a ConfigMap edited by hand) it is pinned to `stable` again."""
        self._check_model(model)
        self._remove_canary(model)
        if stable is not None and self._live_pin(model, "stable") != stable:
            log.warning("stable %s does not verifiably serve v%d: pinning it again", model, stable)
            self._pin_stable(model, stable)

    def serving(self, model: str) -> Serving:
        """What the API server says each track serves: a version counts only when the Deployment's
        annotation, its pod template's config hash and the ConfigMap's pinned version all agree."""
        self._check_model(model)
        return Serving(stable=self._live_pin(model, "stable"), canary=self._present(model, "canary"))

    # Progressive delivery: the canary's share of live traffic in steps, judged on the pods' metrics.

    traffic_split = True

    @property
    def shadow_unavailable(self) -> str:
        """Why no step compares the canary's predictions with stable's here ('' where one does). With
        the Gateway API the route mirrors to the shadow comparator, which compares; a Service cannot
        mirror at all."""
        if self.cfg.canary_weight is not None:
            return ""
        return "kubernetes: a Service cannot mirror requests (no Gateway API route: canary_weight unset)"

    def set_traffic(self, model: str, canary_percent: int, mirror_percent: int) -> int:
        """With the Gateway API (`canary_weight` set), the HTTPRoute's weights become (100 - p, p) and
        `mirror_percent` a RequestMirror filter. Without it, the shared Service splits by replica
        ratio: the canary is scaled to the count whose ratio beside stable's live replicas comes
        nearest `canary_percent` (at least one), each of its pods loaded, then let into the live
        Service (its readiness gate opened), and nothing is mirrored; 0 scales it to nothing.
        Returns the share the canary now takes, once its pods are Ready."""
        self._check_model(model)
        self._traffic = (canary_percent, mirror_percent)
        if self.cfg.canary_weight is not None:
            self._check_gateway_api()
            shifted = canary_percent > 0 or mirror_percent > 0
            if mirror_percent > 0:  # the comparator answers before the route mirrors anything to it
                self._apply_shadow(model)
            self._apply_route(model, canary_percent if shifted else None, mirror_percent)
            return canary_percent
        version = self._present(model, "canary")
        if not version:
            if canary_percent > 0:
                raise TargetError(f"no canary deployment {objects.deployment_name(model, 'canary')} to give "
                                  f"{canary_percent}% of the traffic")
            return 0
        stable = self.api.get("Deployment", objects.deployment_name(model, "stable"))
        stable_replicas = int(((stable or {}).get("spec") or {}).get("replicas", 1))
        replicas, share = objects.canary_replicas(canary_percent, stable_replicas)
        self._apply_canary(model, version, replicas)
        if replicas:
            self._wait_rolled_out(model, "canary", version, self.promote_timeout_s)
            if self._open_gates(model):
                self._wait_rolled_out(model, "canary", version, self.promote_timeout_s, live=True)
        log.info("canary %s: %d replicas beside %d stable: %d%% of the traffic (%d%% asked)",
                 objects.deployment_name(model, "canary"), replicas, stable_replicas, share, canary_percent)
        return share

    def scrape(self, model: str) -> dict[str, str]:
        """Every ready serving pod's Prometheus page by pod name, through the API server's pod proxy,
        each series labelled with the version the pod serves (its `aviary.dev/version` annotation);
        and the shadow comparator's shadow series alone (its request counters would count the mirrored
        requests as stable's a second time)."""
        self._check_model(model)
        pages: dict[str, str] = {}
        selectors = [objects.selector(model, "stable"), objects.selector(model, "canary")]
        if self.cfg.canary_weight is not None:
            selectors.append(objects.shadow_selector(model))
        for selector in selectors:
            for pod in self.api.list("Pod", selector):
                meta = pod.get("metadata") or {}
                version = str((meta.get("annotations") or {}).get(objects.VERSION_KEY, ""))
                if not _serves(pod) or not version.isdigit():
                    continue
                try:
                    text = self.api.pod_get(meta["name"], objects.REST_PORT, objects.METRICS_PATH)
                except TargetError:
                    if meta["name"] in self._serving_pods(selector):
                        raise
                    log.info("pod %s left before its metrics were read; what it served is counted up to "
                             "its last scrape", meta["name"])
                    continue
                if selector.get("track") is None:
                    pages[meta["name"]] = shadow_series(text)
                else:
                    pages[meta["name"]] = relabel(text, {"version": version})
        return pages

    def _serving_pods(self, selector: Mapping[str, str]) -> set[str]:
        return {p["metadata"]["name"] for p in self.api.list("Pod", selector) if _serves(p)}

    def live_endpoint(self, model: str) -> Endpoint:
        """The Service clients call (both tracks), for the rollout's own load."""
        self._check_model(model)
        return self._endpoint(model, None)

    def mirror_endpoint(self, model: str) -> Endpoint | None:
        """Where the route mirrors (the shadow comparator's Service), for the rollout's own load, which
        reaches the Service directly and so passes no Gateway; None without the Gateway API."""
        self._check_model(model)
        if self.cfg.canary_weight is None:
            return None
        return self._endpoint(model, None, objects.shadow_name(model))

    # Getting a version's files onto the store volume from outside the cluster.

    def publish(self, model: str, version: int, path: Path) -> None:
        """In the cluster the export already wrote to the mounted volume; with `store_uri` TF Serving
        reads the object store; otherwise the version is copied onto the volume by a Job. The first
        call of a rollout that changes anything, so a setting the cluster cannot honour (a canary
        weight without the Gateway API) is refused here, before anything changed."""
        self._check_model(model)
        self._check_gateway_api()
        if self.needs_upload:
            self.upload_version(model, version, path)

    @property
    def needs_upload(self) -> bool:
        """Whether `publish` must copy the version onto the volume: the flow runs outside the cluster
        and the pods read the store volume (not an object store the flow wrote to)."""
        return not self.cfg.in_cluster and self.store_uri is None

    def upload_version(self, model: str, version: int, path: Path, timeout_s: float | None = None) -> None:
        """Copy an exported version directory onto the `store_claim` volume (see kube_copy)."""
        self._check_model(model)
        self.copier.copy(model, version, path, timeout_s)

    # Internals.

    def _check_model(self, model: str) -> None:
        if self.model is not None and model != self.model:
            raise TargetError(f"this Kubernetes target was built for model {self.model!r}, not {model!r}")

    def _base_path(self, model: str) -> str:
        return f"{self.store_uri or self.cfg.store_mount.rstrip('/')}/{model}"

    def _check_gateway_api(self) -> None:
        if self.cfg.canary_weight is None or self._gateway_checked:
            return
        group, version, plural = GATEWAY_API
        if not self.api.serves(group, version, plural):
            raise TargetError(
                f"canary_weight {self.cfg.canary_weight} needs the Gateway API ({plural}.{group}/{version}), "
                "which this cluster does not serve: install it, or leave canary_weight unset to split by replicas"
            )
        self._gateway_checked = True

    def _config_map(self, model: str, track: Track, version: int) -> dict[str, Any]:
        text = objects.model_config_text(model, self._base_path(model), version, track)
        return objects.config_map(self.cfg.namespace, model, track, text)

    def _resources(self, model: str) -> Mapping[str, Any]:
        """Explicit config first, else what the overlay gave the stable track, else small defaults."""
        if self.cfg.resources is not None:
            return self.cfg.resources.model_dump(exclude_none=True)
        stable = self.api.get("Deployment", objects.deployment_name(model, "stable"))
        for container in (((stable or {}).get("spec") or {}).get("template") or {}).get("spec", {}).get("containers", []):
            if container.get("name") == "serving" and container.get("resources"):
                return dict(container["resources"])
        return objects.DEFAULT_RESOURCES

    @property
    def _gated(self) -> bool:
        """Without a route to hold it back, the canary's pods wait for their readiness gate."""
        return self.cfg.canary_weight is None

    def _full_track(self, model: str, track: Track, version: int, config_hash: str, replicas: int) -> dict[str, Any]:
        return objects.deployment(
            namespace=self.cfg.namespace, model=model, track=track, version=version, config_hash=config_hash,
            image=self.cfg.image, replicas=replicas, store_claim=self.cfg.store_claim,
            store_mount=self.cfg.store_mount, ready_timeout_s=self.promote_timeout_s, resources=self._resources(model),
            gated=track == "canary" and self._gated,
        )

    def _apply_canary(self, model: str, version: int, replicas: int) -> None:
        """The whole canary track, always (server-side apply drops fields a manager leaves out)."""
        config_map = self.api.apply(self._config_map(model, "canary", version))
        config_hash = objects.content_hash(config_map.get("data") or {})
        self.api.apply(self._full_track(model, "canary", version, config_hash, replicas))

    def _open_gates(self, model: str) -> bool:
        """Let the canary's pods into the live Service: their `LIVE_GATE` condition True (on pods a
        scale-up added too); the kubelet then marks each Ready. False where the live Deployment
        carries no gate (its pods are Ready as soon as they load)."""
        if not objects.gated(self.api.get("Deployment", objects.deployment_name(model, "canary"))):
            return False
        self._let_in(self.api.list("Pod", objects.selector(model, "canary")))
        return True

    def _let_in(self, pods: list[dict[str, Any]]) -> None:
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        for pod in pods:
            meta = pod.get("metadata") or {}
            if not meta.get("deletionTimestamp") and not has_condition(pod, objects.LIVE_GATE):
                self.api.patch_status("Pod", meta["name"], objects.live_condition(now))  # None: gone since

    def keep_traffic(self, model: str) -> None:
        """Hold the share `set_traffic` gave while a step bakes: a canary pod that replaced one since
        (evicted, deleted, its node gone) is let into the live Service as its predecessor was; it
        turns Ready once loaded. The Gateway API's route needs nothing: its weights do not move."""
        self._check_model(model)
        if self._gated and self._traffic is not None and self._traffic[0] > 0:
            self._open_gates(model)

    def _pin_stable(self, model: str, version: int) -> None:
        """Write the stable ConfigMap, then pin the Deployment to it. Where no overlay made the stable
        Deployment, the flow creates it whole, under its own field manager, so its shape stays apart
        from the pin."""
        config_map = self.api.apply(self._config_map(model, "stable", version))
        config_hash = objects.content_hash(config_map.get("data") or {})
        if self.api.get("Deployment", objects.deployment_name(model, "stable")) is None:
            whole = self._full_track(model, "stable", version, config_hash, self.cfg.replicas)
            self.api.apply(whole, field_manager=objects.BOOTSTRAP_MANAGER)
        self.api.apply(objects.stable_pin(self.cfg.namespace, model, version, config_hash, self.promote_timeout_s))

    def _apply_route(self, model: str, canary_weight: int | None, mirror_percent: int = 0) -> None:
        self.api.apply(objects.http_route(self.cfg.namespace, model, self.gateway, canary_weight, mirror_percent))

    def _remove_canary(self, model: str) -> None:
        """Traffic off the canary, then the shadow comparator and the canary gone, pods included: a
        route that cannot be updated never keeps the canary's pods in the shared Service."""
        route_error: TargetError | None = None
        if self.api.get("HTTPRoute", model) is not None:  # None too where the Gateway API is absent
            try:
                self._apply_route(model, None)
            except TargetError as e:
                route_error = e
        self._traffic = None
        self._remove_shadow(model)  # first: a comparator is never left without its canary
        name = objects.deployment_name(model, "canary")
        self.api.delete("Deployment", name, propagation="Foreground")
        self.api.delete("ConfigMap", objects.config_name(model, "canary"))
        self._wait_gone(name, objects.selector(model, "canary"), "canary")
        if route_error is not None:
            raise route_error

    def _apply_shadow(self, model: str) -> None:
        """The shadow comparator for the live stable and canary pins, rolled out (re-applying the same
        pins changes nothing, so later steps keep its pod and counters)."""
        stable, canary = self._live_pin(model, "stable"), self._present(model, "canary")
        if not stable or not canary:
            raise TargetError(f"no shadow comparison for {model}: stable serves {stable or 'nothing verifiable'}, "
                              f"canary {canary or 'nothing'}")
        for obj in objects.shadow_objects(
            namespace=self.cfg.namespace, model=model, stable=stable, canary=canary, base_path=self._base_path(model),
            image=self.cfg.shadow_image, store_claim=self.cfg.store_claim, store_mount=self.cfg.store_mount,
            ready_timeout_s=self.promote_timeout_s, resources=self._resources(model),
        ):
            self.api.apply(obj)
        name = objects.shadow_name(model)

        def not_ready(message: str) -> str:
            problems = "; ".join(pod_problems(self.api.list("Pod", objects.shadow_selector(model))))
            return f"shadow comparator {name}: {message or 'not ready'}" + (f"; {problems}" if problems else "")

        self._wait_deployment(name, "shadow comparator", self.promote_timeout_s, not_ready)

    def _remove_shadow(self, model: str) -> None:
        """Service first, ConfigMap last: while either of the others is left, so is the Service's trace."""
        name = objects.shadow_name(model)
        if self.api.get("Deployment", name) is None and self.api.get("ConfigMap", f"{name}-config") is None:
            return  # nothing to delete (and no call a Role without the comparator's rights would refuse)
        self.api.delete("Service", name)
        self.api.delete("Deployment", name, propagation="Foreground")
        self.api.delete("ConfigMap", f"{name}-config")
        self._wait_gone(name, objects.shadow_selector(model), "shadow comparator")

    def _wait_gone(self, name: str, selector: Mapping[str, str], what: str) -> None:
        """Until the Deployment and its pods are gone (foreground deletion): a terminating pod leaves
        the Service's endpoints at once, a live one keeps taking traffic."""
        deadline = self._clock() + self.promote_timeout_s
        while True:
            live = [p for p in self.api.list("Pod", selector) if not p.get("metadata", {}).get("deletionTimestamp")]
            if self.api.get("Deployment", name) is None and not live:
                return
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise TargetError(f"{what} deployment {name} still has {len(live)} live pods "
                                  f"{self.promote_timeout_s:g}s after its deletion")
            self._sleep(min(self.poll_interval_s, remaining))

    def _present(self, model: str, track: Track) -> int | None:
        """The version a track's Deployment says it serves, whether or not the pin checks out."""
        deployment = self.api.get("Deployment", objects.deployment_name(model, track))
        value = ((deployment or {}).get("metadata", {}).get("annotations") or {}).get(objects.VERSION_KEY)
        if deployment is None:
            return None
        return int(value) if value is not None and str(value).isdigit() else 0  # 0: there, pinned to nothing

    def _live_pin(self, model: str, track: Track) -> int | None:
        deployment = self.api.get("Deployment", objects.deployment_name(model, track))
        if deployment is None:
            return None
        annotations = (deployment.get("metadata") or {}).get("annotations") or {}
        template = ((deployment.get("spec") or {}).get("template") or {}).get("metadata") or {}
        config_map = self.api.get("ConfigMap", objects.config_name(model, track))
        if config_map is None:
            return None
        data = config_map.get("data") or {}
        pinned = objects.pinned_versions(data.get(objects.CONFIG_FILE, ""))
        version = str(annotations.get(objects.VERSION_KEY, ""))
        hashed = (template.get("annotations") or {}).get(objects.HASH_KEY)
        if len(pinned) != 1 or str(pinned[0]) != version or hashed != objects.content_hash(data):
            return None
        return pinned[0]

    def _wait_rolled_out(self, model: str, track: Track, version: int, timeout_s: float, live: bool = False) -> None:
        """Until the track's Deployment has rolled out `version`. A gated one (as the live object
        says) is judged on its pods: loaded, or with `live`, Ready with the gate open."""
        def state(deployment: dict[str, Any]) -> RolloutState:
            served = (deployment["metadata"].get("annotations") or {}).get(objects.VERSION_KEY)
            if served != str(version):
                raise NotReady(f"{track} deployment {name} serves version {served}, not {version}")
            if not objects.gated(deployment):
                return rollout_state(deployment)
            pods = self.api.list("Pod", objects.selector(model, track))
            if live:  # a pod that replaced one let in since is let in too, or the wait would outlast it
                self._let_in(pods)
            return gated_rollout_state(deployment, pods, objects.LIVE_GATE, live)

        name = objects.deployment_name(model, track)
        self._wait_deployment(name, f"{track} deployment", timeout_s,
                              lambda message: self._not_ready(model, track, version, message), state)

    def _wait_deployment(self, name: str, what: str, timeout_s: float, not_ready: Callable[[str], str],
                         state_of: Callable[[dict[str, Any]], RolloutState] = rollout_state) -> None:
        """Until the Deployment has rolled out (`kubectl rollout status`, unless `state_of` judges it
        otherwise); `not_ready` words a failure or timeout."""
        deadline = self._clock() + timeout_s
        while True:
            deployment = self.api.get("Deployment", name)
            if deployment is None:
                raise NotReady(f"{what} {name} not found in namespace {self.cfg.namespace!r}")
            state = state_of(deployment)
            if state.done:
                return
            if state.failed:
                raise NotReady(not_ready(state.message))
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise NotReady(not_ready(f"not ready after {timeout_s:g}s: {state.message}"))
            self._sleep(min(self.poll_interval_s, remaining))

    def _not_ready(self, model: str, track: Track, version: int, message: str) -> str:
        try:
            problems = pod_problems(self.api.list("Pod", objects.selector(model, track)))
        except TargetError as e:  # the reason for the failure matters more than the diagnosis
            problems = [f"(pods unreadable: {e})"]
        detail = "; ".join(problems)
        return f"{track} {model} v{version}: {message}" + (f"; {detail}" if detail else "")


def _serves(pod: dict[str, Any]) -> bool:
    """Ready and not being deleted: a pod whose page a scrape reads."""
    return not (pod.get("metadata") or {}).get("deletionTimestamp") and has_condition(pod, "Ready")

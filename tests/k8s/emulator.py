"""A Kubernetes API server for the tests: kmock's `KubernetesEmulator` (aiohttp on 127.0.0.1, its
request parsing, request log and object store with history) with the API semantics the target
relies on, which kmock's dict-merging fallback does not have:

- server-side apply (PATCH application/apply-patch+yaml): creates when missing, converges to
  exactly the applied fields (single field manager), bumps `generation` only when `spec` changes
  and `resourceVersion` only when anything does; requires `fieldManager`;
- immutable Deployment selectors and Job pod templates (422), the `status` subresource (merge
  patch, no generation bump), label-selector lists, deletes, namespaces that must exist;
- injected faults (status codes, slow answers), RBAC refusals (403) and a bearer token (401);
- the service proxy of `<svc>:rest`: a canned TF Serving model status, or, once `start_cluster`
  gave it a real TF Serving REST server (the "backend"), every request forwarded to the version
  that the Service's ready pods serve (see `_proxy`).

With `start_cluster` the emulator also plays the controllers of a small cluster whose pods all
share one TF Serving backend and one store volume (a directory the backend serves):

- the Job controller runs the flow's copy Jobs: it reads the chunk ConfigMaps, checks the digest
  and renames the unpacked version into `<volume>/<model>/<version>`, as the Job's script does;
- the Deployment controller observes every new generation, reports it progressing (one surge
  pod, the old ones still available), and rolls it out once the version pinned by its model
  config ConfigMap is AVAILABLE on the backend; a held Deployment never becomes ready (or
  reports ProgressDeadlineExceeded). It remembers which version each Deployment's ready pods
  serve, which is what the service proxy routes to.

It runs its event loop in a thread so that the synchronous `kubernetes` client can talk to it.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import io
import itertools
import json
import re
import tarfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import aiohttp.web
import kmock
from kmock._internal import rendering

Obj = dict[str, Any]
Key = tuple[Any, Any, Any]


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    status: int
    times: int
    delay_s: float = 0.0
    retry_after: str | None = None


def _status(code: int, reason: str, message: str, details: Obj | None = None) -> aiohttp.web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "details": details or {}, "code": code}
    return aiohttp.web.json_response(body, status=code)


@dataclass(frozen=True)
class Served:
    """What a pod's TF Serving loads from its model config: one pinned version and its labels."""

    model: str
    version: int
    labels: Mapping[str, int] = field(default_factory=dict, compare=False)


@dataclass
class Pods:
    """The controller's view of one Deployment's pods."""

    uid: str
    generation: int = 0  # the generation being (or last) rolled out
    pinned: Served | None = None  # what the new pods load, read from the ConfigMap when they start
    served: Served | None = None  # what the ready pods serve: the proxy routes here
    files: Path | None = None  # the pinned version's directory on the emulated store volume
    available: int = 0
    ready: bool = False


@dataclass(frozen=True)
class Proxied:
    """One request through the service proxy, as the backend saw it (`upstream` None: not forwarded)."""

    service: str
    method: str
    path: str
    upstream: str | None
    status: int
    version: int | None


_MODEL_PATH = re.compile(
    r"^/v1/models/(?P<model>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<rest>/metadata|:[A-Za-z]+)?$"
)


class KubeApiEmulator(kmock.KubernetesEmulator):  # type: ignore[misc]
    """See the module docstring. Configure it from the test thread between calls."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.namespaces: set[str] = {"aviary"}
        self.faults: list[Fault] = []
        self.forbidden: set[tuple[str, str, str | None]] = set()
        self.token: str | None = None
        self.auto_ready = False  # play a controller that rolls every Deployment out at once
        self._versions = itertools.count(1000)
        self._uids = itertools.count(1)
        # The cluster behind it (start_cluster): a TF Serving backend, a store volume, controllers.
        self.backend: str | None = None
        self.volume: Path | None = None
        self.held: dict[str, bool] = {}  # Deployment name -> whether it reports ProgressDeadlineExceeded
        self.pods: dict[Key, Pods] = {}
        self.proxied: list[Proxied] = []
        self.controller_errors: list[str] = []
        self._http: aiohttp.ClientSession | None = None
        self._cluster: asyncio.Task[None] | None = None
        self._round_robin = itertools.count()

    # Test-facing configuration.

    def fail(self, method: str, path: str, status: int, times: int = 1, *, delay_s: float = 0.0,
             retry_after: str | None = None) -> None:
        """Answer the next `times` requests matching `method` and the `path` regex with `status`."""
        self.faults.append(Fault(method.upper(), re.compile(path), status, times, delay_s, retry_after))

    def forbid(self, verb: str, plural: str, name: str | None = None) -> None:
        self.forbidden.add((verb, plural, name))

    def hold(self, deployment: str, *, deadline_exceeded: bool = False) -> None:
        """Never let `deployment` become ready (its pods do not pass readiness) until `release`;
        with `deadline_exceeded` the controller reports ProgressDeadlineExceeded as well."""
        self.held[deployment] = deadline_exceeded

    def release(self, deployment: str) -> None:
        self.held.pop(deployment, None)

    # Request handling.

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        raw = request._raw_request
        assert raw is not None
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return _status(401, "Unauthorized", "Unauthorized")
        for fault in self.faults:
            if fault.times > 0 and fault.method == raw.method and fault.path.search(raw.path):
                fault.times -= 1
                if fault.delay_s:
                    await asyncio.sleep(fault.delay_s)
                response = _status(fault.status, "Injected", f"injected HTTP {fault.status}")
                if fault.retry_after is not None:
                    response.headers["Retry-After"] = fault.retry_after
                return response
        if request.resource is None or request.resource.plural is None:
            return await super()._handle(request)  # discovery, /version: kmock's own answers
        if request.subresource and request.subresource.startswith("proxy"):
            verb = {"GET": "get", "HEAD": "get", "POST": "create", "PUT": "update", "PATCH": "patch",
                    "DELETE": "delete"}.get(raw.method, "get")
            name = (request.name or "").split(":")[0]
            refused = self._refused(request, verb, request.resource.plural, name, "proxy")
            return refused if refused is not None else await self._proxy(request)
        verb = {"GET": "get" if request.name else "list", "PATCH": "patch", "POST": "create",
                "DELETE": "delete", "PUT": "update"}[raw.method]
        plural = request.resource.plural
        group = request.resource.group
        resource = plural if not group else f"{plural}.{group}"
        refused = self._refused(request, verb, plural, request.name)
        if refused is not None:
            return refused
        async with self._lock:
            return self._serve(request, verb, resource)

    def _refused(self, request: rendering.Request, verb: str, plural: str, name: str | None,
                 subresource: str | None = None) -> aiohttp.web.Response | None:
        """RBAC: 403 when `forbid(verb, plural[/subresource], name or None)` said so."""
        assert request.resource is not None
        group = request.resource.group
        resource = plural if not group else f"{plural}.{group}"
        rbac = plural if subresource is None else f"{plural}/{subresource}"
        for rule in ((verb, rbac, name), (verb, rbac, None)):
            if rule in self.forbidden:
                return _status(403, "Forbidden",
                               f'{resource} "{name}" is forbidden: User "system:serviceaccount:aviary:'
                               f'aviary-rollout" cannot {verb} resource "{rbac}" in API group "{group}" in the '
                               f'namespace "{request.namespace}"',
                               {"name": name, "group": group, "kind": plural})
        return None

    def _key(self, request: rendering.Request, name: str | None = None) -> Key:
        return (request.resource, request.namespace, name or request.name)

    def _live(self, key: Key) -> Obj | None:
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(dict(self.objects[key].last.raw))

    def _store(self, key: Key, obj: Obj) -> None:
        if key in self.objects:
            self.objects[key].create(obj)  # appends a version to the object's history
        else:
            self.objects[key] = obj

    def _serve(self, request: rendering.Request, verb: str, resource: str) -> aiohttp.web.Response:
        raw = request._raw_request
        assert raw is not None and request.resource is not None
        ns = request.namespace
        if ns is not None and ns not in self.namespaces and verb in {"patch", "create"}:
            return _status(404, "NotFound", f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"})
        not_found = _status(404, "NotFound", f'{resource} "{request.name}" not found',
                            {"name": request.name, "group": request.resource.group, "kind": request.resource.plural})
        if verb == "list":
            selector = dict(p.split("=", 1) for p in raw.query.get("labelSelector", "").split(",") if p)
            items = [
                dict(obj.last.raw) for (res, obj_ns, _), obj in self.objects.items()
                if res == request.resource and obj_ns == ns and not obj.deleted
                and all((obj.last.raw.get("metadata", {}).get("labels") or {}).get(k) == v for k, v in selector.items())
            ]
            return aiohttp.web.json_response({"kind": "List", "apiVersion": "v1", "metadata": {}, "items": items})
        key = self._key(request)
        current = self._live(key)
        if verb == "get":
            return aiohttp.web.json_response(current) if current else not_found
        if verb == "delete":
            if current is None:
                return not_found
            self.objects[key].delete()
            return aiohttp.web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Success",
                                              "details": {"name": request.name, "kind": request.resource.plural}})
        if verb == "patch" and request.subresource == "status":
            if current is None:
                return not_found
            updated = copy.deepcopy(current)
            updated["status"] = _merge(current.get("status") or {}, request.data.get("status") or {})
            return self._commit(key, current, updated)
        if verb == "patch" and raw.content_type == "application/apply-patch+yaml":
            if not raw.query.get("fieldManager"):
                return _status(400, "BadRequest", "PATCH: fieldManager is required for apply requests")
            applied = request.data
            if applied.get("metadata", {}).get("name") != request.name:
                return _status(400, "BadRequest", "the name of the object does not match the name on the URL")
            if current is None:
                return self._create(key, applied, raw.query["fieldManager"])
            return self._apply(key, current, applied)
        return _status(415, "UnsupportedMediaType", f"emulator: {raw.method} {raw.content_type} is not emulated")

    def _create(self, key: Key, applied: Obj, manager: str) -> aiohttp.web.Response:
        obj = copy.deepcopy(applied)
        meta = obj.setdefault("metadata", {})
        meta.update({
            "namespace": key[1], "uid": f"uid-{next(self._uids)}", "resourceVersion": str(next(self._versions)),
            "creationTimestamp": "2026-01-01T00:00:01Z",
            "managedFields": [{"manager": manager, "operation": "Apply", "apiVersion": applied.get("apiVersion")}],
        })
        if "spec" in obj:
            meta["generation"] = 1
        self._controller(obj)
        self._store(key, obj)
        return aiohttp.web.json_response(obj, status=201)

    def _apply(self, key: Key, current: Obj, applied: Obj) -> aiohttp.web.Response:
        kind = applied.get("kind")
        old, new = current.get("spec") or {}, applied.get("spec") or {}
        if kind == "Deployment" and old.get("selector") != new.get("selector"):
            return _status(422, "Invalid", f'Deployment.apps "{key[2]}" is invalid: spec.selector: Invalid value: '
                           "field is immutable")
        if kind == "Job" and old.get("template") != new.get("template"):
            return _status(422, "Invalid", f'Job.batch "{key[2]}" is invalid: spec.template: Invalid value: '
                           "field is immutable")
        updated = {k: copy.deepcopy(v) for k, v in applied.items() if k != "metadata"}
        if "status" in current:
            updated["status"] = current["status"]
        meta = copy.deepcopy(current["metadata"])
        for part in ("labels", "annotations"):
            if applied["metadata"].get(part):
                meta[part] = copy.deepcopy(applied["metadata"][part])
            else:
                meta.pop(part, None)
        updated["metadata"] = meta
        if "spec" in updated and updated.get("spec") != current.get("spec"):
            meta["generation"] = int(meta.get("generation") or 0) + 1
        self._controller(updated)
        return self._commit(key, current, updated)

    def _controller(self, obj: Obj) -> None:
        if self.auto_ready and obj.get("kind") == "Deployment":
            obj["status"] = ready_status(obj)

    def _commit(self, key: Key, current: Obj, updated: Obj) -> aiohttp.web.Response:
        return aiohttp.web.json_response(self._write(key, current, updated))

    def _write(self, key: Key, current: Obj, updated: Obj) -> Obj:
        if updated != current:
            updated["metadata"]["resourceVersion"] = str(next(self._versions))
            self._store(key, updated)
        return updated

    # The service proxy.

    async def _proxy(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """`/api/v1/namespaces/<ns>/services/<svc>[:<port>]/proxy/<path>`. Without a backend: a canned TF
        Serving model status. With one: the request goes to the version that the ready pods of the
        Deployments the Service selects serve, `/v1/models/<m>[/labels/<l>]...` rewritten to
        `/v1/models/<m>/versions/<N>...` on the backend; no ready pod behind the Service is a 503."""
        raw = request._raw_request
        assert raw is not None and request.resource is not None
        service, _, port = (request.name or "").partition(":")
        path = (request.subresource or "proxy")[len("proxy"):] or "/"
        async with self._lock:
            svc = self._live((request.resource, request.namespace, service))
            if svc is None:
                return _status(404, "NotFound", f'services "{service}" not found',
                               {"name": service, "kind": "services"})
            if self.backend is None:
                model = path.rsplit("/", 1)[-1]
                return aiohttp.web.json_response({"model_version_status": [
                    {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}],
                    "served_by": service, "model": model})
            ports = (svc.get("spec") or {}).get("ports") or []
            if port and not any(port in (p.get("name"), str(p.get("port"))) for p in ports):
                return _status(400, "BadRequest", f'no service port "{port}" found for service "{service}"')
            pool = self._endpoints(request.namespace, svc)
            if not pool:
                self.proxied.append(Proxied(service, raw.method, path, None, 503, None))
                return _status(503, "ServiceUnavailable", f'no endpoints available for service "{service}"')
            served = pool[next(self._round_robin) % len(pool)]
        upstream, refusal = _rewrite(path, served)
        if upstream is None:
            status, body = refusal
            self.proxied.append(Proxied(service, raw.method, path, None, status, served.version))
            return aiohttp.web.json_response(body, status=status)
        if raw.query_string:
            upstream += f"?{raw.query_string}"
        data = await raw.read()
        headers = {"Content-Type": raw.headers["Content-Type"]} if "Content-Type" in raw.headers else {}
        assert self._http is not None and self.backend is not None
        try:
            async with self._http.request(raw.method, self.backend + upstream, data=data or None,
                                          headers=headers) as answer:
                payload, status = await answer.read(), answer.status
                content_type = answer.headers.get("Content-Type", "application/octet-stream")
        except (aiohttp.ClientError, TimeoutError) as error:
            self.proxied.append(Proxied(service, raw.method, path, upstream, 503, served.version))
            return _status(503, "ServiceUnavailable", f"error trying to reach service: {error}")
        self.proxied.append(Proxied(service, raw.method, path, upstream, status, served.version))
        return aiohttp.web.Response(body=payload, status=status, headers={"Content-Type": content_type})

    def _endpoints(self, namespace: str | None, svc: Obj) -> list[Served]:
        """One entry per ready pod selected by the Service, as its Endpoints object would list them."""
        selector = (svc.get("spec") or {}).get("selector") or {}
        pool: list[Served] = []
        if not selector:
            return pool
        for key, pods in sorted(self.pods.items(), key=lambda item: str(item[0][2])):
            deployment = self._live(key)
            if key[1] != namespace or deployment is None or pods.served is None or pods.available <= 0:
                continue
            labels = (((deployment.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}
            if all(labels.get(k) == v for k, v in selector.items()):
                pool += [pods.served] * pods.available
        return pool

    # The cluster behind the API: a Job controller, a Deployment controller, one TF Serving backend.

    def start_cluster(self, backend: str, volume: Path | None, tick_s: float) -> None:
        """Run on the emulator's loop (see `EmulatorThread.start_cluster`)."""
        self.backend = backend.rstrip("/")
        self.volume = volume
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        self._cluster = asyncio.get_running_loop().create_task(self._run_cluster(tick_s))

    async def stop_cluster(self) -> None:
        if self._cluster is not None:
            self._cluster.cancel()
            await asyncio.gather(self._cluster, return_exceptions=True)
            self._cluster = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _run_cluster(self, tick_s: float) -> None:
        while True:
            try:
                await self._reconcile()
            except Exception as error:  # noqa: BLE001 - reported to the test, the controllers go on
                message = f"{type(error).__name__}: {error}"
                if message not in self.controller_errors:
                    self.controller_errors.append(message)
            await asyncio.sleep(tick_s)

    async def _reconcile(self) -> None:
        async with self._lock:
            self._run_jobs()
            starting = self._observe_deployments()
        states: dict[Served, str] = {}
        for _, pods in starting:
            assert pods.pinned is not None
            if pods.pinned not in states:
                states[pods.pinned] = await self._backend_state(pods.pinned)
        async with self._lock:
            for key, pods in starting:
                loaded = pods.pinned is not None and states.get(pods.pinned) == "AVAILABLE"
                if loaded and (pods.files is None or pods.files.is_dir()):
                    self._rolled_out(key, pods)

    def _observe_deployments(self) -> list[tuple[Key, Pods]]:
        """Start the pods of every new generation; return those whose pods may now pass readiness."""
        live = dict(self._all("deployments"))
        for key, pods in list(self.pods.items()):
            if (live.get(key) or {}).get("metadata", {}).get("uid") != pods.uid:
                del self.pods[key]  # deleted (or deleted and created again): its pods are gone
        starting: list[tuple[Key, Pods]] = []
        for key, deployment in live.items():
            pods = self.pods.setdefault(key, Pods(uid=deployment["metadata"]["uid"]))
            generation = int(deployment["metadata"].get("generation") or 0)
            if generation != pods.generation:
                pods.generation, pods.ready = generation, False
                pods.pinned, pods.files = self._pinned(key[1], deployment)  # read when the new pods start
                self._set_status(key, self._progressing(key, deployment, pods))
                continue  # a new pod takes at least one tick to pass readiness
            if pods.ready:
                continue
            if key[2] in self.held:
                self._set_status(key, self._progressing(key, deployment, pods))
                continue
            if pods.pinned is None:  # its ConfigMap was missing: the kubelet retries
                pods.pinned, pods.files = self._pinned(key[1], deployment)
            if pods.pinned is not None:
                starting.append((key, pods))
        return starting

    def _pinned(self, namespace: str | None, deployment: Obj) -> tuple[Served | None, Path | None]:
        """What TF Serving in the new pods loads: the model config file from the mounted ConfigMap, and
        where the pinned version's files are on the store volume (None: the volume is not emulated)."""
        spec = deployment["spec"]["template"]["spec"]
        container = spec["containers"][0]
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        config_file = next((a.split("=", 1)[1] for a in container.get("args") or []
                            if a.startswith("--model_config_file=")), None)
        mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts") or []}
        if config_file is None:
            return None, None
        for name, mount in mounts.items():
            source = volumes.get(name, {}).get("configMap")
            if source is None or not config_file.startswith(mount.rstrip("/") + "/"):
                continue
            config_map = self._find("configmaps", namespace, source["name"])
            text = ((config_map or {}).get("data") or {}).get(config_file[len(mount.rstrip("/")) + 1:])
            if text is None:
                return None, None
            from aviary.model_config import parse_model_config

            (model,) = parse_model_config(text).model_config_list.config
            (version,) = model.model_version_policy.specific.versions
            served = Served(model.name, int(version), dict(model.version_labels))
            files = None
            for store, store_mount in mounts.items():
                if self.volume is not None and "persistentVolumeClaim" in volumes.get(store, {}) and \
                        model.base_path.startswith(store_mount.rstrip("/") + "/"):
                    files = self.volume / model.base_path[len(store_mount.rstrip("/")) + 1:] / str(version)
            if self.volume is not None and files is None:
                files = Path("/nonexistent")  # the model is not on the emulated volume: it never loads
            return served, files
        return None, None

    def _progressing(self, key: Key, deployment: Obj, pods: Pods) -> Obj:
        """A rolling update with maxSurge 1 and maxUnavailable 0: one new pod, not ready, beside the old ones."""
        wanted = int(deployment["spec"].get("replicas", 1))
        old = pods.available if pods.served is not None else 0
        surge = 1 if old else wanted
        progressing = {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
                       "message": f'ReplicaSet "{key[2]}-{pods.generation}" is progressing.'}
        if self.held.get(key[2]):
            progressing = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                           "message": f'ReplicaSet "{key[2]}-{pods.generation}" has timed out progressing.'}
        available = {"type": "Available", "status": "True" if old >= wanted else "False",
                     "reason": "MinimumReplicasAvailable" if old >= wanted else "MinimumReplicasUnavailable"}
        return {"observedGeneration": pods.generation, "replicas": old + surge, "updatedReplicas": surge,
                "readyReplicas": old, "availableReplicas": old, "unavailableReplicas": surge,
                "conditions": [available, progressing]}

    def _rolled_out(self, key: Key, pods: Pods) -> None:
        deployment = self._live(key)
        if deployment is None or deployment["metadata"]["uid"] != pods.uid or key[2] in self.held or \
                int(deployment["metadata"].get("generation") or 0) != pods.generation:
            return  # changed since: the next tick starts over
        pods.ready, pods.served = True, pods.pinned
        pods.available = int(deployment["spec"].get("replicas", 1))
        self._set_status(key, ready_status(deployment))

    async def _backend_state(self, served: Served) -> str:
        assert self._http is not None and self.backend is not None
        try:
            async with self._http.get(f"{self.backend}/v1/models/{served.model}/versions/{served.version}") as answer:
                if answer.status != 200:
                    return f"HTTP {answer.status}"
                return str((await answer.json())["model_version_status"][0]["state"])
        except (aiohttp.ClientError, TimeoutError) as error:
            return type(error).__name__

    def _run_jobs(self) -> None:
        if self.volume is None:
            return
        for key, job in self._all("jobs"):
            status = job.get("status") or {}
            if status.get("succeeded") or status.get("failed"):
                continue
            outcome = self._copy(key[1], job)
            if outcome is not None:
                self._set_status(key, outcome)

    def _copy(self, namespace: str | None, job: Obj) -> Obj | None:
        """What the copy Job's script does; None while its pod waits for a chunk ConfigMap."""
        spec = job["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for e in spec["containers"][0].get("env") or []}
        if not {"MODEL", "VERSION", "SHA256"} <= env.keys():
            return None  # not a copy Job: nothing runs it
        parts: list[tuple[str, bytes]] = []
        for volume in spec.get("volumes") or []:
            for source in (volume.get("projected") or {}).get("sources") or []:
                ref = source["configMap"]
                config_map = self._find("configmaps", namespace, ref["name"])
                if config_map is None:
                    return None
                for item in ref.get("items") or []:
                    parts.append((item["path"], base64.b64decode(config_map["binaryData"][item["key"]])))
        payload = b"".join(data for _, data in sorted(parts))
        assert self.volume is not None
        if hashlib.sha256(payload).hexdigest() != env["SHA256"]:
            return {"failed": 2, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                                 "message": "Job has reached the specified backoff limit"}]}
        destination = self.volume / str(env["MODEL"]) / str(env["VERSION"])
        if not destination.exists():
            tmp = destination.parent / f".tmp-{env['VERSION']}-{job['metadata']['name']}"
            tmp.mkdir(parents=True)
            with tarfile.open(fileobj=io.BytesIO(payload), mode="r:gz") as tar:
                tar.extractall(tmp, filter="data")
            tmp.rename(destination)
        return {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}

    def _all(self, plural: str) -> list[tuple[Key, Obj]]:
        return [(key, copy.deepcopy(dict(obj.last.raw))) for key, obj in self.objects.items()
                if key[0].plural == plural and not obj.deleted]

    def _find(self, plural: str, namespace: str | None, name: str) -> Obj | None:
        return next((obj for key, obj in self._all(plural) if key[1] == namespace and key[2] == name), None)

    def _set_status(self, key: Key, status: Obj) -> None:
        current = self._live(key)
        if current is not None:
            updated = copy.deepcopy(current)
            updated["status"] = status
            self._write(key, current, updated)


def _rewrite(path: str, served: Served) -> tuple[str | None, tuple[int, Obj]]:
    """The backend path for `path` on a pod serving `served`, or TF Serving's refusal of it."""
    match = _MODEL_PATH.fullmatch(path)
    if match is None:
        return path, (0, {})
    model, rest = match["model"], match["rest"] or ""
    status_request = not rest.startswith(":")
    if model != served.model:
        return None, (404, {"error": f"Could not find any versions of model {model}" if status_request
                            else f"Servable not found for request: Latest({model})"})
    version = served.version
    if match["label"] is not None:
        labelled = served.labels.get(match["label"])
        if labelled is None:
            return None, (400, {"error": f"Unrecognized servable version label: {match['label']}"})
        version = labelled
    elif match["version"] is not None and int(match["version"]) != served.version:
        asked = int(match["version"])
        return None, (404, {"error": f"Could not find version {asked} of model {model}" if status_request
                            else f"Servable not found for request: Specific({model}, {asked})"})
    return f"/v1/models/{model}/versions/{version}{rest}", (0, {})

def ready_status(deployment: Obj) -> Obj:
    """What the Deployment controller reports once a rollout is complete."""
    replicas = int(deployment["spec"].get("replicas", 1))
    return {
        "observedGeneration": deployment["metadata"]["generation"],
        "replicas": replicas, "updatedReplicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas,
        "conditions": [
            {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
        ],
    }


def _merge(base: Obj, patch: Obj) -> Obj:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class EmulatorThread:
    """Runs a `KubeApiEmulator` and kmock's `Server` on 127.0.0.1 in a background event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="kube-emulator", daemon=True)
        self.emulator: KubeApiEmulator
        self.server: kmock.Server

    def __enter__(self) -> Self:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=10)
        return self

    async def _start(self) -> None:
        self.emulator = KubeApiEmulator()
        await self.emulator.__aenter__()
        self.server = kmock.Server(self.emulator, host="127.0.0.1")
        await self.server.__aenter__()

    async def _stop(self) -> None:
        await self.emulator.stop_cluster()
        await self.server.__aexit__(None, None, None)
        await self.emulator.__aexit__(None, None, None)

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def start_cluster(self, backend: str, volume: Path | None = None, tick_s: float = 0.02) -> None:
        """Put the TF Serving REST server at `backend` behind every Service's proxy and run the Job and
        Deployment controllers every `tick_s` (copy Jobs write into `volume`, which the backend serves)."""
        async def start() -> None:
            self.emulator.start_cluster(backend, volume, tick_s)

        asyncio.run_coroutine_threadsafe(start(), self.loop).result(timeout=10)

    def call(self, fn: Any, *args: Any) -> Any:
        """Run `fn(*args)` on the emulator's loop (to read or seed its state without races)."""
        async def run() -> Any:
            async with self.emulator._lock:
                return fn(*args)
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=10)


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, default=str)

"""A Kubernetes API server for the tests: kmock's `KubernetesEmulator` (aiohttp on 127.0.0.1, its
request parsing, request log and object store with history) with the API semantics the target
relies on, which kmock's dict-merging fallback does not have:

- server-side apply (PATCH application/apply-patch+yaml): creates when missing, converges to
  exactly the applied fields (single field manager), bumps `generation` only when `spec` changes
  and `resourceVersion` only when anything does; requires `fieldManager`;
- immutable Deployment selectors and Job pod templates (422), the `status` subresource (merge
  patch, no generation bump), label-selector lists, deletes, namespaces that must exist;
- injected faults (status codes, slow answers), RBAC refusals (403) and a bearer token (401);
- the service proxy of `<svc>:rest` answering TF Serving's model status.

It runs its event loop in a thread so that the synchronous `kubernetes` client can talk to it.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import re
import threading
from dataclasses import dataclass
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

    # Test-facing configuration.

    def fail(self, method: str, path: str, status: int, times: int = 1, *, delay_s: float = 0.0,
             retry_after: str | None = None) -> None:
        """Answer the next `times` requests matching `method` and the `path` regex with `status`."""
        self.faults.append(Fault(method.upper(), re.compile(path), status, times, delay_s, retry_after))

    def forbid(self, verb: str, plural: str, name: str | None = None) -> None:
        self.forbidden.add((verb, plural, name))

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
            return self._proxy(request)
        verb = {"GET": "get" if request.name else "list", "PATCH": "patch", "POST": "create",
                "DELETE": "delete", "PUT": "update"}[raw.method]
        plural = request.resource.plural
        group = request.resource.group
        resource = plural if not group else f"{plural}.{group}"
        for rule in ((verb, plural, request.name), (verb, plural, None)):
            if rule in self.forbidden:
                return _status(403, "Forbidden",
                               f'{resource} "{request.name}" is forbidden: User "system:serviceaccount:aviary:'
                               f'aviary-rollout" cannot {verb} resource "{plural}" in API group "{group}" in the '
                               f'namespace "{request.namespace}"',
                               {"name": request.name, "group": group, "kind": plural})
        async with self._lock:
            return self._serve(request, verb, resource)

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
        for field in ("labels", "annotations"):
            if applied["metadata"].get(field):
                meta[field] = copy.deepcopy(applied["metadata"][field])
            else:
                meta.pop(field, None)
        updated["metadata"] = meta
        if "spec" in updated and updated.get("spec") != current.get("spec"):
            meta["generation"] = int(meta.get("generation") or 0) + 1
        self._controller(updated)
        return self._commit(key, current, updated)

    def _controller(self, obj: Obj) -> None:
        if self.auto_ready and obj.get("kind") == "Deployment":
            obj["status"] = ready_status(obj)

    def _commit(self, key: Key, current: Obj, updated: Obj) -> aiohttp.web.Response:
        if updated != current:
            updated["metadata"]["resourceVersion"] = str(next(self._versions))
            self._store(key, updated)
        return aiohttp.web.json_response(updated)

    def _proxy(self, request: rendering.Request) -> aiohttp.web.Response:
        """`/api/v1/namespaces/<ns>/services/<svc>:rest/proxy/v1/models/<model>`: TF Serving's status."""
        service = (request.name or "").split(":")[0]
        svc_key = (request.resource, request.namespace, service)
        if self._live(svc_key) is None:
            return _status(404, "NotFound", f'services "{service}" not found')
        model = (request.subresource or "").rsplit("/", 1)[-1]
        return aiohttp.web.json_response({"model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}],
            "served_by": service, "model": model})


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

    def call(self, fn: Any, *args: Any) -> Any:
        """Run `fn(*args)` on the emulator's loop (to read or seed its state without races)."""
        async def run() -> Any:
            async with self.emulator._lock:
                return fn(*args)
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=10)


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, default=str)

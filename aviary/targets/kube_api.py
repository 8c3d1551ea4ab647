"""A narrow REST layer over the official client's `ApiClient`: server-side apply, get, list, delete.

Plain dicts in and out (no generated models), so Deployments, Jobs and Gateway API routes go
through one path. Retries with backoff on 409, 429, 5xx and transport errors; 401, 403 and a
missing namespace become one-line `TargetError`s that name the verb and resource refused.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from aviary.targets.base import TargetError

log = logging.getLogger(__name__)

Obj = dict[str, Any]
APPLY = "application/apply-patch+yaml"
MERGE = "application/strategic-merge-patch+json"
RETRYABLE = frozenset({409, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str

    @property
    def prefix(self) -> str:
        return f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"

    @property
    def resource(self) -> str:
        """As RBAC and kubectl name it: `deployments.apps`, `configmaps`."""
        return self.plural if not self.group else f"{self.plural}.{self.group}"


KINDS: Mapping[str, Kind] = {
    "ConfigMap": Kind("", "v1", "configmaps"),
    "Service": Kind("", "v1", "services"),
    "Pod": Kind("", "v1", "pods"),
    "Deployment": Kind("apps", "v1", "deployments"),
    "Job": Kind("batch", "v1", "jobs"),
    "HTTPRoute": Kind("gateway.networking.k8s.io", "v1", "httproutes"),
}


class KubeApi:
    """One namespace's objects through a caller-built `ApiClient` (this module never makes one)."""

    def __init__(
        self,
        api_client: ApiClient,
        namespace: str,
        *,
        field_manager: str = "aviary",
        attempts: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        request_timeout_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api_client = api_client
        self.namespace = namespace
        self.field_manager = field_manager
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.request_timeout_s = request_timeout_s
        self._sleep = sleep

    def _path(self, kind: str, name: str | None = None) -> str:
        k = KINDS[kind]
        path = f"{k.prefix}/namespaces/{self.namespace}/{k.plural}"
        return path if name is None else f"{path}/{name}"

    def apply(self, obj: Obj, field_manager: str | None = None) -> Obj:
        """Server-side apply: this manager's fields become exactly `obj`'s (fields it set before and
        left out now are removed; other managers' fields stay); unchanged when equal."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        result = self._call(
            "PATCH", self._path(kind, name), verb="patch", kind=kind, name=name, body=obj,
            query={"fieldManager": field_manager or self.field_manager, "force": "true"}, content_type=APPLY,
        )
        assert result is not None
        return result

    def patch_status(self, kind: str, name: str, patch: Obj) -> Obj | None:
        """A strategic-merge patch of the object's `status` subresource: lists with a merge key (a
        pod's conditions, by type) merge, so what others wrote there stays. None when it is gone."""
        k = KINDS[kind]
        what = f'{k.plural}/status{"." + k.group if k.group else ""} "{name}"'
        return self._call("PATCH", self._path(kind, name) + "/status", verb="patch", kind=kind, name=name,
                          body=patch, content_type=MERGE, what=what, missing_ok=True)

    def get(self, kind: str, name: str) -> Obj | None:
        """The object, or None when it does not exist."""
        return self._call("GET", self._path(kind, name), verb="get", kind=kind, name=name, missing_ok=True)

    def list(self, kind: str, labels: Mapping[str, str]) -> list[Obj]:
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        result = self._call("GET", self._path(kind), verb="list", kind=kind, name=None, query={"labelSelector": selector})
        return list((result or {}).get("items") or [])

    def delete(self, kind: str, name: str, propagation: str = "Background") -> bool:
        """Delete (dependents in the background, or first with `Foreground`); False when already gone."""
        result = self._call(
            "DELETE", self._path(kind, name), verb="delete", kind=kind, name=name,
            body={"propagationPolicy": propagation}, missing_ok=True,
        )
        return result is not None

    def pod_get(self, pod: str, port: int, path: str) -> str:
        """A pod's own HTTP answer (text) through the API server's pod proxy (`pods/proxy` get)."""
        url = f"/api/v1/namespaces/{self.namespace}/pods/{pod}:{port}/proxy/{path.lstrip('/')}"
        result = self._call("GET", url, verb="get", kind="Pod", name=pod, text=True, what=f'pods/proxy "{pod}"')
        return str((result or {}).get("text", ""))

    def serves(self, group: str, version: str, plural: str) -> bool:
        """Whether the API server serves a resource (discovery, which every authenticated user may read)."""
        path = f"/apis/{group}/{version}"
        try:
            found = self._send("GET", path, None, None, None)
        except ApiException as e:
            if int(e.status or 0) == 404:
                return False
            raise self._error(e, "discover", f"{group}/{version}", 1) from e
        except urllib3.exceptions.HTTPError as e:
            raise TargetError(f"cannot discover {group}/{version}: {type(e).__name__} ({e})") from e
        return any(r.get("name") == plural for r in found.get("resources") or [])

    def _call(
        self,
        method: str,
        path: str,
        *,
        verb: str,
        kind: str,
        name: str | None,
        body: Obj | None = None,
        query: Mapping[str, str] | None = None,
        content_type: str | None = None,
        missing_ok: bool = False,
        text: bool = False,
        what: str | None = None,
    ) -> Obj | None:
        what = what or KINDS[kind].resource + (f' "{name}"' if name else "")
        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            try:
                return self._send(method, path, body, query, content_type, text)
            except ApiException as e:
                status = int(e.status or 0)
                if status == 404 and missing_ok and not _namespace_missing(e):
                    return None
                if status not in RETRYABLE or attempt == self.attempts:
                    raise self._error(e, verb, what, attempt) from e
                wait = _retry_after(e, delay, self.max_backoff_s)
                log.warning("%s %s: HTTP %s, retry %d/%d in %.2fs", verb, what, status, attempt, self.attempts - 1, wait)
            except urllib3.exceptions.HTTPError as e:
                if attempt == self.attempts:
                    raise TargetError(
                        f"cannot {verb} {what} in namespace \"{self.namespace}\": "
                        f"{type(e).__name__} after {attempt} attempts ({e})"
                    ) from e
                wait = delay
                log.warning("%s %s: %s, retry %d/%d in %.2fs", verb, what, type(e).__name__, attempt, self.attempts - 1, wait)
            self._sleep(wait)
            delay = min(delay * 2, self.max_backoff_s)
        raise AssertionError("unreachable")

    def _send(
        self, method: str, path: str, body: Obj | None, query: Mapping[str, str] | None, content_type: str | None,
        text: bool = False,
    ) -> Obj:
        headers = {"Accept": "text/plain, */*" if text else "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        _method, url, headers, payload, _post = self.api_client.param_serialize(
            method, path, query_params=list((query or {}).items()), header_params=headers,
            body=body, auth_settings=["BearerToken"],
        )
        response = self.api_client.call_api(_method, url, headers, payload, _request_timeout=self.request_timeout_s)
        data = response.read()
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=data.decode(errors="replace"), data=None)
        if text:
            return {"text": data.decode(errors="replace")}
        return json.loads(data) if data else {}

    def _error(self, e: ApiException, verb: str, what: str, attempts: int) -> TargetError:
        status = int(e.status or 0)
        where = f'in namespace "{self.namespace}"'
        if status == 403:
            return TargetError(f"forbidden: cannot {verb} {what} {where} (HTTP 403): check the aviary Role")
        if status == 401:
            return TargetError(
                f"unauthorized: cannot {verb} {what} {where} (HTTP 401): "
                "the API server refused the credentials; check the kubeconfig context or the service account token"
            )
        if _namespace_missing(e):
            return TargetError(
                f'namespace "{self.namespace}" not found: cannot {verb} {what} (HTTP 404); '
                "create it first (kubectl apply -k k8s/overlays/<env>)"
            )
        message = _status_message(e)
        if status == 404:
            return TargetError(f"not found: cannot {verb} {what} {where} (HTTP 404): {message}")
        if status == 422:
            return TargetError(f"invalid: cannot {verb} {what} {where} (HTTP 422): {message}")
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        return TargetError(f"cannot {verb} {what} {where}: HTTP {status}{tries}: {message}")


def _status(e: ApiException) -> Obj:
    try:
        data = json.loads(e.body or "{}")
    except (TypeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _status_message(e: ApiException) -> str:
    return str(_status(e).get("message") or e.reason or "no message").strip()


def _namespace_missing(e: ApiException) -> bool:
    """The API server answers a write into a missing namespace with 404 on kind `namespaces`."""
    details = _status(e).get("details") or {}
    return int(e.status or 0) == 404 and details.get("kind") == "namespaces"


def _retry_after(e: ApiException, default: float, cap: float) -> float:
    headers = e.headers or {}
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    try:
        return min(max(float(value), 0.0), cap) if value is not None else default
    except ValueError:
        return default

"""Render a kustomization for the tests: `kubectl kustomize` when a kubectl is on PATH, else the
small Python renderer below, which implements exactly the fields k8s/ uses (and refuses others).

test_kube_manifests.py checks the two agree wherever both are available, so the fallback stays
faithful; a kustomization that grows a new field must grow it here too (it raises until then).
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]
SUPPORTED = {"apiVersion", "kind", "namespace", "labels", "resources", "images", "replicas", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}


def kubectl() -> str | None:
    return shutil.which("kubectl")


def render_with_kubectl(directory: Path) -> list[Obj]:
    exe = kubectl()
    assert exe is not None
    out = subprocess.run([exe, "kustomize", str(directory)], check=True, capture_output=True, text=True, timeout=60)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def render(directory: Path) -> list[Obj]:
    """Render with kubectl when present (the real thing), else in Python."""
    return render_with_kubectl(directory) if kubectl() else render_in_python(directory)


def _load_docs(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _merge(base: Any, patch: Any) -> Any:
    """Strategic merge as k8s/ needs it: maps merge, null deletes, lists of named maps merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = _merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if (
        isinstance(base, list) and isinstance(patch, list)
        and all(isinstance(i, dict) and "name" in i for i in [*base, *patch])
    ):
        merged = [copy.deepcopy(i) for i in base]
        for item in patch:
            for n, existing in enumerate(merged):
                if existing["name"] == item["name"]:
                    merged[n] = _merge(existing, item)
                    break
            else:
                merged.append(copy.deepcopy(item))
        return merged
    return copy.deepcopy(patch)


def _key(obj: Obj) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def render_in_python(directory: Path) -> list[Obj]:
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - SUPPORTED
    if unknown:
        raise NotImplementedError(f"{directory}: kustomization fields {sorted(unknown)} need support in {__file__}")
    objects: list[Obj] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        objects += render_in_python(path) if path.is_dir() else _load_docs(path)

    for patch_entry in spec.get("patches", []):
        if set(patch_entry) != {"path"}:
            raise NotImplementedError(f"patch form {sorted(patch_entry)}")
        for patch in _load_docs(directory / patch_entry["path"]):
            matches = [n for n, o in enumerate(objects) if _key(o) == _key(patch)]
            if len(matches) != 1:
                raise ValueError(f"patch {_key(patch)} matches {len(matches)} objects")
            objects[matches[0]] = _merge(objects[matches[0]], patch)

    for rep in spec.get("replicas", []):
        for obj in objects:
            if obj["kind"] in {"Deployment", "StatefulSet", "ReplicaSet"} and obj["metadata"]["name"] == rep["name"]:
                obj["spec"]["replicas"] = rep["count"]

    for image in spec.get("images", []):
        for obj in objects:
            pod = obj.get("spec", {}).get("template", {}).get("spec", {})
            for container in [*pod.get("containers", []), *pod.get("initContainers", [])]:
                name, _, _tag = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image.get('newTag', _tag)}"

    for label in spec.get("labels", []):
        if label.get("includeSelectors") or label.get("includeTemplates"):
            raise NotImplementedError("labels into selectors or templates")
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(label["pairs"])

    namespace = spec.get("namespace")
    if namespace:
        for obj in objects:
            if obj["kind"] == "Namespace":
                obj["metadata"]["name"] = namespace
            elif obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = namespace
            for subject in obj.get("subjects", []) if obj["kind"] in {"RoleBinding", "ClusterRoleBinding"} else []:
                if subject.get("kind") == "ServiceAccount":
                    subject["namespace"] = namespace
    return objects

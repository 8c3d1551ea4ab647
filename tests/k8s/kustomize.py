"""Render a kustomization for the tests with `kubectl kustomize`: the real kustomize, as users run it.

k8s/ uses components, replacements and local-config objects, which only kustomize itself renders
faithfully; `.ci/run` installs kubectl (the real-control-plane tier applies the overlays with it).
Where there is no kubectl, the tests that render skip with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

Obj = dict[str, Any]
K8S = Path(__file__).resolve().parents[2] / "k8s"
COMPONENT = K8S / "components" / "serving"


def render(directory: Path) -> list[Obj]:
    exe = shutil.which("kubectl")
    if exe is None:
        pytest.skip("no kubectl on PATH: rendering k8s/ needs kustomize (.ci/run installs kubectl)")
    out = subprocess.run([exe, "kustomize", str(directory)], check=True, capture_output=True, text=True, timeout=60)  # noqa: S603
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def model_of(directory: Path) -> str:
    """The model a kustomization serves: the one place it is named, its `aviary-model` ConfigMap."""
    (doc,) = [d for d in yaml.safe_load_all((directory / "model.yaml").read_text()) if d]
    return str(doc["data"]["name"])


def stack(folder: Path, model: str) -> Path:
    """A kustomization serving `model` with the bare component: what a user's overlay starts from."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "aviary-model", "annotations": {"config.kubernetes.io/local-config": "true"}},
        "data": {"name": model},
    }))
    (folder / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["model.yaml"], "components": [os.path.relpath(COMPONENT, folder)],  # kustomize wants it relative
    }))
    return folder

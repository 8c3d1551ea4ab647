"""The flow image, checked without a container engine: the Dockerfile's base, user and working
directory against prefect.yaml's Kubernetes pool and pull step, and `make image`'s command."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def test_image_base_is_pinned_and_runs_as_a_non_root_user() -> None:
    steps = instructions()
    (base,) = [arg for op, arg in steps if op == "FROM"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    users = [arg for op, arg in steps if op == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"  # numeric: runAsNonRoot can verify it
    assert [op for op, _ in steps][-2:] == ["USER", "CMD"]


def test_image_installs_the_project_where_the_pull_step_runs_flows() -> None:
    steps = instructions()
    doc = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    (pull,) = doc["definitions"]["pull"]["kubernetes"]
    workdir = pull["prefect.deployments.steps.set_working_directory"]["directory"]
    assert [arg for op, arg in steps if op == "WORKDIR"] == [workdir]
    assert any(op == "COPY" and arg.endswith(f". {workdir}") for op, arg in steps)
    assert any(op == "RUN" and f"pip install --no-compile {workdir}" in arg for op, arg in steps)
    for deployment in doc["deployments"]:
        assert (ROOT / deployment["entrypoint"].split(":")[0]).is_file()  # relative to that directory
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "models", "runs"} <= set(ignored)


def test_kubernetes_pool_runs_the_image_that_make_builds_as_the_role() -> None:
    pool = yaml.safe_load((ROOT / "prefect.yaml").read_text())["definitions"]["work_pools"]["kubernetes"]
    variables = pool["job_variables"]
    assert variables["image"] == f"aviary:{version()}"
    rbac = list(yaml.safe_load_all((ROOT / "k8s" / "base" / "rbac.yaml").read_text()))
    (account,) = [d for d in rbac if d["kind"] == "ServiceAccount"]
    assert variables["service_account_name"] == account["metadata"]["name"]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_make_image_builds_with_docker_or_podman(engine: str) -> None:
    out = subprocess.run(["make", "-n", "image", f"ENGINE={engine}"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert f"{engine} build -t aviary:{version()} ." in out

"""One real stack per session: a Prefect server, the process work pool and a worker, prefect.yaml deployed.

It runs from a copy of the project in a temporary directory, so the relative paths of the
deployments' parameters (data, models, runs, the local server's state) land there. The copy's
prefect.yaml differs from the real one only in parameter values: small training, and free ports
for the local model server so a test never meets a server someone else runs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest
import yaml

from aviary.ops import deployments
from aviary.ops.stack import Stack
from tests.helpers import free_port
from tests.ops.helpers import Receiver, RunningStack, small_parameters

COPIED = ("aviary", "flows", "tasks", "ops", "serving", "data", "prefect.yaml", "pyproject.toml")


@pytest.fixture(scope="session")
def running_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    from aviary.data.generate import generate, write_csv

    project = tmp_path_factory.mktemp("project")
    for name in COPIED:
        source = deployments.ROOT / name
        if source.is_dir():
            shutil.copytree(source, project / name, ignore=shutil.ignore_patterns("__pycache__", "*.csv", "generated"))
        elif source.exists():
            shutil.copy2(source, project / name)
    write_csv(generate(rows=1500, seed=3), project / "data" / "circle.csv")
    doc = small_parameters(deployments.load(project / "prefect.yaml"), free_port(), free_port())
    (project / "prefect.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))

    receiver = Receiver().start()
    stack = Stack(home=project / ".aviary" / "prefect", port=free_port(), root=project)
    try:
        stack.up(notify_url=receiver.url)
        yield RunningStack(stack, project, receiver)
    finally:
        stack.down()
        receiver.stop()
        if (project / ".aviary" / "serving").exists():  # the local model server a canary may have started
            subprocess.run([sys.executable, "-m", "aviary.targets.local", "stop", "--state-dir", ".aviary/serving"],
                           cwd=project, check=False, capture_output=True)

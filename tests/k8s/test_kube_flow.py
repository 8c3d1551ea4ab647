"""The rollout flow end to end on the Kubernetes target, against the HTTP API emulator.

The emulator plays a small cluster (see `emulator.py`): its copy Jobs unpack the flow's uploads
onto a store volume, its Deployment controller rolls a Deployment out only once the version its
ConfigMap pins is AVAILABLE on a real `python -m serving` backend that serves that volume, and its
service proxy forwards the post-deploy check's predictions to that version. One backend and one
volume serve the whole module; every test gets a fresh API server and its own copy of the store.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from kubernetes.client import ApiClient

import aviary.flows.rollout as rollout_module
from aviary.config import EvalConfig, ExportConfig, PipelineConfig
from aviary.flows.rollout import RolloutFailed, RolloutResult, rollout
from aviary.rollout import Phase
from aviary.store import GOLDEN_FILE, History, ModelStore
from aviary.targets.base import Serving
from aviary.targets.kube_status import rollout_state
from aviary.targets.kubernetes import KubernetesTarget
from aviary.tasks.evaluate import evaluate_model
from aviary.tasks.export import export_model
from aviary.types import Split, TrainedModel, Verdict

from .conftest import KubeReader
from .emulator import EmulatorThread, Proxied
from .test_kube_target import assert_canary_gone, assert_served, requests_to

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
MODEL = "circle"
EXPORT = ExportConfig(golden_rows=20, warmup_records=2)
POINTS = [{"x": 0.0, "y": 0.0}, {"x": 1.4, "y": 1.4}]  # deep inside the circle, far outside it
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
BACKEND_START_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g}s"
        time.sleep(0.02)


@dataclass
class Backend:
    """A TF Serving drop-in (`python -m serving`) serving every version on the store volume."""

    url: str
    volume: Path
    process: subprocess.Popen[bytes]
    log: Path

    def answers(self) -> bool:
        assert self.process.poll() is None, f"backend exited with {self.process.returncode}: see {self.log}"
        try:
            response = requests.get(f"{self.url}/v1/models/{MODEL}", timeout=2)
        except requests.RequestException:
            return False
        return response.headers.get("Content-Type", "").startswith("application/json")


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """Started first and waited for last (`exported`), so it imports TensorFlow while the model trains."""
    root = tmp_path_factory.mktemp("kube-backend")
    volume = root / "volume"
    (volume / MODEL).mkdir(parents=True)
    config = root / "models.config"
    config.write_text(
        f'model_config_list {{ config {{ name: "{MODEL}" base_path: "{volume / MODEL}" '
        'model_platform: "tensorflow" model_version_policy { all {} } } }\n'
    )
    rest = free_port()
    log = root / "serving.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "aviary.serving", "--host=127.0.0.1", f"--port={free_port()}", f"--rest_api_port={rest}",
             f"--model_config_file={config}", "--file_system_poll_wait_seconds=1"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
    try:
        yield Backend(f"http://127.0.0.1:{rest}", volume, process, log)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def exported(backend: Backend, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Versions 1 and 2 of the session's trained model (same weights), exported once per module."""
    trained: TrainedModel = request.getfixturevalue("trained")
    split: Split = request.getfixturevalue("circle_split")
    request.getfixturevalue("prefect_harness")
    root = tmp_path_factory.mktemp("kube-export")
    cfg = EXPORT.model_copy(update={"store": root})
    evaluation = evaluate_model(trained, split.eval, EvalConfig())
    for version in (1, 2):
        export_model(trained, split.eval, evaluation, Verdict(blessed=True, reasons=("test",)), version, cfg)
    wait_for(backend.answers, BACKEND_START_S, f"backend on {backend.url}")
    return root / MODEL


@dataclass
class Cluster:
    kube: EmulatorThread
    read: KubeReader
    client: ApiClient
    store: ModelStore
    config: PipelineConfig

    def target(self, config: PipelineConfig | None = None) -> KubernetesTarget:
        """What `build_target` makes of the config, on the emulator's client, with short polls and backoff."""
        config = config or self.config
        return KubernetesTarget(
            self.client, config.rollout.kubernetes, model=config.export.model_name,
            promote_timeout_s=config.rollout.ready_timeout_s, poll_interval_s=0.02, backoff_s=0.01,
            max_backoff_s=0.05, request_timeout_s=5.0,
        )

    def with_rollout(self, **changes: Any) -> PipelineConfig:
        return self.config.model_copy(update={"rollout": self.config.rollout.model_copy(update=changes)})

    def predict(self, service: str, path: str = "") -> requests.Response:
        """POST the two points through the API server's proxy of `service`, as the check does."""
        endpoint = self.target().endpoint(MODEL, "stable")
        url = endpoint.url.replace("/services/circle-stable:rest/", f"/services/{service}:rest/") + path
        return requests.post(f"{url}:predict", json={"instances": POINTS}, headers=dict(endpoint.headers), timeout=10)

    def proxied(self, service: str, method: str = "POST") -> list[Proxied]:
        return [p for p in self.kube.emulator.proxied if p.service == service and p.method == method]

    def snapshot(self) -> dict[tuple[str, str], Any]:
        return {(kind, name): self.read.get(kind, name) for kind in ("Deployment", "ConfigMap", "Service", "Job")
                for name in self.read.names(kind)}

    def writes(self) -> int:
        return sum(1 for r in self.kube.emulator._requests
                   if r.method in WRITES and "/proxy" not in str(r.url.path))


@pytest.fixture
def cluster(kube: EmulatorThread, kube_client: ApiClient, kube_read: KubeReader, backend: Backend, exported: Path,
            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    kube.start_cluster(backend.url, backend.volume)
    shutil.copytree(exported, tmp_path / "store" / MODEL)
    config = PipelineConfig.model_validate({
        "export": {**EXPORT.model_dump(), "store": tmp_path / "store"},
        "rollout": {"target": "kubernetes", "ready_timeout_s": 30, "lock_timeout_s": 0,
                    "check": {"p95_budget_ms": 2000}},
    })
    world = Cluster(kube, kube_read, kube_client, ModelStore(tmp_path / "store", MODEL), config)
    monkeypatch.setattr(rollout_module, "build_target", world.target)
    yield world
    assert not kube.emulator.controller_errors


def in_background(fn: Callable[[], RolloutResult]) -> tuple[threading.Thread, list[RolloutResult | BaseException]]:
    outcome: list[RolloutResult | BaseException] = []

    def run() -> None:
        try:
            outcome.append(fn())
        except BaseException as error:  # noqa: BLE001 - handed back to the test thread
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def classes(response: requests.Response) -> list[int]:
    assert response.status_code == 200, response.text
    return [int(p["class"]) for p in response.json()["predictions"]]


def test_kube_flow_first_deploy_promotes_and_serves_through_the_proxy(cluster: Cluster, backend: Backend) -> None:
    result = rollout(1, cluster.config)

    assert (result.phase, result.stable_before, result.stable_after) == (Phase.PROMOTED, None, 1)
    assert cluster.store.aliases() == {"production": 1}
    assert_served(cluster.read, "stable", 1)
    assert_canary_gone(cluster.read)
    assert cluster.read.names("Job") == set()  # the copy Job and its chunks are cleaned up
    assert cluster.read.names("ConfigMap") == {"circle-stable-config"}
    assert (backend.volume / MODEL / "1" / "saved_model.pb").is_file()  # the Job put the version on the volume
    assert cluster.target().serving(MODEL) == Serving(stable=1, canary=None)

    # The check reached v1's canary pods through the API server's service proxy, and passed.
    checked = cluster.proxied("circle-canary")
    assert checked and {(p.upstream, p.status) for p in checked} == {("/v1/models/circle/versions/1:predict", 200)}

    assert classes(cluster.predict("circle-stable")) == [1, 0]
    assert classes(cluster.predict("circle-stable", "/labels/stable")) == [1, 0]
    assert classes(cluster.predict("circle")) == [1, 0]
    assert cluster.proxied("circle-stable")[-1].upstream == "/v1/models/circle/versions/1:predict"
    gone = cluster.predict("circle-canary")
    assert gone.status_code == 503 and gone.json()["message"] == 'no endpoints available for service "circle-canary"'


def test_kube_flow_canary_beside_stable_progresses_then_promotes(cluster: Cluster) -> None:
    rollout(1, cluster.config)
    emulator = cluster.kube.emulator
    emulator.hold("circle-canary")
    seen = len(cluster.proxied("circle-canary"))

    thread, outcome = in_background(lambda: rollout(2, cluster.config))

    def progressing() -> bool:
        canary = cluster.read.get("Deployment", "circle-canary")
        status = (canary or {}).get("status") or {}
        return canary is not None and status.get("observedGeneration") == canary["metadata"]["generation"] \
            and status.get("updatedReplicas") == 1 and status.get("availableReplicas") == 0

    wait_for(progressing, 30, "canary v2 reported progressing")
    polls = requests_to(cluster.kube, "GET", "/deployments/circle-canary")
    wait_for(lambda: requests_to(cluster.kube, "GET", "/deployments/circle-canary") >= polls + 3, 10,
             "the flow polling the canary rollout")
    assert thread.is_alive() and not outcome
    assert cluster.target().serving(MODEL) == Serving(stable=1, canary=2)
    assert cluster.store.aliases() == {"production": 1, "canary": 2}
    assert_served(cluster.read, "stable", 1)
    assert_served(cluster.read, "canary", 2)
    assert cluster.predict("circle-canary").status_code == 503  # no ready canary pod yet
    assert classes(cluster.predict("circle")) == [1, 0]
    assert {p.upstream for p in cluster.proxied("circle")} == {"/v1/models/circle/versions/1:predict"}
    assert not [p for p in cluster.proxied("circle-canary") if p.version == 2]  # the check has not run yet

    emulator.release("circle-canary")
    thread.join(60)
    assert not thread.is_alive()
    (result,) = outcome
    assert isinstance(result, RolloutResult), result
    assert (result.phase, result.stable_before, result.stable_after) == (Phase.PROMOTED, 1, 2)

    checked = [p for p in cluster.proxied("circle-canary")[seen:] if p.upstream]
    assert len(checked) >= 2  # the golden set and the behaviour cases
    assert {(p.upstream, p.status) for p in checked} == {("/v1/models/circle/versions/2:predict", 200)}
    stable = assert_served(cluster.read, "stable", 2)
    assert stable["metadata"]["generation"] == 2 and stable["status"]["observedGeneration"] == 2
    assert_canary_gone(cluster.read)
    assert cluster.store.aliases() == {"production": 2}
    assert [(e["event"], e["version"], e.get("replaced")) for e in History(cluster.store).events()] == \
        [("promoted", 1, None), ("promoted", 2, 1)]
    assert classes(cluster.predict("circle-stable")) == [1, 0]
    assert cluster.proxied("circle-stable")[-1].upstream == "/v1/models/circle/versions/2:predict"


@pytest.mark.parametrize("deadline_exceeded", [False, True], ids=["ready-timeout", "progress-deadline-exceeded"])
def test_kube_flow_canary_past_its_deadline_is_rolled_back(cluster: Cluster, deadline_exceeded: bool) -> None:
    rollout(1, cluster.config)
    before = cluster.snapshot()
    stable_before = cluster.read.get("Deployment", "circle-stable")
    assert stable_before is not None
    cluster.kube.emulator.hold("circle-canary", deadline_exceeded=deadline_exceeded)
    why = (r'deployment circle-canary exceeded its progress deadline: '
           r'ReplicaSet "circle-canary-1" has timed out progressing\.'
           if deadline_exceeded else r"not ready after 1s: 0 of 1 updated replicas of circle-canary available")

    started = time.monotonic()
    with pytest.raises(RolloutFailed, match=rf"^circle v2 RolledBack: canary circle v2: {why}; "
                                            r"stable v1 keeps serving$"):
        rollout(2, cluster.with_rollout(ready_timeout_s=1.0 if not deadline_exceeded else 30))
    assert time.monotonic() - started < 20  # the deadline, not the check or anything else, ended it

    assert_canary_gone(cluster.read)
    stable_after = cluster.read.get("Deployment", "circle-stable")
    assert stable_after is not None
    assert stable_after["spec"] == stable_before["spec"]
    assert stable_after["metadata"]["generation"] == stable_before["metadata"]["generation"]
    assert cluster.snapshot() == before  # nothing else either: same objects, same resourceVersions
    assert cluster.store.aliases() == {"production": 1}
    assert not [p for p in cluster.proxied("circle-canary") if p.version == 2]  # never checked
    assert classes(cluster.predict("circle-stable")) == [1, 0]


def test_kube_flow_promotion_that_stalls_rolls_stable_back(cluster: Cluster) -> None:
    """The canary passes, but the stable Deployment's rollout to v2 fails: stable goes back to v1,
    and its old pods serve v1 all along."""
    rollout(1, cluster.config)
    stable_before = cluster.read.get("Deployment", "circle-stable")
    assert stable_before is not None
    cluster.kube.emulator.hold("circle-stable", deadline_exceeded=True)  # only new generations are held

    with pytest.raises(RolloutFailed, match=r"^circle v2 RolledBack: stable circle v2: deployment circle-stable "
                                            r"exceeded its progress deadline: .*; stable v1 keeps serving$"):
        rollout(2, cluster.config)

    assert [p.version for p in cluster.proxied("circle-canary") if p.upstream][-1] == 2  # the check passed
    assert_canary_gone(cluster.read)
    stable = assert_served(cluster.read, "stable", 1)
    assert stable["spec"] == stable_before["spec"]
    assert stable["metadata"]["generation"] == stable_before["metadata"]["generation"] + 2  # to v2 and back
    assert cluster.store.aliases() == {"production": 1}
    assert classes(cluster.predict("circle-stable")) == [1, 0]
    assert cluster.proxied("circle-stable")[-1].upstream == "/v1/models/circle/versions/1:predict"

    cluster.kube.emulator.release("circle-stable")  # the rollout back to v1 completes
    wait_for(lambda: rollout_state(cluster.read.get("Deployment", "circle-stable") or stable).done, 10,
             "stable rolled out at v1")
    assert cluster.target().serving(MODEL) == Serving(stable=1, canary=None)


def test_kube_flow_canary_failing_the_check_is_rolled_back(cluster: Cluster) -> None:
    rollout(1, cluster.config)
    golden_file = cluster.store.version_dir(2) / GOLDEN_FILE
    golden = json.loads(golden_file.read_text())
    golden["probability"] = [p + 0.2 if p < 0.5 else p - 0.2 for p in golden["probability"]]
    golden_file.write_text(json.dumps(golden))
    before = cluster.snapshot()
    stable_before = cluster.read.get("Deployment", "circle-stable")
    assert stable_before is not None

    with pytest.raises(RolloutFailed, match=r"^circle v2 RolledBack: 20/20 golden predictions differ from the export;"):
        rollout(2, cluster.config)

    checked = [p for p in cluster.proxied("circle-canary") if p.upstream and p.version == 2]
    assert checked and all(p.status == 200 for p in checked)  # v2 answered: its answers were wrong
    assert_canary_gone(cluster.read)
    stable_after = cluster.read.get("Deployment", "circle-stable")
    assert stable_after is not None
    assert stable_after["spec"] == stable_before["spec"]
    assert stable_after["metadata"]["generation"] == stable_before["metadata"]["generation"]
    assert cluster.snapshot() == before
    assert cluster.store.aliases() == {"production": 1}
    assert classes(cluster.predict("circle-stable")) == [1, 0]
    assert cluster.proxied("circle-stable")[-1].upstream == "/v1/models/circle/versions/1:predict"


def test_kube_flow_check_refused_by_the_proxy_is_rolled_back(cluster: Cluster) -> None:
    """A Role without services/proxy: the canary is ready, but the check cannot reach it."""
    rollout(1, cluster.config)
    before = cluster.snapshot()
    cluster.kube.emulator.forbid("create", "services/proxy", "circle-canary")

    with pytest.raises(RolloutFailed, match=r"^circle v2 RolledBack: 0/20 golden predictions within 0\.0001; "
                                            r"2/2 requests failed \(first: HTTP 403: "):
        rollout(2, cluster.config)

    assert_canary_gone(cluster.read)
    assert cluster.snapshot() == before
    assert cluster.store.aliases() == {"production": 1}
    assert classes(cluster.predict("circle-stable")) == [1, 0]


def test_kube_flow_retries_transient_api_errors(cluster: Cluster) -> None:
    rollout(1, cluster.config)
    emulator = cluster.kube.emulator
    emulator.fail("PATCH", r"/jobs/circle-copy-v2-", 500)
    emulator.fail("PATCH", r"/deployments/circle-canary$", 409, times=2)
    emulator.fail("GET", r"/deployments/circle-canary$", 429, retry_after="0")
    emulator.fail("PATCH", r"/configmaps/circle-stable-config$", 503)
    emulator.fail("GET", r"/deployments/circle-stable$", 500, times=2)
    emulator.fail("DELETE", r"/deployments/circle-canary$", 502)
    emulator.fail("DELETE", r"/configmaps/circle-canary-config$", 504)

    result = rollout(2, cluster.config)

    assert (result.phase, result.stable_after) == (Phase.PROMOTED, 2)
    assert [(f.path.pattern, f.times) for f in emulator.faults if f.times] == []  # every fault was met
    assert_served(cluster.read, "stable", 2)
    assert_canary_gone(cluster.read)
    assert cluster.store.aliases() == {"production": 2}
    assert requests_to(cluster.kube, "DELETE", "/deployments/circle-canary") == 2 + 1  # v1's promotion, v2's retried
    assert classes(cluster.predict("circle-stable")) == [1, 0]


def test_kube_flow_forbidden_patch_fails_with_one_clear_line(cluster: Cluster, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    rollout(1, cluster.config)
    before = cluster.snapshot()
    patches = requests_to(cluster.kube, "PATCH", "/deployments/circle-canary")
    cluster.kube.emulator.forbid("patch", "deployments")
    config_file = tmp_path / "pipeline.json"
    config_file.write_text(cluster.config.model_dump_json())
    capsys.readouterr()

    assert rollout_module.main(["2", "--config", str(config_file)]) == 1

    stderr = capsys.readouterr().err
    assert stderr == ('error: circle v2 RolledBack: forbidden: cannot patch deployments.apps "circle-canary" in '
                      'namespace "aviary" (HTTP 403): check the aviary Role; stable v1 keeps serving\n')
    assert requests_to(cluster.kube, "PATCH", "/deployments/circle-canary") == patches + 1  # refused, not retried
    assert cluster.snapshot() == before
    assert cluster.store.aliases() == {"production": 1}
    assert classes(cluster.predict("circle-stable")) == [1, 0]


def test_kube_flow_rerun_after_promotion_changes_nothing(cluster: Cluster) -> None:
    rollout(1, cluster.config)
    before, writes = cluster.snapshot(), cluster.writes()
    history = cluster.kube.call(lambda: {k: len(o.history) for k, o in cluster.kube.emulator.objects.items()})

    again = rollout(1, cluster.config)

    assert (again.phase, again.reason, again.stable_before, again.stable_after) == \
        (Phase.PROMOTED, "already production", 1, 1)
    assert cluster.writes() == writes  # not one write request
    assert cluster.snapshot() == before
    assert cluster.kube.call(lambda: {k: len(o.history) for k, o in cluster.kube.emulator.objects.items()}) == history
    assert cluster.store.aliases() == {"production": 1}

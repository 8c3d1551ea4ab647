"""Traffic steps on a real API server: a canary without the Gateway API takes no live traffic before
its first step (its readiness gate), then its share by replica ratio, each step judged on every serving pod's own metrics (read through the pod proxy with the
Role's token), and is promoted or rolled back by itself, leaving stable's shape and pin as they were.
With the Gateway API the route's weights are the steps and its mirror goes to a shadow comparator
that really compares the canary's predictions with stable's."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests
import yaml

from aviary.record import records
from aviary.rollout import Phase
from aviary.store import GOLDEN_FILE
from aviary.targets import kube_objects as objects
from aviary.targets.base import TargetError
from aviary.targets.kube_status import has_condition
from aviary.targets.kubernetes import KubernetesTarget
from benchmarks.canaries import drift, fail_out_of_range
from tests.helpers import wait_for

from .real import MODEL, STEPS, Namespace
from .test_real_cluster import RolloutFailed, assert_no_canary, assert_stable, fast_target, ns, promoted, rollout

pytestmark = pytest.mark.slow
__all__ = ["ns"]  # the fixture, shared with test_real_cluster
BAD = 9
WRONG = 6



def stable_shape(ns: Namespace) -> tuple[Any, ...]:
    """What the overlay owns of stable and what the flow pinned, as the API server has them."""
    stable = ns.get("deployment", f"{MODEL}-stable")
    assert stable is not None
    ours = [m for m in stable["metadata"]["managedFields"] if m["manager"] == "aviary"]
    assert "f:replicas" not in yaml.safe_dump([m["fieldsV1"] for m in ours])
    return stable["spec"]["replicas"], stable["spec"]["template"]["spec"]["containers"][0]["resources"], ns.pinned()


def test_real_good_canary_is_promoted_through_replica_steps(ns: Namespace) -> None:
    promoted(ns, 1)
    before = stable_shape(ns)
    # One stable replica: 10% asks for one canary replica (50%), 75% for three.
    result = rollout(2, ns.config(rollout={"canary": {**STEPS, "steps": [10, 75]}}))
    assert result.phase == Phase.PROMOTED, result
    (record,) = records(ns.store, 2)
    assert [(s.canary_percent, s.verdict) for s in record.steps] == [(50, "passed"), (75, "passed")]
    for step in record.steps:
        assert step.canary and step.canary["requests"] >= 10 and step.canary["errors"] == 0
        assert step.stable and step.stable["requests"] > 0
        assert any("shadow comparison skipped: kubernetes: a Service cannot mirror" in r for r in step.reasons)
    shifts = [t["reason"] for t in record.timeline if t["phase"] == "Baking" and "step" in str(t["reason"])]
    assert any("75% of unversioned requests" in str(r) for r in shifts), record.timeline
    assert_stable(ns, 2)
    assert_no_canary(ns)
    replicas, resources, _pin = before
    assert stable_shape(ns)[:2] == (replicas, resources)


@contextmanager
def clients(ns: Namespace, rows: list[dict[str, float]], every_s: float, service: str = MODEL) -> Iterator[list[int]]:
    """Clients on the model's Service (or `service`), through the API server's proxy, until the block ends."""
    codes: list[int] = []

    def send(stop: threading.Event) -> None:
        while not stop.wait(every_s):
            try:
                codes.append(ns.proxy(service, f"/v1/models/{MODEL}:predict", {"instances": rows}).status_code)
            except OSError:
                codes.append(0)

    with in_background(send):
        yield codes


@contextmanager
def in_background(work: Callable[[threading.Event], None]) -> Iterator[None]:
    """`work(stop)` on a thread for the length of the block; it returns soon after `stop` is set."""
    stop = threading.Event()
    thread = threading.Thread(target=work, args=(stop,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=15)


def test_real_canary_failing_live_requests_is_rolled_back_at_its_first_step(ns: Namespace) -> None:
    promoted(ns, 1)
    before = stable_shape(ns)
    # v9: v2 re-wrapped to fail every request with x >= 2, which the golden set never holds. The pods'
    # volume is the session's: no other test uses this number (a retrain there exports v4).
    shutil.copytree(ns.store.version_dir(2), ns.store.version_dir(BAD))
    fail_out_of_range(ns.store.version_dir(BAD))
    config = ns.config(rollout={"canary": {**STEPS, "steps": [10, 50], "failed_checks": 1, "load_rps": 5}})
    with clients(ns, [{"x": 2.5, "y": 0.0}], every_s=0.1) as codes, \
            pytest.raises(RolloutFailed, match=r"RolledBack: 50% step, check 1/1 failed: canary error rate") as failed:
        rollout(BAD, config)
    assert "\n" not in str(failed.value)
    assert {400, 200} <= set(codes)  # the canary's share failed, stable's answered
    (record,) = records(ns.store, BAD)
    (step,) = record.steps
    assert step.canary_percent == 50 and step.verdict == "failed" and step.canary and step.canary["errors"] > 0
    assert step.stable and step.stable["errors"] == 0
    assert_no_canary(ns)
    assert_stable(ns, 1)
    assert stable_shape(ns) == before


@contextmanager
def live_endpoints(ns: Namespace) -> Iterator[dict[str, set[bool]]]:
    """Every state the live Service's EndpointSlices pass through while the block runs (a watch, so
    none is missed between polls): pod name -> the `ready` values it was listed with."""
    session = ns.plane.admin()
    url = f"{ns.plane.url}/apis/discovery.k8s.io/v1/namespaces/{ns.name}/endpointslices"
    params = {"labelSelector": f"kubernetes.io/service-name={MODEL}"}
    seen: dict[str, set[bool]] = {}

    def note(slice_: dict[str, Any]) -> None:
        for endpoint in slice_.get("endpoints") or []:
            name = (endpoint.get("targetRef") or {}).get("name", "?")
            seen.setdefault(name, set()).add(bool((endpoint.get("conditions") or {}).get("ready")))

    listed = session.get(url, params=params, timeout=10).json()
    for item in listed.get("items") or []:
        note(item)

    def watch(stop: threading.Event) -> None:
        # A short read timeout ends each quiet watch, which resumes from the last version seen, so the
        # thread ends soon after the block (closing a stream another thread reads would block).
        version = listed["metadata"]["resourceVersion"]
        while not stop.is_set():
            try:
                with session.get(url, params={**params, "watch": "1", "resourceVersion": version},
                                 stream=True, timeout=(10, 1)) as stream:
                    for line in stream.iter_lines():
                        event = json.loads(line) if line else {}
                        if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                            version = event["object"]["metadata"]["resourceVersion"]
                            note(event["object"])
            except requests.RequestException:
                continue

    with in_background(watch):
        yield seen


def test_real_canary_takes_no_live_traffic_before_a_traffic_step(ns: Namespace) -> None:
    """Without the Gateway API, as with its weight 0: a canary that fails its golden-set check never
    was a ready endpoint of the live Service, nor one promoted by a rollout with no traffic steps."""
    promoted(ns, 1)
    # v6: v2 whose golden answers are moved by 0.5, so the check fails on what the canary answers.
    # No other test uses this number.
    shutil.copytree(ns.store.version_dir(2), ns.store.version_dir(WRONG))
    golden = ns.store.version_dir(WRONG) / GOLDEN_FILE
    answers = json.loads(golden.read_text())
    answers["probability"] = [(p + 0.5) % 1.0 for p in answers["probability"]]
    golden.write_text(json.dumps(answers))
    with live_endpoints(ns) as seen:
        with pytest.raises(RolloutFailed, match=r"RolledBack: .*golden predictions differ"):
            rollout(WRONG, ns.config())
        assert_no_canary(ns)
        assert_stable(ns, 1)
        result = rollout(2, ns.config(rollout={"canary": {**STEPS, "steps": []}}))
        assert result.phase == Phase.PROMOTED, result
        (record,) = records(ns.store, 2)
        assert not record.steps
        assert_stable(ns, 2)
    canaries = {name: ready for name, ready in seen.items() if name.startswith(f"{MODEL}-canary-")}
    assert len(canaries) == 2, seen  # both canaries were listed, as pods of the selector ...
    assert all(ready == {False} for ready in canaries.values()), canaries  # ... and never ready
    assert any(True in ready for name, ready in seen.items() if name.startswith(f"{MODEL}-stable-")), seen


def test_real_canary_pod_replaced_mid_step_is_let_into_the_live_service(ns: Namespace) -> None:
    """A canary pod deleted as soon as it takes live traffic is replaced by its Deployment, and the
    replacement is let into the live Service within the same step, not left out until the next."""
    promoted(ns, 1)
    deleted: list[str] = []

    def delete_first_live(stop: threading.Event) -> None:
        while not stop.wait(0.1):
            live = [p["metadata"]["name"] for p in ns.live_pods("canary")
                    if all(has_condition(p, c) for c in ("Ready", objects.LIVE_GATE))]
            if live:
                ns.plane.kubectl("-n", ns.name, "delete", "pod", live[0], "--grace-period=0", "--force")
                deleted.append(live[0])
                return

    config = ns.config(rollout={"canary": {**STEPS, "steps": [50], "bake_s": 12, "max_bake_s": 60}})
    with live_endpoints(ns) as seen, in_background(delete_first_live):
        result = rollout(2, config)
    assert result.phase == Phase.PROMOTED, result
    assert len(deleted) == 1
    successors = {name for name, ready in seen.items()
                  if name.startswith(f"{MODEL}-canary-") and name != deleted[0] and True in ready}
    assert successors, seen  # a ready endpoint of the live Service before the canary was promoted away
    (record,) = records(ns.store, 2)
    (step,) = record.steps
    assert step.verdict == "passed" and step.canary and step.canary["requests"] >= STEPS["min_requests"]
    assert_stable(ns, 2)
    assert_no_canary(ns)


def test_real_scrape_skips_a_pod_gone_before_its_metrics_are_read_but_not_a_serving_pod_that_fails(
        ns: Namespace, monkeypatch: pytest.MonkeyPatch) -> None:
    """Prometheus's way: a pod deleted between the list and its read is no scrape failure (what it
    served is in the window up to its last scrape); a serving pod that does not answer is one."""
    promoted(ns, 1)
    target = fast_target(ns.config())
    assert isinstance(target, KubernetesTarget)
    (pod,) = [p["metadata"]["name"] for p in ns.live_pods("stable")]
    ns.reached(MODEL, 2)
    page = target.scrape(MODEL)
    assert list(page) == [pod] and 'version="1"' in page[pod]  # by pod, labelled with the version it serves
    read = target.api.pod_get
    monkeypatch.setattr(target.api, "pod_get", lambda name, _port, path: read(name, 1, path))  # nothing listens
    with pytest.raises(TargetError, match=r"pods/proxy"):
        target.scrape(MODEL)

    def deleted_first(name: str, port: int, path: str) -> str:
        ns.plane.kubectl("-n", ns.name, "delete", "pod", name, "--grace-period=0", "--force")
        return read(name, port, path)

    monkeypatch.setattr(target.api, "pod_get", deleted_first)
    assert target.scrape(MODEL) == {}


# With the Gateway API: the route's weights are the steps, exact, and go back to stable alone.

HTTPROUTE_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "httproutes.gateway.networking.k8s.io",  # a *.k8s.io group needs the approval mark
                 "annotations": {"api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/gateway-api/pull/2466"}},
    "spec": {"group": "gateway.networking.k8s.io", "scope": "Namespaced",
             "names": {"kind": "HTTPRoute", "plural": "httproutes", "singular": "httproute", "listKind": "HTTPRouteList"},
             "versions": [{"name": "v1", "served": True, "storage": True,
                           "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
}


@pytest.fixture
def gateway_api(ns: Namespace) -> Iterator[None]:
    """A minimal HTTPRoute CRD (no Gateway controller), removed after the test: other tests need it absent."""
    session = ns.plane.admin()

    def served() -> bool:
        return session.get(f"{ns.plane.url}/apis/gateway.networking.k8s.io/v1", timeout=5).status_code == 200

    ns.plane.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(HTTPROUTE_CRD))
    wait_for("the HTTPRoute CRD served", served, timeout_s=30, every_s=0.1)
    try:
        yield
    finally:
        ns.plane.kubectl("delete", "crd", HTTPROUTE_CRD["metadata"]["name"], "--wait=true")
        wait_for("the HTTPRoute CRD gone", lambda: not served(), timeout_s=30, every_s=0.1)


def weights(ns: Namespace) -> tuple[dict[str, int], list[Any]]:
    route = ns.get("httproute", MODEL)
    assert route is not None
    (rule,) = route["spec"]["rules"]
    return {b["name"]: b["weight"] for b in rule["backendRefs"]}, rule.get("filters") or []


def assert_no_shadow(ns: Namespace) -> None:
    for kind, name in (("deployment", f"{MODEL}-shadow"), ("service", f"{MODEL}-shadow"),
                       ("configmap", f"{MODEL}-shadow-config")):
        assert ns.get(kind, name) is None, f"{kind} {name} left behind"
    assert ns.items("pods", f"app=aviary-shadow,model={MODEL}") == []


# No Gateway data plane here: the test mirrors to the shadow comparator's Service itself, as the
# route's RequestMirror filter would, near the circle's edge, where a drifting canary moves.
EDGE_ROWS = [{"x": x, "y": 0.0} for x in (0.6, 0.8, 1.0, 1.2)]
SHADOW = {"mirror_percent": 10, "min_rows": 20}
READY_S = 180  # the comparator imports TensorFlow on a busy machine


def mirrored(ns: Namespace) -> Any:
    return clients(ns, EDGE_ROWS, every_s=0.1, service=f"{MODEL}-shadow")


def test_real_gateway_route_weights_are_the_steps(ns: Namespace, gateway_api: None) -> None:
    promoted(ns, 1)
    before = stable_shape(ns)
    target = fast_target(ns.config(canary_weight=20, rollout={"ready_timeout_s": READY_S}))
    target.publish(MODEL, 2, ns.store.version_dir(2))
    target.set_traffic(MODEL, 0, 0)
    target.deploy_canary(MODEL, 2, 1)
    assert weights(ns) == ({f"{MODEL}-stable": 100}, [])  # stable alone while the canary is checked
    assert ns.get("deployment", f"{MODEL}-shadow") is None  # no comparator before anything is mirrored
    assert target.set_traffic(MODEL, 25, 10) == 25
    assert weights(ns) == ({f"{MODEL}-stable": 75, f"{MODEL}-canary": 25}, [{"type": "RequestMirror", "requestMirror": {
        "backendRef": {"name": f"{MODEL}-shadow", "port": 8501}, "percent": 10}}])
    (pod,) = ns.items("pods", f"app=aviary-shadow,model={MODEL}")
    assert ns.endpoint_ips(f"{MODEL}-shadow") == {pod["status"]["podIP"]}
    assert pod["status"]["podIP"] not in ns.endpoint_ips(MODEL)  # never answers clients
    target.roll_back(MODEL, 1)
    assert weights(ns) == ({f"{MODEL}-stable": 100}, [])
    assert_no_canary(ns)
    assert_no_shadow(ns)

    config = ns.config(canary_weight=20, rollout={"ready_timeout_s": READY_S,
                                                  "canary": {**STEPS, "steps": [10, 50], "shadow": SHADOW}})
    with mirrored(ns):
        result = rollout(2, config)
    assert result.phase == Phase.PROMOTED, result
    (record,) = records(ns.store, 2)
    assert [s.canary_percent for s in record.steps] == [10, 50]
    for step in record.steps:
        assert step.shadow and step.shadow["rows"] >= 20, step
        assert step.shadow["agreement"] == 1.0 and step.shadow["mean_abs_diff"] == 0.0  # v2 is v1 re-exported
        assert not any("shadow comparison skipped" in r for r in step.reasons)
        assert step.stable and step.stable["requests"] > 0
    assert weights(ns) == ({f"{MODEL}-stable": 100}, [])
    assert_stable(ns, 2)
    assert_no_canary(ns)
    assert_no_shadow(ns)
    assert stable_shape(ns)[:2] == before[:2]


DRIFT = 7


def test_real_gateway_drifting_canary_is_rolled_back_by_the_shadow_comparison(ns: Namespace, gateway_api: None) -> None:
    promoted(ns, 1)
    before = stable_shape(ns)
    # v7: v2 with probabilities 0.3 higher near the circle's edge; the golden set passes. No other test uses 7.
    shutil.copytree(ns.store.version_dir(2), ns.store.version_dir(DRIFT))
    drift(ns.store.version_dir(DRIFT))
    config = ns.config(canary_weight=20, rollout={"ready_timeout_s": READY_S, "canary": {
        **STEPS, "steps": [10, 50], "failed_checks": 1, "shadow": SHADOW}})
    with mirrored(ns), pytest.raises(RolloutFailed, match=r"RolledBack: 10% step, check 1/1 failed: shadow "
                                                          r"(class agreement|mean|p99|positive rate)"):
        rollout(DRIFT, config)
    (record,) = records(ns.store, DRIFT)
    (step,) = record.steps
    assert step.verdict == "failed" and step.shadow and step.shadow["mean_abs_diff"] > 0.1, step
    assert weights(ns) == ({f"{MODEL}-stable": 100}, [])
    assert_stable(ns, 1)
    assert_no_canary(ns)
    assert_no_shadow(ns)
    assert stable_shape(ns) == before

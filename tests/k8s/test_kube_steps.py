"""Traffic steps on Kubernetes without a server: the replica arithmetic, the route, the relabelled pages."""

from __future__ import annotations

import pytest

from aviary.analysis import parse_metrics
from aviary.targets import kube_objects as objects
from aviary.targets.kube_metrics import relabel, shadow_series


@pytest.mark.parametrize(("percent", "stable", "replicas", "share"), [
    (0, 3, 0, 0),
    (10, 1, 1, 50),  # at least one pod: one stable pod leaves 50% as the nearest share
    (50, 1, 1, 50),
    (75, 1, 3, 75),
    (10, 3, 1, 25),
    (25, 3, 1, 25),
    (50, 3, 3, 50),
    (10, 9, 1, 10),
    (20, 10, 3, 23),  # 2.5 wanted: 3/13 = 23.1% is nearer 20% than 2/12 = 16.7%
    (99, 2, 100, 98),  # capped
])
def test_kube_canary_replicas_nearest_ratio(percent: int, stable: int, replicas: int, share: int) -> None:
    assert objects.canary_replicas(percent, stable) == (replicas, share)


def test_kube_route_weights_and_mirror() -> None:
    route = objects.http_route("aviary", "circle", "gw", 25, 10)
    (rule,) = route["spec"]["rules"]
    assert [(b["name"], b["weight"]) for b in rule["backendRefs"]] == [("circle-stable", 75), ("circle-canary", 25)]
    assert rule["filters"] == [{"type": "RequestMirror", "requestMirror": {
        "backendRef": {"name": "circle-shadow", "port": 8501}, "percent": 10}}]
    (rule,) = objects.http_route("aviary", "circle", "gw", None)["spec"]["rules"]
    assert [(b["name"], b["weight"]) for b in rule["backendRefs"]] == [("circle-stable", 100)]
    assert "filters" not in rule


TF_SERVING_PAGE = """# TYPE :tensorflow:serving:request_count counter
:tensorflow:serving:request_count{model_name="circle",status="OK"} 7
:tensorflow:serving:request_count{model_name="circle",status="INVALID_ARGUMENT"} 3
:tensorflow:serving:request_count{model_name="other",status="OK"} 5
# TYPE :tensorflow:serving:request_latency histogram
:tensorflow:serving:request_latency_bucket{model_name="circle",API="predict",entrypoint="REST",le="1000"} 6
:tensorflow:serving:request_latency_bucket{model_name="circle",API="predict",entrypoint="REST",le="+Inf"} 10
:tensorflow:serving:request_latency_sum{model_name="circle",API="predict",entrypoint="REST"} 9000
:tensorflow:serving:request_latency_count{model_name="circle",API="predict",entrypoint="REST"} 10
"""


def test_kube_pod_pages_are_attributed_to_their_version_and_summed() -> None:
    """Real TF Serving labels no version: each pod's page gets its track's, and pods of a version add up."""
    assert parse_metrics([TF_SERVING_PAGE], "circle").versions == {}
    pages = [relabel(TF_SERVING_PAGE, {"version": "1"}), relabel(TF_SERVING_PAGE, {"version": "1"}),
             relabel(TF_SERVING_PAGE, {"version": "2"})]
    snapshot = parse_metrics(pages, "circle")
    assert snapshot.versions[1].requests == {"OK": 14.0, "INVALID_ARGUMENT": 6.0}
    assert snapshot.versions[2].requests == {"OK": 7.0, "INVALID_ARGUMENT": 3.0}
    assert snapshot.versions[1].latency.count == 20 and snapshot.versions[1].latency.buckets[0] == (1000.0, 12.0)
    # A server that labels versions itself is believed.
    labelled = TF_SERVING_PAGE.replace('status="OK"}', 'status="OK",version="9"}')
    assert set(parse_metrics([relabel(labelled, {"version": "1"})], "circle").versions) == {1, 9}


COMPARATOR_PAGE = """# TYPE :tensorflow:serving:request_count counter
:tensorflow:serving:request_count{model_name="circle",status="OK",version="1"} 40
# TYPE :aviary:serving:shadow:compared_count counter
:aviary:serving:shadow:compared_count_total{model_name="circle",stable_version="1",canary_version="2",output="probability"} 40
:aviary:serving:shadow:disagreement_count_total{model_name="circle",stable_version="1",canary_version="2",output="probability"} 4
"""


def test_kube_shadow_comparator_counts_only_its_comparison() -> None:
    """The comparator answers mirrored requests with stable: its request counters would double stable's."""
    snapshot = parse_metrics([shadow_series(COMPARATOR_PAGE)], "circle")
    assert snapshot.versions == {}
    assert snapshot.shadow[2].rows == 40 and snapshot.shadow[2].disagreements == 4


def test_kube_shadow_comparator_objects() -> None:
    config, deployment, service = objects.shadow_objects(
        namespace="aviary", model="circle", stable=1, canary=2, base_path="/models/circle", image="aviary:0.1.0",
        store_claim="aviary-models", store_mount="/models", ready_timeout_s=60)
    assert objects.pinned_versions(config["data"][objects.CONFIG_FILE]) == [1, 2]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "aviary.serving"] and "--mirror_percent=100" in container["args"]
    assert service["metadata"]["name"] == deployment["metadata"]["name"] == "circle-shadow"
    # Never behind the model's Service, which selects every serving pod of the model.
    live = objects.service("aviary", "circle", None)["spec"]["selector"]
    assert not live.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def _pod(name: str, annotations: dict[str, str], conditions: dict[str, str]) -> dict[str, object]:
    return {"metadata": {"name": name, "annotations": annotations},
            "status": {"conditions": [{"type": k, "status": v} for k, v in conditions.items()]}}


def test_kube_gated_canary_is_rolled_out_once_loaded_and_live_once_its_gate_is_open() -> None:
    """A gated canary is never available before its gate opens: judged on its pods, never on the
    progress deadline (which passes while it waits to be let in)."""
    from aviary.targets.kube_status import gated_rollout_state, pod_problems

    deployment = objects.deployment(namespace="aviary", model="circle", track="canary", version=2, config_hash="h",
                                    image="tf", replicas=2, store_claim="c", store_mount="/models",
                                    ready_timeout_s=60, gated=True)
    assert objects.gated(deployment)
    assert deployment["spec"]["template"]["spec"]["readinessGates"] == [{"conditionType": "aviary.dev/live"}]
    deployment["metadata"]["generation"] = 1
    deployment["status"] = {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 0,
                            "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]}
    current = deployment["spec"]["template"]["metadata"]["annotations"]
    loaded = _pod("a", current, {"ContainersReady": "True", "Ready": "False"})
    loading = _pod("b", current, {"ContainersReady": "False", "Ready": "False"})
    old = _pod("c", {**current, objects.HASH_KEY: "old"}, {"ContainersReady": "True", "Ready": "True"})

    def state(*pods: dict[str, object], live: bool = False) -> tuple[bool, bool, str]:
        s = gated_rollout_state(deployment, list(pods), objects.LIVE_GATE, live)  # type: ignore[arg-type]
        return s.done, s.failed, s.message

    assert state(loaded, loading) == (False, False, "1 of 2 pods of circle-canary loaded (ContainersReady)")
    assert state(loaded, old)[:2] == (False, False)
    assert state(loaded, loaded) == (True, False, "deployment circle-canary rolled out, its pods held back by aviary.dev/live")
    assert state(loaded, loaded, live=True)[:2] == (False, False)
    live = _pod("d", current, {"ContainersReady": "True", "Ready": "True", objects.LIVE_GATE: "True"})
    assert state(live, live, live=True)[:2] == (True, False)
    assert pod_problems([loaded, loading]) == []  # waiting for its gate is no problem
    quota = {**deployment, "status": {**deployment["status"], "conditions": [
        {"type": "ReplicaFailure", "status": "True", "message": "exceeded quota"}]}}
    assert gated_rollout_state(quota, [], objects.LIVE_GATE, False).failed
    # The Gateway API's canary and the stable track carry no gate.
    assert not objects.gated(objects.deployment(namespace="aviary", model="circle", track="canary", version=2,
                                                config_hash="h", image="tf", replicas=1, store_claim="c",
                                                store_mount="/models", ready_timeout_s=60))


def test_kube_only_the_canary_service_publishes_not_ready_pods_and_the_gate_patch_merges() -> None:
    assert objects.service("aviary", "circle", "canary", True)["spec"]["publishNotReadyAddresses"] is True
    assert objects.service("aviary", "circle", "canary", False)["spec"]["publishNotReadyAddresses"] is False
    assert "publishNotReadyAddresses" not in objects.service("aviary", "circle", None)["spec"]
    patch = objects.live_condition("2026-01-01T00:00:00Z")
    assert patch == {"status": {"conditions": [{"type": "aviary.dev/live", "status": "True", "reason": "CanaryTrafficStep",
                                                "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}

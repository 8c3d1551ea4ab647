"""The flows against a real API server (v1.32: admission, RBAC, server-side apply, the Deployment,
ReplicaSet, Job, endpoint, disruption and garbage-collection controllers), with the project Role's
token and nothing more. A test kubelet runs the pods; their addresses answer from a network
namespace, so the check and the promotion go through the API server's service proxy for real.
Every test gets its own namespace, bootstrapped with `kubectl apply -k` from an overlay."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

import aviary.flows.rollout as rollout_module
from aviary.config import PipelineConfig
from aviary.flows.deployed import canary_deploy
from aviary.flows.rollout import RolloutFailed, rollout
from aviary.model_config import parse_model_config
from aviary.rollout import Phase
from aviary.targets import kube_objects as objects
from aviary.targets.base import Serving, Target
from aviary.targets.kubernetes import KubernetesTarget
from tests.helpers import FAST_TRAIN, wait_for

from .real import MODEL, REPO, SECOND, Namespace, RealCluster, new_namespace

pytestmark = pytest.mark.slow

POINTS = {"instances": [{"x": 0.0, "y": 0.0}, {"x": 1.4, "y": 1.4}]}  # deep inside the circle, far outside


def fast_target(config: PipelineConfig) -> Target:
    """What `build_target` makes (credentials through the kubeconfig), polling faster."""
    return KubernetesTarget.from_config(config.rollout.kubernetes, config.export.model_name,
                                        promote_timeout_s=config.rollout.ready_timeout_s, poll_interval_s=0.1,
                                        backoff_s=0.05)


@pytest.fixture
def ns(real_cluster: RealCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
       request: pytest.FixtureRequest) -> Namespace:
    monkeypatch.setattr(rollout_module, "build_target", fast_target)
    overlay = getattr(request, "param", "dev")
    return new_namespace(real_cluster, tmp_path, overlay)


def promoted(ns: Namespace, version: int, **kube: Any) -> None:
    result = rollout(version, ns.config(**kube))
    assert result.phase == Phase.PROMOTED, result
    assert_stable(ns, version)


def assert_stable(ns: Namespace, version: int) -> None:
    """The API server's objects pin `version`, and every live stable pod runs that pin and is in the Service."""
    versions, annotation, config_hash = ns.pinned()
    assert (versions, annotation) == ([version], str(version))
    pods = ns.live_pods("stable")
    assert pods and {p["metadata"]["annotations"]["aviary.dev/config-hash"] for p in pods} == {config_hash}
    def stable_only() -> bool:
        return ns.endpoint_ips(ns.model) == {p["status"]["podIP"] for p in ns.live_pods("stable")}

    wait_for("live traffic on stable pods only", stable_only, timeout_s=10, every_s=0.1)


def assert_no_canary(ns: Namespace) -> None:
    for kind, name in (("deployment", f"{ns.model}-canary"), ("configmap", f"{ns.model}-canary-config")):
        assert ns.get(kind, name) is None, f"{kind} {name} left behind"
    assert ns.live_pods("canary") == []
    assert not ns.store.aliases().get("canary")


def assert_no_copy_leftovers(ns: Namespace) -> None:
    assert ns.items("jobs") == []
    assert ns.items("configmaps", "app=aviary-copy") == []


# The normal path.


def render_canary_deploy(event_resource: dict[str, str], payload: dict[str, Any]) -> dict[str, Any]:
    """canary-deploy's parameters for an event, rendered as Prefect's run-deployment action does."""
    import uuid

    from prefect.server.events.actions import RunDeployment
    from prefect.server.events.schemas.events import ReceivedEvent
    from prefect.types._datetime import now
    from prefect.utilities.schema_tools.hydration import HydrationContext, hydrate

    doc = yaml.safe_load((REPO / "prefect.yaml").read_text())
    (deployment,) = [d for d in doc["deployments"] if d["name"] == "canary-deploy"]
    (trigger,) = deployment["triggers"]
    assert all(event_resource.get(k) == v or v.endswith("*") for k, v in trigger["match"].items())
    parameters = copy.deepcopy(trigger["parameters"])
    RunDeployment._upgrade_v1_templates(parameters)
    event = ReceivedEvent(occurred=now("UTC"), event="aviary.model.exported", resource=event_resource,
                          payload=payload, id=uuid.uuid4())
    return hydrate(parameters, HydrationContext(raise_on_error=True, render_jinja=True, jinja_context={"event": event}))


def test_real_export_event_canary_deploys_checks_and_promotes_on_kubernetes(
        ns: Namespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """retrain (hand-off) -> aviary.model.exported -> canary-deploy's parameters -> rollout on the cluster."""
    import aviary.flows.retrain as retrain_module
    from aviary.data.generate import generate


    events: list[dict[str, Any]] = []
    monkeypatch.setattr(retrain_module, "emit_event", lambda **event: events.append(event))
    data = tmp_path / "circle.csv"
    generate(rows=600, seed=3, noise=0.0).to_csv(data, index=False)
    config = ns.config(rollout={"hand_off": True, "ready_timeout_s": 25})
    config = PipelineConfig.model_validate({
        **config.model_dump(), "data": {"path": data, "min_rows": 100}, "train": FAST_TRAIN.model_dump(),
        "runs_dir": tmp_path / "runs", "gate": {"max_regression": 1.0},  # judged against v3 of another data set
    })
    result = retrain_module.retrain(config)
    assert result.blessed and result.rollout is None  # handed off: nothing rolled out yet
    assert ns.get("deployment", f"{MODEL}-canary") is None
    (event,) = events

    parameters = render_canary_deploy(event["resource"], event["payload"])
    deployed = canary_deploy(**parameters)  # what the triggered canary-deploy run does, on its worker

    assert deployed.phase == Phase.PROMOTED and deployed.version == result.version
    assert parameters["rollout"]["target"] == "kubernetes"
    stable = ns.get("deployment", f"{MODEL}-stable")
    assert stable is not None
    assert stable["spec"]["progressDeadlineSeconds"] == math.ceil(config.rollout.ready_timeout_s)
    assert ns.store.aliases().get("production") == result.version
    assert_stable(ns, result.version)
    assert_no_canary(ns)
    assert_no_copy_leftovers(ns)
    answer = ns.proxy(MODEL, f"/v1/models/{MODEL}:predict", POINTS)
    assert answer.status_code == 200, answer.text
    inside, outside = answer.json()["predictions"]
    assert inside["class"] == 1 and outside["class"] == 0


@pytest.mark.parametrize("ns", ["prod"], indirect=True)
def test_real_overlay_owns_sizing_and_reapplying_it_never_moves_the_pin(ns: Namespace) -> None:
    promoted(ns, 1, rollout={"ready_timeout_s": 90})  # three replicas roll one at a time
    promoted(ns, 2, rollout={"ready_timeout_s": 90})
    stable = ns.get("deployment", f"{MODEL}-stable")
    assert stable is not None
    spec = stable["spec"]
    (container,) = spec["template"]["spec"]["containers"]
    assert spec["replicas"] == 3
    assert container["resources"] == {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}}
    assert spec["template"]["spec"]["topologySpreadConstraints"]
    ours = [m for m in stable["metadata"]["managedFields"] if m["manager"] == "aviary"]
    owned = yaml.safe_dump([m["fieldsV1"] for m in ours])
    for field in ("f:replicas", "f:resources", "f:readinessProbe", "f:startupProbe", "f:topologySpreadConstraints",
                  "f:containers"):
        assert field not in owned, f"the flow owns {field}"
    # A drain may still take one stable pod.
    wait_for("the PDB to allow a disruption", lambda: ((ns.get("poddisruptionbudget", f"{MODEL}-stable") or {}).get("status") or {})
             .get("disruptionsAllowed", 0) >= 1, timeout_s=20, every_s=0.1)

    before = ns.pinned()
    for how in ((), ("--server-side",)):  # the documented re-apply, either way
        applied = ns.apply_overlay(*how)
        assert applied.returncode == 0, applied.stderr
        assert ns.pinned() == before
        after = ns.get("deployment", f"{MODEL}-stable")
        assert after is not None
        assert after["spec"] == stable["spec"], how  # nothing rolled, nothing resized
    assert_stable(ns, 2)


def test_real_stable_pin_is_verified_live_and_a_rolled_back_version_never_serves(
        ns: Namespace, real_cluster: RealCluster) -> None:
    promoted(ns, 1)
    real_cluster.kubelet.unpullable.add("tensorflow/serving:broken")
    with pytest.raises(RolloutFailed, match="ImagePullBackOff"):
        rollout(2, ns.config(image="tensorflow/serving:broken", rollout={"ready_timeout_s": 4}))
    assert_no_canary(ns)
    assert_stable(ns, 1)  # v2 is on the volume now, yet nothing but v1 is pinned anywhere

    # Someone puts an unpinned model config on stable (an old overlay, a hand edit).
    unpinned = copy.deepcopy(ns.get("configmap", f"{MODEL}-stable-config"))
    assert unpinned is not None
    unpinned["data"]["models.config"] = (
        f'model_config_list {{ config {{ name: "{MODEL}" base_path: "/models/{MODEL}" model_platform: "tensorflow" }} }}\n')
    for key in ("resourceVersion", "uid", "managedFields", "creationTimestamp"):
        unpinned["metadata"].pop(key, None)
    ns.plane.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(unpinned))
    assert ns.pinned()[0] == []

    result = rollout(1, ns.config())  # the store says production v1; the cluster is asked
    assert result.phase == Phase.PROMOTED
    wait_for("the pin restored", lambda: ns.pinned()[0] == [1], timeout_s=10, every_s=0.1)
    wait_for("stable rolled back onto its pin", lambda: _settled(ns, 1), timeout_s=20, every_s=0.1)
    assert_stable(ns, 1)


def _settled(ns: Namespace, version: int) -> bool:
    _versions, _annotation, config_hash = ns.pinned()
    pods = ns.live_pods("stable")
    return bool(pods) and all(p["metadata"]["annotations"].get("aviary.dev/config-hash") == config_hash
                              and p["status"].get("podIP") for p in pods)


# A second model: k8s/examples/fraud names it once; the flow derives the same names from model_name.


@pytest.mark.parametrize("how", [(), ("--server-side",)], ids=["client-side", "server-side"])
def test_real_second_model_overlay_creates_its_own_stack(ns: Namespace, how: tuple[str, ...]) -> None:
    circle_before = ns.get("deployment", f"{MODEL}-stable")
    applied = ns.apply("examples/fraud", *how)
    assert applied.returncode == 0, applied.stderr

    deployment = ns.get("deployment", objects.deployment_name(SECOND, "stable"))
    assert deployment is not None
    labels = objects.selector(SECOND, "stable")
    assert deployment["metadata"]["labels"]["model"] == SECOND
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"] == labels
    (container,) = pod["spec"]["containers"]
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] == f"/v1/models/{SECOND}/labels/stable/metadata"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == f"{SECOND}-stable-config"
    for track in (None, "stable", "canary"):
        service = ns.get("service", objects.service_name(SECOND, track))
        assert service is not None, track
        assert service["spec"]["selector"] == objects.service("x", SECOND, track)["spec"]["selector"]
    pdb = ns.get("poddisruptionbudget", f"{SECOND}-stable")
    assert pdb is not None and pdb["spec"]["selector"]["matchLabels"] == labels
    # Its pod waits for the flow's first promotion, as circle's does; circle's stack is as it was.
    replicas = deployment["spec"]["replicas"]
    wait_for("fraud's stable pods", lambda: len(ns.for_model(SECOND).live_pods("stable")) == replicas, timeout_s=20,
             every_s=0.1)
    circle_after = ns.get("deployment", f"{MODEL}-stable")
    assert circle_before is not None and circle_after is not None
    assert (circle_after["metadata"]["labels"], circle_after["spec"]) == \
        (circle_before["metadata"]["labels"], circle_before["spec"])

    # The other apply over it (server-side over client-side, and back) changes no spec, so no pod
    # rolls. (Its generation may move: a Deployment's follows its annotations, kubectl's included.)
    again = ns.apply("examples/fraud", *(() if how else ("--server-side",)))
    assert again.returncode == 0, again.stderr
    after = ns.get("deployment", objects.deployment_name(SECOND, "stable"))
    assert after is not None and after["spec"] == deployment["spec"]


def test_real_second_model_rolls_out_beside_the_first_with_the_role(ns: Namespace) -> None:
    """The flow, with `export.model_name` fraud and the Role's token: copy, canary, check through the
    API server's proxy, promotion, all on fraud's objects; circle keeps serving its own version."""
    promoted(ns, 1)
    applied = ns.apply("examples/fraud")
    assert applied.returncode == 0, applied.stderr
    fraud = ns.for_model(SECOND)
    promoted(fraud, 2)
    assert_no_canary(fraud)
    assert_no_copy_leftovers(fraud)
    assert fraud.store.aliases() == {"production": 2}
    config = fraud.get("configmap", objects.config_name(SECOND, "stable"))
    assert config is not None  # TF Serving's config names the model and pins the version, Prometheus on
    (entry,) = parse_model_config(config["data"][objects.CONFIG_FILE]).model_config_list.config
    assert (entry.name, entry.base_path, dict(entry.version_labels)) == (SECOND, f"/models/{SECOND}", {"stable": 2})
    assert config["data"][objects.MONITORING_FILE] == objects.monitoring_config_text()
    assert_stable(ns, 1)
    assert ns.store.aliases() == {"production": 1}
    assert not ns.endpoint_ips(MODEL) & fraud.endpoint_ips(SECOND)
    answer = fraud.proxy(SECOND, f"/v1/models/{SECOND}:predict", POINTS)
    assert answer.status_code == 200, answer.text
    inside, outside = answer.json()["predictions"]
    assert inside["class"] == 1 and outside["class"] == 0
    # Each stack serves its own model only, as TF Serving started with its config would.
    assert fraud.proxy(MODEL, f"/v1/models/{SECOND}").status_code == 404


# Failures: refused early, rolled back, repaired, explained.


def test_real_weight_without_gateway_api_is_refused_before_anything_changes(ns: Namespace) -> None:
    promoted(ns, 1)
    before = {(kind, name): ns.get(kind, name) for kind, name in
              (("deployment", f"{MODEL}-stable"), ("configmap", f"{MODEL}-stable-config"))}
    with pytest.raises(Exception, match=r"needs the Gateway API \(httproutes.gateway.networking.k8s.io/v1\)") as error:
        rollout(2, ns.config(canary_weight=20))
    assert "\n" not in str(error.value)
    assert {key: ns.get(*key) for key in before} == before
    assert_no_canary(ns)
    assert_no_copy_leftovers(ns)
    assert ns.store.aliases() == {"production": 1}


def test_real_canary_joins_live_traffic_only_at_its_first_step_and_a_later_run_repairs_it(ns: Namespace) -> None:
    """Without the Gateway API the canary's readiness gate keeps it out of the live Service while it
    is checked (the canary's own Service reaches it); the first step opens it, with the Role's token.
    A run that died there (its canary live): the next run, even one that is then refused, removes it."""
    promoted(ns, 1)
    (stable_ip,) = {p["status"]["podIP"] for p in ns.live_pods("stable")}
    target = fast_target(ns.config())
    target.publish(MODEL, 2, ns.store.version_dir(2))
    target.set_traffic(MODEL, 0, 0)
    target.deploy_canary(MODEL, 2, 1)
    target.wait_ready(MODEL, 2, 20)
    ns.store.set_aliases(canary=2)
    (pod,) = ns.live_pods("canary")
    canary_ip = pod["status"]["podIP"]
    conditions = {c["type"]: c for c in pod["status"]["conditions"]}
    assert conditions["ContainersReady"]["status"] == "True"
    assert (conditions["Ready"]["status"], conditions["Ready"].get("reason")) == ("False", "ReadinessGatesNotReady")
    assert "aviary.dev/live" not in conditions
    assert ns.slice_endpoints(MODEL) == {stable_ip: True, canary_ip: False}  # listed, never sent traffic
    assert ns.reached(MODEL, 8) == {stable_ip}
    assert ns.reached(f"{MODEL}-canary", 2) == {canary_ip}  # what the check calls
    assert target.serving(MODEL) == Serving(stable=1, canary=2)

    assert target.set_traffic(MODEL, 10, 0) == 50  # one stable pod: one canary pod, half the traffic
    (pod,) = ns.live_pods("canary")
    assert pod["status"]["podIP"] == canary_ip  # the same pod, let in
    conditions = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert conditions["aviary.dev/live"] == conditions["Ready"] == "True"
    wait_for("the canary in live traffic", lambda: ns.slice_endpoints(MODEL) == {stable_ip: True, canary_ip: True},
             timeout_s=10, every_s=0.1)
    assert ns.reached(MODEL, 16) == {stable_ip, canary_ip}  # random picks: both within 16 (1 - 2^-15)

    with pytest.raises(Exception, match="Gateway API"):
        rollout(3, ns.config(canary_weight=20))
    assert_no_canary(ns)
    assert_stable(ns, 1)
    assert canary_ip not in ns.endpoint_ips(MODEL)


def test_real_copy_job_timeout_names_the_pods_reason(ns: Namespace, real_cluster: RealCluster) -> None:
    real_cluster.kubelet.unpullable.add("busybox:missing")
    with pytest.raises(Exception, match=r"copy job .* did not finish within 3s; pod .*: ImagePullBackOff") as error:
        rollout(1, ns.config(copy_image="busybox:missing", copy_timeout_s=3))
    assert "copy_timeout_s" in str(error.value)
    assert ns.items("configmaps", "app=aviary-copy") == []
    assert_no_canary(ns)


def test_real_replica_failure_is_reported_and_rolled_back(ns: Namespace) -> None:
    promoted(ns, 1)
    # Room for stable (the dev overlay's 100m) and the copy Job (50m), none for a canary sized like stable.
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "cpu", "namespace": ns.name},
             "spec": {"hard": {"requests.cpu": "150m"}}}
    ns.plane.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(quota))
    wait_for("quota usage", lambda: ((ns.get("resourcequota", "cpu") or {}).get("status") or {}).get("used", {}).get("requests.cpu")
             == "100m", timeout_s=10, every_s=0.1)
    with pytest.raises(RolloutFailed, match=r"ReplicaFailure.*exceeded quota"):
        rollout(2, ns.config(rollout={"ready_timeout_s": 15}))
    assert_no_canary(ns)
    assert_stable(ns, 1)


def test_real_api_refusals_are_one_clear_line(ns: Namespace, tmp_path: Path) -> None:
    """401, 403 and 422 as the real API server gives them, through the target's one-line errors."""
    from aviary.targets.base import TargetError

    from .control_plane import kubeconfig

    target = fast_target(ns.config())
    with pytest.raises(TargetError, match=r'^forbidden: cannot list jobs.batch in namespace "t\d+-aviary" \(HTTP 403\)'):
        target.api.list("Job", {})  # the Role reads single Jobs only
    # The Role is namespaced: elsewhere, even a missing namespace is a 403 (never a 404).
    elsewhere = fast_target(ns.config(namespace="nowhere"))
    with pytest.raises(TargetError, match=r'^forbidden: cannot patch services "circle" in namespace "nowhere"'):
        elsewhere.deploy_canary(MODEL, 1, None)
    bogus = kubeconfig(tmp_path / "bogus", ns.plane.url, ns.plane.pki.ca, token="not-a-token", namespace=ns.name)
    with pytest.raises(TargetError, match=r"^unauthorized: cannot get deployments.apps .*\(HTTP 401\)"):
        fast_target(ns.config(kubeconfig=bogus)).serving(MODEL)
    other = {"apiVersion": "apps/v1", "kind": "Deployment",
             "metadata": {"name": f"{MODEL}-canary", "namespace": ns.name},
             "spec": {"selector": {"matchLabels": {"app": "something-else"}},
                      "template": {"metadata": {"labels": {"app": "something-else"}},
                                   "spec": {"containers": [{"name": "x", "image": "busybox:1.36"}]}}}}
    ns.plane.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(other))
    with pytest.raises(TargetError, match=r'^invalid: cannot patch deployments.apps "circle-canary" .*immutable'):
        target.deploy_canary(MODEL, 1, None)

"""Reading a Deployment's rollout the way `kubectl rollout status` does, and why pods are stuck."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True)
class RolloutState:
    done: bool
    failed: bool
    message: str


def rollout_state(deployment: Obj) -> RolloutState:
    """kubectl's DeploymentStatusViewer: the controller must have observed the current generation;
    then ProgressDeadlineExceeded fails (and, unlike kubectl, a ReplicaFailure such as an exceeded
    quota, which no waiting cures), and done means every replica updated, none old left,
    every updated one available."""
    state = _updated_state(deployment, deadline_fails=True)
    if state is not None:
        return state
    name, status = deployment["metadata"]["name"], deployment.get("status") or {}
    updated = int(status.get("updatedReplicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    if available < updated:
        return RolloutState(False, False, f"{available} of {updated} updated replicas of {name} available")
    return RolloutState(True, False, f"deployment {name} rolled out")


def gated_rollout_state(deployment: Obj, pods: Sequence[Obj], gate: str, live: bool) -> RolloutState:
    """A Deployment whose pods carry the readiness gate `gate`: none is available (nor Ready) before
    the gate is opened, so done means every replica updated, none old left, and each of its pods
    (of the current template) loaded (`ContainersReady`), or, once `live`, Ready with the gate open.
    ProgressDeadlineExceeded says nothing here (the pods make no progress the controller can see
    while they wait for their gate), so only the caller's deadline ends the wait."""
    state = _updated_state(deployment, deadline_fails=False)
    if state is not None:
        return state
    name, spec = deployment["metadata"]["name"], deployment.get("spec") or {}
    wanted = int(spec.get("replicas", 1))
    template = ((spec.get("template") or {}).get("metadata") or {}).get("annotations") or {}
    running = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    current = [p for p in running if all(((p.get("metadata") or {}).get("annotations") or {}).get(k) == v
                                         for k, v in template.items())]
    if len(running) != wanted or len(current) != wanted:
        return RolloutState(False, False, f"{len(current)} of {wanted} pods of {name} running the current template"
                                          + (f" ({len(running) - len(current)} others)" if len(running) > len(current) else ""))
    if live:
        waiting = [p for p in current if not (has_condition(p, gate) and has_condition(p, "Ready"))]
        if waiting:
            return RolloutState(False, False, f"{wanted - len(waiting)} of {wanted} pods of {name} Ready with {gate} open")
        return RolloutState(True, False, f"deployment {name} rolled out, every pod live")
    loading = [p for p in current if not has_condition(p, "ContainersReady")]
    if loading:
        return RolloutState(False, False, f"{wanted - len(loading)} of {wanted} pods of {name} loaded (ContainersReady)")
    return RolloutState(True, False, f"deployment {name} rolled out, its pods held back by {gate}")


def _updated_state(deployment: Obj, deadline_fails: bool) -> RolloutState | None:
    """Not done yet (or failed) until the controller saw the current generation, every replica is
    updated and no old one is left; None once they are."""
    name = deployment["metadata"]["name"]
    generation = int(deployment["metadata"].get("generation") or 0)
    status = deployment.get("status") or {}
    observed = int(status.get("observedGeneration") or 0)
    if observed < generation:
        return RolloutState(False, False, f"waiting for the controller to observe generation {generation} of {name} (seen {observed})")
    for condition in status.get("conditions") or []:
        if (deadline_fails and condition.get("type") == "Progressing"
                and condition.get("reason") == "ProgressDeadlineExceeded"):
            detail = condition.get("message") or "no progress within progressDeadlineSeconds"
            return RolloutState(False, True, f"deployment {name} exceeded its progress deadline: {detail}")
        if condition.get("type") == "ReplicaFailure" and condition.get("status") == "True":
            detail = condition.get("message") or condition.get("reason") or "pods cannot be created"
            return RolloutState(False, True, f"deployment {name} cannot create pods (ReplicaFailure): {detail}")
    wanted = int((deployment.get("spec") or {}).get("replicas", 1))
    updated = int(status.get("updatedReplicas") or 0)
    total = int(status.get("replicas") or 0)
    if updated < wanted:
        return RolloutState(False, False, f"{updated} of {wanted} replicas of {name} updated")
    if total > updated:
        return RolloutState(False, False, f"{total - updated} old replicas of {name} pending termination")
    return None


def has_condition(pod: Obj, kind: str) -> bool:
    """Whether the pod's status holds condition `kind` with status True."""
    return any(c.get("type") == kind and c.get("status") == "True" for c in (pod.get("status") or {}).get("conditions") or [])


def pod_problems(pods: Sequence[Obj], limit: int = 3) -> list[str]:
    """The first reasons pods are not ready: a waiting or crashed container, an unschedulable pod."""
    problems: list[str] = []
    for pod in pods:
        name = pod.get("metadata", {}).get("name", "?")
        status = pod.get("status") or {}
        for container in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
            state = container.get("state") or {}
            waiting = state.get("waiting") or {}
            terminated = state.get("terminated") or (container.get("lastState") or {}).get("terminated") or {}
            if waiting.get("reason") and waiting["reason"] != "ContainerCreating":
                problems.append(f"pod {name}: {waiting['reason']}: {waiting.get('message', '')}".rstrip(": "))
            elif terminated.get("reason") and terminated.get("exitCode", 0) != 0:
                problems.append(f"pod {name}: {terminated['reason']} (exit {terminated.get('exitCode')})")
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                problems.append(f"pod {name}: unschedulable: {condition.get('message', '')}".rstrip(": "))
        if len(problems) >= limit:
            break
    return problems[:limit]

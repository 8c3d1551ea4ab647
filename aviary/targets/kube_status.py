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
    name = deployment["metadata"]["name"]
    generation = int(deployment["metadata"].get("generation") or 0)
    status = deployment.get("status") or {}
    observed = int(status.get("observedGeneration") or 0)
    if observed < generation:
        return RolloutState(False, False, f"waiting for the controller to observe generation {generation} of {name} (seen {observed})")
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            detail = condition.get("message") or "no progress within progressDeadlineSeconds"
            return RolloutState(False, True, f"deployment {name} exceeded its progress deadline: {detail}")
        if condition.get("type") == "ReplicaFailure" and condition.get("status") == "True":
            detail = condition.get("message") or condition.get("reason") or "pods cannot be created"
            return RolloutState(False, True, f"deployment {name} cannot create pods (ReplicaFailure): {detail}")
    wanted = int((deployment.get("spec") or {}).get("replicas", 1))
    updated = int(status.get("updatedReplicas") or 0)
    total = int(status.get("replicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    if updated < wanted:
        return RolloutState(False, False, f"{updated} of {wanted} replicas of {name} updated")
    if total > updated:
        return RolloutState(False, False, f"{total - updated} old replicas of {name} pending termination")
    if available < updated:
        return RolloutState(False, False, f"{available} of {updated} updated replicas of {name} available")
    return RolloutState(True, False, f"deployment {name} rolled out")


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

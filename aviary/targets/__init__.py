"""Rollout targets; the flow builds one with `build_target` and passes it down."""

from __future__ import annotations

from aviary.config import PipelineConfig
from aviary.targets.base import Target


def build_target(config: PipelineConfig) -> Target:
    rollout = config.rollout
    if rollout.target == "local":
        from aviary.targets.local import LocalTarget

        return LocalTarget(rollout.local, config.export.store)
    if rollout.target == "kubernetes":
        from aviary.targets.kubernetes import KubernetesTarget

        return KubernetesTarget.from_config(
            rollout.kubernetes, config.export.model_name, promote_timeout_s=rollout.ready_timeout_s
        )
    raise ValueError(f"rollout.target '{rollout.target}' has nothing to deploy to")

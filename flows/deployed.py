"""The rollout flows prefect.yaml deploys: each takes only what its deployment uses, so its form in the UI fits it.

canary-deploy and rollback roll out an existing version, so their forms have no data, training or gate
settings (the retrain deployments take the whole PipelineConfig: their rollout settings travel with the
export event to canary-deploy). Each builds the PipelineConfig and runs the same flow code as the command
line. Flow names are those of the flows they run, so the UI and `prefect deployment run` read the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from prefect import flow
from pydantic import Field

from aviary.config import NAME_PATTERN, ExportConfig, PipelineConfig, RolloutConfig
from aviary.flows.rollout import RolloutResult
from aviary.flows.rollout import rollout as rollout_flow
from aviary.flows.withdraw import withdraw

_EXPORT, _ROLLOUT = ExportConfig(), RolloutConfig()
# The rules twice: where validators look, and under allOf, where Prefect's UI does (see config.rules_for_the_ui).
ModelName = Annotated[str, Field(pattern=NAME_PATTERN, json_schema_extra={"allOf": [{"pattern": NAME_PATTERN}]})]
Version = Annotated[int, Field(ge=1, json_schema_extra={"allOf": [{"minimum": 1}]})]


@flow(name="rollout")
def canary_deploy(
    version: Version,
    model_name: ModelName = _EXPORT.model_name,
    store: Path = _EXPORT.store,
    rollout: RolloutConfig = _ROLLOUT,
    triggered_by: str = "",
    idempotency_key: str = "",
) -> RolloutResult:
    """Canary-deploy an exported version, check it with real predictions, then promote it or roll it back.

    Args:
        version: The exported version to roll out.
        model_name: Model name, as TF Serving and Kubernetes see it.
        store: Model store root; a version is the folder store/model/version.
        rollout: Where and how the version is canary-deployed and checked.
        triggered_by: The retrain run whose export started this rollout; the trigger sets it, leave it empty by hand.
        idempotency_key: The export event's; the trigger sets it, so a repeated event is not acted on twice.
    """
    config = PipelineConfig(export=ExportConfig(model_name=model_name, store=store), rollout=rollout)
    return rollout_flow.fn(version, config, triggered_by, idempotency_key or None)


@flow(name="withdraw")
def rollback(
    model_name: ModelName = _EXPORT.model_name, store: Path = _EXPORT.store, rollout: RolloutConfig = _ROLLOUT
) -> RolloutResult:
    """Withdraw the production version and put the one before it back, through the same checked rollout.

    Args:
        model_name: Model name, as TF Serving and Kubernetes see it.
        store: Model store root; a version is the folder store/model/version.
        rollout: Where the versions are served and how the one put back is checked.
    """
    return withdraw.fn(PipelineConfig(export=ExportConfig(model_name=model_name, store=store), rollout=rollout))

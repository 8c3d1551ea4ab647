"""Work pools: `process` for a worker on this machine, `kubernetes` for a Job per flow run.

The Kubernetes pool's base job template is prefect-kubernetes' default plus the model store's
volume, mounted where the image's working directory expects `models/`: export writes there and the
serving pods read the same claim.
"""

from __future__ import annotations

import copy
from typing import Any

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectNotFound

STORE_CLAIM = "aviary-models"
STORE_MOUNT = "/opt/aviary/models"


def base_job_template(pool_type: str) -> dict[str, Any]:
    """The template a new pool of this type gets."""
    if pool_type == "process":
        from prefect.workers.process import ProcessWorker

        return ProcessWorker.get_default_base_job_template()
    if pool_type == "kubernetes":
        from prefect_kubernetes.worker import KubernetesWorker

        template = copy.deepcopy(KubernetesWorker.get_default_base_job_template())
        pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
        pod["volumes"] = [{"name": "models", "persistentVolumeClaim": {"claimName": STORE_CLAIM}}]
        for container in pod["containers"]:
            container["volumeMounts"] = [{"name": "models", "mountPath": STORE_MOUNT}]
        return template
    raise ValueError(f"no work pool type {pool_type!r}: process or kubernetes")


async def ensure_work_pool(client: PrefectClient, name: str, pool_type: str) -> bool:
    """Create the pool unless it exists (an existing one is left as an operator may have tuned it); True if created."""
    try:
        await client.read_work_pool(name)
        return False
    except ObjectNotFound:
        pass
    await client.create_work_pool(
        WorkPoolCreate(name=name, type=pool_type, base_job_template=base_job_template(pool_type)), overwrite=False
    )
    return True

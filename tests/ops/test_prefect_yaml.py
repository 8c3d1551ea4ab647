"""prefect.yaml checked without a server: `prefect deploy` skips what it cannot read, so this is the early warning."""

from __future__ import annotations

import asyncio
import copy
import os
import uuid
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import BaseModel

from aviary.config import PipelineConfig, RolloutConfig
from aviary.ops import deployments

DOC = deployments.load()
BY_NAME = {d["name"]: d for d in DOC["deployments"]}
EXPECTED = {
    "retrain-scheduled": "flows/retrain.py:retrain",
    "retrain-manual": "flows/retrain.py:retrain",
    "canary-deploy": "flows/deployed.py:canary_deploy",
    "rollback": "flows/deployed.py:rollback",
}


def keys_of(model: type[BaseModel]) -> set[str]:
    return {alias for name, field in model.model_fields.items() for alias in (name, field.alias) if alias}


def assert_known_keys(data: dict[str, Any], model: type[BaseModel], where: str, extra: frozenset[str] = frozenset()) -> None:
    unknown = set(data) - keys_of(model) - extra
    assert not unknown, f"{where}: keys Prefect would silently ignore: {sorted(unknown)}"


def schema_of(entrypoint: str) -> dict[str, Any]:
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    return parameter_schema(load_flow_from_entrypoint(entrypoint)).model_dump()


def assert_valid_parameters(parameters: dict[str, Any], entrypoint: str, *, complete: bool) -> None:
    """As the server checks it (enforce_parameter_schema), and as the flow will validate it."""
    from prefect.utilities.schema_tools import validate

    validate(parameters, schema_of(entrypoint), raise_on_error=True, ignore_required=not complete)
    if "config" in parameters:
        PipelineConfig.model_validate(parameters["config"])
    if "rollout" in parameters:
        RolloutConfig.model_validate(parameters["rollout"])


def test_the_file_passes_prefects_own_model_and_has_no_misspelled_keys() -> None:
    from prefect.cli.deploy._models import DeploymentConfig, PrefectYamlModel, WorkPoolConfig

    PrefectYamlModel.model_validate(DOC)
    assert_known_keys(DOC, PrefectYamlModel, "top level", extra=frozenset({"definitions"}))
    for deployment in DOC["deployments"]:
        assert_known_keys(deployment, DeploymentConfig, deployment["name"])
        assert_known_keys(deployment["work_pool"], WorkPoolConfig, f"{deployment['name']}.work_pool")


def test_four_deployments_on_the_process_pool_with_importable_entrypoints() -> None:
    assert {name: d["entrypoint"] for name, d in BY_NAME.items()} == EXPECTED
    for deployment in DOC["deployments"]:
        assert deployment["work_pool"]["name"] == "process"
        assert deployment["enforce_parameter_schema"] is True
        assert deployment["description"]
        schema_of(deployment["entrypoint"])  # imports the flow


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameters_fit_the_flow_schema(name: str) -> None:
    deployment = BY_NAME[name]
    assert_valid_parameters(deployment.get("parameters", {}), deployment["entrypoint"], complete=False)


def test_retrain_deployments_leave_the_rollout_to_canary_deploy() -> None:
    for name in ("retrain-scheduled", "retrain-manual"):
        assert PipelineConfig.model_validate(BY_NAME[name]["parameters"]["config"]).rollout.hand_off


def test_each_rollout_form_holds_only_what_a_rollout_uses() -> None:
    forms = {name: schema_of(entrypoint) for name, entrypoint in EXPECTED.items()}
    assert list(forms["retrain-manual"]["properties"]) == ["config"]  # its rollout settings travel to canary-deploy
    assert list(forms["canary-deploy"]["properties"]) == ["version", "model_name", "store", "rollout", "triggered_by",
                                                         "idempotency_key"]
    assert list(forms["rollback"]["properties"]) == ["model_name", "store", "rollout"]
    for name in ("canary-deploy", "rollback"):
        assert not {"TrainConfig", "DataConfig", "GateConfig"} & set(forms[name]["definitions"])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_field_of_every_form_is_described_in_plain_text(name: str) -> None:
    schema = schema_of(EXPECTED[name])
    fields = [(name, field, spec) for field, spec in schema["properties"].items()] + [
        (model, field, spec)
        for model, definition in schema.get("definitions", {}).items()
        for field, spec in definition.get("properties", {}).items()
    ]
    assert [f"{m}.{f}" for m, f, spec in fields if not spec.get("description")] == []
    assert [f"{m}.{f}" for m, f, spec in fields if "<" in spec["description"]] == []  # the UI would take it for HTML
    assert [f"{m}.{f}" for m, f, spec in fields if "anyOf" in spec] == []  # a type toggle, not a plain field


@pytest.mark.parametrize(
    ("name", "parameters", "where"),
    [
        ("retrain-manual", {"config": {"train": {"epochs": 0}}}, "epochs"),
        ("retrain-manual", {"config": {"split": {"eval_fraction": 1.5}}}, "eval_fraction"),
        ("retrain-manual", {"config": {"export": {"model_name": "Bad Name!"}}}, "model_name"),
        ("retrain-manual", {"config": {"data": {"features": {}}}}, "features"),
        ("retrain-manual", {"config": {"data": {"features": {"x": "category"}}}}, "features.x"),
        ("retrain-manual", {"config": {"data": {"categorical": ["x"]}}}, "categorical"),
        ("canary-deploy", {"version": 0}, "version"),
        ("canary-deploy", {"version": 1, "model_name": "Bad Name!"}, "model_name"),
        ("rollback", {"rollout": {"kubernetes": {"canary_weight": 101}}}, "canary_weight"),
    ],
)
def test_the_server_refuses_bad_values_before_a_run_exists(name: str, parameters: dict[str, Any], where: str) -> None:
    """The schema the server enforces (enforce_parameter_schema) holds the rules, so the UI marks the field."""
    from prefect.utilities.schema_tools import ValidationError, validate

    with pytest.raises(ValidationError, match=where):
        validate(parameters, schema_of(EXPECTED[name]), raise_on_error=True, ignore_required=True)


def test_nightly_schedule_runs_at_three_local_time_across_daylight_saving() -> None:
    from prefect.cli.deploy._models import RawScheduleConfig
    from prefect.server.schemas.schedules import CronSchedule

    (raw,) = BY_NAME["retrain-scheduled"]["schedules"]
    RawScheduleConfig.model_validate(raw)
    assert raw["active"] is True and raw["timezone"] == "Europe/Berlin"
    assert not BY_NAME["retrain-manual"].get("schedules")
    berlin = ZoneInfo(raw["timezone"])
    start = datetime(2026, 3, 27, 12, tzinfo=berlin)  # the clocks go forward on the 29th
    dates = asyncio.run(CronSchedule(cron=raw["cron"], timezone=raw["timezone"]).get_dates(n=4, start=start))
    local = [d.astimezone(berlin) for d in dates]
    assert [(d.day, d.hour, d.minute) for d in local] == [(28, 3, 0), (29, 3, 0), (30, 3, 0), (31, 3, 0)]
    assert [d.utcoffset().total_seconds() / 3600 for d in local] == [1, 2, 2, 2]  # type: ignore[union-attr]


def render_trigger_parameters(template: dict[str, Any], resource: dict[str, str],
                              payload: dict[str, Any] | None = None) -> dict[str, Any]:
    """Render as the server's run-deployment action does, with an event of the given resource."""
    from prefect.server.events.actions import RunDeployment
    from prefect.server.events.schemas.events import ReceivedEvent
    from prefect.types._datetime import now
    from prefect.utilities.schema_tools.hydration import HydrationContext, hydrate

    parameters = copy.deepcopy(template)
    RunDeployment._upgrade_v1_templates(parameters)
    event = ReceivedEvent(occurred=now("UTC"), event="aviary.model.exported", resource=resource,
                          payload=payload or {}, id=uuid.uuid4())
    return hydrate(parameters, HydrationContext(raise_on_error=True, render_jinja=True, jinja_context={"event": event}))


def test_canary_deploy_is_triggered_by_the_export_event_for_that_version_and_store() -> None:
    from prefect.cli.deploy._triggers import _initialize_deployment_triggers
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    deployment = BY_NAME["canary-deploy"]
    (spec,) = deployment["triggers"]
    assert_known_keys(spec, DeploymentEventTrigger, "canary-deploy.triggers[0]")
    (trigger,) = _initialize_deployment_triggers("canary-deploy", [copy.deepcopy(spec)])
    assert isinstance(trigger, DeploymentEventTrigger) and trigger.enabled
    assert trigger.expect == {"aviary.model.exported"}
    assert trigger.match.get("prefect.resource.id") == ["aviary.model.*"]
    assert trigger.match.get("aviary.rollout.hand-off") == ["true"]  # only exports that left their rollout to it
    assert trigger.threshold == 1

    resource = {
        "prefect.resource.id": "aviary.model.circle.7",
        "aviary.model.name": "circle",
        "aviary.model.version": "7",
        "aviary.model.path": "/srv/aviary/models/circle/7",
        "aviary.rollout.hand-off": "true",
        "aviary.idempotency-key": "aviary.model.circle.7",
    }
    # The exporting run's rollout settings travel in the event's payload.
    chosen = PipelineConfig.model_validate({"rollout": {
        "hand_off": True, "target": "kubernetes", "ready_timeout_s": 300,
        "kubernetes": {"in_cluster": True, "namespace": "serving", "replicas": 3, "canary_weight": 10}}}).rollout
    rendered = render_trigger_parameters(spec["parameters"], resource, {"rollout": chosen.model_dump(mode="json", exclude_none=True)})
    assert {k: rendered[k] for k in ("version", "model_name", "store", "triggered_by", "idempotency_key")} == {
        "version": 7, "model_name": "circle", "store": "/srv/aviary/models", "triggered_by": "",
        "idempotency_key": "aviary.model.circle.7"}
    assert RolloutConfig.model_validate(rendered["rollout"]) == chosen
    assert_valid_parameters(rendered, deployment["entrypoint"], complete=True)
    linked = render_trigger_parameters(spec["parameters"], {**resource, "aviary.retrain.flow-run": "run-id"},
                                       {"rollout": chosen.model_dump(mode="json", exclude_none=True)})
    assert linked["triggered_by"] == "run-id"


def test_every_deployment_has_its_kubernetes_variant() -> None:
    from prefect_kubernetes.worker import KubernetesWorker, KubernetesWorkerJobConfiguration

    doc = deployments.for_pool(DOC, "kubernetes")
    assert [d["name"] for d in doc["deployments"]] == [d["name"] for d in DOC["deployments"]]
    from aviary.ops.pools import base_job_template

    template = base_job_template("kubernetes")
    allowed = set(KubernetesWorker.get_default_base_job_template()["variables"]["properties"])
    for deployment in doc["deployments"]:
        variables = deployment["work_pool"]["job_variables"]
        assert deployment["work_pool"]["name"] == "kubernetes" and set(variables) <= allowed
        assert deployment["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/aviary"}}]
    variables = doc["deployments"][0]["work_pool"]["job_variables"]
    # The Job a flow run becomes: the template rendered as the worker renders it (minus the API
    # look-ups of blocks and variables, which these values do not use), then checked by its model.
    from prefect.utilities.templating import apply_values

    defaults = {k: v["default"] for k, v in template["variables"]["properties"].items() if v.get("default") is not None}
    rendered = apply_values(template["job_configuration"], {**defaults, **variables})
    job = KubernetesWorkerJobConfiguration.model_validate(rendered).job_manifest
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert job["kind"] == "Job" and job["metadata"]["namespace"] == "aviary"
    assert container["image"] == "aviary:0.1.0" and pod["serviceAccountName"] == "aviary-rollout"
    assert {"name": "models", "mountPath": "/opt/aviary/models"} in container["volumeMounts"]
    assert pod["volumes"] == [{"name": "models", "persistentVolumeClaim": {"claimName": "aviary-models"}}]


def test_the_process_variant_is_the_file_itself(tmp_path: os.PathLike[str]) -> None:
    from pathlib import Path

    assert deployments.write_for_pool("process", Path(tmp_path)) == deployments.PREFECT_YAML
    written = deployments.write_for_pool("kubernetes", Path(tmp_path))
    assert deployments.load(written) == deployments.for_pool(DOC, "kubernetes")
    with pytest.raises(ValueError, match="not under definitions.work_pools"):
        deployments.for_pool(DOC, "docker")

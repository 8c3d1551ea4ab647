"""Notifications: a failed or crashed aviary run, or a rolled-back canary, posts a message to a webhook.

The server does the sending (its automations service), so a message goes out even when the run's
own process died. One `CustomWebhookNotificationBlock` holds the URL; two automations use it:
- `aviary-run-failed`: a flow run of retrain, rollout or withdraw went Failed or Crashed;
- `aviary-rollout-rolled-back`: the `aviary.rollout.rolled-back` or `aviary.rollout.failed` event,
  which `deploy_version` emits when a canary is not promoted.
A canary that is rolled back also fails its run, so it sends both: what happened to the model, and
which run it happened in. The message is JSON: `{"subject", "body", "text"}` (`text` for Slack-like hooks).
"""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

from prefect.automations import AutomationCore, ChangeFlowRunState, EventTrigger, Posture, SendNotification
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import PrefectClient
from prefect.exceptions import ObjectNotFound

BLOCK_NAME = "aviary-notify"
FLOWS = ("retrain", "rollout", "withdraw")
FAILED_RUN = "aviary-run-failed"
ROLLED_BACK = "aviary-rollout-rolled-back"
ROLLOUT_EVENTS = ("aviary.rollout.rolled-back", "aviary.rollout.failed")
ZOMBIES = "aviary-zombie-runs"
MISSED_HEARTBEATS = 3
HEARTBEAT_S = 180
"""Prefect's default flow heartbeat (PREFECT_FLOWS_HEARTBEAT_FREQUENCY), which the stack leaves on."""


def automations(block_id: UUID) -> list[AutomationCore]:
    failed = AutomationCore(
        name=FAILED_RUN,
        description="A retrain, rollout or withdraw run failed or crashed.",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": list(FLOWS)},
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[
            SendNotification(
                block_document_id=block_id,
                subject="aviary: {{ flow.name }} run {{ flow_run.name }} {{ flow_run.state.name }}",
                body="{{ flow.name }} run {{ flow_run.name }} ended {{ flow_run.state.name }}: "
                "{{ flow_run.state.message }}\n{{ flow_run | ui_url }}",
            )
        ],
    )
    rolled_back = AutomationCore(
        name=ROLLED_BACK,
        description="A canary was rolled back, or its rollout failed.",
        trigger=EventTrigger(
            expect=set(ROLLOUT_EVENTS),
            match={"prefect.resource.id": "aviary.model.*"},
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[
            SendNotification(
                block_document_id=block_id,
                subject="aviary: {{ event.resource['aviary.model.name'] }} v{{ event.resource['aviary.model.version'] }}"
                " {{ event.payload.phase }}",
                body="{{ event.resource['aviary.model.name'] }} v{{ event.resource['aviary.model.version'] }}"
                " {{ event.payload.phase }}: {{ event.payload.failure }}; stable v{{ event.payload.stable }} keeps serving",
            )
        ],
    )
    return [failed, rolled_back]


async def ensure_notifications(client: PrefectClient, url: str) -> list[str]:
    """Save the webhook block and (re)create both automations, so a changed URL or template takes effect."""
    block = CustomWebhookNotificationBlock(
        name="aviary",
        url=url,
        method="POST",
        json_data={"subject": "{{subject}}", "body": "{{body}}", "text": "{{subject}}\n{{body}}"},
        timeout=10,
    )
    block_id = await block.asave(BLOCK_NAME, overwrite=True, client=client)
    names = []
    for automation in automations(block_id):
        await remove_automation(client, automation.name)
        await client.create_automation(automation)
        names.append(automation.name)
    return names


async def remove_automation(client: PrefectClient, name: str) -> None:
    try:
        existing = await client.read_automations_by_name(name)
    except ObjectNotFound:
        return
    for automation in existing:
        await client.delete_automation(automation.id)


async def ensure_zombie_detection(client: PrefectClient, heartbeat_s: int = HEARTBEAT_S) -> str:
    """Mark a run Crashed when its heartbeats stop (a killed worker or machine), so `aviary-run-failed` hears of it.

    Prefect's own recipe: after a heartbeat, expect another heartbeat or a final state within three periods.
    """
    from prefect.client.schemas.objects import StateType

    zombies = AutomationCore(
        name=ZOMBIES,
        description="A flow run stopped sending heartbeats without finishing: mark it Crashed.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match={"prefect.resource.id": "prefect.flow-run.*"},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=MISSED_HEARTBEATS * heartbeat_s),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, message="No heartbeat for three periods: the run's process is gone.")],
    )
    await remove_automation(client, ZOMBIES)
    await client.create_automation(zombies)
    return ZOMBIES

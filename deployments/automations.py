"""Create the spec's alerts as Prefect automations.

The content-batch flow emits `studio.alert.<name>` events when a threshold of the
spec's "Alert Thresholds" table is breached, and Prefect emits
`prefect.flow-run.Failed` when a step fails. These automations turn both into a
notification through a notification block saved in Prefect (Slack, email, ...):

    python -m deployments.automations --notify-block <block-document-id>

Without a block they are created with no action, so the UI's automation log still
shows every trigger.
"""

from __future__ import annotations

import argparse
import asyncio
from uuid import UUID

from prefect.automations import Automation
from prefect.events.actions import Action, DoNothing, SendNotification
from prefect.events.schemas.automations import EventTrigger, Posture

ALERTS = {
    "batch-slow": "Batch duration above 10 min",
    "provider-success-low": "Provider success below 80%",
    "hook-errors-high": "Hook generation errors above 10%",
    "safety-rejections-high": "Safety rejections above 20%",
    "cache-hit-low": "Template cache hit rate below 50%",
    "database-slow": "Database save above 5 s",
}


def _action(block_id: UUID | None, subject: str) -> Action:
    if block_id is None:
        return DoNothing()
    return SendNotification(
        block_document_id=block_id,
        subject=f"[studio] {subject}",
        body="{{ event.event }} on {{ event.resource.id }}: {{ event.payload }}",
    )


def build_automations(block_id: UUID | None = None) -> list[Automation]:
    automations = [
        Automation(
            name=f"studio: {title}",
            trigger=EventTrigger(
                expect={f"studio.alert.{name}"}, posture=Posture.Reactive, threshold=1
            ),
            actions=[_action(block_id, title)],
        )
        for name, title in ALERTS.items()
    ]
    automations.append(
        Automation(
            name="studio: content batch failed",
            trigger=EventTrigger(
                expect={"prefect.flow-run.Failed"},
                match_related={
                    "prefect.resource.role": "flow",
                    "prefect.resource.name": "content-batch",
                },
                posture=Posture.Reactive,
                threshold=1,
            ),
            actions=[_action(block_id, "A content batch failed")],
        )
    )
    return automations


async def create_automations(block_id: UUID | None = None) -> list[UUID]:
    created = []
    for automation in build_automations(block_id):
        created.append((await automation.acreate()).id)
    return created


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--notify-block", type=UUID, default=None)
    args = parser.parse_args()
    ids = asyncio.run(create_automations(args.notify_block))
    print(f"created {len(ids)} automations")

"""The "studio: provider throttled" automation on a real Prefect server (issue 20).

`studio automations apply` keeps it by name like every other studio automation; a
`studio.provider.throttled` event (what engine/provider_pace.py emits once per
decrease) reaches the operator through the notification block the other alerts use,
worded as the log line is; a `studio.provider.recovered` event notifies nobody. The
block is a real webhook block posting to a loopback server that records what arrives.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.events import emit_event
from prefect.events.actions import SendNotification
from typer.testing import CliRunner

from cli.app import app
from deployments.automations import (
    DEFINITIONS,
    PROVIDER_THROTTLED,
    apply_automations,
)
from tests.emulators.capture import CaptureServer

runner = CliRunner()
THROTTLED = next(d for d in DEFINITIONS if d.name == PROVIDER_THROTTLED)


async def _delete_studio_automations() -> None:
    names = {d.name for d in DEFINITIONS}
    async with get_client() as client:
        for automation in await client.read_automations():
            if automation.name in names:
                await client.delete_automation(automation.id)


@pytest.fixture
async def no_studio_automations():
    """The harness is per session: start and end without studio automations (a block
    left on one would make later tests' `apply` notify it)."""
    await _delete_studio_automations()
    yield
    await _delete_studio_automations()


@pytest.fixture
def webhook():
    with CaptureServer(status=200) as server:
        yield server


def _emit(event: str, provider: str, payload: dict) -> None:
    emit_event(
        event=event,
        resource={"prefect.resource.id": f"studio.provider.{provider}",
                  "prefect.resource.name": provider},
        payload=payload,
    )


async def _wait_for(webhook: CaptureServer, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not webhook.captured and time.monotonic() < deadline:
        await asyncio.sleep(0.5)


def test_the_automation_is_declared_like_the_other_alerts() -> None:
    core = THROTTLED.build(None)
    assert core.name == "studio: provider throttled"
    assert core.trigger.expect == {"studio.provider.throttled"}
    assert core.trigger.match.model_dump() == {"prefect.resource.id": ["studio.provider.*"]}
    assert core.trigger.threshold == 1
    block = uuid.uuid4()
    notify = [a for a in THROTTLED.build(block).actions if isinstance(a, SendNotification)]
    assert [n.block_document_id for n in notify] == [block]
    assert notify[0].subject == "[studio] A provider throttled; its limit was lowered"


def test_cli_apply_creates_it_once(no_studio_automations) -> None:
    first = runner.invoke(app, ["automations", "apply"], catch_exceptions=False)
    second = runner.invoke(app, ["automations", "apply"], catch_exceptions=False)
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    assert "studio: provider throttled: created" in first.output
    assert "studio: provider throttled: unchanged" in second.output


async def test_a_throttling_event_notifies_once_with_the_log_line(
    no_studio_automations, webhook
) -> None:
    block_id = await CustomWebhookNotificationBlock(
        name="studio-throttle-test",
        url=f"{webhook.url}/hook",
        json_data={"subject": "{{subject}}", "body": "{{body}}"},
        allow_private_urls=True,
    ).save(f"studio-throttle-{uuid.uuid4().hex[:8]}")
    async with get_client() as client:
        outcome = await apply_automations(client, block_id, definitions=[THROTTLED])
        assert outcome == {PROVIDER_THROTTLED: "created"}
    # the trigger service loads automations on a short refresh: give it a moment
    # before the events, or the first one could pass unseen
    await asyncio.sleep(2)
    _emit("studio.provider.recovered", "replicate",
          {"from_limit": 3, "to_limit": 4, "ceiling": 5, "retry_after": None, "status": None})
    _emit("studio.provider.throttled", "replicate",
          {"from_limit": 5, "to_limit": 3, "ceiling": 5, "retry_after": 10.0, "status": 429})
    await _wait_for(webhook)
    await asyncio.sleep(2)  # a second (wrong) notification would arrive by now
    posted = [json.loads(r.body) for r in webhook.captured]
    assert len(posted) == 1, posted
    assert posted[0]["subject"] == "[studio] A provider throttled; its limit was lowered"
    assert posted[0]["body"] == (
        "Provider throttled | Provider: replicate | Limit: 5 -> 3 | Retry-After: 10s | "
        "Status: 429 | Ceiling: 5"
    )


async def test_a_throttle_without_retry_after_says_none(no_studio_automations, webhook) -> None:
    block_id = await CustomWebhookNotificationBlock(
        name="studio-throttle-test",
        url=f"{webhook.url}/hook",
        json_data={"body": "{{body}}"},
        allow_private_urls=True,
    ).save(f"studio-throttle-{uuid.uuid4().hex[:8]}")
    async with get_client() as client:
        await apply_automations(client, block_id, definitions=[THROTTLED])
    await asyncio.sleep(2)
    _emit("studio.provider.throttled", "anthropic",
          {"from_limit": 4, "to_limit": 3, "ceiling": 4, "retry_after": None, "status": 529})
    await _wait_for(webhook)
    posted = [json.loads(r.body) for r in webhook.captured]
    assert [p["body"] for p in posted] == [
        "Provider throttled | Provider: anthropic | Limit: 4 -> 3 | Retry-After: none | "
        "Status: 529 | Ceiling: 4"
    ]

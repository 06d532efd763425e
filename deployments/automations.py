"""The spec's alerts as Prefect automations, kept on the server by name.

The content-batch flow emits `studio.alert.<name>` events when a threshold of the
spec's "Alert Thresholds" table is breached, and Prefect emits
`prefect.flow-run.Failed` when a batch fails. These automations turn both into a
notification through a notification block saved in Prefect (Slack, email, ...):

    studio automations apply [--notify-block <block-document-id>]
    python -m deployments.automations [--notify-block ...]     # the same command

`apply` is idempotent: an automation is found by its name and updated in place, never
created twice (duplicates left by older versions are removed), so it can run on every
deploy. Without `--notify-block` the block the automations already notify is kept;
with none anywhere they notify nobody (the command warns; the UI's automation log still
shows every trigger), and a block id the server does not hold is refused. Two
automations act as well as notify: "zombie flow runs crashed" marks a silent run
Crashed, "crashed batches resumed" runs the crash-recovery deployment when a batch
run ends Crashed or TimedOut, and "held pieces reviewed" runs the review deployment for
the avatar of a batch that ended with pieces held for review. "provider throttled"
notifies when a provider's throttling lowered its limit (issue 20). The same command makes
the deployments refuse unknown parameters (engine/strict_parameters.py).

To add an automation, append an `AutomationDefinition` to `DEFINITIONS` (or a
`studio.alert.*` event to `ALERTS`); its name is its identity on the server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import AutomationSort
from prefect.events.actions import (
    Action,
    ChangeFlowRunState,
    DoNothing,
    RunDeployment,
    SendNotification,
)
from prefect.events.filters import AutomationFilter, AutomationFilterName
from prefect.events.schemas.automations import Automation, AutomationCore, EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification
from prefect.exceptions import ObjectNotFound

#: `studio.alert.<key>` events (studio/alerts.py) and the title of their automation
ALERTS = {
    "batch-slow": "Batch duration above 10 min",
    "provider-success-low": "Provider success below 80%",
    "hook-errors-high": "Hook generation errors above 10%",
    "safety-rejections-high": "Safety rejections above 20%",
    "cache-hit-low": "Template cache hit rate below 50%",
    "database-slow": "Database save above 5 s",
}

#: `studio.alert.budget-reached`: BATCH_BUDGET_USD or AVATAR_DAILY_BUDGET_USD refused a call
BUDGET_REACHED = "Spending budget reached"

#: a run silent this long (three missed 30 s heartbeats) is a zombie
ZOMBIE_AFTER_SECONDS = 90

#: the deployment the crash automation runs (prefect.yaml)
RECOVERY_DEPLOYMENT = "crash-recovery/crash-recovery"

#: the deployment the held-pieces automation runs (prefect.yaml, flows/review.py)
REVIEW_DEPLOYMENT = "review/review"

NOTIFICATION_BODY = "{{ event.event }} on {{ event.resource.id }}: {{ event.payload }}"

#: issue 20: the automation on `studio.provider.throttled` (engine/provider_pace.py)
PROVIDER_THROTTLED = "studio: provider throttled"
#: its notification says what happened as the log line does (Jinja on the event)
THROTTLED_BODY = (
    "Provider throttled | Provider: {{ event.resource['prefect.resource.name'] }} | "
    "Limit: {{ event.payload.from_limit }} -> {{ event.payload.to_limit }} | "
    "Retry-After: {{ '%gs'|format(event.payload.retry_after) "
    "if event.payload.retry_after is not none else 'none' }} | "
    "Status: {{ event.payload.status }} | Ceiling: {{ event.payload.ceiling }}"
)


@dataclass(frozen=True)
class AutomationDefinition:
    """One automation `apply` keeps on the server.

    `name` is its identity there (apply updates the automation of that name);
    `subject` heads the notification sent when a block is configured; `actions` are
    extra actions that run with or without a block (e.g. changing a run's state);
    `runs_deployment` names a deployment (`flow/deployment`) the automation runs, whose
    id `apply` looks up on the server (the automation is skipped while it is missing).
    """

    name: str
    subject: str
    trigger: EventTrigger
    description: str = ""
    actions: tuple[Action, ...] = field(default_factory=tuple)
    runs_deployment: str | None = None
    #: parameters of the run it starts (Jinja templates on the event, rendered by Prefect)
    run_parameters: dict[str, Any] | None = None
    #: the notification's body (a Jinja template on the event, rendered by Prefect)
    body: str = NOTIFICATION_BODY

    def build(self, block_id: UUID | None, deployment_id: UUID | None = None) -> AutomationCore:
        actions: list[Any] = list(self.actions)
        if self.runs_deployment is not None:
            if deployment_id is None:
                raise ValueError(f"{self.name} needs the id of {self.runs_deployment}")
            actions.append(
                RunDeployment(
                    source="selected", deployment_id=deployment_id,
                    parameters=dict(self.run_parameters) if self.run_parameters else None,
                )
            )
        if block_id is not None:
            actions.append(
                SendNotification(
                    block_document_id=block_id,
                    subject=f"[studio] {self.subject}",
                    body=self.body,
                )
            )
        return AutomationCore(
            name=self.name,
            description=self.description,
            trigger=self.trigger,
            actions=actions or [DoNothing()],
        )


def alert_definition(event: str, title: str) -> AutomationDefinition:
    """An automation on one `studio.alert.<event>` event, reacting to each one."""
    return AutomationDefinition(
        name=f"studio: {title}",
        subject=title,
        description=f"The spec's alert threshold: {title} (event studio.alert.{event}).",
        trigger=EventTrigger(
            expect={f"studio.alert.{event}"}, posture=Posture.Reactive, threshold=1
        ),
    )


DEFINITIONS: list[AutomationDefinition] = [
    *(alert_definition(event, title) for event, title in ALERTS.items()),
    # issue 8: a spending budget stopped billed calls (flows/batch_events.py emits it)
    alert_definition("budget-reached", BUDGET_REACHED),
    AutomationDefinition(
        name="studio: content batch failed",
        subject="A content batch failed",
        description="A run of the content-batch flow ended Failed.",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Failed"},
            match_related={
                "prefect.resource.role": "flow",
                "prefect.resource.name": "content-batch",
            },
            posture=Posture.Reactive,
            threshold=1,
        ),
    ),
    # crash detection (issue 10): Prefect's documented zombie-run pattern. A flow run
    # sends `prefect.flow-run.heartbeat` every PREFECT_FLOWS_HEARTBEAT_FREQUENCY (30 s,
    # prefect.yaml); one that sends none for ZOMBIE_AFTER_SECONDS and did not end is
    # marked Crashed, which the next automation answers with a crash-recovery run.
    AutomationDefinition(
        name="studio: zombie flow runs crashed",
        subject="A flow run stopped sending heartbeats and was marked Crashed",
        description="Marks a Running flow run Crashed when its heartbeats stop (90 s).",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
                # a suspended run (the review flow's form, issue 19) has no process and
                # sends no heartbeat until resumed: it is waiting, not a zombie
                "prefect.flow-run.Suspended",
                "prefect.flow-run.Paused",
            },
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=ZOMBIE_AFTER_SECONDS),
        ),
        actions=(
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"No heartbeat for {ZOMBIE_AFTER_SECONDS} s: the flow-run process "
                "is gone (marked Crashed by the zombie-run automation)",
            ),
        ),
    ),
    # crash recovery started by the crash itself (issue 16): a content-batch run that
    # ends Crashed (the zombie automation above, or a worker that saw its process die)
    # or TimedOut starts a run of the crash-recovery deployment at once, which resumes
    # what it left unfinished (flows/crash_recovery.py counts attempts and gives up).
    # Its schedule (every 15 min, prefect.yaml) is only the safety net for an event
    # the server missed (e.g. it was down when the run crashed).
    AutomationDefinition(
        name="studio: crashed batches resumed",
        subject="A content batch crashed or timed out; crash recovery started",
        description="Runs crash-recovery/crash-recovery when a content-batch run ends "
        "Crashed or TimedOut.",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Crashed", "prefect.flow-run.TimedOut"},
            match_related={
                "prefect.resource.role": "flow",
                "prefect.resource.name": "content-batch",
            },
            posture=Posture.Reactive,
            threshold=1,
        ),
        runs_deployment=RECOVERY_DEPLOYMENT,
    ),
    # issue 19: a batch that ends with pieces held for review (flows/batch_events.py
    # emits studio.batch.review-requested then) starts a review run of its avatar; the
    # review flow steps back when a review run of that avatar is already open, so an
    # avatar has one form waiting at a time (flows/review.py)
    AutomationDefinition(
        name="studio: held pieces reviewed",
        subject="A batch ended with pieces held for review; a review run was started",
        description="Runs review/review for the batch's avatar when a batch ends with "
        "pending_review pieces.",
        trigger=EventTrigger(
            expect={"studio.batch.review-requested"},
            match=ResourceSpecification({"prefect.resource.id": ["studio.batch.*"]}),
            posture=Posture.Reactive,
            threshold=1,
        ),
        runs_deployment=REVIEW_DEPLOYMENT,
        run_parameters={"avatar": "{{ event.resource['studio.avatar.name'] }}"},
    ),
    # issue 20: a provider answered with throttling and the fleet lowered its Prefect
    # global concurrency limit (engine/provider_pace.py emits studio.provider.throttled
    # once per decrease, not once per 429, so this notifies once per throttling event)
    AutomationDefinition(
        name=PROVIDER_THROTTLED,
        subject="A provider throttled; its limit was lowered",
        description="Notifies when a provider answers with throttling (429, Anthropic 529, "
        "Modal/Replicate 503 with Retry-After) and the fleet lowers its provider limit "
        "(event studio.provider.throttled; `studio limits show` has the history).",
        trigger=EventTrigger(
            expect={"studio.provider.throttled"},
            match=ResourceSpecification({"prefect.resource.id": ["studio.provider.*"]}),
            posture=Posture.Reactive,
            threshold=1,
        ),
        body=THROTTLED_BODY,
    ),
]


def build_automations(
    block_id: UUID | None = None, deployment_ids: dict[str, UUID] | None = None
) -> list[AutomationCore]:
    ids = deployment_ids or {}
    return [
        d.build(block_id, ids.get(d.runs_deployment or ""))
        for d in DEFINITIONS
        if d.runs_deployment is None or d.runs_deployment in ids
    ]


async def block_exists(client: PrefectClient, block_id: UUID) -> bool:
    """Whether the server holds that block document (read without its secrets)."""
    try:
        await client.read_block_document(block_id, include_secrets=False)
    except ObjectNotFound:
        return False
    return True


async def _deployment_ids(
    client: PrefectClient, definitions: list[AutomationDefinition]
) -> dict[str, UUID]:
    ids = {}
    for name in {d.runs_deployment for d in definitions if d.runs_deployment}:
        try:
            ids[name] = (await client.read_deployment_by_name(name)).id
        except ObjectNotFound:
            continue
    return ids


def _comparable(automation: AutomationCore) -> Any:
    """What `apply` owns of an automation, without server-made ids; the trigger's sets
    (`expect`, `after`, `for_each`) dump in each process's own hash order, so lists of
    strings are compared sorted."""
    dumped = automation.model_dump(
        mode="json", include={"description", "trigger", "actions", "actions_on_trigger",
                              "actions_on_resolve"}
    )
    dumped["trigger"].pop("id", None)
    return _order_free(dumped)


def _order_free(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _order_free(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [_order_free(v) for v in value]
        return sorted(items) if all(isinstance(v, str) for v in items) else items
    return value


def _block_in_use(automations: list[Automation]) -> UUID | None:
    for automation in automations:
        for action in automation.actions:
            if isinstance(action, SendNotification):
                return action.block_document_id
    return None


async def notified_block(client: PrefectClient) -> UUID | None:
    """The block the studio automations send to, if any."""
    found = await client.read_automations(
        automations=AutomationFilter(
            name=AutomationFilterName(any_=[d.name for d in DEFINITIONS])
        )
    )
    return _block_in_use(found)


async def apply_automations(
    client: PrefectClient,
    block_id: UUID | None = None,
    definitions: list[AutomationDefinition] | None = None,
) -> dict[str, str]:
    """Create or update every definition by name; returns what was done, per name.

    One read of the existing automations (by name), then one call per change; an
    automation already as defined is left untouched, and extra copies of a name (from
    older versions that created instead of updating) are deleted, the newest kept.
    """
    definitions = DEFINITIONS if definitions is None else definitions
    names = [d.name for d in definitions]
    found = await client.read_automations(
        automations=AutomationFilter(name=AutomationFilterName(any_=names)),
        sort=AutomationSort.CREATED_DESC,
    )
    by_name: dict[str, list[Automation]] = {}
    for automation in found:  # newest first: the newest copy is kept
        by_name.setdefault(automation.name, []).append(automation)
    block_id = block_id or _block_in_use(found)
    deployment_ids = await _deployment_ids(client, definitions)

    outcome: dict[str, str] = {}
    for definition in definitions:
        if definition.runs_deployment and definition.runs_deployment not in deployment_ids:
            outcome[definition.name] = (
                f"skipped: no {definition.runs_deployment} deployment on the server "
                "(run `prefect deploy --all`, then apply again)"
            )
            continue
        desired = definition.build(block_id, deployment_ids.get(definition.runs_deployment or ""))
        existing = by_name.get(definition.name, [])
        if not existing:
            await client.create_automation(desired)
            outcome[definition.name] = "created"
            continue
        keep, *duplicates = existing
        for duplicate in duplicates:
            await client.delete_automation(duplicate.id)
        if _comparable(keep) == _comparable(desired):
            what = "unchanged"
        else:
            await client.update_automation(keep.id, desired)
            what = "updated"
        if duplicates:
            what += f", {len(duplicates)} duplicate(s) removed"
        outcome[definition.name] = what
    return outcome

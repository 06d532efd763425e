"""Step 3 of the content batch, the hooks: which calls the `write-hooks` task makes.

On-demand batches (hook_mode "direct") run the task once per group of 10 pieces, the
first group alone so that it writes the cached prompt prefix the others then read.
Batches nobody waits on (hook_mode "message-batches", or "auto" for a run started by a
schedule) run the task once for all pieces: it sends ONE Message Batch, one request per
group, at half price, polls it within the time the batch has left and makes direct
calls for the groups it did not finish. A piece whose hook the model did not write, or
a group whose task failed, gets a template hook, and the batch's one
`Hook generation summary | Success: X/N` line counts the model-written hooks.
"""

from __future__ import annotations

import asyncio
import logging

from prefect.client.orchestration import get_client
from prefect.runtime import flow_run

from flows.step_runner import chunked
from studio.hooks.modes import AUTO, message_batch_budget, uses_message_batches
from studio.hooks.settings import HookSettings
from studio.hooks.template_writer import TemplateHookWriter
from studio.request import BatchRequest
from studio.settings import get_settings
from studio.types import AvatarRef, HookBatch, PieceSpec, Platform
from tasks.provider_tags import hook_tags
from tasks.write_hooks import TIMEOUT_SECONDS, write_hooks

log = logging.getLogger("studio.batch")
HOOK_GROUP_SIZE = 10
SCHEDULED_FLOW = "scheduled-batches"


async def started_by_schedule() -> bool:
    """True for a run a deployment schedule created, or one the scheduled fan-out started.

    Asks the Prefect API about the parent run; without an answer the batch is treated
    as on-demand (direct calls), which costs more but never delays anyone.
    """
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is not None and context.flow_run is not None and context.flow_run.auto_scheduled:
        return True
    try:
        parent_id = flow_run.get_parent_flow_run_id()
        if not parent_id:
            return False
        async with get_client() as client:
            parent = await client.read_flow_run(parent_id)
            if parent.auto_scheduled:
                return True
            return (await client.read_flow(parent.flow_id)).name == SCHEDULED_FLOW
    except Exception as exc:  # no API answer: on-demand
        log.info("Hook mode auto | Run origin unknown (%s) | Using: direct", type(exc).__name__)
        return False


async def hooks_via_message_batch(request: BatchRequest, settings: HookSettings) -> bool:
    if not settings.configured:  # the template stand-in calls no API
        return False
    scheduled = request.hook_mode == AUTO and await started_by_schedule()
    return uses_message_batches(request.hook_mode, scheduled=scheduled)


async def _one_message_batch(
    specs: list[PieceSpec],
    avatar: AvatarRef,
    request: BatchRequest,
    settings: HookSettings,
    elapsed: float,
) -> HookBatch | None:
    """All groups in one task call; None when the task itself failed."""
    budget = message_batch_budget(
        batch_timeout=get_settings().batch_generation_timeout,
        elapsed=elapsed,
        margin=settings.message_batch_margin_seconds,
        cap=settings.message_batch_budget_seconds,
    )
    log.info("Hook generation via message batch | Pieces: %d | Budget: %.0fs", len(specs), budget)
    # no task retry: a second submission would pay for the same hooks twice
    task = write_hooks.with_options(
        timeout_seconds=TIMEOUT_SECONDS + budget, retries=0, tags=hook_tags()
    )
    state = await task(
        specs,
        avatar,
        request.platform,
        message_batches=True,
        time_budget_seconds=budget,
        return_state=True,
    )
    if state.is_completed():
        return await state.result()
    log.warning("Hook generation via message batch Error: %s | Using direct calls", state.message)
    return None


async def _per_group(
    groups: list[list[PieceSpec]], avatar: AvatarRef, request: BatchRequest
) -> list[HookBatch]:
    # the first group goes alone: it writes the cached prompt prefix the others then read
    write = write_hooks.with_options(tags=hook_tags())
    states = [await write(groups[0], avatar, request.platform, return_state=True)]
    states += await asyncio.gather(
        *(write(group, avatar, request.platform, return_state=True) for group in groups[1:])
    )
    fallback = TemplateHookWriter()
    batches = []
    for group, state in zip(groups, states, strict=True):
        if state.is_completed():
            batch: HookBatch = await state.result()
        else:
            log.warning("Hook generation Error: %s | falling back to templates", state.message)
            batch = await fallback.write(group, avatar, Platform(request.platform))
            batch.failures = len(group)
        batches.append(batch)
    return batches


async def write_batch_hooks(
    specs: list[PieceSpec], avatar: AvatarRef, request: BatchRequest, elapsed: float = 0.0
) -> HookBatch:
    """Hooks for `specs`; `elapsed` is the time the batch has run, for the budget."""
    settings = HookSettings()
    batches: list[HookBatch] = []
    if await hooks_via_message_batch(request, settings):
        whole = await _one_message_batch(specs, avatar, request, settings, elapsed)
        batches = [whole] if whole is not None else []
    if not batches:
        batches = await _per_group(chunked(specs, HOOK_GROUP_SIZE), avatar, request)
    merged = HookBatch()
    for batch in batches:
        merged.hooks.update(batch.hooks)
        merged.cost_usd += batch.cost_usd
        merged.calls += batch.calls
        merged.failures += batch.failures
        for kind, count in batch.tokens.items():
            merged.tokens[kind] = merged.tokens.get(kind, 0) + count
    # success counts hooks the model wrote; template hooks are the fallback
    llm = sum(1 for h in merged.hooks.values() if not h.stand_in)
    log.info(
        "Hook generation summary | Success: %d/%d | Template fallback: %d | Calls: %d | "
        "Tokens: %s | Cost: $%.4f",
        llm,
        len(specs),
        len(merged.hooks) - llm,
        merged.calls,
        ", ".join(f"{k} {v}" for k, v in merged.tokens.items()) or "none",
        merged.cost_usd,
    )
    return merged

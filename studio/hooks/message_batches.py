"""Hooks through the Message Batches API: half price, for batches nobody waits on.

A scheduled batch can afford minutes for its captions, and the Batches API bills every
token at a discount. But it promises results within 24 hours, not seconds, so the
writer sends ONE Message Batch for the whole content batch, with one request per group
of pieces (custom_id `group-<n>`), polls it within the time budget and, when the budget
runs out, cancels it (so it is not billed further), keeps the results of the groups
that had already finished and gives the others back to direct calls, as it does for a
request that errored or expired. A budget too short for even two polls skips the
Batches API altogether.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from studio.hooks.retrying import call_with_retries
from studio.ledger.jobs import BudgetRefused

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic

    from studio.hooks.anthropic_writer import AnthropicHookWriter, GroupResult
    from studio.types import PieceSpec

logger = logging.getLogger("studio.hooks")


@dataclass
class BatchOutcome:
    """Results per group index; groups not in `results` go to direct calls."""

    results: dict[int, GroupResult] = field(default_factory=dict)
    calls: int = 0
    batch_id: str | None = None


async def run_message_batch(
    client: AsyncAnthropic,
    writer: AnthropicHookWriter,
    groups: list[list[PieceSpec]],
    params: list[dict[str, Any]],
    *,
    budget_seconds: float,
    clock: Any = time.monotonic,
) -> BatchOutcome:
    from studio.hooks.anthropic_writer import describe_error

    settings = writer.settings
    outcome = BatchOutcome()
    poll = settings.message_batch_poll_seconds
    # keep time for the direct calls that may have to follow
    reserve = settings.timeout_seconds
    if budget_seconds < 2 * poll + reserve:
        logger.info(
            "Hook generation via message batch skipped | Budget: %.0fs | Using direct calls",
            budget_seconds,
        )
        return outcome
    deadline = clock() + budget_seconds - reserve
    requests = [
        {"custom_id": f"group-{index}", "params": request}
        for index, request in enumerate(params)
    ]

    async def call(fn: Any) -> Any:
        outcome.calls += 1
        return await fn()

    def retried(fn: Any) -> Any:
        return call_with_retries(
            lambda: call(fn),
            retries=settings.max_retries,
            backoff_base=settings.backoff_base_seconds,
            backoff_max=settings.backoff_max_seconds,
        )

    try:  # the ledger row of the Message Batch (all groups), reserved at its estimate
        charge = await writer.reserve_charge(
            [s for group in groups for s in group], params, settings.message_batch_discount
        )
    except BudgetRefused:
        return outcome  # the groups go direct, where the budget decides per group
    try:
        batch = await retried(lambda: client.messages.batches.create(requests=requests))
        if charge is not None:
            charge.created(batch.id)
        batch_id = outcome.batch_id = batch.id
        while batch.processing_status != "ended":
            if clock() + poll > deadline:
                logger.warning(
                    "Hook generation via message batch timed out | Error: BatchNotEnded | "
                    "Groups: %d | Cancelling, unfinished groups use direct calls",
                    len(groups),
                )
                outcome.calls += 1
                batch = await _cancel(client, batch_id)
                if batch is None or batch.processing_status != "ended":
                    return outcome
                break
            await asyncio.sleep(poll)
            batch = await retried(lambda: client.messages.batches.retrieve(batch_id))
        await _read_results(client, writer, groups, outcome, batch_id)
        if charge is not None:  # billed for the requests that succeeded, at the discount
            await charge.billed(sum(r.usage.cost_usd for r in outcome.results.values()))
    except Exception as exc:  # any failure: the groups without results go direct
        logger.warning(
            "Hook generation via message batch failed | Error: %s | Using direct calls",
            describe_error(exc),
        )
    finally:
        if charge is not None and not charge.settled:  # results never read: see ledger.calls
            await asyncio.shield(charge.failed())
        if outcome.batch_id:
            logger.info(
                "Hook generation via message batch | Groups finished: %d/%d | Direct: %d",
                len(outcome.results), len(groups), len(groups) - len(outcome.results),
            )
    return outcome


async def _read_results(
    client: AsyncAnthropic,
    writer: AnthropicHookWriter,
    groups: list[list[PieceSpec]],
    outcome: BatchOutcome,
    batch_id: str,
) -> None:
    """Keep every succeeded request's hooks, priced at the batch discount."""
    outcome.calls += 2  # results() retrieves the batch again, then reads the JSONL
    decoder = await client.messages.batches.results(batch_id)
    async for line in decoder:
        index = int(line.custom_id.rsplit("-", 1)[1])
        if line.result.type == "succeeded" and 0 <= index < len(groups):
            outcome.results[index] = writer.read_message(
                line.result.message,
                groups[index],
                discount=writer.settings.message_batch_discount,
            )
        elif 0 <= index < len(groups):  # errored, canceled or expired: that group goes direct
            logger.info(
                "Message batch request not answered | Group: %d | Result: %s | "
                "Using direct calls",
                index, _result_reason(line.result),
            )


def _result_reason(result: Any) -> str:
    """The result type, and for `errored` the API's error type (never its message)."""
    kind = str(getattr(result, "type", "unknown"))
    error = getattr(getattr(result, "error", None), "error", None)
    error_type = getattr(error, "type", None)
    return f"{kind} ({error_type})" if kind == "errored" and error_type else kind


async def _cancel(client: AsyncAnthropic, batch_id: str) -> Any | None:
    """Cancel, returning the batch as the cancel left it; None when the cancel failed.

    A failed cancel is not retried: the batch then finishes unused (and is billed for
    what it processed), which costs less than holding the content batch any longer.
    """
    from studio.hooks.anthropic_writer import describe_error

    try:
        return await client.messages.batches.cancel(batch_id)
    except Exception as exc:
        logger.warning(
            "Message batch cancel failed | Error: %s | Batch: %s | Using direct calls",
            describe_error(exc), batch_id,
        )
        return None

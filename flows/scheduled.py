"""The scheduled fan-out: one content batch per active avatar whose cadence is due.

Daily, weekly and monthly deployments run this flow with their cadence and the spec's
batch size for it. Each due avatar's batch becomes a run of the `content-batch/on-demand`
deployment, so any worker of the pool can take any batch (the batches of one schedule
slot spread over every worker instead of running in the process that took the fan-out).
See `scheduled_batches` for how it names, deduplicates and waits for them.

Each avatar's profile shapes its share of the slot (issue 18): its pieces per run split
over its platforms, one batch per platform, with its tier mix (flows/fan_out_plan.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any, Literal

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run
from prefect.settings import get_current_settings

from engine.run_logs import attach_run_logs
from flows.batch_runs import BATCH_DEPLOYMENT
from flows.content_batch import content_batch
from flows.fan_out_plan import plan_batches
from flows.schema_gate import schema_refusal
from studio import batchlog
from studio.avatars import list_avatars, to_ref
from studio.db.engine import session_scope
from studio.request import (
    FanOutPiecesParam,
    FanOutPlatformParam,
    HookModeParam,
    TierSharesParam,
    described,
)
from studio.settings import get_settings
from studio.types import AvatarRef, BatchResult

log = logging.getLogger("studio.batch")


class SomeBatchesFailed(Exception):
    """In-process fallback only: some avatars' batches failed (each is its own subflow)."""


class SomeBatchesNotSubmitted(Exception):
    """The API refused or lost some submissions; retrying the fan-out submits only those."""


def due_avatars(cadence: str) -> list[AvatarRef]:
    """The active avatars of this cadence that have LoRA weights, by name, with their
    profiles."""
    with session_scope() as session:
        avatars = list_avatars(session, cadence=cadence, active_only=True)
        trained = [to_ref(a) for a in avatars if a.lora_weights_url]
        untrained = [a.name for a in avatars if not a.lora_weights_url]
    for name in untrained:
        log.warning("Skipping avatar %s: no lora_weights_url yet", name)
    return trained


@flow(name="scheduled-batches", flow_run_name="{cadence}-batches")
async def scheduled_batches(
    cadence: Annotated[
        Literal["daily", "weekly", "monthly"],
        described(description="Which avatars are due: those whose cadence this is."),
    ] = "daily",
    num_pieces: FanOutPiecesParam = 50,
    platform: FanOutPlatformParam = None,
    tier_distribution: TierSharesParam = None,
    hook_mode: HookModeParam = "auto",
) -> dict[str, str]:
    """Start one `content-batch` deployment run per due avatar (and platform) and return.

    An avatar's profile decides its batches (see `plan_batches`): its pieces per run
    split over its platforms, one run per platform, with its tier mix; without a profile,
    one run of `num_pieces` for `platform` (instagram when empty).

    Each run is named `content-batch-<avatar name>-<pieces>` (`-<platform>` added for a
    profile's platforms), linked to this run as its child (it shows under this run in the
    UI), and carries an idempotency key made of the cadence, this run's scheduled start
    (the schedule slot, which a retry keeps) and the avatar id (and platform), so retrying
    this fan-out starts no batch twice; only batches whose submission failed get a run
    the second time.

    How it waits: it does not. It submits the runs (one at a time, a few API calls each,
    in avatar-name order so a retry lines up with the first attempt) and completes.
    A parent that waited would hold a worker process, and a slot of the pool's or queue's
    concurrency limit, for the whole length of its longest batch, and under a limit of N
    slots N waiting fan-outs would starve their own children. Nothing is lost by not
    waiting: each batch reports its own outcome (its state, its logs and artifact, the
    "content batch failed" automation), and the UI shows them all under this run.

    Without a `content-batch/on-demand` deployment on the API (the ephemeral API, a
    `python -c` call, tests), the batches run here as in-process subflows, with a warning
    that says how to spread them; `python -m deployments.serve` has the deployment, so
    its served process takes the runs.

    `hook_mode` "auto": nobody waits on these batches, so their hooks go out as one
    half-price Message Batch each (direct calls for what it does not finish in time).
    """
    # its own lines ("N avatars due", "Batch submitted") to app.log and to this run's
    # Prefect logs, as content_batch does: a worker's flow-run process sets up Prefect's
    # logging before the project is imported (engine/run_logs.py)
    settings = get_settings()
    batchlog.configure_logging(settings.log_file, settings.log_level)
    attach_run_logs()
    if refused := schema_refusal("Scheduled batches"):  # no studio schema: one line
        return refused  # type: ignore[return-value]
    ready = due_avatars(cadence)
    log.info("Scheduled %s batches: %d avatars due", cadence, len(ready))
    parameters: dict[str, Any] = {
        "num_pieces": num_pieces,
        "platform": platform,
        "tier_distribution": tier_distribution,
        "hook_mode": hook_mode,
    }
    if not ready:
        return {}
    if not await _deployment_exists(BATCH_DEPLOYMENT):
        log.warning(
            "No %s deployment on %s: running %d batches in this process; run "
            "`prefect deploy --all` so that workers take them",
            BATCH_DEPLOYMENT,
            get_current_settings().api.url or "the ephemeral API",
            len(plan_batches(ready, parameters)),
        )
        return await _run_in_process(ready, parameters)
    slot = flow_run.scheduled_start_time.isoformat()
    return await submit_batches(cadence, slot, ready, parameters)


async def _deployment_exists(name: str) -> bool:
    async with get_client() as client:
        try:
            await client.read_deployment_by_name(name)
        except ObjectNotFound:
            return False
    return True


async def submit_batches(
    cadence: str, slot: str, ready: list[AvatarRef], parameters: dict[str, Any]
) -> dict[str, str]:
    summary: dict[str, str] = {}
    refused: dict[str, str] = {}
    planned = plan_batches(ready, parameters)
    for batch in planned:  # sequential: stable order of the parent's task keys
        name, run_name = batch.avatar.name, batch.run_name
        try:
            child = await run_deployment(
                BATCH_DEPLOYMENT,
                parameters=batch.parameters,
                flow_run_name=run_name,
                idempotency_key=batch.idempotency_key(cadence, slot),
                tags=["scheduled", cadence],
                as_subflow=True,
                timeout=0,
            )
        except Exception as exc:  # one refusal must not keep the other avatars' batches
            refused[batch.label] = f"{type(exc).__name__}: {exc}"
            log.error(
                "Batch not submitted | Avatar: %s | Reason: %s", name, refused[batch.label]
            )
            continue
        summary[batch.label] = f"{run_name} ({child.id})"
        log.info("Batch submitted | Avatar: %s | Run: %s | Id: %s", name, run_name, child.id)
    if refused:
        raise SomeBatchesNotSubmitted(
            f"{len(refused)} of {len(planned)} batches not submitted ({refused}); "
            "retry this run to submit them (the others are not submitted twice)"
        )
    return summary


async def _run_in_process(
    ready: list[AvatarRef], parameters: dict[str, Any]
) -> dict[str, str]:
    planned = plan_batches(ready, parameters)
    results = await asyncio.gather(
        *(
            content_batch.with_options(flow_run_name=batch.run_name)(**batch.parameters)
            for batch in planned
        ),
        return_exceptions=True,
    )
    summary: dict[str, str] = {}
    failed = []
    for batch, result in zip(planned, results, strict=True):
        if isinstance(result, BatchResult):
            summary[batch.label] = f"{result.published}/{result.requested} published"
        else:
            summary[batch.label] = f"failed: {result}"
            failed.append(batch.label)
    if failed:
        raise SomeBatchesFailed(f"batches failed for {', '.join(failed)}: {summary}")
    return summary

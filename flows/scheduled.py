"""The scheduled fan-out: one content batch per active avatar whose cadence is due.

Daily, weekly and monthly deployments run this flow with their cadence and the spec's
batch size for it. Each due avatar's batch becomes a run of the `content-batch/on-demand`
deployment, so any worker of the pool can take any batch (the batches of one schedule
slot spread over every worker instead of running in the process that took the fan-out).
See `scheduled_batches` for how it names, deduplicates and waits for them.

Each avatar's profile shapes its share of the slot (issue 18): its pieces per run (else
the flow's `num_pieces`) split over its platforms by the largest remainder, one batch
per platform made for that platform, with its tier mix. An avatar without a profile
gets one batch of the flow's size, platform and mix, named and keyed as before.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run
from prefect.settings import get_current_settings
from pydantic import ValidationError

from engine.run_logs import attach_run_logs
from flows.batch_runs import BATCH_DEPLOYMENT
from flows.content_batch import content_batch
from flows.schema_gate import schema_refusal
from studio import batchlog
from studio.avatars import list_avatars, to_ref
from studio.db.engine import session_scope
from studio.request import (
    DEFAULT_PLATFORM,
    DEFAULT_TIER_SHARES,
    BatchRequest,
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


def batch_run_name(avatar_name: str, num_pieces: int, platform: str | None = None) -> str:
    """`content-batch-<name>-<pieces>`, and `-<platform>` for a batch of a profile's
    platforms (one run per platform: the names stay apart)."""
    name = f"content-batch-{avatar_name}-{num_pieces}"
    return f"{name}-{platform}" if platform else name


def batch_idempotency_key(
    cadence: str, slot: str, avatar_id: str, platform: str | None = None
) -> str:
    """One key per schedule slot and avatar (and platform, for a profile's platforms): a
    retried or re-delivered fan-out of the same slot gets the run it created the first
    time back from the server instead of a new one."""
    key = f"scheduled-batches:{cadence}:{slot}:{avatar_id}"
    return f"{key}:{platform}" if platform else key


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


def split_pieces(total: int, platforms: list[str]) -> dict[str, int]:
    """`total` pieces in equal shares over `platforms` by the largest remainder (the
    earlier platform takes a leftover piece first); platforms left with none are dropped.
    50 over instagram, tiktok: 25 + 25; 50 over three: 17 + 17 + 16."""
    wanted = list(dict.fromkeys(platforms))
    if not wanted:
        return {}
    base, left = divmod(total, len(wanted))
    shares = {platform: base + (1 if i < left else 0) for i, platform in enumerate(wanted)}
    return {platform: count for platform, count in shares.items() if count > 0}


@dataclass(frozen=True)
class PlannedBatch:
    """One content-batch run of the fan-out: whose, for which platform, its parameters."""

    avatar: AvatarRef
    #: the profile's platform this batch is for; None: the flow's (as before profiles)
    platform: str | None
    parameters: dict[str, Any]

    @property
    def run_name(self) -> str:
        return batch_run_name(self.avatar.name, self.parameters["num_pieces"], self.platform)

    @property
    def label(self) -> str:
        """Its key in the fan-out's summary: the avatar's name (and platform)."""
        return f"{self.avatar.name}/{self.platform}" if self.platform else self.avatar.name

    def idempotency_key(self, cadence: str, slot: str) -> str:
        return batch_idempotency_key(cadence, slot, self.avatar.id, self.platform)


def plan_batches(avatars: list[AvatarRef], shared: dict[str, Any]) -> list[PlannedBatch]:
    """The batches of the due avatars: each avatar's pieces per run (else the flow's
    `num_pieces`) over its platforms (else the flow's `platform`, else instagram), with
    its tier mix (else the flow's `tier_distribution`, else 0.6/0.3/0.1). A `platform` or
    `tier_distribution` given to the flow wins over the profiles. An avatar whose profile
    the request cannot hold (an unknown platform or tier) is logged and left out, so it
    does not keep the other avatars' batches."""
    planned = []
    for avatar in avatars:
        try:
            planned.extend(_avatar_batches(avatar, shared))
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"])
            log.error(
                "Batch not planned | Avatar: %s | Reason: profile %s: %s",
                avatar.name, where, error["msg"],
            )
    return planned


def _avatar_batches(avatar: AvatarRef, shared: dict[str, Any]) -> list[PlannedBatch]:
    """One avatar's batches (see `plan_batches`)."""
    pieces = avatar.pieces_per_run or shared["num_pieces"]
    values = {
        key: value
        for key, value in shared.items()
        if key not in ("num_pieces", "platform", "tier_distribution")
    }
    values["tier_distribution"] = (
        shared.get("tier_distribution") or avatar.tier_mix or DEFAULT_TIER_SHARES
    )
    if shared.get("platform") or not avatar.platforms:  # as before profiles: one batch
        platform = shared.get("platform") or DEFAULT_PLATFORM
        request = {**values, "num_pieces": pieces, "platform": platform}
        return [PlannedBatch(avatar, None, _batch_parameters(avatar.name, request))]
    return [
        PlannedBatch(
            avatar,
            platform,
            _batch_parameters(avatar.name, {**values, "num_pieces": count, "platform": platform}),
        )
        for platform, count in split_pieces(pieces, avatar.platforms).items()
    ]


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


def _batch_parameters(avatar_name: str, request: dict[str, Any]) -> dict[str, Any]:
    """One batch's parameters as JSON, checked against the batch request's own
    definition; the avatar by name, so the worker names the run from it
    (content-batch-<name>-<pieces>)."""
    return BatchRequest(avatar_id=avatar_name, **request).run_parameters()

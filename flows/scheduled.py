"""The scheduled fan-out: one content batch per active avatar whose cadence is due.

Daily, weekly and monthly deployments run this flow with their cadence and the spec's
batch size for it; each avatar's batch is its own `content-batch` subflow, so one
avatar's failure is visible in the UI without stopping the others.
"""

from __future__ import annotations

import asyncio
import logging

from prefect import flow

from flows.content_batch import content_batch
from studio.avatars import list_avatars
from studio.db.engine import session_scope
from studio.types import BatchResult

log = logging.getLogger("studio.batch")


class SomeBatchesFailed(Exception):
    pass


@flow(name="scheduled-batches", flow_run_name="{cadence}-batches")
async def scheduled_batches(
    cadence: str = "daily",
    num_pieces: int = 50,
    platform: str = "instagram",
    tier_distribution: dict[str, float] | None = None,
    hook_mode: str = "auto",
) -> dict[str, str]:
    """`hook_mode` "auto": nobody waits on these batches, so their hooks go out as one
    half-price Message Batch each (direct calls for what it does not finish in time)."""
    with session_scope() as session:
        avatars = [
            (a.id, a.name, bool(a.lora_weights_url))
            for a in list_avatars(session, cadence=cadence, active_only=True)
        ]
    ready = [(avatar_id, name) for avatar_id, name, trained in avatars if trained]
    for _, name, trained in avatars:
        if not trained:
            log.warning("Skipping avatar %s: no lora_weights_url yet", name)
    log.info("Scheduled %s batches: %d avatars due", cadence, len(ready))
    results = await asyncio.gather(
        *(
            content_batch(
                avatar_id=avatar_id,
                num_pieces=num_pieces,
                platform=platform,
                tier_distribution=tier_distribution,
                hook_mode=hook_mode,
            )
            for avatar_id, _ in ready
        ),
        return_exceptions=True,
    )
    summary: dict[str, str] = {}
    failed = []
    for (_, name), result in zip(ready, results, strict=True):
        if isinstance(result, BatchResult):
            summary[name] = f"{result.published}/{result.requested} published"
        else:
            summary[name] = f"failed: {result}"
            failed.append(name)
    if failed:
        raise SomeBatchesFailed(f"batches failed for {', '.join(failed)}: {summary}")
    return summary

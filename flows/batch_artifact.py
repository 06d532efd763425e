"""The batch's table artifact: every piece's outcome, readable in the Prefect UI."""

from __future__ import annotations

import re

from prefect.artifacts import acreate_table_artifact

from studio.types import BatchResult


async def publish_batch_artifact(result: BatchResult) -> None:
    table = [
        {
            "piece": o.index,
            "status": o.status.value,
            "tier": o.tier,
            "template": o.template_id or "custom",
            "provider": o.provider or "-",
            "cost_usd": round(o.cost_usd, 4),
            "reason": o.reason or "",
            "degraded": "degraded" if o.degraded else "",
        }
        for o in result.pieces
    ]
    description = (
        f"Batch {result.batch_id} for {result.avatar_name}: {result.published}/"
        f"{result.requested} published, {result.rejected} rejected, {result.failed} failed, "
        f"{result.pending_review} pending review, {result.degraded} degraded (cached image); "
        f"cost ${result.cost_usd:.2f} in "
        f"{result.total_seconds:.1f}s. Stand-ins: {', '.join(result.stand_ins) or 'none'}."
    )
    slug = re.sub(r"[^a-z0-9]+", "-", result.avatar_name.lower()).strip("-") or "avatar"
    await acreate_table_artifact(
        table=table, key=f"content-batch-{slug}"[:60], description=description
    )

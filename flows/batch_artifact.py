"""The batch's artifacts, readable in the Prefect UI: a table of every piece's outcome
(with its link and image provider) and a gallery of thumbnails (studio/gallery.py)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping

from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact

from studio.gallery import gallery_markdown
from studio.types import BatchResult


async def publish_batch_artifact(
    result: BatchResult, image_paths: Mapping[str, str] | None = None
) -> None:
    """`image_paths`: piece id -> staged image, for the gallery's thumbnails.

    A piece's link is the URL its store gave it (studio/storage: capa1 public,
    capa2/capa3 presigned GETs that expire; `file://` for the local store)."""
    table = [
        {
            "piece": o.index,
            "status": o.status.value,
            "tier": o.tier,
            "template": o.template_id or "custom",
            "image_provider": o.provider or "-",
            "cost_usd": round(o.cost_usd, 4),
            "reason": o.reason or "",
            "link": o.url or "",
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
    # decoding and shrinking the images is CPU work (~30 ms each): off the event loop
    gallery = await asyncio.to_thread(gallery_markdown, result, image_paths or {})
    await acreate_markdown_artifact(
        markdown=gallery,
        key=f"gallery-{slug}"[:60],
        description=f"Gallery of batch {result.batch_id} for {result.avatar_name}",
    )

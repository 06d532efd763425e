"""The batch's artifacts, readable in the Prefect UI: a table of every piece's outcome
(with its object key, lasting link and image provider), a gallery of thumbnails
(studio/gallery.py) and, when premium pieces were stored remotely, their short-lived
links.

Why the links are an artifact of their own: the table is the batch's lasting record and
keeps object keys and lasting links only (capa1's public URL, a local file); a premium
link is a bearer credential, so it is minted now, lives PRESIGNED_URL_TTL_SECONDS
(1 hour by default), and its artifact says until when (studio/storage/links.py).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping

from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact

from studio.gallery import gallery_markdown
from studio.settings import get_settings
from studio.storage.links import LinkMinter
from studio.types import BatchResult, PieceOutcome, PieceStatus


def _lasting(outcome: PieceOutcome) -> str:
    """A link that stays valid and grants nothing beyond the piece: public or local."""
    url = outcome.url or ""
    return url if url.startswith(("http://", "https://", "file://")) else ""


def premium_links(result: BatchResult) -> tuple[dict[int, tuple[str, str]], LinkMinter]:
    """index -> (tier, fresh link) of the published pieces that have no lasting link."""
    minter = LinkMinter(get_settings())
    links: dict[int, tuple[str, str]] = {}
    for o in result.pieces:
        if o.status != PieceStatus.PUBLISHED or _lasting(o) or not o.storage_key:
            continue
        link = minter.link(o.storage_key, o.tier, "r2", None)
        if link:
            links[o.index] = (o.tier, link)
    return links, minter


def links_markdown(result: BatchResult, links: Mapping[int, tuple[str, str]], note: str) -> str:
    lines = [
        f"# Premium links: {result.avatar_name}, batch {result.batch_id}",
        "",
        note[0].upper() + note[1:] + ".",
        "",
        "| piece | tier | link |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {i} | {tier} | [open]({link}) |" for i, (tier, link) in sorted(links.items())]
    return "\n".join(lines)


def review_note(result: BatchResult, link: str | None = None) -> str:
    """What the batch says about its held pieces: a review run was requested (issue 19:
    the "studio: held pieces reviewed" automation starts it on the batch's event)."""
    if not result.pending_review:
        return ""
    where = f"[review/review]({link})" if link else "review/review"
    return (
        f"{result.pending_review} piece(s) held for review: a review run of "
        f"{result.avatar_name} was requested ({where}, flow run review-{result.avatar_name}); "
        "approve or reject them in its form, or with `studio review`."
    )


async def review_deployment_link() -> str | None:
    """The UI page of the review deployment (its Runs tab lists the review runs)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    ui = get_current_settings().ui_url
    if not ui:
        return None
    try:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name("review/review")
    except Exception:  # not deployed (a local run): the note names it without a link
        return None
    return f"{ui.rstrip('/')}/deployments/deployment/{deployment.id}?tab=Runs"


async def publish_batch_artifact(
    result: BatchResult, image_paths: Mapping[str, str] | None = None
) -> None:
    """`image_paths`: piece id -> staged image, for the gallery's thumbnails."""
    table = [
        {
            "piece": o.index,
            "status": o.status.value,
            "tier": o.tier,
            "template": o.template_id or "custom",
            "image_provider": o.provider or "-",
            "cost_usd": round(o.cost_usd, 4),
            "reason": o.reason or "",
            "key": o.storage_key or "",
            "link": _lasting(o),
            "degraded": "degraded" if o.degraded else "",
        }
        for o in result.pieces
    ]
    slug = re.sub(r"[^a-z0-9]+", "-", result.avatar_name.lower()).strip("-") or "avatar"
    links, minter = await asyncio.to_thread(premium_links, result)
    description = (
        f"Batch {result.batch_id} for {result.avatar_name}: {result.published}/"
        f"{result.requested} published, {result.rejected} rejected, {result.failed} failed, "
        f"{result.pending_review} pending review, {result.degraded} degraded (cached image); "
        f"cost ${result.cost_usd:.2f} in "
        f"{result.total_seconds:.1f}s. Stand-ins: {', '.join(result.stand_ins) or 'none'}. "
        "Links: capa1's public URL or a local file; "
        + (
            f"premium pieces' links are in links-{slug} ({minter.expiry_note()})."
            if links
            else "premium pieces have none here (`studio pieces --links` mints them)."
        )
    )
    if result.pending_review:
        description += " " + review_note(result, await review_deployment_link())
    await acreate_table_artifact(
        table=table, key=f"content-batch-{slug}"[:60], description=description
    )
    if links:
        await acreate_markdown_artifact(
            markdown=links_markdown(result, links, minter.expiry_note()),
            key=f"links-{slug}"[:60],
            description=f"Premium links of batch {result.batch_id}: {minter.expiry_note()}",
        )
    # decoding and shrinking the images is CPU work (~30 ms each): off the event loop
    gallery = await asyncio.to_thread(gallery_markdown, result, image_paths or {})
    await acreate_markdown_artifact(
        markdown=gallery,
        key=f"gallery-{slug}"[:60],
        description=f"Gallery of batch {result.batch_id} for {result.avatar_name}",
    )

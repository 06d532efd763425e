"""The batch's artifacts, readable in the Prefect UI: a table of every piece's outcome
(with its object key, lasting link and image provider), a gallery of thumbnails
(studio/gallery.py) and, when premium pieces were stored remotely, their short-lived
links. The gallery ends with the batch's "Provider limits": each change of a provider's
fleet-wide limit between the batch's start and end (issue 20: lowered when a provider
throttled, raised when it recovered, an operator's manual cap, `studio limits apply`),
whichever process made it, or one line saying the limits did not change; the table's
description sums them up.

Why the links are an artifact of their own: the table is the batch's lasting record and
keeps object keys and lasting links only (capa1's public URL, a local file); a premium
link is a bearer credential, so it is minted now, lives PRESIGNED_URL_TTL_SECONDS
(1 hour by default), and its artifact says until when (studio/storage/links.py).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact

from studio.gallery import gallery_markdown
from studio.providers.limit_text import seconds_text
from studio.settings import get_settings
from studio.storage.links import LinkMinter
from studio.types import BatchResult, PieceOutcome, PieceStatus

if TYPE_CHECKING:
    from studio.db.provider_pace import LimitChange

log = logging.getLogger("studio.flows")

#: the one line of a batch during which no provider limit changed
LIMITS_UNCHANGED = "The provider limits did not change during this batch."


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


@dataclass(frozen=True)
class LimitHistory:
    """The provider limit changes of one batch's window, or why they could not be read."""

    started: datetime | None
    changes: Sequence[LimitChange] = ()
    problem: str | None = None

    def summary(self) -> str:
        """For the table's description: `unchanged`, or each provider's path
        (`replicate 5 -> 3 -> 4`)."""
        if self.problem is not None:
            return "not read"
        if not self.changes:
            return "unchanged"
        paths: dict[str, list[int]] = {}
        for change in self.changes:
            path = paths.setdefault(change.provider, [change.from_limit])
            if path[-1] != change.from_limit:
                path.append(change.from_limit)
            path.append(change.to_limit)
        return ", ".join(
            f"{provider} {' -> '.join(map(str, path))}" for provider, path in paths.items()
        )

    def markdown(self) -> str:
        lines = ["## Provider limits", ""]
        if self.problem is not None:
            return "\n".join([*lines, f"Not read: {self.problem}."])
        if not self.changes:
            return "\n".join([*lines, LIMITS_UNCHANGED])
        lines += [
            "Each change of a provider's limit on Prefect (`provider:<name>`) while this "
            "batch ran, by whichever process made it: lowered when the provider throttled, "
            "raised when it recovered, an operator's own cap (manual), `studio limits "
            "apply` (applied). `studio limits show` has the limits now.",
            "",
            "| after start | provider | limit | why | status | Retry-After |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for change in self.changes:
            after = (
                f"+{(change.at - self.started).total_seconds():.1f}s"
                if self.started is not None else change.at.strftime("%H:%M:%S UTC")
            )
            retry = seconds_text(change.retry_after) if change.retry_after is not None else "-"
            status = str(change.status) if change.status is not None else "-"
            lines.append(
                f"| {after} | {change.provider} | {change.from_limit} -> {change.to_limit} "
                f"| {change.reason} | {status} | {retry} |"
            )
        return "\n".join(lines)


def _utc(when: datetime | None) -> datetime | None:
    """SQLite gives timezone columns back naive: they hold UTC."""
    return when if when is None or when.tzinfo else when.replace(tzinfo=UTC)


def limit_history(batch_id: str) -> LimitHistory:
    """The changes between the batch row's start and end (now, if it has none yet).

    Never fails the batch: a database without the tables (or unreachable) gives a
    history that says it was not read, and a warning in the run's log."""
    from studio.db.engine import session_scope
    from studio.db.models import Batch
    from studio.db.provider_pace import limit_changes

    try:
        with session_scope() as session:
            batch = session.get(Batch, batch_id)
            started = _utc(batch.started_at) if batch is not None else None
            finished = _utc(batch.finished_at) if batch is not None else None
            if started is None:
                return LimitHistory(None, problem=f"no batch row {batch_id}")
            changes = limit_changes(session, started, finished or datetime.now(UTC))
    except Exception as exc:  # the artifact says so; the batch's outcome stands
        problem = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        log.warning("Provider limits not read for the artifact | Batch: %s | %s",
                    batch_id, problem)
        return LimitHistory(None, problem=problem)
    return LimitHistory(started, changes)


async def publish_batch_artifact(
    result: BatchResult,
    image_paths: Mapping[str, str] | None = None,
    images_read: Callable[[], object] | None = None,
) -> None:
    """`image_paths`: piece id -> staged image, for the gallery's thumbnails.
    `images_read` is called once the gallery has read them, while the artifacts are still
    being sent: what may delete the staged images (a completed batch's staging cleanup)
    starts then instead of after the sends (issue 20: the batch's end holds a worker slot).
    """
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
    limits = await asyncio.to_thread(limit_history, result.batch_id)
    description += f" Provider limits: {limits.summary()} (see gallery-{slug})."
    if result.pending_review:
        description += " " + review_note(result, await review_deployment_link())
    # each artifact is an API call the batch's end waits for, while its worker slot is
    # held (issue 20): the three are sent together, the table while the gallery is drawn
    sent = [asyncio.ensure_future(acreate_table_artifact(
        table=table, key=f"content-batch-{slug}"[:60], description=description
    ))]
    if links:
        sent.append(asyncio.ensure_future(acreate_markdown_artifact(
            markdown=links_markdown(result, links, minter.expiry_note()),
            key=f"links-{slug}"[:60],
            description=f"Premium links of batch {result.batch_id}: {minter.expiry_note()}",
        )))
    try:
        # decoding and shrinking the images is CPU work (~30 ms each): off the event loop
        gallery = await asyncio.to_thread(gallery_markdown, result, image_paths or {})
        if images_read is not None:
            images_read()
        sent.append(asyncio.ensure_future(acreate_markdown_artifact(
            markdown=f"{gallery}\n\n{limits.markdown()}",
            key=f"gallery-{slug}"[:60],
            description=f"Gallery of batch {result.batch_id} for {result.avatar_name}",
        )))
    finally:  # none left running behind the batch; the first failure is the batch's
        await asyncio.gather(*sent)

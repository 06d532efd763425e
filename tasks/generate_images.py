"""Step 2: one image per piece through the provider chain, staged so it is paid once.

Before any provider is called the task looks in the staging folder keyed by piece id,
so a retried task, a retried flow run or a resumed batch never pays twice. The chain
holds a Prefect global-concurrency lease (`provider:<name>`) around exactly the
provider call. When every provider fails, the avatar's cached asset for the same
template is reused (spec: graceful degradation); without one the piece fails with
every provider's reason, and the task is not retried (the chain already retried).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from prefect import task

from studio.db import progress as db_progress
from studio.db.engine import session_scope
from studio.ledger.jobs import ImageCallLedger
from studio.providers.asset_cache import AssetCache
from studio.providers.build import caps
from studio.providers.chain import BUDGET, ChainExhausted, ProviderChain
from studio.providers.lease_census import LeaseCensus
from studio.providers.registry import build_image_chain
from studio.providers.settings import ProviderSettings
from studio.settings import get_settings
from studio.staging import ImageStaging, open_staging
from studio.types import AvatarRef, GeneratedImage, PieceSpec
from tasks.provider_slots import PrefectSlots
from tasks.slot_reconcile import census_heal

log = logging.getLogger("studio.providers")

_chain: ProviderChain | None = None
_slots: PrefectSlots | None = None


def image_chain() -> ProviderChain:
    """The process's chain (breakers live as long as the process), on global slots."""
    global _chain, _slots
    if _chain is None:
        settings = ProviderSettings()
        census = LeaseCensus()  # the slots this process holds, for the reconcile
        _slots = PrefectSlots(
            caps(settings),
            poll_seconds=settings.slot_poll_seconds,
            linger_seconds=settings.slot_linger_seconds,
            census=census,
            heal=census_heal(census),
        )
        _chain = build_image_chain(settings, slot=_slots, ledger=ImageCallLedger())
    return _chain


async def release_idle_slots() -> None:
    """Return lingering provider leases to the server (end of a chunk of images)."""
    if _slots is not None:
        await _slots.release_idle()


def asset_cache() -> AssetCache:
    return AssetCache(get_settings().studio_home / "assets")


class ImageGenerationFailed(Exception):
    """Every provider failed for a piece and no cached asset exists; says why, per provider."""


def _retry_unless_exhausted(task, task_run, state) -> bool:  # type: ignore[no-untyped-def]
    """Retry the task only for unexpected errors: an exhausted chain already retried."""
    return not isinstance(state.data, ImageGenerationFailed)


@task(
    name="generate-image",
    retries=1,
    retry_delay_seconds=2,
    retry_condition_fn=_retry_unless_exhausted,
    timeout_seconds=900,
    # no tags: Prefect acquires a tag concurrency slot on the server for every tagged
    # task run, one at a time per process, before the body starts; the provider limits
    # already cap what is scarce, so a tag here only put a round trip before each image
    task_run_name="generate-image-{spec.index}",
)
async def generate_image(spec: PieceSpec, avatar: AvatarRef, staging_root: str) -> GeneratedImage:
    early = _early.pop((staging_root, spec.piece_id), None)
    if early is not None:  # started by images_started_early: adopt it (a retry starts afresh)
        return await early
    return await produce_image(spec, avatar, staging_root)


#: images started ahead of their task runs, by (staging root, piece id)
_early: dict[tuple[str, str], asyncio.Task[GeneratedImage]] = {}


@contextlib.asynccontextmanager
async def images_started_early(
    specs: list[PieceSpec], avatar: AvatarRef, staging_root: str
) -> AsyncIterator[None]:
    """Start every piece's image now; its `generate_image` task run adopts it later.

    Registering the chunk subflows and their task runs takes several Prefect API round
    trips (a second or more on a busy server) before the first task body runs; the
    provider calls, which are the step's critical path, need none of them. The task
    run still reports the image's outcome and its failure, and a retry starts afresh.
    An early image is staged before it is returned, so one whose task run never came
    (a chunk that failed to start) is awaited here and reused by a resumed batch.
    """
    loop = asyncio.get_running_loop()
    started: list[asyncio.Task[GeneratedImage]] = []
    keys = [(staging_root, spec.piece_id) for spec in specs]
    for key, spec in zip(keys, specs, strict=True):
        if key not in _early:
            _early[key] = loop.create_task(produce_image(spec, avatar, staging_root))
            started.append(_early[key])
    try:
        await _first_slots_granted()
        yield
    except asyncio.CancelledError:  # the run is being cancelled: so are its calls
        for early in started:
            early.cancel()
        raise
    finally:
        for key in keys:
            _early.pop(key, None)
        # errors were the task runs' to report; unadopted ones were never run as tasks
        await asyncio.gather(*started, return_exceptions=True)


async def _first_slots_granted(timeout: float = 1.0) -> None:
    """Wait (briefly) until the early images' first slots are granted.

    The chunk subflows' registration is several API calls per chunk and is off the
    critical path now; sent at the same moment as the first lease increments, it
    delays them (a busy Prefect server answers in arrival order).
    """
    if _slots is None:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    await asyncio.sleep(0.005)  # let the early images ask for their slots
    while _slots.requesting() and loop.time() < deadline:
        await asyncio.sleep(0.005)


async def produce_image(spec: PieceSpec, avatar: AvatarRef, staging_root: str) -> GeneratedImage:
    """One piece's image: the staged one if it exists, else the chain's, staged.

    The image is recorded as generated in the database the moment it is staged (not at
    the end of the step), so a process killed mid-step loses only the images in flight.
    """
    staging = await asyncio.to_thread(open_staging, staging_root, spec.batch_id)
    already = await asyncio.to_thread(staging.existing, spec.piece_id)
    if already is None:
        already = await _make_image(spec, avatar, staging)
    await asyncio.to_thread(_record_generated, already)
    return already


def _record_generated(image: GeneratedImage) -> None:
    """One forward-only UPDATE (planned -> generated); the step's final record repeats it."""
    try:
        with session_scope() as session:
            db_progress.record_images(session, [image])
    except Exception as exc:  # the end-of-step record_progress retries it
        log.warning("Image not recorded yet | Piece: %s | %s", image.piece_id, exc)


async def _make_image(spec: PieceSpec, avatar: AvatarRef, staging: ImageStaging) -> GeneratedImage:
    try:
        result = await image_chain().generate(spec, avatar)
    except ChainExhausted as exc:
        return await asyncio.to_thread(_degrade, spec, avatar, staging, exc)
    image = GeneratedImage(
        piece_id=spec.piece_id,
        provider=result.provider,
        path="",
        content_type=result.image.content_type,
        seconds=result.seconds,
        cost_usd=result.cost_usd,
        stand_in=result.stand_in,
        attempts=result.attempts,
        provider_job_id=result.job_id,  # the billed job (the ledger has it too)
    )
    staged = await asyncio.to_thread(staging.save, image, result.image.data)
    if not result.stand_in:
        asset_cache().remember(avatar.id, spec.template_id, Path(staged.path))
    return staged


def _degrade(
    spec: PieceSpec, avatar: AvatarRef, staging: ImageStaging, exc: ChainExhausted
) -> GeneratedImage:
    cached = asset_cache().lookup(avatar.id, spec.template_id)
    if cached is None and exc.budget:  # a budget stopped the billed providers
        raise ImageGenerationFailed(BUDGET) from None
    if cached is None:
        raise ImageGenerationFailed(f"piece {spec.index}: {exc}") from None
    log.warning(
        "Graceful degradation | Piece: %s | reused cached asset of template %s | %s",
        spec.piece_id, spec.template_id, exc,
    )
    image = GeneratedImage(
        piece_id=spec.piece_id,
        provider="cache",
        path="",
        content_type="image/png",
        cost_usd=0.0,
        attempts=exc.attempts,
        degraded=True,
    )
    return staging.save(image, cached)

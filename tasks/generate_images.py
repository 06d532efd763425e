"""Step 2: one image per piece through the provider chain, staged so it is paid once.

One task run per chunk makes the chunk's images concurrently. Before any provider is
called a piece looks in the staging folder keyed by piece id, so a retried task, a
retried flow run or a resumed batch never pays twice. The chain holds a Prefect
global-concurrency lease (`provider:<name>`) around exactly the provider call. When
every provider fails, the avatar's cached asset for the same template is reused (spec:
graceful degradation); without one the piece fails with every provider's reason and is
not tried again (the chain already retried).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_attempt,
    wait_fixed,
)

from engine import provider_pace, provider_rates
from engine.early_start import adopt, started_early
from engine.lease_census import LeaseCensus
from engine.provider_slots import LeasePool, PrefectSlots
from engine.slot_reconcile import census_heal
from studio.db import piece_progress
from studio.db.engine import session_scope
from studio.ledger.jobs import ImageCallLedger
from studio.providers.asset_cache import AssetCache
from studio.providers.build import build_image_chain, caps
from studio.providers.chain import BUDGET, ChainExhausted, ProviderChain
from studio.providers.settings import ProviderSettings
from studio.settings import get_settings
from studio.staging import ImageStaging, open_staging
from studio.types import AvatarRef, GeneratedImage, ImageFailure, PieceSpec

log = logging.getLogger("studio.providers")

_chain: ProviderChain | None = None
_slots: PrefectSlots | None = None


def image_chain() -> ProviderChain:
    """The process's chain (breakers live as long as the process), on global slots."""
    global _chain, _slots
    if _chain is None:
        provider_pace.install()  # throttling answers move the fleet's limits
        provider_rates.install()  # rate:<provider> limits, when set
        settings = ProviderSettings()
        census = LeaseCensus()  # the slots this process holds, for the reconcile
        _slots = PrefectSlots(
            caps(settings),
            poll_seconds=settings.slot_poll_seconds,
            linger_seconds=settings.slot_linger_seconds,
            census=census,
            heal=census_heal(census),
            limit_in_force=provider_pace.limit_in_force,  # a lowered limit binds at once
            claim_seconds=settings.slot_claim_seconds,
            asks_in_flight=settings.slot_asks_in_flight,
        )
        _chain = build_image_chain(settings, slot=_slots, ledger=ImageCallLedger())
    return _chain


def claim_image_slots() -> None:
    """Tell the fleet this batch will soon ask for its first image provider's slots
    (engine/provider_slots.py `LeasePool.claim`): the batches of a wave then share the
    cap from their first images instead of the first to ask taking it all. Best effort:
    a chain that cannot be built here is reported by the image step, after the checks
    that refuse bad input."""
    try:
        chain = image_chain()
    except Exception as exc:
        log.debug("No claim on image slots (%s)", type(exc).__name__)
        return
    if _slots is not None and _slots.claim_seconds > 0 and (pool := _first_pool(chain)):
        pool.claim(_slots.claim_seconds)


def end_image_claim() -> None:
    """The batch is over (or refused) without having asked: the others stop waiting."""
    if _chain is not None and (pool := _first_pool(_chain)) is not None:
        pool.unclaim()


def _first_pool(chain: ProviderChain) -> LeasePool | None:
    return _slots.pool(chain.names[0]) if _slots is not None and chain.names else None


async def release_idle_slots() -> None:
    """Return lingering provider leases to the server (end of a chunk of images)."""
    if _slots is not None:
        await _slots.release_idle()


def asset_cache() -> AssetCache:
    return AssetCache(get_settings().studio_home / "assets")


class ImageGenerationFailed(Exception):
    """Every provider failed for a piece and no cached asset exists; says why, per provider."""


#: a piece whose image failed for an unexpected reason (not an exhausted chain, which
#: already retried every provider) is tried once more after this pause
PIECE_RETRY_DELAY_SECONDS = 2.0
PIECE_ATTEMPTS = 2

#: called as each piece of a chunk ends (progress bars, the batch's progress artifact)
PieceDone = Callable[[GeneratedImage | ImageFailure], None]


@task(
    name="generate-images",
    retries=1,
    retry_delay_seconds=2,
    timeout_seconds=900,
    # the specs are the batch's own plan, keyed by piece id: no input hashing or caching
    cache_policy=NO_CACHE,
    # no tags: Prefect acquires a tag concurrency slot on the server for every tagged
    # task run before the body starts; the provider limits already cap what is scarce
    task_run_name="generate-images-{chunk_index}",
)
async def generate_images(
    chunk_index: int,
    specs: list[PieceSpec],
    avatar: AvatarRef,
    staging_root: str,
    on_piece: PieceDone | None = None,
) -> list[GeneratedImage | ImageFailure]:
    """Every piece of a chunk, concurrently, each through the chain: one task run per
    chunk, not per piece.

    A task run per piece cost the Prefect API a run and three state changes per image
    (a second or more per chunk on a busy SQLite server, and most of the orchestration's
    CPU); the chunk's task run, its state message and the batch artifact say which
    pieces failed and why. A piece never fails the others: it comes back as an
    ImageFailure. The task's own retry (a failure outside any piece) re-runs only
    what is not staged.
    """
    return list(
        await asyncio.gather(
            *(_one_piece(spec, avatar, staging_root, on_piece) for spec in specs)
        )
    )


async def _one_piece(
    spec: PieceSpec, avatar: AvatarRef, staging_root: str, on_piece: PieceDone | None
) -> GeneratedImage | ImageFailure:
    result: GeneratedImage | ImageFailure
    early = adopt((staging_root, spec.piece_id))
    try:
        if early is not None:
            result = await early
        else:
            result = await generate_piece_image(spec, avatar, staging_root)
    except ImageGenerationFailed as exc:
        result = ImageFailure(piece_id=spec.piece_id, reason=str(exc))
    except Exception as exc:  # retried already; the piece fails, the chunk goes on
        reason = f"{type(exc).__name__}: {exc}"
        result = ImageFailure(piece_id=spec.piece_id, reason=reason)
    if on_piece is not None:
        on_piece(result)
    return result


@contextlib.asynccontextmanager
async def images_started_early(
    specs: list[PieceSpec], avatar: AvatarRef, staging_root: str
) -> AsyncIterator[None]:
    """Start every piece's image now; its chunk's `generate-images` task run adopts it
    (engine/early_start.py: registering the chunk subflows takes API round trips, one
    chunk after the other, that the provider calls do not need).

    The chunk's task run still reports every piece's outcome, and its retry starts
    afresh. An early image is staged before it is returned, so one whose chunk never
    started is awaited here and reused by a resumed batch; cancelling the step cancels
    the calls. The staging of each batch is opened once here, not once per piece.
    """
    stagings: dict[str, ImageStaging] = {}
    for batch_id in {spec.batch_id for spec in specs}:
        with contextlib.suppress(Exception):  # else each piece opens it (and says why not)
            stagings[batch_id] = await asyncio.to_thread(open_staging, staging_root, batch_id)
    calls = {
        (staging_root, spec.piece_id): functools.partial(
            generate_piece_image, spec, avatar, staging_root, stagings.get(spec.batch_id)
        )
        for spec in specs
    }
    async with started_early(calls):
        yield


async def generate_piece_image(
    spec: PieceSpec, avatar: AvatarRef, staging_root: str, staging: ImageStaging | None = None
) -> GeneratedImage:
    """One piece's image, with one more try after an unexpected error (a disk hiccup
    after staging, say): the staged image is found then, so nothing is paid twice."""
    retrying = AsyncRetrying(
        stop=stop_after_attempt(PIECE_ATTEMPTS),
        wait=wait_fixed(PIECE_RETRY_DELAY_SECONDS),
        retry=retry_if_not_exception_type((ImageGenerationFailed, asyncio.CancelledError)),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            image = await produce_image(spec, avatar, staging_root, staging)
    return image


async def produce_image(
    spec: PieceSpec, avatar: AvatarRef, staging_root: str, staging: ImageStaging | None = None
) -> GeneratedImage:
    """One piece's image: the staged one if it exists, else the chain's, staged.

    The image is recorded as generated in the database the moment it is staged (not at
    the end of the step), so a process killed mid-step loses only the images in flight.
    `staging`: the batch's, when the caller opened it already.
    """
    if staging is None:
        staging = await asyncio.to_thread(open_staging, staging_root, spec.batch_id)
    already = await asyncio.to_thread(staging.existing, spec.piece_id)
    if already is None:
        already = await _make_image(spec, avatar, staging)
    await generated_records().record(already)
    return already


class GeneratedRecords:
    """Images recorded as generated a burst at a time: one statement and one commit for
    the images staged within `window` seconds of each other, not a commit per image
    (per image it was a tenth of a piece's CPU at 500 pieces, py-spy). Each caller still
    waits until its own image is recorded, so "recorded the moment it is staged" holds
    to within the window."""

    def __init__(self, window: float = 0.02) -> None:
        self.window = window
        self._pending: list[tuple[GeneratedImage, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def record(self, image: GeneratedImage) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((image, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        await done

    async def _flush(self) -> None:
        while self._pending:
            await asyncio.sleep(self.window)
            burst, self._pending = self._pending, []
            try:
                await asyncio.to_thread(_record_generated, [image for image, _ in burst])
            finally:  # recorded, or left to the step's final record: nobody waits forever
                for _, done in burst:
                    if not done.done():
                        done.set_result(None)


_records: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, GeneratedRecords] = (
    weakref.WeakKeyDictionary()
)


def generated_records() -> GeneratedRecords:
    """This event loop's recorder (the chunks of a batch share one)."""
    return _records.setdefault(asyncio.get_running_loop(), GeneratedRecords())


def _record_generated(images: list[GeneratedImage]) -> None:
    """One forward-only UPDATE (planned -> generated); the step's final record repeats it."""
    try:
        with session_scope() as session:
            piece_progress.record_images(session, images)
    except Exception as exc:  # the end-of-step record_progress retries it
        log.warning("Images not recorded yet | Pieces: %d | %s", len(images), exc)


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
    staged = await _stage(staging, image, result.image.data)
    if not result.stand_in:
        asset_cache().remember(avatar.id, spec.template_id, Path(staged.path))
    return staged


#: a paid-for image whose local write fails is written again, never bought again
STAGE_ATTEMPTS = 3
STAGE_RETRY_DELAY_SECONDS = 0.5


async def _stage(staging: ImageStaging, image: GeneratedImage, data: bytes) -> GeneratedImage:
    """Stage an image the provider has billed, from the bytes in hand.

    The object store failing is handled by the staging itself (the image stays on this
    host, studio/staging_outage.py); what is left is the local disk. Its write is tried
    again with the same bytes, and if it still fails the piece fails as
    ImageGenerationFailed, which the piece's retry does not repeat: repeating the
    piece would buy the image again.
    """
    retrying = AsyncRetrying(
        stop=stop_after_attempt(STAGE_ATTEMPTS),
        wait=wait_fixed(STAGE_RETRY_DELAY_SECONDS),
        retry=retry_if_exception_type(OSError),
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                staged = await asyncio.to_thread(staging.save, image, data)
    except OSError as exc:
        raise ImageGenerationFailed(
            f"image billed by {image.provider} (job {image.provider_job_id or '-'}) but not"
            f" staged on local disk: {type(exc).__name__}: {exc.strerror or exc}"
        ) from None
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

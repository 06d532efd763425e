"""The `content-batch` flow: validate, then the spec's seven steps.

Every step is a Prefect task (image generation a set of concurrent chunk subflows),
so the Prefect UI shows which step of which batch failed. The flow itself only
routes values between steps, times them and writes the spec's log lines.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from prefect import flow
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State

from blocks import apply_registered_blocks
from engine import provider_pace
from engine.early_start import staggered_starts
from engine.provider_rates import install as install_rates
from engine.run_clients import shared_sync_client
from engine.run_logs import attach_run_logs
from flows.batch_artifact import publish_batch_artifact, review_note
from flows.batch_events import emit_batch_events, emit_budget_reached
from flows.batch_state_hooks import BATCH_STATE_HOOKS, RESUMES_TAG_PREFIX, record_resume
from flows.hook_step import write_batch_hooks
from flows.image_chunk import image_chunk
from flows.progress_artifact import tracked_images
from flows.stand_in_policy import run_stand_in_policy
from flows.step_runner import BatchSteps, chunked
from studio import batchlog, progress_events
from studio.batch_verdict import failure_summary
from studio.catalog import template_library
from studio.db.batch_lease import one_run_per_batch
from studio.db.piece_progress import BatchProgress
from studio.moderation.base import ModerationItem
from studio.outcomes import (
    PUBLISHABLE,
    batch_row_values,
    build_result,
    hold_degraded,
    piece_outcomes,
    piece_row,
    stand_in_marks,
)
from studio.request import (
    AvatarParam,
    BatchIdParam,
    BatchParameters,
    BatchRequest,
    BatchRequestError,
    FormatParam,
    HookModeParam,
    HooksParam,
    PiecesParam,
    PlatformParam,
    PromptsParam,
    ResumeParam,
    SafetyParam,
    SeedParam,
    TierSharesParam,
    TiersParam,
    UploadParam,
    parse_batch_id,
)
from studio.settings import get_settings
from studio.stand_ins import StandInPolicy, hold_stand_ins
from studio.types import (
    AvatarRef,
    BatchResult,
    GeneratedImage,
    Hook,
    HookBatch,
    ImageFailure,
    PieceSpec,
    SafetyReport,
    SafetyVerdict,
    StoredObject,
)
from tasks.check_safety import check_safety
from tasks.clean_staging import clean_staging
from tasks.dead_runs import settle_dead_runs
from tasks.generate_images import (
    claim_image_slots,
    end_image_claim,
    image_chain,
    images_started_early,
)
from tasks.ledger import ledger_cost
from tasks.piece_progress import (
    finished_batch,
    load_batch_progress,
    record_plan,
    resumable_batch_request,
)
from tasks.provider_tags import moderation_tags, storage_tags
from tasks.save import finish_batch, register_batch, save_pieces
from tasks.screen_prompts import screen_before_generation
from tasks.select_templates import select_templates
from tasks.statistics import calculate_statistics
from tasks.upload import UploadItem, upload_pieces
from tasks.validate import BatchRefusal, validate_batch

log = logging.getLogger("studio.batch")


class BatchBelowMinimum(Exception):
    """Fewer pieces than `min_success_ratio` came out; what was made is saved."""


def _batch_request(
    params: BatchParameters, resume_batch_id: str | None, settings: Any
) -> BatchRequest:
    """The request to run; a resume's stored request wins (refused if it cannot resume)."""
    if resume_batch_id:
        # unknown, complete or another avatar's batch: refused here, before any spend
        config = resumable_batch_request(resume_batch_id, params.avatar_id)
        return BatchRequest.model_validate(config)
    request = params.request()
    request.include_hooks = request.include_hooks and settings.hook_generation_enabled
    request.upload_to_storage = request.upload_to_storage and settings.upload_to_storage_enabled
    return request


def _refused(refusal: BatchRefusal) -> State:
    """One log line and a "Refused" state: a request refused is no failed batch."""
    log.error("Batch refused | %s: %s", refusal.field, refusal.message)
    return Failed(
        name="Refused", message=f"{refusal.field}: {refusal.message}", data=refusal.error()
    )


def batch_run_name() -> str:
    """`content-batch-{avatar_id}-{num_pieces}`; a run left to the avatar's profile for
    its size (num_pieces empty: a run created in the UI or by a direct call) is named
    by the size the profile gives, so the name still says what the run makes. A run
    created with that name and more after it (the fan-out's `...-<platform>`, one run per
    platform of the profile) keeps its name: Prefect renames every run with this
    function when it starts."""
    parameters = flow_run.get_parameters() or {}
    avatar_id = parameters.get("avatar_id")
    pieces = parameters.get("num_pieces")
    if pieces is None:
        pieces = _profile_pieces(str(avatar_id), parameters.get("custom_prompts"))
    name = f"content-batch-{avatar_id}-{pieces}"
    given = flow_run.get_name() or ""
    return given if given.startswith(f"{name}-") else name


def _profile_pieces(avatar_id: str, custom_prompts: Any) -> int | str:
    """What resolve_request will make of an empty num_pieces; "profile" when the
    avatar cannot be read yet (the body refuses it, naming why)."""
    from studio.avatars import find_avatar, to_ref
    from studio.db.engine import session_scope
    from studio.request import DEFAULT_PIECES

    if isinstance(custom_prompts, list) and custom_prompts:
        return len(custom_prompts)
    try:
        with session_scope() as session:
            row = find_avatar(session, avatar_id)
            if row is None:
                return "profile"
            return to_ref(row).pieces_per_run or DEFAULT_PIECES
    except Exception:  # a name must never fail the run: the body says what is wrong
        return "profile"


@flow(
    name="content-batch",
    flow_run_name=batch_run_name,
    log_prints=False,
    timeout_seconds=get_settings().batch_generation_timeout,
    retries=0,
    **BATCH_STATE_HOOKS,  # a timed-out, crashed or cancelled run still writes its row
)
async def content_batch(
    avatar_id: AvatarParam,
    num_pieces: PiecesParam = None,
    tier_distribution: TierSharesParam = None,
    platform: PlatformParam = None,
    format: FormatParam = None,
    include_hooks: HooksParam = True,
    safety_check: SafetyParam = True,
    upload_to_storage: UploadParam = True,
    custom_prompts: PromptsParam = None,
    custom_tiers: TiersParam = None,
    hook_mode: HookModeParam = "direct",
    seed: SeedParam = None,
    batch_id: BatchIdParam = None,
    resume_batch_id: ResumeParam = None,
) -> BatchResult:
    """Make `num_pieces` ready-to-publish pieces for one avatar.

    `num_pieces`, `tier_distribution`, `platform` and `format` left empty come from the
    avatar's profile (pieces per run, tier mix, first platform, format), else 50,
    0.6/0.3/0.1, instagram and the platform's own format (studio.request.resolve_request).

    `batch_id` defaults to the flow run's id, so a retry of the same flow run resumes
    the same batch: staged images, stored files and rows are keyed by piece id and
    are neither paid for nor written twice.

    `resume_batch_id` resumes a batch that crashed or was killed: its stored request and
    plan are used, and every step runs only for the pieces it has not finished yet.

    `hook_mode`: "direct" (on-demand), "message-batches" (hooks as one half-price
    Message Batch within the time the batch has left) or "auto" (message batches when a
    schedule started the run); see studio/hooks/modes.py.

    A request the parameter schema lets through but that cannot run (ratios not summing
    to 1, prompts not one per piece, an unknown or untrained avatar, a format a provider
    cannot serve, a ComfyUI workflow the server cannot run, a broken resume)
    ends the run "Refused" (a Failed state: not the failed-batch automation's
    `prefect.flow-run.Failed`) with its message, before anything is spent. A batch below
    min_success_ratio ends Failed with what failed where; a direct call raises
    BatchRequestError / BatchBelowMinimum for those.
    """
    # first, while the locals are exactly the parameters: BatchParameters' fields, which
    # this signature spells out for Prefect's schema (tests/flows/test_params_schema.py)
    params = BatchParameters(**locals())
    with shared_sync_client():  # one API client for every sync task run (see module)
        return await _run_batch(params)


async def _run_batch(params: BatchParameters) -> BatchResult | State:
    """The flow's body (see `content_batch`), run holding the batch's lease."""
    await apply_registered_blocks()  # endpoints/keys saved as Prefect blocks, if any
    settings = get_settings()
    batchlog.configure_logging(settings.log_file, settings.log_level)
    attach_run_logs()  # studio.* records to this run's Prefect logs, in every mode
    provider_pace.install()  # the fleet's pace on provider limits (issue 20)
    install_rates()  # requests per second: rate:<provider> limits, when set (issue 20)
    claim_image_slots()  # the other batches of this wave keep to their share until we ask
    try:
        return await _run_leased(params, settings)
    finally:
        end_image_claim()
        await provider_pace.settle()  # a failed batch's adjustments logged in its run too


async def _run_leased(params: BatchParameters, settings: Any) -> BatchResult | State:
    try:
        leased = parse_batch_id("resume_batch_id", params.resume_batch_id) or parse_batch_id(
            "batch_id", params.batch_id
        )
    except BatchRequestError:
        leased = None  # refused by the body below, with its message
    if leased is None:  # a new batch: its id is this run's own, nobody else's
        return await _make_batch(params, settings)
    # a resume (or a given id) may meet another run of the same batch (crash recovery
    # and an operator at once): one at a time, and the second reads what is left after
    async with one_run_per_batch(leased) as lease:
        raced = lease.waited or _created_to_resume()
        if raced and params.resume_batch_id and (done := finished_batch(leased)):
            message = f"another run ended batch {leased} ({done}) before this resume"
            log.info("Batch resume skipped | Batch: %s | %s", leased, message)
            return Completed(name="Skipped", message=message, data=message)
        return await _make_batch(params, settings)


def _created_to_resume() -> bool:
    """Whether this run was created to resume an interrupted batch (crash recovery's or an
    operator's resume, tagged `resumes:<run>`).

    Why: two such resumes (crash recovery and an operator at once) may not overlap at all:
    the first finishes the batch before the second takes its lease, so the second never
    waits, yet the batch it was made for is done; that is a skip, not a refusal. A run
    someone started by hand on a finished batch has no such tag and is still refused.
    """
    return any(tag.startswith(RESUMES_TAG_PREFIX) for tag in flow_run.get_tags() or [])


@dataclass
class _Admitted:
    """A request that may run, and where its batch stands."""

    batch_id: str
    resumed: bool
    request: BatchRequest
    avatar: AvatarRef
    done: BatchProgress | None  # what an earlier run of this batch finished, if any
    stand_in_policy: StandInPolicy


def _admit(params: BatchParameters, settings: Any) -> _Admitted | State:
    """The request to run, or the "Refused" state saying why not, before any spend."""
    try:
        # before anything reads them: a batch id names directories, keys and rows
        batch_id = parse_batch_id("batch_id", params.batch_id)
        resume_batch_id = parse_batch_id("resume_batch_id", params.resume_batch_id)
        request = _batch_request(params, resume_batch_id, settings)
    except BatchRequestError as exc:
        return _refused(BatchRefusal(field=exc.field, message=exc.message))
    batch_id = resume_batch_id or batch_id or flow_run.get_id() or str(uuid.uuid4())
    # another avatar's batch id is refused here, before anything is read or spent
    checked = validate_batch(request, batch_id, planned=bool(resume_batch_id))
    if isinstance(checked, BatchRefusal):
        return _refused(checked)
    done = load_batch_progress(batch_id)
    stand_in_policy = run_stand_in_policy()  # real content expected here? (studio/stand_ins.py)
    if done is not None:  # a batch with real images is never finished with previews
        stand_in_policy = stand_in_policy.resuming(done.images.values())
    if refusal := stand_in_policy.refusal():
        return _refused(BatchRefusal(field="providers", message=refusal))
    # the request resolved against the avatar's profile: what the batch stores and makes
    return _Admitted(
        batch_id, bool(resume_batch_id), checked.request, checked.avatar, done, stand_in_policy
    )


async def workflow_refusal(avatar: AvatarRef) -> str | None:
    """Why the avatar's ComfyUI workflow cannot run (parsed, bound, and every node type
    and model file present on the server), or None: the check of
    studio.providers.comfyui_workflow, when that module is installed."""
    from importlib.util import find_spec

    if find_spec("studio.providers.comfyui_workflow") is None:
        return None
    from studio.providers.comfyui_workflow import workflow_refusal as check

    return await check(avatar)


async def _make_batch(params: BatchParameters, settings: Any) -> BatchResult | State:
    """Validate the request, then the seven steps."""
    admitted = _admit(params, settings)
    if isinstance(admitted, State):
        return admitted
    # still before any spend: a workflow the server lacks a node or model for is refused
    if refusal := await workflow_refusal(admitted.avatar):
        return _refused(BatchRefusal(field="workflow", message=refusal))
    batch_id, request, avatar, done = (
        admitted.batch_id, admitted.request, admitted.avatar, admitted.done
    )
    log.info(batchlog.batch_start(avatar.id, request.num_pieces, request.platform))
    steps = BatchSteps()

    with steps.step(1) as step:  # templates: this batch's plan, or the earlier run's
        specs = done.specs if done else select_templates(request, avatar, batch_id)
        done = await _begin(batch_id, avatar.id, request, specs, done, admitted.resumed)
        step.says(f"Selected: {len(specs)}")

    # screen before spending: a rejected prompt never reaches an image provider
    blocked = await screen_before_generation(specs, done)

    with steps.step(2) as step:  # images, in concurrent chunk subflows
        todo = step.left([s for s in specs if s.piece_id not in blocked], _reusable(done))
        new_images, failures = await _generate_images(todo, avatar, settings.image_chunk_size)
        images = step.record("generated", new_images)
        per_image = max(len(images), 1)
        step.says(f"Generated: {len(images)}", lambda s: f"Avg per image: {s / per_image:.2f}s")
    _log_image_problems(images, failures)
    made = [spec for spec in specs if spec.piece_id in images]

    with steps.step(3) as step:  # hooks
        todo = step.left(made, done.hooks)
        hooks = HookBatch()
        if request.include_hooks and todo:  # a message batch may use the time left
            hooks = await write_batch_hooks(todo, avatar, request, steps.elapsed())
        hooks.hooks = step.record("captioned", hooks.hooks)
        written = sum(1 for spec in made if spec.piece_id in hooks.hooks)
        step.says(f"Generated: {written}/{len(made)}")

    with steps.step(4) as step:  # safety
        todo = step.left(made, {**done.verdicts, **blocked})
        screened = {p: v for p, v in blocked.items() if p not in done.verdicts}  # this run's
        safety = await _check_safety(todo, hooks.hooks, images, request.safety_check, screened)
        _hold_for_review(safety.verdicts, images, hooks.hooks, settings, admitted.stand_in_policy)
        safety.verdicts = step.record("checked", safety.verdicts)
        passed = [s for s in made if safety.verdicts[s.piece_id].status in PUBLISHABLE]
        rejected = [s for s in made if safety.verdicts[s.piece_id].status == "rejected"]
        step.says(f"Passed: {len(passed)}, Rejected: {len(rejected)}")

    with steps.step(5) as step:  # upload
        kept = {s.piece_id: done.stored[s.piece_id] for s in passed if s.piece_id in done.stored}
        todo = step.left(passed, kept)
        new_stored = await _upload(todo, avatar, images, safety.verdicts, request.upload_to_storage)
        stored = step.record("stored", new_stored)
        store_name = next(iter(stored.values())).backend if stored else "none"
        step.says(f"Uploaded: {len(stored)}/{len(specs)} to {store_name}")

    with steps.step(6) as step:  # save
        outcomes = piece_outcomes(specs, images, failures, hooks.hooks, safety.verdicts, stored)
        stand_ins = stand_in_marks(images, hooks.hooks, safety.verdicts, stored)
        rows = [
            piece_row(o, spec, avatar, batch_id, stand_ins)
            for o, spec in zip(outcomes, specs, strict=True)
        ]
        step.says(f"Saved: {save_pieces(rows)}")

    with steps.step(7) as step:  # statistics
        stats = calculate_statistics(avatar.id)
        step.says("", f"Avatar pieces: {stats['total_pieces']}")

    result = build_result(
        batch_id, avatar, request, outcomes, steps.seconds, steps.started, hooks, safety, stand_ins
    )
    return await _finish(result, settings, hooks, images)


async def _begin(
    batch_id: str,
    avatar_id: str,
    request: BatchRequest,
    specs: list[PieceSpec],
    done: BatchProgress | None,
    resumed: bool,
) -> BatchProgress:
    """Register the batch and its plan, or take up an earlier run's; what is finished."""
    register_batch(batch_id, avatar_id, request.model_dump(mode="json"), len(specs))
    if resumed and flow_run.get_id():
        record_resume(batch_id, flow_run.get_id(), list(flow_run.get_tags()))
    if done is None:
        record_plan(avatar_id, batch_id, specs)
        return BatchProgress(batch_id=batch_id)
    log.info("Resuming batch %s | Progress: %s", batch_id, done.counts())
    await settle_dead_runs(batch_id)  # dead runs' open ledger rows (studio/ledger/dead_runs.py)
    return done


def _reusable(done: BatchProgress) -> dict[str, GeneratedImage]:
    """The images an earlier run made that this one can use as they are."""
    return {p: image for p, image in done.images.items() if done.image_done(p)}


def _log_image_problems(
    images: dict[str, GeneratedImage], failures: dict[str, ImageFailure]
) -> None:
    degraded = sum(1 for image in images.values() if image.degraded)
    if degraded:
        log.warning(
            "Degraded images | Degraded: %d | Fresh: %d | cached assets, not new pieces",
            degraded, len(images) - degraded,
        )
    for failure in failures.values():
        log.error(
            "Image generation failed | Piece: %s | Reason: %s", failure.piece_id, failure.reason
        )


def _hold_for_review(
    verdicts: dict[str, SafetyVerdict],
    images: dict[str, GeneratedImage],
    hooks: dict[str, Hook],
    settings: Any,
    stand_in_policy: StandInPolicy,
) -> None:
    """Hold what must not be published unseen: a cached image is not new (held by
    default), and a stand-in where real content is expected is never published."""
    held = hold_degraded(images, verdicts, settings.publish_degraded)
    verdicts.update(held)
    verdicts.update(hold_stand_ins(stand_in_policy, images, hooks, verdicts))
    if held:
        log.warning("Degraded pieces held for review | Count: %d | PUBLISH_DEGRADED=false",
                    len(held))


async def _finish(
    result: BatchResult,
    settings: Any,
    hooks: HookBatch,
    images: dict[str, GeneratedImage],
) -> BatchResult | State:
    """Cost, the batch row, the ending line, artifact and events; the run's final state."""
    batch_id = result.batch_id
    result, cost = ledger_cost(result)  # cost: what the ledger says providers billed
    ending = _ending(result, settings.min_success_ratio)
    row = batch_row_values(result)
    if result.status == "failed":
        row["error"] = ending[:2000]  # the row says why, as the run's state does
    finish_batch(batch_id, row)
    delivered = result.published + result.stored_locally  # kept locally in an outage: made
    if result.status == "failed":
        log.error(
            batchlog.batch_failed(
                result.avatar_id, result.total_seconds, delivered, result.cost_usd, ending
            )
        )
    else:
        log.info(
            batchlog.batch_complete(
                result.avatar_id, result.total_seconds, delivered, result.cost_usd
            )
        )
    # the pace adjustments this batch's answers queued are done (their lines in this
    # run's logs, their changes in the artifact's Provider limits) before the run ends
    await provider_pace.settle()
    cleaning: list[PrefectFuture[Any]] = []

    def clean_once_drawn() -> None:
        if result.status == "completed":  # nothing resumes it: staged images go (issue 15)
            cleaning.append(clean_staging.submit(batch_id))

    await publish_batch_artifact(
        result, {p: image.path for p, image in images.items()}, images_read=clean_once_drawn
    )
    cache = template_library().cache_stats()
    emit_batch_events(
        result,
        hook_failures=hooks.failures,
        # a hit rate over a handful of lookups (a fresh process) says nothing yet
        cache_hit_percent=float(cache["hit_rate_percent"]) if cache["total_calls"] >= 20 else None,
    )
    if cost.refused_calls:
        emit_budget_reached(result, cost.refused_calls)
    for future in cleaning:  # the cleanup ran beside the artifact's sends and the events
        await asyncio.to_thread(future.wait)
    if result.status == "failed":  # the pieces made are saved; the run says what failed
        return Failed(message=ending, data=BatchBelowMinimum(ending))
    if result.failed or result.pending_review:  # it says what failed, or that a review
        return Completed(message=ending, data=result)  # run was requested (issue 19)
    # nothing to add: the plain value (a State returned after an in-run flow retry makes
    # a direct call re-raise the first attempt's exception: Prefect 3.9 keeps it)
    return result


def _ending(result: BatchResult, min_success_ratio: float) -> str:
    """The final state's message: what was delivered and, if any, what failed where."""
    made = result.requested - result.failed
    failed = failure_summary(result.pieces)
    review = f". {review_note(result)}" if result.pending_review else ""
    if result.status == "failed":
        return (
            f"{made}/{result.requested} pieces made, below min_success_ratio "
            f"{min_success_ratio}: {failed}{review}"
        )
    parts = [
        f"{result.published}/{result.requested} published",
        f"{result.rejected} rejected",
        f"{result.pending_review} pending review",
    ]
    if result.stored_locally:  # the object store was down: storage-sync publishes them
        parts.insert(1, f"{result.stored_locally} stored locally")
    return ", ".join(parts) + (f"; {failed}" if failed else "") + review


async def _generate_images(
    specs: list[PieceSpec], avatar: AvatarRef, chunk_size: int
) -> tuple[dict[str, GeneratedImage], dict[str, ImageFailure]]:
    progress_events.start("images", len(specs))
    staging_root = str(get_settings().work_dir.resolve())
    image_chain()  # build providers once, before chunks start in parallel
    chunks = chunked(specs, chunk_size)
    batch_id = specs[0].batch_id if specs else ""
    window = asyncio.Semaphore(get_settings().image_chunks_in_flight)

    # the provider calls start now; each chunk's task run adopts its pieces' calls
    async with (
        images_started_early(specs, avatar, staging_root),
        tracked_images(batch_id, len(specs)),
        staggered_starts(batch_id, len(chunks)) as registered_before,
    ):

        async def run_chunk(index: int, chunk: list[PieceSpec]) -> State:
            async with window:  # chunks start as earlier ones end, in order
                await registered_before(index)
                return await image_chunk(index, chunk, avatar, staging_root, return_state=True)

        states = await asyncio.gather(
            *(run_chunk(i, chunk) for i, chunk in enumerate(chunks))
        )
    images: dict[str, GeneratedImage] = {}
    failures: dict[str, ImageFailure] = {}
    for chunk, state in zip(chunks, states, strict=True):
        for item in await _chunk_items(chunk, state):
            if isinstance(item, GeneratedImage):
                images[item.piece_id] = item
            else:
                failures[item.piece_id] = item
    return images, failures


async def _chunk_items(chunk: list[PieceSpec], state: State) -> list[Any]:
    """A chunk's images and failures, from its state: a chunk with failed pieces ends
    Failed (flows/image_chunk.py) yet carries every item; one that crashed carries
    none, and all its pieces failed with its message."""
    items = await state.result(raise_on_failure=False)
    if isinstance(items, list):
        return items
    reason = state.message or f"image chunk ended {state.name}"
    return [ImageFailure(piece_id=spec.piece_id, reason=reason) for spec in chunk]


async def _check_safety(
    specs: list[PieceSpec],
    hooks: dict[str, Hook],
    images: dict[str, GeneratedImage],
    enabled: bool,
    screened: dict[str, SafetyVerdict] | None = None,
) -> SafetyReport:
    """Every piece goes to the safety task: the policy there decides what to skip or
    sample, and logs the `Content rejected` and `Safety check summary` lines."""
    if not specs and not screened:
        return SafetyReport()
    items = []
    for spec in specs:
        hook = hooks.get(spec.piece_id)
        text = "\n".join(part for part in (spec.prompt, hook.text if hook else "") if part)
        items.append(
            ModerationItem(
                piece_id=spec.piece_id,
                tier=spec.tier,
                custom=spec.custom,
                text=text,
                image_path=images[spec.piece_id].path,
                category=spec.category,
                niche=spec.niche,
            )
        )
    check = check_safety.with_options(tags=moderation_tags())
    seed = specs[0].batch_id if specs else ""
    return await check(items, seed=seed, enabled=enabled, screened=screened)


async def _upload(
    specs: list[PieceSpec],
    avatar: AvatarRef,
    images: dict[str, GeneratedImage],
    verdicts: dict[str, SafetyVerdict],
    enabled: bool,
) -> dict[str, StoredObject]:
    items = [
        UploadItem(
            piece_id=spec.piece_id,
            avatar_id=avatar.id,
            batch_id=spec.batch_id,
            tier=verdicts[spec.piece_id].tier,
            path=images[spec.piece_id].path,
            content_type=images[spec.piece_id].content_type,
        )
        for spec in specs
    ]
    if not items:
        return {}
    upload = upload_pieces.with_options(tags=storage_tags())
    return await upload(items, upload_to_storage=enabled)

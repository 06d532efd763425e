"""The image task and the batch flow with real providers (emulated), on a real Prefect API."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

import tasks.generate_images as generate_images_module
from studio.db.engine import session_scope
from studio.db.models import ContentPiece
from studio.providers.asset_cache import AssetCache
from studio.types import AvatarRef, ImageFailure, PieceSpec
from tasks.generate_images import generate_images

AVATAR = AvatarRef(id="av-t", name="T", niche="travel",
                   lora_weights_url="https://w/loras/t.safetensors")


def spec(i: int = 0, template: str = "tpl-1") -> PieceSpec:
    return PieceSpec(piece_id=f"task-{i}", batch_id="task-batch", index=i, prompt="a quiet harbour",
                     tier="capa1", template_id=template)


def fail_everything(emulators) -> None:
    for emulator in emulators:
        emulator.behaviour.failure_rate = 1.0


async def make(i: int = 0, root: str = "", template: str = "tpl-1"):
    """One piece through the chunk task: its one item (image or failure)."""
    [item] = await generate_images(0, [spec(i, template)], AVATAR, root)
    return item


async def test_rerun_of_a_made_image_calls_no_provider(studio_env, provider_env, emulators):
    comfyui, _, _ = emulators
    root = str(studio_env.work_dir)
    first = await make(0, root)
    assert first.provider == "comfyui" and first.cost_usd == 0.0
    again = await make(0, root)
    assert again.path == first.path
    assert comfyui.counters.requests("prompt") == 1


async def test_piece_retry_after_paying_does_not_pay_twice(
    studio_env, provider_env, emulators, monkeypatch
):
    comfyui, modal, _ = emulators
    comfyui.behaviour.failure_rate = 1.0  # Modal (paid) serves
    calls = {"n": 0}
    real = AssetCache.remember

    def flaky_remember(self, *args):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("disk hiccup after the image was staged")
        return real(self, *args)

    monkeypatch.setattr(AssetCache, "remember", flaky_remember)
    monkeypatch.setattr(generate_images_module, "PIECE_RETRY_DELAY_SECONDS", 0.0)
    image = await make(0, str(studio_env.work_dir))
    assert image.provider == "modal" and image.cost_usd == pytest.approx(0.01)
    assert calls["n"] == 1  # the retry found the staged image and returned before any call
    assert modal.counters.requests("post") == 1


async def test_all_providers_failing_reuses_the_cached_asset(
    studio_env, provider_env, emulators, caplog
):
    root = str(studio_env.work_dir)
    made = await make(0, root)  # a real image becomes the asset
    fail_everything(emulators)
    degraded = await make(1, root)
    assert degraded.provider == "cache" and degraded.cost_usd == 0.0
    with open(made.path, "rb") as a, open(degraded.path, "rb") as b:
        assert a.read() == b.read()
    assert "Graceful degradation" in caplog.text


async def test_all_providers_failing_without_asset_fails_the_piece_once_with_reasons(
    studio_env, provider_env, emulators
):
    comfyui, modal, replicate = emulators
    fail_everything(emulators)
    failure = await make(2, str(studio_env.work_dir), template="never-made")
    assert isinstance(failure, ImageFailure)
    for name in ("comfyui", "modal", "replicate"):
        assert f"{name}:" in failure.reason
    # one pass of the chain, no retry on top: 1 + 3 + 2 provider calls
    assert comfyui.counters.requests("prompt") == 1
    assert modal.counters.requests("post") == 3
    assert replicate.counters.requests("create") == 2


async def test_a_chunk_is_one_task_run_and_a_failed_piece_spares_the_others(
    studio_env, provider_env, emulators
):
    """Ten pieces, one task run: the orchestration cost is per chunk, not per image."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.image_chunk import image_chunk

    comfyui, _, _ = emulators
    root = str(studio_env.work_dir)
    specs = [spec(i, template=f"one-run-{i}") for i in range(10)]
    state = await image_chunk(3, specs, AVATAR, root, return_state=True)
    items = await state.result(raise_on_failure=False)
    assert [item.piece_id for item in items] == [s.piece_id for s in specs]
    assert comfyui.counters.requests("prompt") == 10
    async with get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    assert [run.name for run in runs] == ["generate-images-3"]


async def test_cancelling_a_chunk_cancels_its_provider_calls(studio_env, provider_env, emulators):
    comfyui, _, _ = emulators
    comfyui.behaviour.hang = True
    root = str(studio_env.work_dir)
    started = asyncio.get_running_loop().create_task(
        generate_images.fn(0, [spec(0, "cancelled")], AVATAR, root)
    )
    for _ in range(200):  # until the call is on the wire
        if comfyui.counters.requests("prompt"):
            break
        await asyncio.sleep(0.05)
    started.cancel()
    with pytest.raises(asyncio.CancelledError):
        await started
    comfyui.behaviour.hang = False


async def test_batch_with_flaky_comfyui_delivers_every_piece_and_costs_add_up(
    studio_env, provider_env, emulators
):
    from flows.content_batch import content_batch
    from studio.bootstrap import ensure_demo_avatar

    comfyui, _, _ = emulators
    comfyui.behaviour.failure_rate = 0.3
    ensure_demo_avatar()
    result = await content_batch(avatar_id="demo", num_pieces=12, seed=3)
    assert result.failed == 0
    providers = [p.provider for p in result.pieces]
    assert set(providers) <= {"comfyui", "modal", "replicate"}
    paid = providers.count("modal") * 0.01 + providers.count("replicate") * 0.03
    assert result.cost_breakdown["images"] == pytest.approx(paid)
    assert "image:preview" not in result.stand_ins


async def test_batch_below_min_success_ratio_fails_after_saving(
    studio_env, provider_env, emulators
):
    from flows.content_batch import BatchBelowMinimum, content_batch
    from studio.bootstrap import ensure_demo_avatar

    fail_everything(emulators)
    ensure_demo_avatar()
    state = await content_batch(avatar_id="demo", num_pieces=4, return_state=True)
    assert state.is_failed()
    with pytest.raises(BatchBelowMinimum):
        await state.result()
    with session_scope() as session:
        rows = list(session.scalars(select(ContentPiece)))
    assert len(rows) == 4
    assert all(r.status == "failed" for r in rows)


async def test_early_images_are_adopted_by_their_chunk_and_paid_once(
    studio_env, provider_env, emulators
):
    from prefect import flow

    from engine.early_start import _early
    from tasks.generate_images import images_started_early

    comfyui, _, _ = emulators
    root = str(studio_env.work_dir)
    specs = [spec(i, template=f"early-{i}") for i in range(3)]

    @flow
    async def step() -> list:
        async with images_started_early(specs, AVATAR, root):
            return await generate_images(0, specs, AVATAR, root)

    items = await step()
    assert [i.piece_id for i in items] == [s.piece_id for s in specs]
    assert {i.provider for i in items} == {"comfyui"}
    assert comfyui.counters.requests("prompt") == 3  # one call per piece, not two
    assert not _early  # nothing left behind for a later batch


async def test_an_early_image_whose_chunk_never_ran_is_staged_and_reused(
    studio_env, provider_env, emulators
):
    from tasks.generate_images import images_started_early

    comfyui, _, _ = emulators
    root = str(studio_env.work_dir)
    specs = [spec(i, template=f"orphan-{i}") for i in range(2)]
    with pytest.raises(RuntimeError):
        async with images_started_early(specs, AVATAR, root):
            raise RuntimeError("the chunk subflow could not be created")
    assert comfyui.counters.requests("prompt") == 2  # the early calls finished
    again = await make(0, root, template="orphan-0")  # a resumed batch
    assert again.provider == "comfyui"
    assert comfyui.counters.requests("prompt") == 2  # staged: not paid twice


async def test_cancelling_the_step_cancels_its_early_images(studio_env, provider_env, emulators):
    from engine.early_start import _early
    from tasks.generate_images import images_started_early

    comfyui, _, _ = emulators
    comfyui.behaviour.hang = True
    root = str(studio_env.work_dir)
    specs = [spec(0, template="cancelled-early")]
    entered = asyncio.Event()

    async def step() -> None:
        async with images_started_early(specs, AVATAR, root):
            entered.set()
            await asyncio.sleep(60)

    running = asyncio.get_running_loop().create_task(step())
    await asyncio.wait_for(entered.wait(), 10)
    early = _early[(root, specs[0].piece_id)]
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    comfyui.behaviour.hang = False
    assert early.cancelled()
    assert not _early

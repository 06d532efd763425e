"""Images started before their task runs register (`images_started_early`), on a real
Prefect API and the emulators: adopted once, staged when never adopted, failures still
the task run's, cancelled with the run."""

from __future__ import annotations

import asyncio

import pytest
from prefect import flow

from studio.types import AvatarRef, PieceSpec
from tasks.generate_images import (
    ImageGenerationFailed,
    _early,
    generate_image,
    images_started_early,
)

AVATAR = AvatarRef(id="av-e", name="E", niche="travel",
                   lora_weights_url="https://w/loras/e.safetensors")


def spec(i: int, batch: str = "early-batch") -> PieceSpec:
    return PieceSpec(piece_id=f"{batch}-{i}", batch_id=batch, index=i, prompt="a quiet harbour",
                     tier="capa1", template_id=f"early-tpl-{i}")


async def test_task_runs_adopt_the_early_images_and_pay_once(studio_env, provider_env, emulators):
    comfyui, _, _ = emulators
    root = str(studio_env.work_dir)
    specs = [spec(i) for i in range(3)]

    @flow
    async def step() -> list:
        async with images_started_early(specs, AVATAR, root):
            return list(await asyncio.gather(*(generate_image(s, AVATAR, root) for s in specs)))

    images = await step()
    assert [i.piece_id for i in images] == [s.piece_id for s in specs]
    assert {i.provider for i in images} == {"comfyui"}
    assert comfyui.counters.requests("prompt") == 3  # one call per piece, not two
    assert not _early  # nothing left behind for a later batch


async def test_an_image_no_task_run_adopted_ends_staged_and_is_reused(
    studio_env, provider_env, emulators
):
    comfyui, _, _ = emulators
    root = str(studio_env.work_dir)
    specs = [spec(i, "orphan") for i in range(2)]

    @flow
    async def step_that_fails_to_start_its_chunks() -> None:
        async with images_started_early(specs, AVATAR, root):
            raise RuntimeError("the chunk subflow could not be created")

    with pytest.raises(RuntimeError):
        await step_that_fails_to_start_its_chunks()
    assert comfyui.counters.requests("prompt") == 2  # the early calls finished
    again = await generate_image(specs[0], AVATAR, root)  # a resumed batch
    assert again.provider == "comfyui"
    assert comfyui.counters.requests("prompt") == 2  # staged: not paid twice


async def test_an_early_image_that_fails_fails_its_task_run_without_retry(
    studio_env, provider_env, emulators
):
    comfyui, modal, replicate = emulators
    for emulator in emulators:
        emulator.behaviour.failure_rate = 1.0
    root = str(studio_env.work_dir)
    specs = [spec(0, "failing")]

    @flow
    async def step() -> tuple[bool, str]:
        async with images_started_early(specs, AVATAR, root):
            state = await generate_image(specs[0], AVATAR, root, return_state=True)
        try:
            await state.result()
        except ImageGenerationFailed as exc:
            return state.is_failed(), type(exc).__name__
        return state.is_failed(), "no error"

    assert await step() == (True, "ImageGenerationFailed")
    # one pass of the chain only: the task run was not retried
    assert comfyui.counters.requests("prompt") == 1
    assert modal.counters.requests("post") == 3
    assert replicate.counters.requests("create") == 2


async def test_cancelling_the_step_cancels_its_early_images(studio_env, provider_env, emulators):
    comfyui, _, _ = emulators
    comfyui.behaviour.hang = True
    root = str(studio_env.work_dir)
    specs = [spec(0, "cancelled")]
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

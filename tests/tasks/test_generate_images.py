"""The image task and the batch flow with real providers (emulated), on a real Prefect API."""

from __future__ import annotations

import pytest
from prefect.states import State
from sqlalchemy import select

from studio.db.engine import session_scope
from studio.db.models import ContentPiece
from studio.providers.asset_cache import AssetCache
from studio.types import AvatarRef, PieceSpec
from tasks.generate_images import ImageGenerationFailed, generate_image

AVATAR = AvatarRef(id="av-t", name="T", niche="travel",
                   lora_weights_url="https://w/loras/t.safetensors")


def spec(i: int = 0, template: str = "tpl-1") -> PieceSpec:
    return PieceSpec(piece_id=f"task-{i}", batch_id="task-batch", index=i, prompt="a quiet harbour",
                     tier="capa1", template_id=template)


def fail_everything(emulators) -> None:
    for emulator in emulators:
        emulator.behaviour.failure_rate = 1.0


async def test_rerun_of_a_made_image_calls_no_provider(studio_env, provider_env, emulators):
    comfyui, _, _ = emulators
    root = str(studio_env.work_dir)
    first = await generate_image(spec(), AVATAR, root)
    assert first.provider == "comfyui" and first.cost_usd == 0.0
    again = await generate_image(spec(), AVATAR, root)
    assert again.path == first.path
    assert comfyui.counters.requests("prompt") == 1


async def test_task_retry_after_paying_does_not_pay_twice(
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
    task = generate_image.with_options(retry_delay_seconds=0)
    image = await task(spec(), AVATAR, str(studio_env.work_dir))
    assert image.provider == "modal" and image.cost_usd == pytest.approx(0.01)
    assert calls["n"] == 1  # the retry found the staged image and returned before any call
    assert modal.counters.requests("post") == 1


async def test_all_providers_failing_reuses_the_cached_asset(
    studio_env, provider_env, emulators, caplog
):
    root = str(studio_env.work_dir)
    made = await generate_image(spec(0), AVATAR, root)  # a real image becomes the asset
    fail_everything(emulators)
    degraded = await generate_image(spec(1), AVATAR, root)
    assert degraded.provider == "cache" and degraded.cost_usd == 0.0
    with open(made.path, "rb") as a, open(degraded.path, "rb") as b:
        assert a.read() == b.read()
    assert "Graceful degradation" in caplog.text


async def test_all_providers_failing_without_asset_fails_once_with_reasons(
    studio_env, provider_env, emulators
):
    comfyui, modal, replicate = emulators
    fail_everything(emulators)
    state: State = await generate_image(
        spec(2, template="never-made"), AVATAR, str(studio_env.work_dir), return_state=True
    )
    assert state.is_failed()
    with pytest.raises(ImageGenerationFailed) as caught:
        await state.result()
    for name in ("comfyui", "modal", "replicate"):
        assert f"{name}:" in str(caught.value)
    # one pass of the chain, no task-level retry: 1 + 3 + 2 provider calls
    assert comfyui.counters.requests("prompt") == 1
    assert modal.counters.requests("post") == 3
    assert replicate.counters.requests("create") == 2


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

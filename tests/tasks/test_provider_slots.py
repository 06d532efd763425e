"""Global provider caps on a real Prefect API: lease pools, hand-offs, `limits apply`."""

from __future__ import annotations

import asyncio
import logging

import pytest

from deployments.concurrency_limits import apply_provider_limits, read_provider_limits
from studio.providers.chain import ProviderChain, ProviderPolicy
from studio.providers.modal_endpoint import ModalSDXLProvider
from studio.providers.settings import ProviderSettings
from studio.providers.slots import SlotBusy
from studio.types import AvatarRef, PieceSpec
from tasks.provider_slots import LeasePool, PrefectSlots
from tests.tasks.conftest import MODAL_KEY, MODAL_SECRET

AVATAR = AvatarRef(id="a", name="A", niche="n", lora_weights_url="https://w/a.safetensors")


def spec(i: int) -> PieceSpec:
    return PieceSpec(piece_id=f"slots-{i}", batch_id="slots", index=i, prompt="a calm lake",
                     tier="capa1")


async def _apply(monkeypatch, modal_cap: int) -> None:
    monkeypatch.setenv("MODAL_MAX_CONCURRENT", str(modal_cap))
    await apply_provider_limits(ProviderSettings(_env_file=None))


async def test_limits_apply_creates_then_updates(monkeypatch):
    await _apply(monkeypatch, 3)
    again = await apply_provider_limits(ProviderSettings(_env_file=None))
    assert again["provider:modal"] == "unchanged (limit 3)"
    monkeypatch.setenv("MODAL_MAX_CONCURRENT", "4")
    changed = await apply_provider_limits(ProviderSettings(_env_file=None))
    assert changed["provider:modal"] == "updated (limit 3 -> 4)"
    limits = await read_provider_limits()
    assert limits["provider:comfyui"]["limit"] == 10
    assert limits["provider:replicate"]["limit"] == 5


async def test_global_cap_holds_and_slots_are_handed_off(monkeypatch, emulators):
    _, modal, _ = emulators
    await _apply(monkeypatch, 2)
    modal.behaviour.latency = (0.05, 0.1)
    slots = PrefectSlots({"modal": 2}, poll_seconds=0.05)
    chain = ProviderChain(
        [ModalSDXLProvider(modal.url, token_id=MODAL_KEY, token_secret=MODAL_SECRET)],
        {"modal": ProviderPolicy(timeout=10)}, slot=slots,
    )
    results = await asyncio.gather(*(chain.generate(spec(i), AVATAR) for i in range(12)))
    assert {r.provider for r in results} == {"modal"}
    assert modal.counters.peak == 2
    pool = slots.pool("modal")
    assert pool is not None and pool.handoffs >= 8  # waiters got slots without a round trip
    assert pool.server_grants <= 4
    await slots.drain()
    assert (await read_provider_limits())["provider:modal"]["active_slots"] == 0


async def test_try_acquire_is_busy_when_the_cap_is_taken(monkeypatch):
    await _apply(monkeypatch, 1)
    pool = LeasePool("modal", 1, poll_seconds=0.05)
    lease = await pool.acquire()
    with pytest.raises(SlotBusy):
        await pool.try_acquire()
    other = LeasePool("modal", 1, poll_seconds=0.05)  # another process, same server
    with pytest.raises(SlotBusy):
        await other.try_acquire()
    pool.release(lease)
    await pool.drain()
    again = await other.try_acquire()
    other.release(again)
    await other.drain()


async def test_waiter_in_another_pool_gets_the_slot_after_release(monkeypatch):
    await _apply(monkeypatch, 1)
    first = LeasePool("modal", 1, poll_seconds=0.02)
    second = LeasePool("modal", 1, poll_seconds=0.02)
    lease = await first.acquire()
    waiting = asyncio.create_task(second.acquire())
    await asyncio.sleep(0.1)
    assert not waiting.done()  # the server refuses while `first` holds the only slot
    first.release(lease)
    second.release(await waiting)
    await first.drain()
    await second.drain()


async def test_missing_limit_still_caps_this_process(emulators, caplog):
    _, modal, _ = emulators
    modal.behaviour.latency = (0.05, 0.05)
    slots = PrefectSlots({"nolimit": 2}, poll_seconds=0.02)

    class Renamed(ModalSDXLProvider):
        name = "nolimit"

    chain = ProviderChain(
        [Renamed(modal.url, token_id=MODAL_KEY, token_secret=MODAL_SECRET)],
        {"nolimit": ProviderPolicy(timeout=10)}, slot=slots,
    )
    with caplog.at_level(logging.WARNING, logger="studio.providers"):
        await asyncio.gather(*(chain.generate(spec(i), AVATAR) for i in range(6)))
    assert modal.counters.peak == 2
    assert "does not exist" in caplog.text

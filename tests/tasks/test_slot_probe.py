"""The speed strategy's cheap `may_be_free` probe agrees with what a non-waiting slot
request would get, for local slots and for Prefect lease pools (real Prefect API)."""

from __future__ import annotations

import pytest

from engine.provider_slots import PrefectSlots
from studio.providers.slots import LocalSlots, SlotBusy


async def test_local_probe_tracks_the_semaphore():
    slots = LocalSlots({"modal": 1})
    assert slots.may_be_free("modal") and slots.may_be_free("preview")
    async with slots("modal"):
        assert not slots.may_be_free("modal")
        with pytest.raises(SlotBusy):
            async with slots("modal", wait=False):
                pass
    assert slots.may_be_free("modal")


async def test_pool_probe_tracks_leases_held_and_lingering():
    slots = PrefectSlots({"modal": 1}, linger_seconds=5.0)
    assert slots.may_be_free("modal")
    async with slots("modal", wait=False):
        assert not slots.may_be_free("modal")
        with pytest.raises(SlotBusy):
            async with slots("modal", wait=False):
                pass
    assert slots.may_be_free("modal")  # the lingering lease is free for the next image
    async with slots("modal", wait=False):
        pass
    await slots.release_idle()
    await slots.drain()

"""Global provider caps on a real Prefect API: lease pools, hand-offs, `limits apply`."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest
from prefect import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

from deployments.concurrency_limits import apply_provider_limits, read_provider_limits
from engine import provider_slots
from engine.provider_slots import LeasePool, PrefectSlots
from studio.providers.chain import ProviderChain, ProviderPolicy
from studio.providers.modal_endpoint import ModalSDXLProvider
from studio.providers.settings import ProviderSettings
from studio.providers.slots import SlotBusy
from studio.types import AvatarRef, PieceSpec
from tests.tasks.conftest import MODAL_KEY, MODAL_SECRET

AVATAR = AvatarRef(id="a", name="A", niche="n", lora_weights_url="https://w/a.safetensors")


def spec(i: int) -> PieceSpec:
    return PieceSpec(piece_id=f"slots-{i}", batch_id="slots", index=i, prompt="a calm lake",
                     tier="capa1")


async def _apply(monkeypatch, modal_cap: int) -> None:
    """Size the modal limit and free its slots: a test that failed before its drain must
    not leave slots held (their keepers renew them) for the next test to wait on forever."""
    monkeypatch.setenv("MODAL_MAX_CONCURRENT", str(modal_cap))
    await apply_provider_limits(ProviderSettings(_env_file=None))
    async with get_client() as client:
        await client.update_global_concurrency_limit(
            "provider:modal", GlobalConcurrencyLimitUpdate(active_slots=0)
        )


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
    try:
        results = await asyncio.gather(*(chain.generate(spec(i), AVATAR) for i in range(12)))
    finally:
        pool = slots.pool("modal")
        await slots.drain()
    assert {r.provider for r in results} == {"modal"}
    assert modal.counters.peak == 2
    # most waiters got their slot from a finishing image, without a round trip (a loaded
    # machine may let a lease lapse or linger out now and then: hence not all ten)
    assert pool is not None and pool.handoffs >= 6
    assert pool.server_grants <= 6
    assert (await read_provider_limits())["provider:modal"]["active_slots"] == 0


async def test_try_acquire_is_busy_when_the_cap_is_taken(monkeypatch):
    await _apply(monkeypatch, 1)
    pool = LeasePool("modal", 1, poll_seconds=0.05)
    lease = await asyncio.wait_for(pool.acquire(), 30)
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


@pytest.mark.parametrize("asks_in_flight", [1, 4])
async def test_asks_in_flight_send_increments_together_and_keep_the_cap(
    monkeypatch, asks_in_flight
):
    """Six images wait on a cap of 4: the pool sends up to `asks_in_flight` increments at
    once (a wave's ramp and a hand-over between processes are not paced by one round trip
    after another), and the server never counts more than the cap."""
    from prefect.client.orchestration import PrefectClient

    await _apply(monkeypatch, 4)
    real = PrefectClient.increment_concurrency_slots_with_lease
    on_wire, peak, counted = 0, 0, []

    async def counting(self, *args, **kwargs):
        nonlocal on_wire, peak
        on_wire += 1
        peak = max(peak, on_wire)
        try:
            return await real(self, *args, **kwargs)
        finally:
            on_wire -= 1
            counted.append((await read_provider_limits())["provider:modal"]["active_slots"])

    monkeypatch.setattr(PrefectClient, "increment_concurrency_slots_with_lease", counting)
    api = provider_slots.ApiClients()  # kept across the drains below
    pool = LeasePool("modal", 4, poll_seconds=0.02, linger_seconds=0, api=api,
                     asks_in_flight=asks_in_flight)
    pool.release(await asyncio.wait_for(pool.acquire(), 30))  # a new client's first goes alone
    await pool.drain()
    peak = 0
    waiting = [asyncio.create_task(asyncio.wait_for(pool.acquire(), 30)) for _ in range(6)]
    first = await asyncio.gather(*waiting[:4])
    assert not any(task.done() for task in waiting[4:])  # the cap: two wait
    assert pool.held == 4
    for lease in first:
        pool.release(lease)
    for lease in await asyncio.gather(*waiting[4:]):
        pool.release(lease)
    await pool.drain()
    await api.aclose()
    assert peak == asks_in_flight
    assert max(counted) <= 4
    assert (await read_provider_limits())["provider:modal"]["active_slots"] == 0


async def test_waiter_in_another_pool_gets_the_slot_after_release(monkeypatch):
    await _apply(monkeypatch, 1)
    first = LeasePool("modal", 1, poll_seconds=0.02)
    second = LeasePool("modal", 1, poll_seconds=0.02)
    lease = await asyncio.wait_for(first.acquire(), 30)
    waiting = asyncio.create_task(asyncio.wait_for(second.acquire(), 30))
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


def _counted_keepers(monkeypatch) -> list[str]:
    """Prefect's lease keeper, still the real one, with each start recorded."""
    started: list[str] = []
    real = provider_slots.amaintain_concurrency_lease

    @contextlib.asynccontextmanager
    async def counted(lease_id, *args, **kwargs):
        started.append(str(lease_id))
        async with real(lease_id, *args, **kwargs):
            yield

    monkeypatch.setattr(provider_slots, "amaintain_concurrency_lease", counted)
    return started


async def test_a_lease_given_back_soon_starts_no_keeper(monkeypatch):
    """Prefect's keeper (a thread, a sync client and a renewal at once, per lease) waits
    until a lease has been held a quarter of its duration: an image's lease, given back
    within seconds, costs none of it."""
    await _apply(monkeypatch, 1)
    started = _counted_keepers(monkeypatch)
    pool = LeasePool("modal", 1, poll_seconds=0.02, linger_seconds=0.0)
    lease = await pool.acquire()
    await asyncio.sleep(0.2)
    pool.release(lease)
    await pool.release_idle()
    await pool.drain()
    assert started == []
    assert lease._keeper is not None and lease._keeper.done() and not lease.lost
    assert (await read_provider_limits())["provider:modal"]["active_slots"] == 0


async def test_a_lease_held_past_the_delay_is_kept_by_prefect(monkeypatch):
    """Past KEEPER_DELAY_FRACTION of its duration Prefect's keeper renews the lease on
    the server (a real renewal: a lease the server lost would be marked lost)."""
    await _apply(monkeypatch, 1)
    started = _counted_keepers(monkeypatch)
    monkeypatch.setattr(provider_slots, "KEEPER_DELAY_FRACTION", 0.002)  # 0.12 s of 60
    pool = LeasePool("modal", 1, poll_seconds=0.02, linger_seconds=0.0)
    lease = await pool.acquire()
    await asyncio.sleep(1.0)
    assert started == [str(lease.lease_id)] and not lease.lost
    pool.release(lease)
    await pool.release_idle()
    await pool.drain()
    assert lease._keeper is not None and lease._keeper.done() and not lease.lost
    assert (await read_provider_limits())["provider:modal"]["active_slots"] == 0


async def test_a_lease_whose_renewal_failed_is_never_handed_on(monkeypatch):
    await _apply(monkeypatch, 1)
    pool = LeasePool("modal", 1, poll_seconds=0.02, linger_seconds=5.0)
    lease = await pool.acquire()
    assert lease._keeper is not None and not lease.lost  # Prefect's keeper renews it
    waiting = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0.05)
    lease.lost = True  # what the keeper sets when the server no longer knows the lease
    pool.release(lease)
    fresh = await asyncio.wait_for(waiting, 10)
    assert fresh is not lease and pool.server_grants == 2  # a new lease from the server
    pool.release(fresh)
    await pool.release_idle()
    await pool.drain()
    assert (await read_provider_limits())["provider:modal"]["active_slots"] == 0


async def test_a_limit_the_fleet_lowered_binds_the_pools_own_waiters(monkeypatch):
    """The fleet lowered provider:modal from 3 to 1 (engine/provider_pace.py): a pool
    holding three leases with its own images waiting must not hand them on (that kept
    the old number in flight for as long as it had waiters); every lease goes back to
    the server, which grants one at a time, and once the limit is back at the cap the
    hand-offs resume."""
    await _apply(monkeypatch, 3)
    fleet = {"modal": 3}
    pool = LeasePool("modal", 3, poll_seconds=0.02, linger_seconds=5.0,
                     limit_in_force=fleet.get)
    try:
        held = [await asyncio.wait_for(pool.acquire(), 30) for _ in range(3)]
        async with get_client() as client:  # what the pace keeper does on a throttle
            await client.update_global_concurrency_limit(
                "provider:modal", GlobalConcurrencyLimitUpdate(limit=1)
            )
        fleet["modal"] = 1
        waiting = [asyncio.create_task(asyncio.wait_for(pool.acquire(), 30)) for _ in range(3)]
        await asyncio.sleep(0.05)
        for lease in held:
            pool.release(lease)
        first = await asyncio.wait_for(asyncio.shield(waiting[0]), 30)
        await asyncio.sleep(0.3)
        assert pool.handoffs == 0 and pool.held == 1  # one in flight: the lowered limit
        assert not waiting[1].done() and not waiting[2].done()
        async with get_client() as client:  # quiet again: back at the cap
            await client.update_global_concurrency_limit(
                "provider:modal", GlobalConcurrencyLimitUpdate(limit=3)
            )
        fleet["modal"] = 3
        second, third = await asyncio.gather(waiting[1], waiting[2])
        pool.release(first)
        pool.release(second)
        assert pool.handoffs == 0  # nobody waits: they linger
        again = await asyncio.wait_for(pool.acquire(), 30)
        assert pool.handoffs == 1  # at the cap, a lingering lease is handed on again
        pool.release(again)
        pool.release(third)
    finally:
        await pool.release_idle()
        await pool.drain()
    assert (await read_provider_limits())["provider:modal"]["active_slots"] == 0


async def _leak(name: str, slots: int) -> None:
    """Count slots on the server that no lease holds: what a server that lost its
    leases in a restart is left with."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        await client.increment_concurrency_slots(names=[name], slots=slots, mode="concurrency")


async def test_reconcile_frees_only_the_slots_no_live_lease_holds(monkeypatch, studio_env):
    from engine.lease_census import LeaseCensus
    from engine.slot_reconcile import reconcile_provider_slots

    await _apply(monkeypatch, 3)
    census = LeaseCensus()
    pool = LeasePool("modal", 3, poll_seconds=0.02, linger_seconds=0, census=census)
    held = await pool.acquire()  # a live call's slot
    await _leak("provider:modal", 2)
    assert (await read_provider_limits())["provider:modal"]["active_slots"] == 3
    results = {r.limit: r for r in await reconcile_provider_slots(census)}
    assert results["provider:modal"].freed == 2 and results["provider:modal"].live == 1
    assert (await read_provider_limits())["provider:modal"]["active_slots"] == 1
    again = {r.limit: r for r in await reconcile_provider_slots(census)}
    assert again["provider:modal"].freed == 0  # the live lease's slot is never freed
    pool.release(held)
    await pool.drain()
    assert (await read_provider_limits())["provider:modal"]["active_slots"] == 0


async def test_a_pool_the_server_keeps_refusing_heals_the_leaked_limit(monkeypatch, studio_env):
    from engine.lease_census import LeaseCensus
    from engine.slot_reconcile import census_heal

    await _apply(monkeypatch, 2)
    await _leak("provider:modal", 2)  # full, and nobody holds it
    census = LeaseCensus()
    pool = LeasePool("modal", 2, poll_seconds=0.02, linger_seconds=0, census=census,
                     heal=census_heal(census), heal_after_seconds=0.5)
    lease = await asyncio.wait_for(pool.acquire(), 15)
    assert pool.healed == 2
    assert (await read_provider_limits())["provider:modal"]["active_slots"] == 1
    pool.release(lease)
    await pool.drain()


def test_census_counts_live_processes_and_just_released_slots(studio_env):
    from datetime import UTC, datetime, timedelta

    from engine import lease_census
    from engine.lease_census import LeaseCensus

    census = LeaseCensus(holder="host-a:1")
    dead = LeaseCensus(holder="host-b:2")
    live_row = census.reserve("comfyui")
    released_row = census.reserve("comfyui")
    census.released(released_row)
    dead.reserve("comfyui")
    dead.stop()
    now = datetime.now(UTC)
    assert census.live("comfyui", at=now) == 3  # the release may be in the server's count
    later = now + timedelta(seconds=lease_census.RELEASED_GRACE_SECONDS + 1)
    assert census.live("comfyui", at=later) == 2
    census.beat()  # host-a lives on; host-b stopped beating
    stale = now + timedelta(seconds=lease_census.STALE_SECONDS + 1)
    assert census.live("comfyui", at=stale) == 0  # neither beat within STALE_SECONDS of it
    census.granted(live_row, None)
    assert census.purge(at=now + timedelta(seconds=lease_census.KEEP_SECONDS + 1)) == 3
    census.stop()


def test_the_census_heartbeat_ends_with_its_last_row_and_keeps_to_its_database(
    studio_env, tmp_path, monkeypatch
):
    """A process that holds no slot writes nothing, and a census written from a process
    that later moves to another database (as tests do) never touches that one: before,
    its heartbeat thread lived on and created the other SQLite file."""
    import time

    from engine.lease_census import LeaseCensus
    from studio.db.engine import dispose_engines
    from studio.settings import reload_settings

    census = LeaseCensus(holder="beat-a:1", beat_seconds=0.05)
    held = census.reserve("comfyui")
    assert held is not None and census.beating()
    time.sleep(0.3)
    assert census.beating()  # an open row keeps it beating
    elsewhere = tmp_path / "elsewhere" / "studio.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{elsewhere}")
    dispose_engines()
    reload_settings()
    census.released(held)
    deadline = time.monotonic() + 5.0
    while census.beating() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not census.beating()
    assert not elsewhere.exists()
    assert [row.released_at is not None for row in census.rows("comfyui")] == [True]
    census.forget(census.reserve("comfyui") or "")  # the next slot beats again
    assert census.beating()
    census.stop()


async def test_a_claim_keeps_a_share_for_the_batch_about_to_ask(monkeypatch, studio_env):
    """A batch that claimed a provider (its start, before its first image) gets its share
    of the cap when it asks, though another process asked first for more than the cap:
    before, the first batch of a wave took every slot. A claim that never turns into an
    ask holds the others back for its few seconds only."""
    from engine.lease_census import LeaseCensus

    await _apply(monkeypatch, 4)
    a = LeasePool("modal", 4, poll_seconds=0.02, census=LeaseCensus(holder="claim-a:1"),
                  queue_seconds=0.05)
    b = LeasePool("modal", 4, poll_seconds=0.02, census=LeaseCensus(holder="claim-b:2"),
                  queue_seconds=0.05)
    a.claim(seconds=30)
    await asyncio.sleep(0.2)  # the claim is in the queue
    b_asks = [asyncio.create_task(b.acquire()) for _ in range(4)]
    await asyncio.sleep(0.5)
    assert b.held == 2  # its share of 4 between two processes: two slots wait for A
    a_leases = [await asyncio.wait_for(a.acquire(), 10) for _ in range(2)]
    assert a.held == 2 and b.held == 2
    for lease in a_leases:
        a.release(lease)
    leases = [await asyncio.wait_for(t, 10) for t in b_asks[:2]]
    for lease in leases:
        b.release(lease)
    rest = [await asyncio.wait_for(t, 10) for t in b_asks[2:]]
    for lease in rest:
        b.release(lease)
    await a.drain()
    await b.drain()

    c = LeasePool("modal", 4, poll_seconds=0.02, census=LeaseCensus(holder="claim-c:3"),
                  queue_seconds=0.05)
    c.claim(seconds=1.0)  # claims, then never asks
    await asyncio.sleep(0.2)
    started = asyncio.get_running_loop().time()
    b_leases = [await asyncio.wait_for(b.acquire(), 10) for _ in range(4)]
    assert asyncio.get_running_loop().time() - started < 3.0  # held back 1 s at most
    for lease in b_leases:
        b.release(lease)
    await b.drain()
    await c.drain()


async def test_a_try_ends_the_claim_it_was_made_for(monkeypatch, studio_env):
    """Speed routing asks with `try_acquire` (no waiting): that ask ends the batch's claim
    as a waiting ask does. Kept on, the claim held the other processes to their share for
    its whole time, with nobody left to take the slots kept back."""
    from engine.lease_census import LeaseCensus

    await _apply(monkeypatch, 4)
    a = LeasePool("modal", 4, poll_seconds=0.02, census=LeaseCensus(holder="try-a:1"),
                  queue_seconds=0.05)
    b = LeasePool("modal", 4, poll_seconds=0.02, census=LeaseCensus(holder="try-b:2"),
                  queue_seconds=0.05)
    a.claim(seconds=30)
    await asyncio.sleep(0.2)  # the claim is in the queue
    tried = await a.try_acquire()
    b_asks = [asyncio.create_task(b.acquire()) for _ in range(3)]
    done, _ = await asyncio.wait(b_asks, timeout=3.0)
    assert len(done) == 3  # every free slot, not the share of two processes (2)
    for task in b_asks:
        b.release(task.result())
    a.release(tried)
    await a.drain()
    await b.drain()


async def test_a_pool_over_its_share_gives_a_released_lease_to_the_process_ahead(
    monkeypatch, studio_env
):
    """Two processes' pools (two census holders on one database) and a cap of 2: A holds
    both slots with images waiting, B starts waiting. A serves its next image once (it
    then stands behind B in line), and the lease it releases after that goes back to the
    server for B instead of to A's own waiting image (before, A kept both until its last
    image; B starved)."""
    from engine.lease_census import LeaseCensus

    await _apply(monkeypatch, 2)
    a = LeasePool("modal", 2, poll_seconds=0.02, linger_seconds=5.0,
                  census=LeaseCensus(holder="fair-a:1"), queue_seconds=0.05)
    b = LeasePool("modal", 2, poll_seconds=0.02, census=LeaseCensus(holder="fair-b:2"),
                  queue_seconds=0.05)
    first, second = [await asyncio.wait_for(a.acquire(), 30) for _ in range(2)]
    a_waiting = [asyncio.create_task(a.acquire()) for _ in range(2)]
    await asyncio.sleep(0.1)
    b_waiting = asyncio.create_task(b.acquire())
    await asyncio.sleep(0.5)  # both views hold the other
    a.release(first)  # A's place was before B's ask: its own image gets it
    third = await asyncio.wait_for(a_waiting[0], 10)
    await asyncio.sleep(0.5)  # A was served: B is ahead now, and A holds 2 > 2 // 2
    a.release(second)
    lease_b = await asyncio.wait_for(b_waiting, 10)
    assert a.given_way == 1 and not a_waiting[1].done()
    assert a.held == 1 and b.held == 1  # the cap holds: one each
    b.release(lease_b)
    a.release(third)
    a.release(await asyncio.wait_for(a_waiting[1], 10))
    for pool in (a, b):
        await pool.release_idle()
        await pool.drain()
    assert (await read_provider_limits())["provider:modal"]["active_slots"] == 0


@pytest.mark.parametrize("claim_seconds", ["5", "0"])
async def test_a_batch_claims_its_first_image_provider_unless_switched_off(
    studio_env, provider_env, monkeypatch, claim_seconds
):
    """`claim_image_slots` (a flow run's start) puts the chain's first provider in the
    fleet's queue; `end_image_claim` (its end) takes it out; PROVIDER_SLOT_CLAIM_SECONDS=0
    claims nothing (the throughput of staggered batches over their equal finish)."""
    from engine.lease_census import LeaseCensus
    from tasks import generate_images

    monkeypatch.setenv("PROVIDER_SLOT_CLAIM_SECONDS", claim_seconds)
    generate_images.claim_image_slots()
    chain = generate_images.image_chain()
    assert generate_images._slots is not None
    pool = generate_images._slots.pool(chain.names[0])
    assert pool is not None
    census = pool.census
    assert census is not None

    def queued() -> list[object]:
        return [row for row in LeaseCensus().rows(chain.names[0])
                if row.id == census.queue_id(chain.names[0])]

    await asyncio.sleep(0.5)
    assert len(queued()) == (1 if claim_seconds != "0" else 0)
    generate_images.end_image_claim()
    await asyncio.sleep(0.8)
    assert queued() == []
    if pool._queue_task is not None:
        await asyncio.wait_for(pool._queue_task, 5)

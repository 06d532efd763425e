"""Provider slots are shared in turn between processes that wait for them (issue 20).

Three processes, each a `LeasePool` with its own census holder on one studio database,
ask a real Prefect server for the slots of one limit (cap 2); each has eight images
that hold a slot for a moment. They start waiting one after the other (A, then B half
a second later, then C). Before the fleet's queue, A handed every lease it released to
its own next image: B and C got nothing until A's eight were done. Now:

- a process that starts waiting is served within about one turn of the slots (no
  starvation): A gets at most a few grants between B's (C's) arrival and its first;
- while all three wait, the slots go round: their grant counts stay within two;
- the cap is never passed (from the holders' own timestamps) and no slot is left held.

The module is also the waiting process: `python -m tests.faults.test_fair_slots NAME`
prints READY once imported and connected, reads the epoch second to start at on stdin,
and prints its grants as JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROVIDER = "fairtest"
LIMIT = f"provider:{PROVIDER}"
CAP = 2
IMAGES = 8
HOLD_SECONDS = 0.4
ARRIVALS = {"a": 0.0, "b": 0.5, "c": 1.0}  # seconds after the common start


async def _limit_at_zero() -> None:
    from prefect import get_client
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )

    async with get_client() as client:
        try:
            await client.read_global_concurrency_limit_by_name(LIMIT)
        except Exception:
            await client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=LIMIT, limit=CAP)
            )
        await client.update_global_concurrency_limit(
            LIMIT, GlobalConcurrencyLimitUpdate(limit=CAP, active_slots=0)
        )


async def _active_slots() -> int:
    from prefect import get_client

    async with get_client() as client:
        return int((await client.read_global_concurrency_limit_by_name(LIMIT)).active_slots)


def _run_processes(env: dict[str, str]) -> dict[str, list[dict[str, float]]]:
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-m", "tests.faults.test_fair_slots", name], cwd=ROOT, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for name in ARRIVALS
    }
    try:
        for name, process in processes.items():
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line.strip() == "READY", (name, line, process.stderr.read()[-3000:])
        start = time.time() + 1.0
        for process in processes.values():
            assert process.stdin is not None
            process.stdin.write(f"{start}\n")
            process.stdin.flush()
        records = {}
        for name, process in processes.items():
            out, err = process.communicate(timeout=120)
            assert process.returncode == 0, err[-3000:]
            line = next(x for x in out.splitlines() if x.startswith("GRANTS "))
            records[name] = json.loads(line.removeprefix("GRANTS "))
        return records
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()


async def test_slots_go_in_turn_across_processes(studio_env, prefect_api, tmp_path):
    from prefect.settings import PREFECT_API_URL

    await _limit_at_zero()
    env = {
        **os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "PYTHONPATH": str(ROOT),
        "STUDIO_HOME": str(tmp_path / "home"),
        "DATABASE_URL": studio_env.resolved_database_url,  # one queue for the three
    }
    records = await asyncio.to_thread(_run_processes, env)

    grants = sorted((r["granted"], name) for name, rs in records.items() for r in rs)
    asked = {name: min(r["asked"] for r in rs) for name, rs in records.items()}
    zero = min(asked.values())
    story = " ".join(f"{n}{g - zero:.2f}" for g, n in grants)  # who got a slot when
    story += " | asked " + " ".join(f"{n}{a - zero:.2f}" for n, a in asked.items())
    story += " | server/handoffs/gave " + " ".join(
        f"{n}:{rs[0]['server']}/{rs[0]['handoffs']}/{rs[0]['gave']}" for n, rs in records.items()
    )
    print(f"\n[FAIR SLOTS] {story}")  # pytest -s shows who got a slot when
    last_a = max(r["granted"] for r in records["a"])
    for late in ("b", "c"):
        first = min(r["granted"] for r in records[late])
        before = [n for g, n in grants if asked[late] <= g < first and n != late]
        # served within about one turn of the slots, not after A's eight
        assert len(before) <= 2 * CAP + 1, (late, story)
        assert first < last_a, (f"{late} waited until A had finished: starved", story)
    # while all three wait, the slots go round
    all_wait = max(asked.values())
    first_done = min(max(r["granted"] for r in rs) for rs in records.values())
    window = [n for g, n in grants if all_wait <= g <= first_done]
    counts = [window.count(n) for n in ARRIVALS]
    assert max(counts) - min(counts) <= 2, (counts, story)
    # the cap holds: never more than CAP holders at once (grant after the server said
    # yes, release stamped before the slot went back)
    edges = sorted(
        [(r["granted"], 1) for rs in records.values() for r in rs]
        + [(r["released"], -1) for rs in records.values() for r in rs]
    )
    held = peak = 0
    for _, step in edges:
        held += step
        peak = max(peak, held)
    assert peak <= CAP
    assert sum(len(rs) for rs in records.values()) == IMAGES * len(ARRIVALS)
    assert await _active_slots() == 0


async def test_a_pool_without_a_view_of_the_queue_serves_its_own_as_before(
    studio_env, prefect_api, monkeypatch
):
    """The queue's database away: the pool warns once and keeps handing its leases on
    (the images still run; only the sharing in turn is lost)."""
    import logging

    from engine.lease_census import LeaseCensus
    from engine.provider_slots import LeasePool

    await _limit_at_zero()
    census = LeaseCensus(holder="fair-broken")

    def broken(provider: str, place: float | None) -> list[float]:
        raise ConnectionError("database away")

    monkeypatch.setattr(census, "queue", broken)
    pool = LeasePool(PROVIDER, CAP, poll_seconds=0.02, census=census)
    records: list[str] = []

    async def one(i: int) -> None:
        lease = await asyncio.wait_for(pool.acquire(), 30)
        await asyncio.sleep(0.05)
        records.append(str(i))
        pool.release(lease)

    handler_records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = handler_records.append  # type: ignore[method-assign]
    logging.getLogger("studio.providers").addHandler(handler)
    try:
        await asyncio.gather(*(one(i) for i in range(6)))
    finally:
        logging.getLogger("studio.providers").removeHandler(handler)
        await pool.release_idle()
        await pool.drain()
    assert len(records) == 6 and pool.handoffs >= 2
    warnings = [r.getMessage() for r in handler_records if "slot queue" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert await _active_slots() == 0


async def test_a_slot_given_back_wakes_the_process_waiting_for_it(
    postgres_url, prefect_api, tmp_path, monkeypatch
):
    """On PostgreSQL a pool that gives a slot back while another process waits says so
    (engine/slot_wake.py), and the waiting pool asks at once, not at its next poll (5 s
    here; the fleet's is 0.2 s, the gap a freed GPU stood idle between two batches)."""
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from engine.lease_census import LeaseCensus
    from engine.provider_slots import LeasePool
    from tests.conftest import use_database
    from tests.infra.postgres import create_database

    use_database(monkeypatch, tmp_path / "studio", create_database(postgres_url))
    provider = "waketest"
    async with get_client() as client:
        await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=f"provider:{provider}", limit=1)
        )
    first = LeasePool(provider, 1, poll_seconds=0.05, census=LeaseCensus(holder="wake-a:1"))
    second = LeasePool(provider, 1, poll_seconds=5.0, census=LeaseCensus(holder="wake-b:2"))
    second.queue_seconds = 0.25  # its view of the line as fresh as the fleet's
    held = await asyncio.wait_for(first.acquire(), 30)
    waiting = asyncio.ensure_future(second.acquire())
    await asyncio.sleep(0.3)
    more = asyncio.ensure_future(first.acquire())  # the first pool waits too, behind it
    await asyncio.sleep(1.5)  # both in line, each has read the other's place
    assert not waiting.done()
    given = time.monotonic()
    first.release(held)  # the second pool waited longer: the slot goes back for it
    lease = await asyncio.wait_for(waiting, 4.0)  # not its 5 s poll
    took = time.monotonic() - given
    assert first.given_way == 1 and second._wake is not None and second._wake.woken >= 1
    second.release(lease)
    first.release(await asyncio.wait_for(more, 10))
    for pool in (first, second):
        await pool.release_idle()
        await pool.drain()
    print(f"\n[SLOT WAKE] given back -> granted to the other process in {took:.2f} s")
    assert took < 2.0


async def test_a_lease_lingering_while_another_process_asks_goes_back_at_once(
    postgres_url, prefect_api, tmp_path, monkeypatch
):
    """A pool whose images all have slots looked at the line last before the others of a
    wave asked; a lease it releases then lingers for its own next image. While it
    lingers the pool reads the line, and a process that asks meanwhile gets the slot at
    once, not when the linger ends (5 s here, the fleet's 1 s: the second wave of six
    10-piece batches stood idle that long after its first batch took every slot)."""
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from engine.lease_census import LeaseCensus
    from engine.provider_slots import LeasePool
    from tests.conftest import use_database
    from tests.infra.postgres import create_database

    use_database(monkeypatch, tmp_path / "studio", create_database(postgres_url))
    provider = "lingertest"
    async with get_client() as client:
        await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=f"provider:{provider}", limit=2)
        )
    first = LeasePool(provider, 2, poll_seconds=0.05, linger_seconds=5.0,
                      census=LeaseCensus(holder="linger-a:1"))
    second = LeasePool(provider, 2, poll_seconds=5.0, census=LeaseCensus(holder="linger-b:2"))
    held = [await asyncio.wait_for(first.acquire(), 30) for _ in range(2)]  # every slot
    await asyncio.sleep(0.5)  # its look at the line is over: nothing waits there
    waiting = asyncio.ensure_future(second.acquire())
    await asyncio.sleep(1.0)  # refused (the limit is full), in line, napping
    assert not waiting.done()
    given = time.monotonic()
    first.release(held[0])  # nothing waits in the first pool: it would linger
    lease = await asyncio.wait_for(waiting, 4.0)  # not the 5 s linger, nor the 5 s poll
    took = time.monotonic() - given
    second.release(lease)
    first.release(held[1])
    for pool in (first, second):
        await pool.release_idle()
        await pool.drain()
    print(f"\n[SLOT LINGER] released -> granted to the process waiting in {took:.2f} s")
    assert took < 2.0
    async with get_client() as client:
        limit = await client.read_global_concurrency_limit_by_name(f"provider:{provider}")
    assert limit.active_slots == 0


def test_on_sqlite_a_pool_only_polls(studio_env):
    """No notifications on SQLite: nothing is sent, nothing listens."""
    from engine import slot_wake

    slot_wake.notify("comfyui", "token")  # a no-op, no error
    assert slot_wake._listen_url() is None


def test_the_queue_row_is_a_place_in_line_not_a_slot(studio_env):
    """`live()` (what the slot reconcile trusts) never counts a queue row; a queue row
    not beaten for QUEUE_STALE_SECONDS is no longer in anyone's view; `None` removes it."""
    from engine import lease_census
    from engine.lease_census import LeaseCensus

    a, b = LeaseCensus(holder="host-a:1"), LeaseCensus(holder="host-b:2")
    now = time.time()
    assert a.queue("comfyui", now - 1.0) == []
    seen = b.queue("comfyui", now)
    assert len(seen) == 1 and abs(seen[0] - (now - 1.0)) < 1e-3  # b sees a's place
    seen = a.queue("comfyui", now + 0.5)  # a was served: its place moves back
    assert len(seen) == 1 and abs(seen[0] - now) < 1e-3
    assert a.live("comfyui") == 0  # places in line hold no slot
    a.queue("comfyui", None)
    assert b.queue("comfyui", now) == []  # a left the line
    stale = lease_census.QUEUE_STALE_SECONDS
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from studio.db.engine import session_scope
    from studio.db.models import ProviderLease

    a.queue("comfyui", now)
    with session_scope() as session:  # a's process stopped beating
        session.execute(
            update(ProviderLease).where(ProviderLease.id == a.queue_id("comfyui"))
            .values(beat_at=datetime.now(UTC) - timedelta(seconds=stale + 1))
        )
    assert b.queue("comfyui", now) == []


# --- the waiting process ---


async def _waiting_process(name: str) -> None:
    from engine.lease_census import LeaseCensus
    from engine.provider_slots import LeasePool

    census = LeaseCensus(holder=f"fair-{name}:{os.getpid()}")
    await asyncio.to_thread(census.queue, PROVIDER, None)  # connected before the start
    pool = LeasePool(PROVIDER, CAP, poll_seconds=0.05, linger_seconds=1.0, census=census)
    print("READY", flush=True)
    start = float(await asyncio.to_thread(sys.stdin.readline))
    await asyncio.sleep(max(0.0, start + ARRIVALS[name] - time.time()))

    async def one() -> dict[str, float]:
        asked = time.time()
        lease = await asyncio.wait_for(pool.acquire(), 60)
        granted = time.time()
        await asyncio.sleep(HOLD_SECONDS)
        released = time.time()
        pool.release(lease)
        return {"asked": asked, "granted": granted, "released": released}

    grants = await asyncio.gather(*(one() for _ in range(IMAGES)))
    await pool.release_idle()
    await pool.drain()
    for grant in grants:  # how the pool got them (in a failure's story)
        grant.update(server=pool.server_grants, handoffs=pool.handoffs, gave=pool.given_way)
    print("GRANTS " + json.dumps(grants), flush=True)


if __name__ == "__main__":
    asyncio.run(_waiting_process(sys.argv[1]))

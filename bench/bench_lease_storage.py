"""Lease storage under requests that arrive together: Prefect's filesystem storage against
the project's (engine/lease_storage.py), in the same run.

WHY: every provider slot is a Prefect lease, and a fleet's processes ask for slots and
give them back at the same moments (a wave's start, a hand-over between batches). Prefect's
filesystem storage rewrites its expiration index under a file lock polled every 0.1 s, so
requests of one server that touch the index together wait a poll for each other. This
times N leases created, renewed and revoked concurrently (as N requests of one server
would), then the same N one after another, per storage, and prints the medians over
`--runs` with [min-max] and the ratio of the concurrent times, Prefect's / the project's.

    .venv/bin/python bench/bench_lease_storage.py [--leases 10] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from uuid import uuid4

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prefect.server.concurrency.lease_storage import filesystem  # noqa: E402

from engine import lease_storage  # noqa: E402

STORAGES = {
    "prefect.server.concurrency.lease_storage.filesystem": filesystem.ConcurrencyLeaseStorage,
    "engine.lease_storage": lease_storage.ConcurrencyLeaseStorage,
}


async def _timed(step: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await step()
    return time.perf_counter() - started


async def one_run(storage_class: type, leases: int) -> tuple[float, float]:
    """Seconds for `leases` leases created, renewed and revoked: all at once, then in turn."""
    storage = storage_class(Path(tempfile.mkdtemp(prefix="bench-leases-")))
    ttl = timedelta(seconds=60)

    async def together() -> None:
        made = await asyncio.gather(*(storage.create_lease([uuid4()], ttl) for _ in range(leases)))
        await asyncio.gather(*(storage.renew_lease(lease.id, ttl) for lease in made))
        await asyncio.gather(*(storage.revoke_lease(lease.id) for lease in made))

    async def in_turn() -> None:
        for _ in range(leases):
            lease = await storage.create_lease([uuid4()], ttl)
            await storage.renew_lease(lease.id, ttl)
            await storage.revoke_lease(lease.id)

    return await _timed(together), await _timed(in_turn)


def _fmt(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"{statistics.median(ms):.0f} ms [{min(ms):.0f}-{max(ms):.0f}]"


async def bench(leases: int, runs: int) -> None:
    results: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in STORAGES}
    for _ in range(runs):  # alternate, so both see the same load
        for name, storage_class in STORAGES.items():
            together, in_turn = await one_run(storage_class, leases)
            results[name][0].append(together)
            results[name][1].append(in_turn)
    print(f"{leases} leases created, renewed and revoked; medians [min-max] over {runs} runs")
    print("| lease storage | all at once | one after another |")
    print("|---|---|---|")
    for name, (together, in_turn) in results.items():
        print(f"| `{name}` | {_fmt(together)} | {_fmt(in_turn)} |")
    prefect, ours = (statistics.median(results[name][0]) for name in STORAGES)
    print(f"all at once, Prefect's / the project's: {prefect / ours:.0f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leases", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(bench(args.leases, args.runs))


if __name__ == "__main__":
    main()

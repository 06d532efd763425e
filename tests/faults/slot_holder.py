"""Hold one slot of `provider:<name>` through a LeasePool until killed (fault tests).

Usage: python -m tests.faults.slot_holder <provider>; prints HOLDING once the lease is
granted, then sleeps while Prefect's keeper renews the lease.
"""

from __future__ import annotations

import asyncio
import sys

from engine.provider_slots import LeasePool


async def main(provider: str) -> None:
    pool = LeasePool(provider, 1)
    await pool.acquire()
    print("HOLDING", flush=True)
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))

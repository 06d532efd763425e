"""Free provider slots that the Prefect server counts but no live process of ours holds.

WHY: a server that loses its leases (the default in-memory lease storage, restarted)
keeps counting their slots: releases of leases it no longer knows do nothing, and no
lease is left to expire (issue 10: `provider:comfyui` stayed 10 of 10 for good). Its API
lists no leases per limit, so the census of the slots we hold is our own
(engine/lease_census.py). For each `provider:*` limit:

    freed = active_slots (read first) - live census rows (read after)

Every slot the server counts has a live row from before it was asked for until after
it went back, so `freed` only ever counts slots nobody holds: the cap is never passed.

It runs only on a server that said its leases do not outlive it (`GET
/api/admin/settings`, read once per process: engine/lease_census.py); on one whose lease
storage keeps them (filesystem, Redis) Prefect's repossessor frees a dead holder's slots
and the census records nothing, so a reconcile there would free live slots: it does
nothing. Where it runs, it needs no operator: in a lease pool whose waiters the server
keeps refusing (engine/provider_slots.py, after 10 s), and every 15 s beside `studio
server` started on in-memory lease storage (cli/server.py), so a leaked slot is back
within 60 s.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound

from engine.lease_census import LeaseCensus, leases_expire_on_their_own
from studio.providers.entry import LIMIT_PREFIX, limit_name

log = logging.getLogger("studio.providers")


@dataclass(frozen=True)
class Reconciled:
    limit: str
    active_slots: int
    live: int
    freed: int


async def reconcile_limit(
    census: LeaseCensus, provider: str, *, exclude: str | None = None
) -> Reconciled | None:
    """Reconcile one provider's limit; None when the limit does not exist or the server's
    leases expire on their own. `exclude`: a census row its caller knows the server does
    not count (a refused request's)."""
    if await asyncio.to_thread(leases_expire_on_their_own):
        return None
    name = limit_name(provider)
    at = datetime.now(UTC)  # before the server's count: rows released after it still count
    async with get_client() as client:
        try:
            limit = await client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            return None
        live = await asyncio.to_thread(census.live, provider, at=at, exclude=exclude)
        leaked = limit.active_slots - live
        if leaked > 0:
            await client.request(
                "POST", "/v2/concurrency_limits/decrement",
                json={"names": [name], "slots": leaked},
            )
            log.warning(
                "Freed %d slot(s) of %s that no live lease holds (%d counted, %d held)",
                leaked, name, limit.active_slots, live,
            )
    return Reconciled(name, limit.active_slots, live, max(leaked, 0))


async def reconcile_provider_slots(
    census: LeaseCensus | None = None, providers: list[str] | None = None
) -> list[Reconciled]:
    """Reconcile every `provider:*` limit on the server (or the named providers); none
    on a server whose leases expire on their own."""
    if await asyncio.to_thread(leases_expire_on_their_own):
        return []
    census = census or LeaseCensus()
    if providers is None:
        async with get_client() as client:
            limits = await client.read_global_concurrency_limits(limit=200)
        providers = [
            limit.name.removeprefix(LIMIT_PREFIX)
            for limit in limits if limit.name.startswith(LIMIT_PREFIX)
        ]
    results = [await reconcile_limit(census, provider) for provider in providers]
    await asyncio.to_thread(census.purge)
    return [r for r in results if r is not None]


def census_heal(census: LeaseCensus):  # type: ignore[no-untyped-def]
    """The `heal` a lease pool calls when the server keeps refusing its waiters."""

    async def heal(provider: str, asking: str | None) -> int:
        result = await reconcile_limit(census, provider, exclude=asking)
        return result.freed if result else 0

    return heal


async def reconcile_forever(census: LeaseCensus, every: float = 15.0) -> None:
    """The loop `studio server` runs beside the Prefect server.

    A round that fails is logged at WARNING (a refused credential names
    PREFECT_API_AUTH_STRING: a slot leaked meanwhile stays counted until it is fixed);
    only "not answering yet" before the server's first answer is quiet (it is starting)."""
    import httpx

    answered = False
    while True:
        try:
            await reconcile_provider_slots(census)
            answered = True
        except httpx.HTTPStatusError as exc:
            answered = True
            status = exc.response.status_code
            hint = (" (set PREFECT_API_AUTH_STRING to the server's auth string)"
                    if status in (401, 403) else "")
            log.warning("slot reconcile failed: HTTP %d from %s%s", status,
                        exc.request.url.copy_with(query=None), hint)
        except Exception as exc:
            if answered or not isinstance(exc, httpx.TransportError | OSError):
                first_line = (str(exc).splitlines() or [""])[0][:300]  # no SQL dump
                log.warning("slot reconcile failed (%s: %s)", type(exc).__name__, first_line)
            else:
                log.debug("slot reconcile skipped: the server is not answering yet (%s)",
                          type(exc).__name__)
        await asyncio.sleep(every)


if __name__ == "__main__":  # python -m engine.slot_reconcile: one pass, printed
    for r in asyncio.run(reconcile_provider_slots()):
        print(f"{r.limit}: {r.active_slots} counted, {r.live} held, {r.freed} freed")

"""Create or update the per-provider global concurrency limits on the Prefect API.

One limit per image provider, `provider:<name>`, sized from ProviderSettings (the
spec's MAX_CONCURRENT: ComfyUI 10, Modal 3, Replicate 5). Idempotent: an existing
limit is updated to the configured size and made active. `studio limits` passes the
client of deployments/api.py (its access checked, errors in one line); without one the
current Prefect settings' client is used.

Since issue 20 the fleet moves these limits itself (engine/provider_pace.py lowers one
when its provider throttles, raises it back up to the ceiling, the configured size),
and a limit an operator set by hand on Prefect is kept as a manual cap. So `studio
limits apply` (`apply_and_record`) also tells the fleet's record: the ceiling is in
force again and a manual cap is cleared. `apply_provider_limits` stays Prefect only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.exceptions import ObjectNotFound
from sqlalchemy.orm import Session

from studio.db.models import ProviderPace
from studio.db.provider_pace import (
    PENDING_STALE_SECONDS,
    Sessions,
    applied,
    aware,
    lock_row,
    utcnow,
)
from studio.providers.entry import limit_name
from studio.providers.settings import PROVIDER_NAMES, ProviderSettings

#: how long `apply_and_record` waits for another process's change on its way to Prefect
#: (it takes milliseconds; a dead process's is stale after PENDING_STALE_SECONDS anyway)
PENDING_WAIT_SECONDS = 5.0


@asynccontextmanager
async def _client_or_default(client: PrefectClient | None) -> AsyncIterator[PrefectClient]:
    if client is not None:
        yield client
        return
    async with get_client() as made:
        yield made


async def apply_provider_limit(
    client: PrefectClient, provider: str, cap: int
) -> tuple[int | None, str]:
    """Make `provider:<provider>` exist, active, at `cap`; returns the limit it had
    (None: created) and what was done."""
    name = limit_name(provider)
    try:
        current = await client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=cap, active=True)
        )
        return None, f"created (limit {cap})"
    if current.limit == cap and current.active:
        return current.limit, f"unchanged (limit {cap})"
    await client.update_global_concurrency_limit(
        name, GlobalConcurrencyLimitUpdate(limit=cap, active=True)
    )
    return current.limit, f"updated (limit {current.limit} -> {cap})"


async def apply_provider_limits(
    settings: ProviderSettings | None = None, client: PrefectClient | None = None
) -> dict[str, str]:
    """Make each provider's limit exist with its configured size; returns what was done.

    Prefect only: the fleet's record of it (a manual cap cleared, the history) is
    `apply_and_record`'s, which `studio limits apply` runs."""
    s = settings or ProviderSettings()
    done: dict[str, str] = {}
    async with _client_or_default(client) as client:
        for provider in PROVIDER_NAMES:
            _, done[limit_name(provider)] = await apply_provider_limit(
                client, provider, s.max_concurrent(provider)
            )
    return done


@dataclass(frozen=True)
class Applied:
    """What `studio limits apply` did to one provider's limit."""

    provider: str
    name: str
    ceiling: int
    #: the limit Prefect had before (None: there was none)
    previous: int | None
    what: str
    #: an operator's own cap this apply replaced by the ceiling (None: there was none)
    manual_cap_cleared: int | None
    #: whether the fleet's record (provider_pace) was written
    recorded: bool

    def line(self) -> str:
        text = f"{self.name}: {self.what}"
        if self.manual_cap_cleared is not None:
            text += f"; manual cap {self.manual_cap_cleared} cleared"
        return text


def manual_cap_seen(
    row: ProviderPace | None, observed: int | None, ceiling: int | None
) -> int | None:
    """An operator's own cap on `provider:<name>`: the one the fleet recorded, or the
    limit Prefect has now when it is neither the fleet's (`current`) nor a change on
    its way (`pending_to`), which the fleet records as manual at its next decision
    (studio/db/provider_pace.py `reconcile`, the same rule)."""
    if observed is not None:
        if row is None or row.current is None:  # first sight: below the ceiling = a person's
            return observed if ceiling is not None and observed < ceiling else None
        if observed not in (row.current, row.pending_to):
            return observed
    return row.manual_cap if row is not None else None


def _pending_fresh(row: ProviderPace) -> bool:
    pending_at = aware(row.pending_at)
    return (
        row.pending_to is not None
        and pending_at is not None
        and (utcnow() - pending_at).total_seconds() < PENDING_STALE_SECONDS
    )


def _record_applied(
    session: Session, row: ProviderPace, provider: str, previous: int | None, cap: int
) -> None:
    """The fleet's record of an apply: a change in the history when the limit, a manual
    cap or a pending change moved; the bare row brought in line when nothing did (an
    `N -> N applied` line would only be noise in `show` and the batch artifacts)."""
    if (
        previous in (None, cap) and row.manual_cap is None and row.pending_to is None
        and row.current in (None, cap)
    ):
        row.current, row.ceiling = cap, cap
        return
    applied(session, provider, cap, previous)


async def _read_limit(client: PrefectClient, provider: str) -> int | None:
    try:
        return (await client.read_global_concurrency_limit_by_name(limit_name(provider))).limit
    except ObjectNotFound:
        return None


async def apply_and_record(
    client: PrefectClient,
    settings: ProviderSettings | None = None,
    sessions: Sessions | None = None,
) -> list[Applied]:
    """Every provider's limit back to its ceiling, and the fleet told: the provider's
    `provider_pace` row says the ceiling is in force, any manual cap is cleared and the
    history has an "applied" change (studio.db.provider_pace.applied).

    Each provider is done with its row locked, Prefect written under the lock as the
    fleet's own decisions do, so no AIMD change interleaves. A change another process
    has on its way (pending, fresh) is waited for first (up to PENDING_WAIT_SECONDS):
    applying over it would let it land on Prefect after this apply and read as a
    manual cap. `sessions` None: Prefect only (no database to record in)."""
    s = settings or ProviderSettings()
    done: list[Applied] = []
    for provider in PROVIDER_NAMES:
        cap = s.max_concurrent(provider)
        name = limit_name(provider)
        if sessions is None:
            previous, what = await apply_provider_limit(client, provider, cap)
            done.append(Applied(provider, name, cap, previous, what, None, False))
            continue
        deadline = time.monotonic() + PENDING_WAIT_SECONDS
        while True:
            with sessions() as session:
                row = lock_row(session, provider)
                if _pending_fresh(row) and time.monotonic() < deadline:
                    busy = True
                else:
                    busy = False
                    observed = await _read_limit(client, provider)
                    manual = manual_cap_seen(row, observed, cap)
                    previous, what = await apply_provider_limit(client, provider, cap)
                    _record_applied(session, row, provider, previous, cap)
            if not busy:
                break
            await asyncio.sleep(0.1)
        done.append(Applied(provider, name, cap, previous, what, manual, True))
    return done


async def read_provider_limits(
    client: PrefectClient | None = None,
) -> dict[str, dict[str, object]]:
    """Each provider limit's size and the slots in use right now (None if missing)."""
    report: dict[str, dict[str, object]] = {}
    async with _client_or_default(client) as client:
        for provider in PROVIDER_NAMES:
            name = limit_name(provider)
            try:
                limit = await client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                report[name] = {"exists": False}
                continue
            report[name] = {
                "exists": True,
                "limit": limit.limit,
                "active_slots": limit.active_slots,
                "active": limit.active,
            }
    return report

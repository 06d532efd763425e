"""Create or update the per-provider global concurrency limits on the Prefect API.

One limit per image provider, `provider:<name>`, sized from ProviderSettings (the
spec's MAX_CONCURRENT: ComfyUI 10, Modal 3, Replicate 5). Idempotent: an existing
limit is updated to the configured size and made active. `studio limits` passes the
client of deployments/api.py (its access checked, errors in one line); without one the
current Prefect settings' client is used.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.exceptions import ObjectNotFound

from studio.providers.entry import limit_name
from studio.providers.settings import PROVIDER_NAMES, ProviderSettings


@asynccontextmanager
async def _client_or_default(client: PrefectClient | None) -> AsyncIterator[PrefectClient]:
    if client is not None:
        yield client
        return
    async with get_client() as made:
        yield made


async def apply_provider_limits(
    settings: ProviderSettings | None = None, client: PrefectClient | None = None
) -> dict[str, str]:
    """Make each provider's limit exist with its configured size; returns what was done."""
    s = settings or ProviderSettings()
    done: dict[str, str] = {}
    async with _client_or_default(client) as client:
        for provider in PROVIDER_NAMES:
            name, cap = limit_name(provider), s.max_concurrent(provider)
            try:
                current = await client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                await client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=cap, active=True)
                )
                done[name] = f"created (limit {cap})"
                continue
            if current.limit == cap and current.active:
                done[name] = f"unchanged (limit {cap})"
                continue
            await client.update_global_concurrency_limit(
                name, GlobalConcurrencyLimitUpdate(limit=cap, active=True)
            )
            done[name] = f"updated (limit {current.limit} -> {cap})"
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

"""Create or update the per-provider global concurrency limits on the Prefect API.

One limit per image provider, `provider:<name>`, sized from ProviderSettings (the
spec's MAX_CONCURRENT: ComfyUI 10, Modal 3, Replicate 5). Idempotent: an existing
limit is updated to the configured size and made active.
"""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.exceptions import ObjectNotFound

from studio.providers.settings import PROVIDER_NAMES, ProviderSettings
from tasks.provider_slots import limit_name


async def apply_provider_limits(settings: ProviderSettings | None = None) -> dict[str, str]:
    """Make each provider's limit exist with its configured size; returns what was done."""
    s = settings or ProviderSettings()
    done: dict[str, str] = {}
    async with get_client() as client:
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


async def read_provider_limits() -> dict[str, dict[str, object]]:
    """Each provider limit's size and the slots in use right now (None if missing)."""
    report: dict[str, dict[str, object]] = {}
    async with get_client() as client:
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

"""Create, update or remove the providers' rate limits on the Prefect API.

A provider's documented request rate (`REPLICATE_RPS`, `ANTHROPIC_RPM`:
studio/providers/rate_settings.py) becomes a Prefect rate limit `rate:<provider>`: a
global concurrency limit whose slots decay by themselves at `slot_decay_per_second`
(the rate per second), sized `limit` = one second's burst (at least 1). Every process
takes one slot with Prefect's `rate_limit()` before each job-starting request
(engine/provider_rates.py), so the whole fleet keeps to the rate. It sits next to the
in-flight limit `provider:<name>` (deployments/concurrency_limits.py); neither replaces
the other.

An unset variable deletes the provider's rate limit: an old one left on the server would
keep throttling a studio that no longer asks for it. `studio limits apply` and
`studio limits show` call these two functions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.exceptions import ObjectNotFound

from studio.providers.rate_settings import (
    RATE_VARIABLES,
    RateSettings,
    burst,
    load_rate_settings,
    rate_limit_name,
)


@asynccontextmanager
async def _client_or_default(client: PrefectClient | None) -> AsyncIterator[PrefectClient]:
    if client is not None:
        yield client
        return
    async with get_client() as made:
        yield made


def _same_decay(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def _rate_text(settings: RateSettings, provider: str) -> str:
    variable = RATE_VARIABLES[provider]
    return f"{variable}={settings.configured(provider):g}"


async def apply_rate_limits(
    client: PrefectClient | None = None, settings: RateSettings | None = None
) -> dict[str, str]:
    """Make each provider's rate limit match its variable; returns limit name -> what
    was done. Bad variables raise BatchRequestError (naming the variable) before any
    request to Prefect."""
    s = settings if settings is not None else load_rate_settings()
    done: dict[str, str] = {}
    async with _client_or_default(client) as client:
        for provider, variable in RATE_VARIABLES.items():
            name = rate_limit_name(provider)
            per_second = s.per_second(provider)
            try:
                current = await client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                current = None
            if per_second is None:
                if current is None:
                    done[name] = f"none ({variable} unset)"
                else:
                    await client.delete_global_concurrency_limit_by_name(name)
                    done[name] = f"deleted ({variable} unset)"
                continue
            size = burst(per_second)
            what = f"limit {size}, {per_second:g}/s from {_rate_text(s, provider)}"
            if current is None:
                await client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(
                        name=name, limit=size, active=True, slot_decay_per_second=per_second
                    )
                )
                done[name] = f"created ({what})"
                continue
            if (
                current.limit == size
                and current.active
                and _same_decay(current.slot_decay_per_second or 0.0, per_second)
            ):
                done[name] = f"unchanged ({what})"
                continue
            await client.update_global_concurrency_limit(
                name,
                GlobalConcurrencyLimitUpdate(
                    limit=size, active=True, slot_decay_per_second=per_second
                ),
            )
            before = f"limit {current.limit}, {current.slot_decay_per_second or 0:g}/s"
            done[name] = f"updated ({before} -> {what})"
    return done


async def read_rate_limits(
    client: PrefectClient | None = None, settings: RateSettings | None = None
) -> dict[str, dict[str, Any]]:
    """Each provider's rate limit as the server holds it, beside what the environment
    asks for: {"rate:replicate": {"provider", "variable", "configured", "exists",
    "limit", "slot_decay_per_second", "active_slots", "active"}}. `configured` is the
    variable's value in its own unit (None: unset); a bad variable reads as None here
    (showing must not fail on it; applying refuses it)."""
    try:
        s = settings if settings is not None else load_rate_settings()
    except ValueError:
        s = None
    report: dict[str, dict[str, Any]] = {}
    async with _client_or_default(client) as client:
        for provider, variable in RATE_VARIABLES.items():
            name = rate_limit_name(provider)
            row: dict[str, Any] = {
                "provider": provider,
                "variable": variable,
                "configured": s.configured(provider) if s is not None else None,
            }
            try:
                limit = await client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                report[name] = {**row, "exists": False}
                continue
            report[name] = {
                **row,
                "exists": True,
                "limit": limit.limit,
                "slot_decay_per_second": limit.slot_decay_per_second,
                "active_slots": limit.active_slots,
                "active": limit.active,
            }
    return report

"""What `studio limits show` prints: each provider's limit as Prefect holds it, beside
the fleet's own record of it (issue 20).

Why both: the limit in force is Prefect's (`provider:<name>`, moved by the fleet when a
provider throttles: engine/provider_pace.py), but why it is where it is lives in the
studio database (`provider_pace`, `provider_limit_change`: studio/db/provider_pace.py):
the ceiling (`*_MAX_CONCURRENT`), an operator's manual cap, the last change and the
fleet-wide Retry-After. Rate limits (`rate:<provider>`, deployments/rate_limits.py) are
rows of their own. Without a usable database the Prefect side is still shown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prefect.client.orchestration import PrefectClient

from deployments.concurrency_limits import manual_cap_seen, read_provider_limits
from deployments.rate_limits import read_rate_limits
from studio.db.models import ProviderPace
from studio.db.provider_pace import LimitChange, Sessions, aware, iter_rows, last_change
from studio.providers.entry import limit_name
from studio.providers.limit_text import change_text, seconds_text
from studio.providers.rate_settings import RateSettings
from studio.providers.settings import PROVIDER_NAMES, ProviderSettings


@dataclass(frozen=True)
class LimitView:
    """One row of `studio limits show`."""

    #: `provider:replicate`, `rate:replicate`, or a bare provider with no in-flight
    #: limit of its own (e.g. `anthropic`: only its Retry-After is fleet-wide)
    name: str
    provider: str
    #: "in-flight" (a global concurrency limit), "rate" (a decaying one), "retry-after"
    kind: str
    exists: bool
    ceiling: int | None = None
    limit: int | None = None
    in_use: int | None = None
    active: bool | None = None
    manual_cap: int | None = None
    last_change: LimitChange | None = None
    throttled_until: datetime | None = None
    #: rate rows: the variable and its value as written, and the rate per second
    variable: str | None = None
    configured: float | None = None
    per_second: float | None = None

    def change_text(self, now: datetime) -> str:
        text = change_text(self.last_change, now) if self.last_change else ""
        if self.throttled_until is not None and self.throttled_until > now:
            left = math.ceil((self.throttled_until - now).total_seconds())
            held = f"calls held {seconds_text(left)} more (Retry-After)"
            text = f"{text}; {held}" if text else held
        return text

    def to_json(self, now: datetime) -> dict[str, Any]:
        change = self.last_change
        return {
            "name": self.name,
            "provider": self.provider,
            "kind": self.kind,
            "exists": self.exists,
            "ceiling": self.ceiling,
            "limit": self.limit,
            "in_use": self.in_use,
            "active": self.active,
            "manual_cap": self.manual_cap,
            "last_change": None if change is None else {
                "at": change.at.isoformat(),
                "from_limit": change.from_limit,
                "to_limit": change.to_limit,
                "reason": change.reason,
                "status": change.status,
                "retry_after": change.retry_after,
                "text": change_text(change, now),
            },
            "throttled_until": (
                self.throttled_until.isoformat() if self.throttled_until else None
            ),
            **(
                {"variable": self.variable, "configured": self.configured,
                 "per_second": self.per_second}
                if self.kind == "rate" else {}
            ),
        }


@dataclass(frozen=True)
class _Record:
    row: ProviderPace | None
    change: LimitChange | None


def _records(sessions: Sessions | None) -> dict[str, _Record]:
    if sessions is None:
        return {}
    found: dict[str, _Record] = {}
    with sessions() as session:
        for row in iter_rows(session):
            session.expunge(row)
            found[row.provider] = _Record(row, None)
        for provider in {*PROVIDER_NAMES, *found}:
            change = last_change(session, provider)
            if change is not None or provider in found:
                found[provider] = _Record(found.get(provider, _Record(None, None)).row, change)
    return found


async def read_limits_view(
    client: PrefectClient,
    settings: ProviderSettings | None = None,
    sessions: Sessions | None = None,
    rate_settings: RateSettings | None = None,
) -> list[LimitView]:
    """Every provider's in-flight limit, then any provider the fleet paces without one
    (its Retry-After), then the rate limits that exist or are configured."""
    s = settings or ProviderSettings()
    prefect = await read_provider_limits(client)
    rates = await read_rate_limits(client, rate_settings)
    records = _records(sessions)
    views: list[LimitView] = []
    for provider in PROVIDER_NAMES:
        name = limit_name(provider)
        info = prefect[name]
        record = records.get(provider, _Record(None, None))
        ceiling = s.max_concurrent(provider)
        limit = info.get("limit") if info["exists"] else None
        views.append(LimitView(
            name=name, provider=provider, kind="in-flight", exists=bool(info["exists"]),
            ceiling=ceiling, limit=limit,  # type: ignore[arg-type]
            in_use=info.get("active_slots"), active=info.get("active"),  # type: ignore[arg-type]
            manual_cap=(
                manual_cap_seen(record.row, limit, ceiling)  # type: ignore[arg-type]
                if sessions is not None else None
            ),
            last_change=record.change,
            throttled_until=aware(record.row.throttled_until) if record.row else None,
        ))
    for provider, record in sorted(records.items()):
        if provider in PROVIDER_NAMES:
            continue
        views.append(LimitView(
            name=provider, provider=provider, kind="retry-after", exists=False,
            ceiling=record.row.ceiling if record.row else None,
            last_change=record.change,
            throttled_until=aware(record.row.throttled_until) if record.row else None,
        ))
    for name, info in rates.items():
        if not info["exists"] and info.get("configured") is None:
            continue  # no rate limit asked for, none on the server
        views.append(LimitView(
            name=name, provider=info["provider"], kind="rate", exists=bool(info["exists"]),
            limit=info.get("limit"), in_use=info.get("active_slots"), active=info.get("active"),
            variable=info.get("variable"), configured=info.get("configured"),
            per_second=info.get("slot_decay_per_second"),
        ))
    return views

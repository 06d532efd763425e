"""Refuse bad budget and price variables before anything is spent.

A negative or non-numeric BATCH_BUDGET_USD, AVATAR_DAILY_BUDGET_USD or price would
otherwise surface mid-batch (when the chain is built, after the plan was written) or,
worse, be used: a negative price makes a budget look unspent. The batch's validation
calls `validate_cost_settings` first; the refusal names the variable (CLI exit 2).
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ValidationError
from pydantic_settings import BaseSettings

from studio.hooks.settings import HookSettings
from studio.ledger.settings import LedgerSettings
from studio.moderation.settings import ModerationSettings
from studio.providers.settings import ProviderSettings
from studio.request import BatchRequestError

#: HookSettings fields that are prices (their variables carry no bounds of their own)
_HOOK_PRICES = (
    "price_input_per_mtok",
    "price_output_per_mtok",
    "price_cache_write_per_mtok",
    "price_cache_read_per_mtok",
)


def _variable(model: type[BaseModel], field: str) -> str:
    info = model.model_fields.get(field)
    alias = (info.validation_alias or info.alias) if info is not None else None
    return alias if isinstance(alias, str) else field.upper()


def _load(model: type[BaseSettings]) -> BaseSettings:
    try:
        return model()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first.get("loc") else ""
        name = field if field.isupper() else _variable(model, field)
        value = first.get("input")
        raise BatchRequestError(
            name,
            f"{value!r} is not valid: {first['msg'].lower()} (a number >= 0; a budget may be none)",
        ) from None


def validate_cost_settings() -> LedgerSettings:
    """Load the budgets and every price; raise BatchRequestError naming a bad variable."""
    budgets = _load(LedgerSettings)
    _load(ProviderSettings)
    _load(ModerationSettings)
    hooks = _load(HookSettings)
    for field in _HOOK_PRICES:
        value = getattr(hooks, field)
        if not math.isfinite(value) or value < 0:
            raise BatchRequestError(
                _variable(HookSettings, field), f"{value!r} is not valid: a price must be >= 0"
            )
    assert isinstance(budgets, LedgerSettings)
    return budgets

"""The spending budgets, from the environment (unset = no budget).

BATCH_BUDGET_USD caps what one batch may spend on billed provider calls (images, hooks,
moderation); AVATAR_DAILY_BUDGET_USD caps what all batches of one avatar may spend in a
UTC day, across processes. Both are checked before a billed call, against the ledger.
"""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class LedgerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    batch_budget_usd: float | None = Field(
        None, ge=0, allow_inf_nan=False, validation_alias="BATCH_BUDGET_USD"
    )
    avatar_daily_budget_usd: float | None = Field(
        None, ge=0, allow_inf_nan=False, validation_alias="AVATAR_DAILY_BUDGET_USD"
    )

    @field_validator("batch_budget_usd", "avatar_daily_budget_usd", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @property
    def any_budget(self) -> bool:
        return self.batch_budget_usd is not None or self.avatar_daily_budget_usd is not None

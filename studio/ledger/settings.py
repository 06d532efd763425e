"""The spending budgets, from the environment, with safe defaults.

BATCH_BUDGET_USD caps what one batch may spend on billed provider calls (images, hooks,
moderation); AVATAR_DAILY_BUDGET_USD caps what all batches of one avatar may spend in a
UTC day, across processes; an avatar whose profile sets a daily budget
(AvatarRef.daily_budget_usd, set with `studio avatar add/update`) has that one instead
(studio/ledger/store.py `avatar_daily_budget`). Both are checked before a billed call,
against the ledger.

Why defaults, not "unset = no budget": anyone able to start runs (or a loop of retries,
resumes and schedules) could otherwise spend without limit. The spec prices a 50-piece
batch at $0.66-0.76 (about $0.015 a piece) and a batch holds at most 500 pieces:

- BATCH_BUDGET_USD = 10: the largest batch at the spec's price ($7.60) with about a
  third to spare for retries and fallbacks; a 500-piece batch that falls back to
  Replicate for every image (~$0.035 a piece) stops at about 280 pieces.
- AVATAR_DAILY_BUDGET_USD = 20: two of the largest batches a day, or ~26 of the spec's
  daily 50-piece batches; a runaway loop of submissions for one avatar stops there.

`none` (or `off`, `unlimited`) turns a budget off explicitly; a blank value keeps the
default (a blank line in a .env file does not silently remove a budget).
"""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BATCH_BUDGET_USD = 10.0
DEFAULT_AVATAR_DAILY_BUDGET_USD = 20.0
#: values that turn a budget off
NO_BUDGET = ("none", "off", "unlimited")


class LedgerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    batch_budget_usd: float | None = Field(
        DEFAULT_BATCH_BUDGET_USD, ge=0, allow_inf_nan=False, validation_alias="BATCH_BUDGET_USD"
    )
    avatar_daily_budget_usd: float | None = Field(
        DEFAULT_AVATAR_DAILY_BUDGET_USD,
        ge=0,
        allow_inf_nan=False,
        validation_alias="AVATAR_DAILY_BUDGET_USD",
    )

    @field_validator("batch_budget_usd", mode="before")
    @classmethod
    def _batch_budget(cls, value: object) -> object:
        return _budget(value, DEFAULT_BATCH_BUDGET_USD)

    @field_validator("avatar_daily_budget_usd", mode="before")
    @classmethod
    def _avatar_daily_budget(cls, value: object) -> object:
        return _budget(value, DEFAULT_AVATAR_DAILY_BUDGET_USD)

    @property
    def any_budget(self) -> bool:
        return self.batch_budget_usd is not None or self.avatar_daily_budget_usd is not None


def _budget(value: object, default: float) -> object:
    """`none`/`off`/`unlimited` -> no budget; blank -> the default; else as given."""
    if isinstance(value, str):
        if not value.strip():
            return default
        if value.strip().lower() in NO_BUDGET:
            return None
    return value

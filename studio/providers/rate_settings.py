"""Requests-per-time limits a provider documents, from the environment.

Why apart from the in-flight caps (`*_MAX_CONCURRENT`): a provider may count requests
per second or per minute whatever their duration (Replicate's prediction-create rate,
Anthropic's requests per minute), and N processes each pacing themselves still send N
times the rate. These variables say the account's rate; deployments/rate_limits.py makes
each one a Prefect rate limit (`rate:<provider>`) shared by every process, and an unset
variable means no rate limit at all (nothing to create, nothing to wait for).

Bad values are refused before anything is spent, in one line naming the variable.
"""

from __future__ import annotations

import math

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from studio.request import BatchRequestError

#: provider -> the variable that holds its rate (as the issue names them)
RATE_VARIABLES: dict[str, str] = {
    "replicate": "REPLICATE_RPS",
    "anthropic": "ANTHROPIC_RPM",
}
#: the prefix of a provider's Prefect rate limit: `rate:replicate`
RATE_LIMIT_PREFIX = "rate:"


def rate_limit_name(provider: str) -> str:
    return f"{RATE_LIMIT_PREFIX}{provider}"


class RateSettings(BaseSettings):
    """`REPLICATE_RPS` (requests per second) and `ANTHROPIC_RPM` (requests per minute);
    each a number above 0, or unset (or empty) for no rate limit."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True,
        env_ignore_empty=True,
    )

    replicate_rps: float | None = Field(
        None, validation_alias="REPLICATE_RPS", gt=0, allow_inf_nan=False
    )
    anthropic_rpm: float | None = Field(
        None, validation_alias="ANTHROPIC_RPM", gt=0, allow_inf_nan=False
    )

    def per_second(self, provider: str) -> float | None:
        """`provider`'s rate in requests per second (None: no rate limit)."""
        if provider == "replicate":
            return self.replicate_rps
        if provider == "anthropic":
            return None if self.anthropic_rpm is None else self.anthropic_rpm / 60.0
        return None

    def configured(self, provider: str) -> float | None:
        """The value as the operator wrote it (in the variable's own unit)."""
        return {"replicate": self.replicate_rps, "anthropic": self.anthropic_rpm}.get(provider)


def burst(per_second: float) -> int:
    """How many requests may start at once before the rate paces them: one second's
    worth, at least one (Prefect refuses to take a slot from a limit of 0)."""
    return max(1, math.ceil(per_second))


def load_rate_settings(**overrides: object) -> RateSettings:
    """The rate settings, or a BatchRequestError naming the first bad variable."""
    try:
        return RateSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise rate_settings_error(exc) from None


def rate_settings_error(exc: ValidationError) -> BatchRequestError:
    """Pydantic's first complaint as one line naming the variable (never a traceback)."""
    error = exc.errors()[0]
    loc = error.get("loc") or ("rate",)
    field = str(loc[0])  # the alias (the variable) or the field name given in code
    by_field = {f"{p}_{v.rsplit('_', 1)[1].lower()}": v for p, v in RATE_VARIABLES.items()}
    variable = field.upper() if field.upper() in RATE_VARIABLES.values() else by_field.get(
        field, field
    )
    value = error.get("input")
    unit = "requests per minute" if variable.endswith("_RPM") else "requests per second"
    shown = f" (got {value!r})" if isinstance(value, str | int | float) else ""
    return BatchRequestError(
        variable, f"must be a number above 0 ({unit}), or unset for no rate limit{shown}"
    )

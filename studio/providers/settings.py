"""Image-provider configuration from the spec's environment variables.

Every number the spec gives for the provider chain (concurrency caps, retries and
backoff, timeouts, the circuit breaker, prices) has the spec's value as default and an
environment variable to override it, so an operator tunes the chain without touching
code and a test or benchmark points it at emulators. Each provider's own variables and
defaults are declared with the provider (its `ProviderEntry`, listed in
`studio/providers/catalogue.py`); this module adds those to the chain's own variables.
"""

from __future__ import annotations

from dataclasses import fields
from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field, create_model, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from studio.providers.catalogue import IMAGE_PROVIDERS, PROVIDER_NAMES, provider_entry
from studio.providers.entry import ProviderEntry, Tuning

__all__ = ["PROVIDER_NAMES", "ProviderSettings", "ProviderStrategy"]

TUNING_KNOBS: tuple[str, ...] = tuple(knob.name for knob in fields(Tuning))


class ProviderStrategy(StrEnum):
    """How the chain orders and routes (spec: "Provider Chain Tuning")."""

    #: the catalogue's order (ComfyUI, Modal, Replicate)
    DEFAULT = "default"
    #: the catalogue's order; an image goes to the next provider with a free slot
    SPEED = "speed"
    #: by each entry's `quality_rank`: Modal first, Replicate as fallback, ComfyUI last
    QUALITY = "quality"
    #: the studio's own hardware first (ComfyUI), then the billed providers by price
    COST = "cost-optimized"


def _tuning_fields(entry: ProviderEntry) -> dict[str, Any]:
    """The `<name>_<knob>` fields of one provider, its `Tuning` as defaults."""
    t = entry.tuning

    def knob(name: str, kind: type, default: object, **limits: Any) -> tuple[str, Any]:
        alias = entry.variable(name)
        return entry.field_name(name), (kind, Field(default, validation_alias=alias, **limits))

    return dict(
        (
            knob("max_concurrent", int, t.max_concurrent, ge=1),
            knob("max_attempts", int, t.max_attempts, ge=1),
            knob("backoff_factor", float, t.backoff_factor),
            knob("timeout", float, t.timeout, gt=0),
            knob("price_usd", float, t.price_usd, ge=0, allow_inf_nan=False),
        )
    )


#: every provider's own settings and tuning knobs, as one model the chain's settings extend
_ProviderFields: type[BaseSettings] = create_model(  # type: ignore[call-overload]
    "_ProviderFields",
    __base__=tuple(entry.settings for entry in IMAGE_PROVIDERS),
    **{name: spec for entry in IMAGE_PROVIDERS for name, spec in _tuning_fields(entry).items()},
)


class ProviderSettings(_ProviderFields):  # type: ignore[misc,valid-type]
    """Endpoints, credentials and the chain's tuning; secrets are `SecretStr`."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    # --- the chain ---
    provider_order: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="LORA_INFERENCE_PROVIDER_ORDER"
    )
    strategy: ProviderStrategy = Field(
        ProviderStrategy.DEFAULT, validation_alias="PROVIDER_STRATEGY"
    )

    # how the global caps are held (see engine/provider_slots.py)
    slot_poll_seconds: float = Field(0.2, gt=0, validation_alias="PROVIDER_SLOT_POLL_SECONDS")
    slot_linger_seconds: float = Field(1.0, ge=0, validation_alias="PROVIDER_SLOT_LINGER_SECONDS")
    #: how long a starting batch holds others to their share before its first ask (0: off)
    slot_claim_seconds: float = Field(5.0, ge=0, validation_alias="PROVIDER_SLOT_CLAIM_SECONDS")
    #: increments of one provider's limit a process sends at once (more than 1 only
    #: gains on a Prefect server on PostgreSQL: SQLite serialises them with lock retries)
    slot_asks_in_flight: int = Field(
        1, ge=1, le=20, validation_alias="PROVIDER_SLOT_ASKS_IN_FLIGHT"
    )

    #: seconds the backoff factor is applied to: wait n = unit * factor**n (1.5 s, 2.25 s...)
    backoff_unit_seconds: float = Field(1.0, ge=0, validation_alias="PROVIDER_BACKOFF_UNIT")

    # circuit breaker (spec: 5 failures, 60 s)
    breaker_failure_threshold: int = Field(
        5, ge=1, validation_alias="PROVIDER_BREAKER_FAILURE_THRESHOLD"
    )
    breaker_recovery_seconds: float = Field(
        60.0, ge=0, validation_alias="PROVIDER_BREAKER_RECOVERY_SECONDS"
    )

    #: PROVIDER_STRATEGY=cost-optimized: how many more times the free provider (ComfyUI)
    #: is tried before a billed one (a 70%-reliable ComfyUI then serves 91% of images)
    cost_optimized_free_retries: int = Field(
        1, ge=0, validation_alias="COST_OPTIMIZED_FREE_RETRIES"
    )

    @field_validator("provider_order", mode="before")
    @classmethod
    def _split_order(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part for part in value.replace(" ", "").split(",") if part]
        if isinstance(value, list):
            unknown = [v for v in value if v not in PROVIDER_NAMES]
            if unknown:
                raise ValueError(f"unknown providers {unknown}; known: {PROVIDER_NAMES}")
        return value

    @field_validator("strategy", mode="before")
    @classmethod
    def _normalise_strategy(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip().lower().replace("_", "-")
            return {"": "default", "cost": "cost-optimized"}.get(value, value)
        return value

    # --- derived views used by the chain and the limits command ---

    def tuning(self, provider: str) -> Tuning:
        """`provider`'s knobs as configured (its variables, else its entry's defaults)."""
        entry = provider_entry(provider)
        return Tuning(**{knob: getattr(self, entry.field_name(knob)) for knob in TUNING_KNOBS})

    def max_concurrent(self, provider: str) -> int:
        return self.tuning(provider).max_concurrent

    def max_attempts(self, provider: str) -> int:
        return self.tuning(provider).max_attempts

    def backoff_factor(self, provider: str) -> float:
        return self.tuning(provider).backoff_factor

    def timeout(self, provider: str) -> float:
        return self.tuning(provider).timeout

    def price_usd(self, provider: str) -> float:
        return self.tuning(provider).price_usd

    def configured(self, provider: str) -> bool:
        """True when the provider has what it needs to make a real image."""
        return provider in PROVIDER_NAMES and bool(provider_entry(provider).configured(self))

    def secret_values(self) -> list[str]:
        """Every configured secret's plain value, for redaction of messages."""
        secrets = [
            getattr(self, name) for entry in IMAGE_PROVIDERS for name in entry.secret_fields
        ]
        return [s.get_secret_value() for s in secrets if s is not None and s.get_secret_value()]

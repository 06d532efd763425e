"""Image-provider configuration from the spec's environment variables.

Every number the spec gives for the provider chain (concurrency caps, retries and
backoff, timeouts, the circuit breaker, prices) lives here with the spec's value as
default and an environment variable to override it, so an operator tunes the chain
without touching code and a test or benchmark points it at emulators.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROVIDER_NAMES: tuple[str, ...] = ("comfyui", "modal", "replicate")


class ProviderStrategy(StrEnum):
    """How the chain orders and routes (spec: "Provider Chain Tuning")."""

    DEFAULT = "default"
    #: ComfyUI first; an image goes to the next provider with a free slot
    SPEED = "speed"
    #: Modal first, Replicate as fallback, ComfyUI last
    QUALITY = "quality"
    #: ComfyUI first, then the cheapest paid provider
    COST = "cost-optimized"


class ProviderSettings(BaseSettings):
    """Endpoints, credentials and the chain's tuning; secrets are `SecretStr`."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    # --- ComfyUI (local, free, fast, flaky) ---
    comfyui_enabled: bool = Field(False, validation_alias="COMFYUI_ENABLED")
    comfyui_endpoint: str = Field("http://localhost:8188", validation_alias="COMFYUI_ENDPOINT")
    comfyui_fallback_on_error: bool = Field(True, validation_alias="COMFYUI_FALLBACK_ON_ERROR")
    comfyui_checkpoint: str = Field(
        "sd_xl_base_1.0.safetensors", validation_alias="COMFYUI_CHECKPOINT"
    )
    comfyui_poll_interval: float = Field(0.2, validation_alias="COMFYUI_POLL_INTERVAL")

    # --- Modal SDXL LoRA web endpoint ---
    modal_sdxl_endpoint: str | None = Field(None, validation_alias="MODAL_SDXL_ENDPOINT")
    modal_token_id: SecretStr | None = Field(None, validation_alias="MODAL_TOKEN_ID")
    modal_token_secret: SecretStr | None = Field(None, validation_alias="MODAL_TOKEN_SECRET")

    # --- Replicate FLUX LoRA ---
    replicate_api_token: SecretStr | None = Field(None, validation_alias="REPLICATE_API_TOKEN")
    replicate_base_url: str = Field(
        "https://api.replicate.com", validation_alias="REPLICATE_BASE_URL"
    )
    replicate_model: str = Field(
        "black-forest-labs/flux-dev-lora", validation_alias="REPLICATE_MODEL"
    )
    #: name of the model input that takes the LoRA weights URL
    replicate_lora_input: str = Field("lora_weights", validation_alias="REPLICATE_LORA_INPUT")
    replicate_poll_interval: float = Field(0.5, validation_alias="REPLICATE_POLL_INTERVAL")
    #: how many 429s on create are waited out (per attempt), honouring Retry-After
    replicate_throttle_retries: int = Field(5, validation_alias="REPLICATE_THROTTLE_RETRIES")

    # --- the chain ---
    provider_order: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="LORA_INFERENCE_PROVIDER_ORDER"
    )
    strategy: ProviderStrategy = Field(
        ProviderStrategy.DEFAULT, validation_alias="PROVIDER_STRATEGY"
    )

    # concurrency caps, global across processes (spec: MAX_CONCURRENT)
    comfyui_max_concurrent: int = Field(10, ge=1, validation_alias="COMFYUI_MAX_CONCURRENT")
    modal_max_concurrent: int = Field(3, ge=1, validation_alias="MODAL_MAX_CONCURRENT")
    replicate_max_concurrent: int = Field(5, ge=1, validation_alias="REPLICATE_MAX_CONCURRENT")

    # how the global caps are held (see engine/provider_slots.py)
    slot_poll_seconds: float = Field(0.2, gt=0, validation_alias="PROVIDER_SLOT_POLL_SECONDS")
    slot_linger_seconds: float = Field(1.0, ge=0, validation_alias="PROVIDER_SLOT_LINGER_SECONDS")

    # retries (spec: RETRY_CONFIG); max_attempts counts the first try
    comfyui_max_attempts: int = Field(1, ge=1, validation_alias="COMFYUI_MAX_ATTEMPTS")
    modal_max_attempts: int = Field(3, ge=1, validation_alias="MODAL_MAX_ATTEMPTS")
    replicate_max_attempts: int = Field(2, ge=1, validation_alias="REPLICATE_MAX_ATTEMPTS")
    comfyui_backoff_factor: float = Field(1.0, validation_alias="COMFYUI_BACKOFF_FACTOR")
    modal_backoff_factor: float = Field(1.5, validation_alias="MODAL_BACKOFF_FACTOR")
    replicate_backoff_factor: float = Field(2.0, validation_alias="REPLICATE_BACKOFF_FACTOR")
    #: seconds the backoff factor is applied to: wait n = unit * factor**n (1.5 s, 2.25 s...)
    backoff_unit_seconds: float = Field(1.0, ge=0, validation_alias="PROVIDER_BACKOFF_UNIT")

    # per-attempt timeouts in seconds
    comfyui_timeout: float = Field(30.0, gt=0, validation_alias="COMFYUI_TIMEOUT")
    modal_timeout: float = Field(300.0, gt=0, validation_alias="MODAL_TIMEOUT")
    replicate_timeout: float = Field(60.0, gt=0, validation_alias="REPLICATE_TIMEOUT")

    # circuit breaker (spec: 5 failures, 60 s)
    breaker_failure_threshold: int = Field(
        5, ge=1, validation_alias="PROVIDER_BREAKER_FAILURE_THRESHOLD"
    )
    breaker_recovery_seconds: float = Field(
        60.0, ge=0, validation_alias="PROVIDER_BREAKER_RECOVERY_SECONDS"
    )

    # prices per image in USD (spec: ComfyUI free, Modal $0.01, Replicate $0.01-0.05);
    # the price table with the source of each figure is studio/ledger/pricing.py
    comfyui_price_usd: float = Field(
        0.0, ge=0, allow_inf_nan=False, validation_alias="COMFYUI_PRICE_USD"
    )
    modal_price_usd: float = Field(
        0.01, ge=0, allow_inf_nan=False, validation_alias="MODAL_PRICE_USD"
    )
    replicate_price_usd: float = Field(
        0.03, ge=0, allow_inf_nan=False, validation_alias="REPLICATE_PRICE_USD"
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

    def max_concurrent(self, provider: str) -> int:
        return int(getattr(self, f"{provider}_max_concurrent"))

    def max_attempts(self, provider: str) -> int:
        return int(getattr(self, f"{provider}_max_attempts"))

    def backoff_factor(self, provider: str) -> float:
        return float(getattr(self, f"{provider}_backoff_factor"))

    def timeout(self, provider: str) -> float:
        return float(getattr(self, f"{provider}_timeout"))

    def price_usd(self, provider: str) -> float:
        return float(getattr(self, f"{provider}_price_usd"))

    def configured(self, provider: str) -> bool:
        """True when the provider has what it needs to make a real image."""
        if provider == "comfyui":
            return self.comfyui_enabled
        if provider == "modal":
            return bool(self.modal_sdxl_endpoint)
        if provider == "replicate":
            return self.replicate_api_token is not None
        return False

    def secret_values(self) -> list[str]:
        """Every configured secret's plain value, for redaction of messages."""
        secrets = (self.modal_token_id, self.modal_token_secret, self.replicate_api_token)
        return [s.get_secret_value() for s in secrets if s is not None and s.get_secret_value()]

"""Settings of the hook (caption) step, read from the spec's environment variables.

They live beside the hook writers so that a change to captioning touches one folder;
the pipeline's aggregate `Settings` embeds them as `hooks`. Prices are per million
tokens (MTok) and default to Claude Haiku 4.5's list prices; override them when the
model or the price list changes, because the batch's cost line is computed from them.
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

#: where the key goes when ANTHROPIC_BASE_URL is not set (the SDK's own default)
ANTHROPIC_DEFAULT_BASE_URL = "https://api.anthropic.com"


class HookSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    anthropic_api_key: SecretStr | None = Field(default=None, alias="ANTHROPIC_API_KEY")
    anthropic_base_url: str | None = Field(default=None, alias="ANTHROPIC_BASE_URL")
    model: str = Field(default="claude-haiku-4-5", alias="ANTHROPIC_MODEL")

    enabled: bool = Field(default=True, alias="HOOK_GENERATION_ENABLED")
    batch_size: int = Field(default=10, alias="HOOK_BATCH_SIZE", ge=1, le=50)
    prompt_max_tokens: int = Field(default=500, alias="HOOK_PROMPT_MAX_TOKENS", ge=16)
    max_output_tokens: int = Field(default=1500, alias="HOOK_MAX_OUTPUT_TOKENS", ge=64)
    structured_output: bool = Field(default=True, alias="HOOK_STRUCTURED_OUTPUT")
    max_concurrent: int = Field(default=3, alias="HOOK_MAX_CONCURRENT", ge=1)
    timeout_seconds: float = Field(default=60.0, alias="HOOK_TIMEOUT_SECONDS", gt=0)

    max_retries: int = Field(default=3, alias="HOOK_MAX_RETRIES", ge=0)
    backoff_base_seconds: float = Field(default=1.0, alias="HOOK_BACKOFF_BASE_SECONDS", ge=0)
    backoff_max_seconds: float = Field(default=30.0, alias="HOOK_BACKOFF_MAX_SECONDS", ge=0)
    breaker_threshold: int = Field(default=5, alias="HOOK_BREAKER_THRESHOLD", ge=1)
    breaker_reset_seconds: float = Field(default=60.0, alias="HOOK_BREAKER_RESET_SECONDS", ge=0)

    # Message Batches (the batch's `hook_mode`, see modes.py): the longest a batch waits
    # on one, and the time kept back for the steps after hooks (safety, upload, save)
    message_batch_budget_seconds: float = Field(
        default=300.0, alias="HOOK_MESSAGE_BATCH_BUDGET_SECONDS", ge=0
    )
    message_batch_margin_seconds: float = Field(
        default=120.0, alias="HOOK_MESSAGE_BATCH_MARGIN_SECONDS", ge=0
    )
    message_batch_poll_seconds: float = Field(
        default=10.0, alias="HOOK_MESSAGE_BATCH_POLL_SECONDS", gt=0
    )
    message_batch_discount: float = Field(
        default=0.5, alias="HOOK_MESSAGE_BATCH_DISCOUNT", gt=0, le=1
    )

    price_input_per_mtok: float = Field(default=1.00, alias="ANTHROPIC_PRICE_INPUT_PER_MTOK")
    price_output_per_mtok: float = Field(default=5.00, alias="ANTHROPIC_PRICE_OUTPUT_PER_MTOK")
    price_cache_write_per_mtok: float = Field(
        default=1.25, alias="ANTHROPIC_PRICE_CACHE_WRITE_PER_MTOK"
    )
    price_cache_read_per_mtok: float = Field(
        default=0.10, alias="ANTHROPIC_PRICE_CACHE_READ_PER_MTOK"
    )

    @property
    def api_base_url(self) -> str:
        """The one origin the key is sent to, handed to the SDK explicitly.

        Passed even when unset, so the SDK never picks a base URL of its own (it would
        read ANTHROPIC_BASE_URL or a profile file) for a key that came from elsewhere.
        """
        return self.anthropic_base_url or ANTHROPIC_DEFAULT_BASE_URL

    @property
    def configured(self) -> bool:
        """True when a real Anthropic key is present (the stand-in is used otherwise)."""
        return self.anthropic_api_key is not None and bool(
            self.anthropic_api_key.get_secret_value().strip()
        )

"""Settings of the safety step, read from the spec's environment variables.

SKIP_SAFETY_CHECK_CATEGORIES names *template* categories (the spec's "fitness",
"lifestyle"), not moderation categories; HARD_BLOCKED_CATEGORIES names moderation
categories that reject a piece whatever its tier. `sexual/minors` is always part of the
hard-blocked set: the validator puts it back if a configuration leaves it out.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ALWAYS_BLOCKED = "sexual/minors"
#: where the key goes when OPENAI_BASE_URL is not set (the SDK's own default)
OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_HARD_BLOCKED = (ALWAYS_BLOCKED, "self-harm/intent", "violence/graphic")


def _comma_list(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip().lower() for part in value.split(",") if part.strip()]
    return [str(part).strip().lower() for part in value if str(part).strip()]  # type: ignore[union-attr]


class ModerationSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    openai_api_key: SecretStr | None = Field(default=None, alias="OPENAI_API_KEY")
    openai_base_url: str | None = Field(default=None, alias="OPENAI_BASE_URL")
    model: str = Field(default="omni-moderation-latest", alias="OPENAI_MODERATION_MODEL")

    enabled: bool = Field(default=True, alias="SAFETY_CHECK_ENABLED")
    skip_categories: Annotated[list[str], NoDecode] = Field(
        default_factory=list, alias="SKIP_SAFETY_CHECK_CATEGORIES"
    )
    sample_rate: float = Field(default=1.0, alias="SAFETY_CHECK_SAMPLE_RATE", ge=0, le=1)
    max_concurrent: int = Field(default=5, alias="MODERATION_MAX_CONCURRENT", ge=1)
    text_batch_size: int = Field(default=100, alias="MODERATION_TEXT_BATCH_SIZE", ge=1)
    timeout_seconds: float = Field(default=30.0, alias="MODERATION_TIMEOUT_SECONDS", gt=0)

    max_retries: int = Field(default=3, alias="MODERATION_MAX_RETRIES", ge=0)
    backoff_base_seconds: float = Field(default=1.0, alias="MODERATION_BACKOFF_BASE_SECONDS", ge=0)
    backoff_max_seconds: float = Field(default=20.0, alias="MODERATION_BACKOFF_MAX_SECONDS", ge=0)

    hard_blocked_categories: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_HARD_BLOCKED), alias="HARD_BLOCKED_CATEGORIES"
    )
    capa1_sexual_action: Literal["reject", "retier"] = Field(
        default="reject", alias="CAPA1_SEXUAL_ACTION"
    )
    retier_to: Literal["capa2", "capa3"] = Field(default="capa2", alias="CAPA1_RETIER_TO")

    # the spec budgets $0.05 of safety per 50 pieces (~$0.001 a call); OpenAI lists the
    # moderation endpoint as free, so set 0 to price it as billed
    price_per_call_usd: float = Field(default=0.001, alias="MODERATION_PRICE_PER_CALL_USD", ge=0)

    @field_validator("skip_categories", mode="before")
    @classmethod
    def _split_skip(cls, value: object) -> list[str]:
        return _comma_list(value)

    @field_validator("hard_blocked_categories", mode="before")
    @classmethod
    def _split_blocked(cls, value: object) -> list[str]:
        return _comma_list(value)

    @field_validator("hard_blocked_categories", mode="after")
    @classmethod
    def _keep_minors_blocked(cls, value: list[str]) -> list[str]:
        """No configuration can unblock sexual/minors."""
        return value if ALWAYS_BLOCKED in value else [ALWAYS_BLOCKED, *value]

    @property
    def api_base_url(self) -> str:
        """The one origin the key is sent to, handed to the SDK explicitly (see hooks)."""
        return self.openai_base_url or OPENAI_DEFAULT_BASE_URL

    @property
    def configured(self) -> bool:
        """True when a real OpenAI key is present (the local stand-in is used otherwise)."""
        return self.openai_api_key is not None and bool(
            self.openai_api_key.get_secret_value().strip()
        )

"""Replicate FLUX LoRA's settings and catalogue entry.

Why apart from its client (`replicate_flux.py`): the client imports the `replicate` SDK
(~0.2 s), and the catalogue imports every entry, so the entry lives where importing it
costs nothing; `_build` imports the client only when Replicate is configured.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings

from studio.providers.entry import BlockField, CredentialsBlock, ProviderEntry, Tuning

if TYPE_CHECKING:
    from studio.providers.replicate_flux import ReplicateFluxProvider

REPLICATE_DEFAULT_BASE_URL = "https://api.replicate.com"


class ReplicateSettings(BaseSettings):
    """The Replicate API token, where it goes, and which model takes the LoRA."""

    replicate_api_token: SecretStr | None = Field(None, validation_alias="REPLICATE_API_TOKEN")
    replicate_base_url: str = Field(
        REPLICATE_DEFAULT_BASE_URL, validation_alias="REPLICATE_BASE_URL"
    )
    replicate_model: str = Field(
        "black-forest-labs/flux-dev-lora", validation_alias="REPLICATE_MODEL"
    )
    #: name of the model input that takes the LoRA weights URL
    replicate_lora_input: str = Field("lora_weights", validation_alias="REPLICATE_LORA_INPUT")
    replicate_poll_interval: float = Field(0.5, validation_alias="REPLICATE_POLL_INTERVAL")
    #: how many 429s on create are waited out (per attempt), honouring Retry-After
    replicate_throttle_retries: int = Field(5, validation_alias="REPLICATE_THROTTLE_RETRIES")


def _build(settings: ReplicateSettings, tuning: Tuning) -> ReplicateFluxProvider:
    from studio.providers.replicate_flux import ReplicateFluxProvider

    assert settings.replicate_api_token is not None
    return ReplicateFluxProvider(
        settings.replicate_api_token.get_secret_value(),
        base_url=settings.replicate_base_url,
        model=settings.replicate_model,
        lora_input=settings.replicate_lora_input,
        price_usd=tuning.price_usd,
        poll_interval=settings.replicate_poll_interval,
        throttle_retries=settings.replicate_throttle_retries,
        wait_seconds=int(min(60, tuning.timeout)),
    )


ENTRY = ProviderEntry(
    name="replicate",
    settings=ReplicateSettings,
    tuning=Tuning(
        max_concurrent=5, max_attempts=2, backoff_factor=2.0, timeout=60.0, price_usd=0.03
    ),
    price_source='spec "$0.01-0.05"; its cost table uses $0.03',
    configured=lambda settings: settings.replicate_api_token is not None,
    build=_build,
    secret_fields=("replicate_api_token",),
    quality_rank=1,
    credentials_block=CredentialsBlock(
        type_name="Studio Replicate Credentials",
        class_name="ReplicateCredentials",
        description="Replicate FLUX: the API token and the base URL it is sent to "
        "(default Replicate's).",
        url=BlockField("base_url", "REPLICATE_BASE_URL", f"empty: {REPLICATE_DEFAULT_BASE_URL}"),
        keys=(
            BlockField(
                "api_token", "REPLICATE_API_TOKEN", "REPLICATE_API_TOKEN; sent only to base_url",
                secret=True, required=True,
            ),
        ),
        default_url=REPLICATE_DEFAULT_BASE_URL,
        url_last=True,
    ),
)

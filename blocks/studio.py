"""The four studio blocks and how they become environment variables."""

from __future__ import annotations

import logging
import os
from typing import ClassVar

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

log = logging.getLogger("studio.blocks")
DEFAULT_BLOCK_NAME = "default"


class _EnvironmentBlock(Block):
    #: field name -> environment variable the settings read
    _env: ClassVar[dict[str, str]] = {}

    def as_environment(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for field, variable in self._env.items():
            value = getattr(self, field)
            if value is None or value == "":
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            values[variable] = str(value)
        return values


class ProviderEndpoints(_EnvironmentBlock):
    """Base URLs of the image, caption and moderation providers."""

    _block_type_name = "Studio Provider Endpoints"
    _env = {
        "comfyui_endpoint": "COMFYUI_ENDPOINT",
        "modal_sdxl_endpoint": "MODAL_SDXL_ENDPOINT",
        "replicate_base_url": "REPLICATE_BASE_URL",
        "anthropic_base_url": "ANTHROPIC_BASE_URL",
        "openai_base_url": "OPENAI_BASE_URL",
        "provider_order": "LORA_INFERENCE_PROVIDER_ORDER",
    }
    comfyui_endpoint: str | None = Field(default=None, description="e.g. http://gpu-box:8188")
    modal_sdxl_endpoint: str | None = None
    replicate_base_url: str | None = None
    anthropic_base_url: str | None = None
    openai_base_url: str | None = None
    provider_order: str | None = Field(default=None, description="e.g. comfyui,modal,replicate")


class ProviderCredentials(_EnvironmentBlock):
    """API keys and tokens; stored encrypted by Prefect, never logged."""

    _block_type_name = "Studio Provider Credentials"
    _env = {
        "modal_token_id": "MODAL_TOKEN_ID",
        "modal_token_secret": "MODAL_TOKEN_SECRET",
        "replicate_api_token": "REPLICATE_API_TOKEN",
        "anthropic_api_key": "ANTHROPIC_API_KEY",
        "openai_api_key": "OPENAI_API_KEY",
    }
    modal_token_id: SecretStr | None = None
    modal_token_secret: SecretStr | None = None
    replicate_api_token: SecretStr | None = None
    anthropic_api_key: SecretStr | None = None
    openai_api_key: SecretStr | None = None


class ContentStorage(_EnvironmentBlock):
    """The R2 (or any S3-compatible) bucket finished pieces go to."""

    _block_type_name = "Studio Content Storage"
    _env = {
        "r2_account_id": "R2_ACCOUNT_ID",
        "r2_access_key_id": "R2_ACCESS_KEY_ID",
        "r2_secret_access_key": "R2_SECRET_ACCESS_KEY",
        "r2_bucket_name": "R2_BUCKET_NAME",
        "r2_public_url": "R2_PUBLIC_URL",
        "r2_endpoint_url": "R2_ENDPOINT_URL",
    }
    r2_account_id: str | None = None
    r2_access_key_id: SecretStr | None = None
    r2_secret_access_key: SecretStr | None = None
    r2_bucket_name: str | None = None
    r2_public_url: str | None = None
    r2_endpoint_url: str | None = None


class StudioDatabase(_EnvironmentBlock):
    """The pipeline's database (PostgreSQL in production)."""

    _block_type_name = "Studio Database"
    _env = {"database_url": "DATABASE_URL"}
    database_url: SecretStr | None = None


BLOCK_TYPES: tuple[type[_EnvironmentBlock], ...] = (
    ProviderEndpoints,
    ProviderCredentials,
    ContentStorage,
    StudioDatabase,
)


async def apply_registered_blocks(name: str = DEFAULT_BLOCK_NAME) -> list[str]:
    """Export every saved studio block called `name` to the environment.

    Returns the variable names it set (never their values). A block type that is not
    registered, or has no document of that name, is skipped: environment variables
    alone are a complete configuration.
    """
    applied: list[str] = []
    for block_type in BLOCK_TYPES:
        try:
            block = await block_type.aload(name)
        except Exception as exc:  # missing block type or document: env alone is enough
            log.debug(
                "block %s/%s not used: %s",
                block_type.get_block_type_slug(),
                name,
                type(exc).__name__,
            )
            continue
        for variable, value in block.as_environment().items():
            if variable not in os.environ:
                os.environ[variable] = value
                applied.append(variable)
    if applied:
        from studio.settings import reload_settings

        reload_settings()
        log.info("Configuration from Prefect blocks %r: %s", name, ", ".join(sorted(applied)))
    return applied

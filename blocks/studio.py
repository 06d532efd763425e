"""The studio's blocks other than the per-provider credentials, as environment variables.

How a saved block becomes configuration (which source wins, what is never mixed) is
`blocks/sources.py`; the per-provider credentials blocks are `provider_credentials.py`.
"""

from __future__ import annotations

import types
from typing import Any, ClassVar

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from studio.providers.catalogue import IMAGE_PROVIDERS

DEFAULT_BLOCK_NAME = "default"


class _EnvironmentBlock(Block):
    """A block whose fields map one-to-one onto the variables the settings read."""

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


#: the keyless image providers' endpoint fields (ComfyUI's), from the catalogue
ENDPOINT_FIELDS = tuple(e.endpoint_field for e in IMAGE_PROVIDERS if e.endpoint_field)


def _endpoint_fields(namespace: dict[str, Any]) -> None:
    """The class body of `_KeylessEndpoints`: one optional URL field per keyless provider."""
    namespace["__module__"] = __name__
    namespace["__annotations__"] = {f.name: str | None for f in ENDPOINT_FIELDS}
    for f in ENDPOINT_FIELDS:
        namespace[f.name] = Field(default=None, description=f.description)


#: the block fields of the keyless providers' endpoints; first in `ProviderEndpoints`
_KeylessEndpoints = types.new_class(
    "_KeylessEndpoints", (_EnvironmentBlock,), exec_body=_endpoint_fields
)


class ProviderEndpoints(_KeylessEndpoints):  # type: ignore[misc,valid-type]
    """Where ComfyUI runs and the order the image providers are tried in.

    Its Modal, Replicate, Anthropic and OpenAI URL fields are no longer used (issue 15:
    a URL saved here made the batch send the environment's keys to it): a keyed
    provider's URL now comes with its key, from that provider's credentials block
    (`blocks/provider_credentials.py`) or from the environment. They stay in the schema
    so documents saved by older versions still load; a batch that finds one set logs a
    warning naming this block and the fields, and ignores them.
    """

    _block_type_name = "Studio Provider Endpoints"
    _env = {
        **{f.name: f.variable for f in ENDPOINT_FIELDS},
        "provider_order": "LORA_INFERENCE_PROVIDER_ORDER",
    }
    #: field -> keyed provider whose credentials block now holds that URL (never exported)
    ignored_fields: ClassVar[dict[str, str]] = {
        "modal_sdxl_endpoint": "modal",
        "replicate_base_url": "replicate",
        "anthropic_base_url": "anthropic",
        "openai_base_url": "openai",
    }
    modal_sdxl_endpoint: str | None = Field(
        default=None, description="ignored: use the Studio Modal Credentials block"
    )
    replicate_base_url: str | None = Field(
        default=None, description="ignored: use the Studio Replicate Credentials block"
    )
    anthropic_base_url: str | None = Field(
        default=None, description="ignored: use the Studio Anthropic Credentials block"
    )
    openai_base_url: str | None = Field(
        default=None, description="ignored: use the Studio OpenAI Credentials block"
    )
    provider_order: str | None = Field(default=None, description="e.g. comfyui,modal,replicate")

    def ignored_set(self) -> list[str]:
        """The ignored URL fields this document sets (names only)."""
        return [f for f in self.ignored_fields if getattr(self, f)]


class ProviderCredentials(_EnvironmentBlock):
    """Deprecated: keys without their URLs. Use one credentials block per provider.

    Still loaded so an older set-up keeps working where that is safe: a key saved here
    goes only to its provider's official URL (Anthropic, OpenAI, Replicate), and only
    when neither that provider's own credentials block nor the environment configures
    the provider. Modal has no official URL, so its tokens here are not used. A batch
    that uses or skips anything from this block logs a warning naming it.
    """

    _block_type_name = "Studio Provider Credentials"
    #: provider -> {field: variable}; never exported as a whole (see blocks/sources.py)
    keys_by_provider: ClassVar[dict[str, dict[str, str]]] = {
        "modal": {"modal_token_id": "MODAL_TOKEN_ID", "modal_token_secret": "MODAL_TOKEN_SECRET"},
        "replicate": {"replicate_api_token": "REPLICATE_API_TOKEN"},
        "anthropic": {"anthropic_api_key": "ANTHROPIC_API_KEY"},
        "openai": {"openai_api_key": "OPENAI_API_KEY"},
    }
    modal_token_id: SecretStr | None = None
    modal_token_secret: SecretStr | None = None
    replicate_api_token: SecretStr | None = None
    anthropic_api_key: SecretStr | None = None
    openai_api_key: SecretStr | None = None

    def keys_for(self, provider: str) -> dict[str, str]:
        """variable -> secret value of `provider`'s keys saved here (empty ones left out)."""
        values: dict[str, str] = {}
        for field, variable in self.keys_by_provider.get(provider, {}).items():
            value = getattr(self, field)
            if value is not None and value.get_secret_value():
                values[variable] = value.get_secret_value()
        return values


class ContentStorage(_EnvironmentBlock):
    """The R2 (or any S3-compatible) bucket finished pieces go to.

    Used whole or not at all: when the environment sets any R2_* variable this block
    maps, the environment configures the store and this block is ignored (a warning
    names it), so the environment's keys never go to a block's endpoint or bucket.
    """

    _block_type_name = "Studio Content Storage"
    _env = {
        "r2_account_id": "R2_ACCOUNT_ID",
        "r2_access_key_id": "R2_ACCESS_KEY_ID",
        "r2_secret_access_key": "R2_SECRET_ACCESS_KEY",
        "r2_bucket_name": "R2_BUCKET_NAME",
        "r2_public_url": "R2_PUBLIC_URL",
        "r2_endpoint_url": "R2_ENDPOINT_URL",
        "r2_private_bucket_name": "R2_PRIVATE_BUCKET_NAME",
        "storage_key_secret": "STORAGE_KEY_SECRET",
    }
    r2_account_id: str | None = None
    r2_access_key_id: SecretStr | None = None
    r2_secret_access_key: SecretStr | None = None
    r2_bucket_name: str | None = None
    r2_public_url: str | None = None
    r2_endpoint_url: str | None = None
    r2_private_bucket_name: str | None = Field(
        default=None,
        description="private bucket (no public domain) for capa2/capa3, staged and rejected "
        "images; required when r2_public_url is set",
    )
    storage_key_secret: SecretStr | None = Field(
        default=None, description="keys object names; default: derived from the secret key"
    )


class StudioDatabase(_EnvironmentBlock):
    """The pipeline's database (PostgreSQL in production); DATABASE_URL in the environment wins."""

    _block_type_name = "Studio Database"
    _env = {"database_url": "DATABASE_URL"}
    database_url: SecretStr | None = None


#: blocks exported variable by variable, the environment winning each variable
PER_VARIABLE_BLOCKS: tuple[type[_EnvironmentBlock], ...] = (ProviderEndpoints,)
#: blocks that hold a secret: used whole, or not at all when the environment sets any of
#: their variables (a store's keys never go to a block's endpoint, nor the reverse)
ALL_OR_NOTHING_BLOCKS: tuple[type[_EnvironmentBlock], ...] = (ContentStorage, StudioDatabase)

"""One block per keyed provider: its base URL and its key, saved and used together.

Why one block per provider: a key must only ever go where its own configuration points.
When URLs and keys lived in separate places (the `Studio Provider Endpoints` block and
the worker's environment), saving an endpoints block that pointed Anthropic and OpenAI
at another host made the next batch send the environment's keys there (issue 15). Here
a block that names a URL always carries the key for it, and `blocks/sources.py` takes a
provider's URL and key from one block or from the environment, never one from each.

ComfyUI has no key: its endpoint stays in `Studio Provider Endpoints`.
"""

from __future__ import annotations

from typing import Annotated, ClassVar
from urllib.parse import urlsplit

from prefect.blocks.core import Block
from pydantic import AfterValidator, Field, SecretStr, field_validator

from studio.hooks.settings import ANTHROPIC_DEFAULT_BASE_URL
from studio.moderation.settings import OPENAI_DEFAULT_BASE_URL

REPLICATE_DEFAULT_BASE_URL = "https://api.replicate.com"


def _http_url(value: str | None) -> str | None:
    """An http(s) URL with a host, or None; anything else is refused when the block is saved."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    return value


def _non_empty(value: SecretStr) -> SecretStr:
    """A credentials block without its key would send a URL with no key: refused."""
    if not value.get_secret_value().strip():
        raise ValueError("the key is required")
    return value


#: an optional base URL, checked when the block is saved or loaded
BaseUrl = Annotated[str | None, AfterValidator(_http_url)]
#: a key that must not be empty
Key = Annotated[SecretStr, AfterValidator(_non_empty)]


class ProviderCredentialsBlock(Block):
    """A provider's URL and key(s); `environment()` gives both, or the block is unusable."""

    #: the variable the settings read the base URL (or endpoint) from
    url_variable: ClassVar[str]
    #: where the key goes when the block leaves the URL empty (None: the URL is required)
    default_url: ClassVar[str | None] = None
    #: field name -> variable, for the URL field and the secret fields
    _fields: ClassVar[dict[str, str]] = {}

    def environment(self) -> dict[str, str]:
        """Every variable of this provider: the URL always (the default when empty), the keys."""
        values: dict[str, str] = {}
        for field, variable in self._fields.items():
            value = getattr(self, field)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if variable == self.url_variable and not value:
                value = self.default_url
            if value:
                values[variable] = str(value)
        return values

    @classmethod
    def variables(cls) -> tuple[str, ...]:
        return tuple(cls._fields.values())


class AnthropicCredentials(ProviderCredentialsBlock):
    """Claude for hooks: the API key and the base URL it is sent to (default Anthropic's)."""

    _block_type_name = "Studio Anthropic Credentials"
    url_variable: ClassVar[str] = "ANTHROPIC_BASE_URL"
    default_url: ClassVar[str | None] = ANTHROPIC_DEFAULT_BASE_URL
    _fields = {"base_url": "ANTHROPIC_BASE_URL", "api_key": "ANTHROPIC_API_KEY"}

    api_key: Key = Field(description="ANTHROPIC_API_KEY; sent only to base_url")
    base_url: BaseUrl = Field(
        default=None, description=f"empty: {ANTHROPIC_DEFAULT_BASE_URL}"
    )


class OpenAICredentials(ProviderCredentialsBlock):
    """OpenAI moderation: the API key and the base URL it is sent to (default OpenAI's)."""

    _block_type_name = "Studio OpenAI Credentials"
    url_variable: ClassVar[str] = "OPENAI_BASE_URL"
    default_url: ClassVar[str | None] = OPENAI_DEFAULT_BASE_URL
    _fields = {"base_url": "OPENAI_BASE_URL", "api_key": "OPENAI_API_KEY"}

    api_key: Key = Field(description="OPENAI_API_KEY; sent only to base_url")
    base_url: BaseUrl = Field(default=None, description=f"empty: {OPENAI_DEFAULT_BASE_URL}")


class ReplicateCredentials(ProviderCredentialsBlock):
    """Replicate FLUX: the API token and the base URL it is sent to (default Replicate's)."""

    _block_type_name = "Studio Replicate Credentials"
    url_variable: ClassVar[str] = "REPLICATE_BASE_URL"
    default_url: ClassVar[str | None] = REPLICATE_DEFAULT_BASE_URL
    _fields = {"base_url": "REPLICATE_BASE_URL", "api_token": "REPLICATE_API_TOKEN"}

    api_token: Key = Field(description="REPLICATE_API_TOKEN; sent only to base_url")
    base_url: BaseUrl = Field(
        default=None, description=f"empty: {REPLICATE_DEFAULT_BASE_URL}"
    )


class ModalCredentials(ProviderCredentialsBlock):
    """Modal SDXL: the web endpoint and the proxy-auth token pair sent to it (and only to it)."""

    _block_type_name = "Studio Modal Credentials"
    url_variable: ClassVar[str] = "MODAL_SDXL_ENDPOINT"
    _fields = {
        "endpoint": "MODAL_SDXL_ENDPOINT",
        "token_id": "MODAL_TOKEN_ID",
        "token_secret": "MODAL_TOKEN_SECRET",
    }

    endpoint: str = Field(description="the deployed web endpoint's URL")
    token_id: SecretStr | None = Field(default=None, description="proxy auth Modal-Key")
    token_secret: SecretStr | None = Field(default=None, description="proxy auth Modal-Secret")

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        checked = _http_url(value)
        if checked is None:
            raise ValueError("the endpoint URL is required")
        return checked


PROVIDER_CREDENTIAL_BLOCKS: dict[str, type[ProviderCredentialsBlock]] = {
    "anthropic": AnthropicCredentials,
    "openai": OpenAICredentials,
    "replicate": ReplicateCredentials,
    "modal": ModalCredentials,
}

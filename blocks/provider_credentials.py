"""One block per keyed provider: its base URL and its key, saved and used together.

Why one block per provider: a key must only ever go where its own configuration points.
When URLs and keys lived in separate places (the `Studio Provider Endpoints` block and
the worker's environment), saving an endpoints block that pointed Anthropic and OpenAI
at another host made the next batch send the environment's keys there (issue 15). Here
a block that names a URL always carries the key for it, and `blocks/sources.py` takes a
provider's URL and key from one block or from the environment, never one from each.

Each block is made from a `CredentialsBlock` description: Anthropic's and OpenAI's
here, each keyed image provider's in its catalogue entry, so a new image provider gets
its block without a change here. A keyless provider (ComfyUI) has its endpoint in
`Studio Provider Endpoints`.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, ClassVar
from urllib.parse import urlsplit

from prefect.blocks.core import Block
from pydantic import AfterValidator, Field, SecretStr

from studio.hooks.settings import ANTHROPIC_DEFAULT_BASE_URL
from studio.moderation.settings import OPENAI_DEFAULT_BASE_URL
from studio.providers.catalogue import IMAGE_PROVIDERS
from studio.providers.entry import BlockField, CredentialsBlock
from studio.providers.replicate_entry import REPLICATE_DEFAULT_BASE_URL

__all__ = ["PROVIDER_CREDENTIAL_BLOCKS", "REPLICATE_DEFAULT_BASE_URL", "ProviderCredentialsBlock"]


def _http_url(value: str | None) -> str | None:
    """An http(s) URL with a host, or None; anything else is refused when the block is saved."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    return value


def _required_url(value: str) -> str:
    """The URL a block cannot do without (Modal's endpoint has no official default)."""
    checked = _http_url(value)
    if checked is None:
        raise ValueError("the endpoint URL is required")
    return checked


def _non_empty(value: SecretStr) -> SecretStr:
    """A credentials block without its key would send a URL with no key: refused."""
    if not value.get_secret_value().strip():
        raise ValueError("the key is required")
    return value


#: an optional base URL, checked when the block is saved or loaded
BaseUrl = Annotated[str | None, AfterValidator(_http_url)]
#: a URL that must be given
RequiredUrl = Annotated[str, AfterValidator(_required_url)]
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


def _annotation(field: BlockField) -> Any:
    if field.secret:
        return Key if field.required else SecretStr | None
    return RequiredUrl if field.required else BaseUrl


def credentials_block(spec: CredentialsBlock) -> type[ProviderCredentialsBlock]:
    """The block class `spec` describes, as its `class` statement would make it.

    Made with `types.new_class` so the block type's name is in the class body when
    Prefect registers the subclass (its dispatch key is read at class creation).
    """

    def body(namespace: dict[str, Any]) -> None:
        namespace.update(
            __module__=__name__,
            __qualname__=spec.class_name,
            __doc__=spec.description,
            __annotations__={f.name: _annotation(f) for f in spec.fields},
            _block_type_name=spec.type_name,
            url_variable=spec.url.variable,
            default_url=spec.default_url,
            _fields={f.name: f.variable for f in (spec.url, *spec.keys)},
        )
        for f in spec.fields:
            default = {} if f.required else {"default": None}
            namespace[f.name] = Field(**default, description=f.description)

    made = types.new_class(spec.class_name, (ProviderCredentialsBlock,), exec_body=body)
    return made  # type: ignore[return-value]


ANTHROPIC = CredentialsBlock.one_key_with_base_url(
    "Studio Anthropic Credentials",
    "AnthropicCredentials",
    "Claude for hooks: the API key and the base URL it is sent to (default Anthropic's).",
    key=("api_key", "ANTHROPIC_API_KEY"),
    url_env="ANTHROPIC_BASE_URL",
    default_url=ANTHROPIC_DEFAULT_BASE_URL,
)
OPENAI = CredentialsBlock.one_key_with_base_url(
    "Studio OpenAI Credentials",
    "OpenAICredentials",
    "OpenAI moderation: the API key and the base URL it is sent to (default OpenAI's).",
    key=("api_key", "OPENAI_API_KEY"),
    url_env="OPENAI_BASE_URL",
    default_url=OPENAI_DEFAULT_BASE_URL,
)

#: provider -> its credentials block: the hook and moderation providers, then each keyed
#: image provider of the catalogue
PROVIDER_CREDENTIAL_BLOCKS: dict[str, type[ProviderCredentialsBlock]] = {
    "anthropic": credentials_block(ANTHROPIC),
    "openai": credentials_block(OPENAI),
    **{
        entry.name: credentials_block(entry.credentials_block)
        for entry in IMAGE_PROVIDERS
        if entry.credentials_block is not None
    },
}

# each block importable by its class name (AnthropicCredentials, ModalCredentials, ...)
globals().update({block.__name__: block for block in PROVIDER_CREDENTIAL_BLOCKS.values()})
__all__ += [block.__name__ for block in PROVIDER_CREDENTIAL_BLOCKS.values()]

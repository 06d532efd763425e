"""What an image provider declares about itself: one `ProviderEntry` per provider module.

Why: the settings, the chain's builder, the price table, the Prefect blocks, the
concurrency limits and the dead-run job lookup all need to know the providers. Each
reads the entries listed in `studio/providers/catalogue.py` instead of naming
providers, so a provider is added by writing its module (client, settings, entry) and
one catalogue line.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
from pydantic_settings import BaseSettings

from studio.ledger.dead_runs import JobAnswer, OpenRow

if TYPE_CHECKING:
    from studio.providers.base import ImageProvider

#: the prefix of every provider's Prefect name: its global concurrency limit
#: `provider:<name>` for image providers, its task tag for the others
LIMIT_PREFIX = "provider:"

#: a provider's answer when it cannot be asked about a dead run's job
CANNOT_TELL = JobAnswer(None)
#: how long a dead run's job lookup waits for the provider
LOOKUP_TIMEOUT = httpx.Timeout(10.0, connect=5.0)

#: asks the provider, with the whole `ProviderSettings`, whether it has (and so billed)
#: the job of a ledger row a dead run left open (studio/ledger/dead_runs.py)
FindJob = Callable[[Any, OpenRow], Awaitable[JobAnswer]]


def limit_name(provider: str) -> str:
    """The Prefect global concurrency limit (or task tag) of `provider`."""
    return f"{LIMIT_PREFIX}{provider}"


@dataclass(frozen=True)
class Tuning:
    """The spec's defaults for the knobs every provider has; each has a variable
    `<NAME>_<KNOB>` (COMFYUI_MAX_CONCURRENT, MODAL_PRICE_USD, ...)."""

    #: global concurrency cap (spec: MAX_CONCURRENT)
    max_concurrent: int
    #: attempts at this provider, the first try included (spec: RETRY_CONFIG)
    max_attempts: int
    #: wait before retry n is PROVIDER_BACKOFF_UNIT * backoff_factor**n
    backoff_factor: float
    #: seconds per attempt
    timeout: float
    #: USD per image
    price_usd: float


@dataclass(frozen=True)
class BlockField:
    """One field of a Prefect block and the variable it supplies."""

    name: str
    variable: str
    description: str
    #: a key (shown masked, never logged)
    secret: bool = False
    #: the block cannot be saved without it
    required: bool = False


@dataclass(frozen=True)
class CredentialsBlock:
    """A keyed provider's block: its URL and its key(s), saved and used together.

    Why together: a key must only go where its own configuration points
    (`blocks/sources.py`).
    """

    #: the block type's name in the Prefect UI, e.g. "Studio Replicate Credentials"
    type_name: str
    #: the block's class name (also its schema's title), e.g. "ReplicateCredentials"
    class_name: str
    #: what the block is for, shown in the Prefect UI
    description: str
    #: the URL (or endpoint) field; `required` when there is no `default_url`
    url: BlockField
    #: the key fields, in the order the block shows them
    keys: tuple[BlockField, ...]
    #: where the key goes when the block leaves the URL empty (None: the URL is required)
    default_url: str | None = None
    #: the URL field comes after the keys in the block's schema
    url_last: bool = False

    @property
    def fields(self) -> tuple[BlockField, ...]:
        return (*self.keys, self.url) if self.url_last else (self.url, *self.keys)

    @classmethod
    def one_key_with_base_url(
        cls, type_name: str, class_name: str, description: str,
        key: tuple[str, str], url_env: str, default_url: str,
    ) -> CredentialsBlock:
        """The common shape of a hosted API's block: one required secret `key` (field,
        variable), sent only to `base_url` (`url_env`, empty: `default_url`)."""
        field, env = key
        return cls(
            type_name=type_name,
            class_name=class_name,
            description=description,
            url=BlockField("base_url", url_env, f"empty: {default_url}"),
            keys=(BlockField(field, env, f"{env}; sent only to base_url",
                             secret=True, required=True),),
            default_url=default_url,
            url_last=True,
        )


@dataclass(frozen=True)
class ProviderEntry:
    """One image provider: its name, variables, defaults, place in the strategies and builder.

    `settings` holds the provider's own variables as pydantic-settings fields named
    `<name>_...`; the `Tuning` knobs are added from `tuning` with the variables
    `<NAME>_MAX_CONCURRENT`, `_MAX_ATTEMPTS`, `_BACKOFF_FACTOR`, `_TIMEOUT`, `_PRICE_USD`.
    """

    #: used in logs, ledger rows, prices and the concurrency limit `provider:<name>`
    name: str
    settings: type[BaseSettings]
    tuning: Tuning
    #: where the default price comes from (spec section or the provider's price page)
    price_source: str
    #: True when the provider has what it needs to make a real image
    configured: Callable[[Any], bool]
    #: the provider, from the whole `ProviderSettings` and its configured `Tuning`
    #: (a provider whose client needs a heavy SDK imports it here, not at module level)
    build: Callable[[Any, Tuning], ImageProvider]
    #: the `settings` fields that hold secrets, redacted from every message
    secret_fields: tuple[str, ...] = ()
    #: place under PROVIDER_STRATEGY=quality (0 is tried first)
    quality_rank: int = 0
    #: runs on the studio's own hardware: cost-optimized tries it before any billed one
    own_hardware: bool = False
    #: False when a failure here must be final rather than fall back to the next provider
    falls_back: Callable[[Any], bool] = field(default=lambda settings: True)
    #: a keyed provider's credentials block, or None
    credentials_block: CredentialsBlock | None = None
    #: a keyless provider's endpoint field in the `Studio Provider Endpoints` block
    endpoint_field: BlockField | None = None
    #: its cheapest documented read of a job; None: its dead-run rows stay "cannot tell"
    find_job: FindJob | None = None

    @property
    def limit_name(self) -> str:
        """Its Prefect global concurrency limit, sized by `<NAME>_MAX_CONCURRENT`."""
        return limit_name(self.name)

    def variable(self, knob: str) -> str:
        """The variable of a `Tuning` knob, e.g. `variable("price_usd")` -> MODAL_PRICE_USD."""
        return f"{self.name}_{knob}".upper()

    def field_name(self, knob: str) -> str:
        """The `ProviderSettings` field of a `Tuning` knob, e.g. `modal_price_usd`."""
        return f"{self.name}_{knob}"

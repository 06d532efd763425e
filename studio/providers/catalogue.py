"""The image providers, in the default order the chain tries them.

Why one list: the settings, the chain, the price table, the Prefect blocks, the
concurrency limits and the seeded history all read the providers from here, each from
its module's `ENTRY`. Adding a provider is its module and one line below.
"""

from __future__ import annotations

from studio.providers import comfyui, modal_endpoint, replicate_entry
from studio.providers.entry import ProviderEntry

#: the default (and `speed`) order is this order
IMAGE_PROVIDERS: tuple[ProviderEntry, ...] = (
    comfyui.ENTRY,
    modal_endpoint.ENTRY,
    replicate_entry.ENTRY,
)

PROVIDER_NAMES: tuple[str, ...] = tuple(entry.name for entry in IMAGE_PROVIDERS)

_BY_NAME = {entry.name: entry for entry in IMAGE_PROVIDERS}


def provider_entry(name: str) -> ProviderEntry:
    """The entry of `name`; KeyError names the known providers."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown provider {name!r}; known: {PROVIDER_NAMES}") from None

"""Prefect Blocks: where the providers, the store and the database are, and their secrets.

Registering these blocks (`prefect block register -m blocks`) lets an operator keep
endpoints and keys in the Prefect UI instead of a worker's environment. At the start of
a batch, `apply_registered_blocks` turns the saved blocks into the environment variables
the settings read, by the rules of `blocks/sources.py`: a keyed provider's URL and key
come from its own credentials block or both from the environment, never one from each.
"""

from blocks.provider_credentials import (
    AnthropicCredentials,
    ModalCredentials,
    OpenAICredentials,
    ReplicateCredentials,
)
from blocks.sources import apply_registered_blocks, withdraw_block_exports
from blocks.studio import (
    ContentStorage,
    ProviderCredentials,
    ProviderEndpoints,
    StudioDatabase,
)

__all__ = [
    "AnthropicCredentials",
    "ContentStorage",
    "ModalCredentials",
    "OpenAICredentials",
    "ProviderCredentials",
    "ProviderEndpoints",
    "ReplicateCredentials",
    "StudioDatabase",
    "apply_registered_blocks",
    "withdraw_block_exports",
]

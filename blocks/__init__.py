"""Prefect Blocks: where the providers, the store and the database are, and their secrets.

Registering these blocks (`prefect block register -m blocks`) lets an operator keep
endpoints and keys in the Prefect UI instead of a worker's environment. At the start of
a batch, `apply_registered_blocks` turns the saved blocks into the environment variables
the settings read, by the rules of `blocks/sources.py`: a keyed provider's URL and key
come from its own credentials block or both from the environment, never one from each.
"""

from blocks.provider_credentials import (
    PROVIDER_CREDENTIAL_BLOCKS,
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

# every provider's credentials block, a new catalogue entry's too, where
# `prefect block register -m blocks` finds it
globals().update({block.__name__: block for block in PROVIDER_CREDENTIAL_BLOCKS.values()})
__all__ += [b.__name__ for b in PROVIDER_CREDENTIAL_BLOCKS.values() if b.__name__ not in __all__]

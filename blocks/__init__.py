"""Prefect Blocks: where the providers, the store and the database are, and their secrets.

Registering these blocks (`prefect block register -m blocks`) lets an operator keep
endpoints and keys in the Prefect UI instead of a worker's environment; at the start
of a batch, `apply_registered_blocks` turns a saved block into the same environment
variables the settings read, without overriding values the environment already has.
"""

from blocks.studio import (
    ContentStorage,
    ProviderCredentials,
    ProviderEndpoints,
    StudioDatabase,
    apply_registered_blocks,
)

__all__ = [
    "ContentStorage",
    "ProviderCredentials",
    "ProviderEndpoints",
    "StudioDatabase",
    "apply_registered_blocks",
]

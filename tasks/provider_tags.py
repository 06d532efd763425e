"""Prefect concurrency tags per provider, on the tasks that call one.

A task that calls Anthropic carries `provider:anthropic`, OpenAI `provider:openai`, R2
`provider:r2`, so an operator can cap each provider's task runs with Prefect's
tag-based concurrency limits (`prefect concurrency-limit create provider:openai 5`)
and filter them in the UI. A stand-in is not a provider: it gets no tag, and its task
skips the server round trip a tag costs on every run.
Image providers are capped inside the image task by global limits instead (the chain
picks the provider, so it is not known when the task starts); their names come from
the same `limit_name`, through each catalogue entry (`ProviderEntry.limit_name`).
"""

from __future__ import annotations

from studio.hooks.settings import HookSettings
from studio.moderation.settings import ModerationSettings
from studio.providers.entry import limit_name
from studio.storage.settings import StorageSettings


def hook_tags() -> list[str]:
    return [limit_name("anthropic")] if HookSettings().configured else []


def moderation_tags() -> list[str]:
    return [limit_name("openai")] if ModerationSettings().configured else []


def storage_tags() -> list[str]:
    return [limit_name("r2")] if StorageSettings().use_r2 else []

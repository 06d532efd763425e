"""Where each setting comes from when both the environment and saved blocks have one.

The rule (issue 15, "a key goes only where its own configuration points"):

- A keyed provider (Anthropic, OpenAI, Replicate, Modal) takes its base URL and its key
  from ONE source. If the environment (or `.env`) sets any of that provider's variables
  (`ANTHROPIC_BASE_URL` or `ANTHROPIC_API_KEY`, ...), the environment is the source of
  both and the provider's credentials block is ignored, with a warning that names the
  block and the variables (never a value). Otherwise the provider's credentials block,
  when saved, supplies both: its URL (the provider's official URL when left empty) and
  its key. So a block that changes a URL never receives a key from the environment, and
  an environment key never goes to a block's URL.
- The deprecated `Studio Provider Credentials` block (keys only) still works where that
  is safe: its Anthropic/OpenAI/Replicate key goes to that provider's official URL only,
  when neither the environment nor the provider's own block configures it. Its Modal
  tokens are not used (Modal has no official URL). The keyed URL fields of `Studio
  Provider Endpoints` are never used; a warning names the block and fields.
- Blocks holding other secrets (`Studio Content Storage`, `Studio Database`) are used
  whole or not at all: any of their variables set in the environment and the block is
  ignored. `Studio Provider Endpoints`' ComfyUI endpoint and provider order (no keys)
  are taken variable by variable, the environment winning each.

Blocks reach the settings as environment variables of this process (the settings and
the SDKs read those). What this module exported is remembered and replaced at the next
call, so a long-lived process (`serve`, tests) sees a block edited or deleted since, and
never mistakes its own exports for the operator's environment.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from dotenv import dotenv_values
from prefect.blocks.core import Block
from pydantic import ValidationError

from blocks.provider_credentials import PROVIDER_CREDENTIAL_BLOCKS, ProviderCredentialsBlock
from blocks.studio import (
    ALL_OR_NOTHING_BLOCKS,
    DEFAULT_BLOCK_NAME,
    PER_VARIABLE_BLOCKS,
    ProviderCredentials,
    ProviderEndpoints,
)

log = logging.getLogger("studio.blocks")

#: variable -> (its value before we exported, the value we exported)
_EXPORTED: dict[str, tuple[str | None, str]] = {}


def operator_environment(dotenv_path: str | Path = ".env") -> set[str]:
    """Names (upper case) of the variables the operator set: the process environment
    without our own exports, plus `.env`, which the settings read too. Empty means unset."""
    names = {
        k.upper()
        for k, v in os.environ.items()
        if v.strip() and not (k in _EXPORTED and _EXPORTED[k][1] == v)
    }
    path = Path(dotenv_path)
    if path.is_file():
        names |= {k.upper() for k, v in dotenv_values(path).items() if v and v.strip()}
    return names


def withdraw_block_exports() -> bool:
    """Undo what the last `apply_registered_blocks` exported; True when anything was."""
    withdrawn = bool(_EXPORTED)
    for variable, (previous, exported) in _EXPORTED.items():
        if os.environ.get(variable) == exported:
            if previous is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = previous
    _EXPORTED.clear()
    return withdrawn


def _swap_exports(desired: dict[str, str]) -> bool:
    """Make our exports exactly `desired`, touching only variables that change.

    Done without an `await`, and without unsetting a variable that stays exported, so a
    batch running beside this one in the same process (`serve`, an ephemeral fan-out)
    never reads a gap. Returns True when anything changed.
    """
    changed = False
    for variable, (previous, exported) in list(_EXPORTED.items()):
        if variable in desired:
            continue
        del _EXPORTED[variable]
        if os.environ.get(variable) == exported:
            changed = True
            if previous is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = previous
    for variable, value in desired.items():
        current = os.environ.get(variable)
        ours = variable in _EXPORTED and current == _EXPORTED[variable][1]
        previous = _EXPORTED[variable][0] if ours else current
        _EXPORTED[variable] = (previous, value)
        if current != value:
            os.environ[variable] = value
            changed = True
    return changed


def _label(block_type: type[Block], name: str) -> str:
    return f"{block_type.get_block_type_slug()}/{name}"


async def _saved_types(types: list[type[Block]], name: str) -> list[type[Block]]:
    """The types among `types` with a document called `name`, in one request.

    Why: a batch reads its blocks as it starts, and most studios save none or few. One
    filter request instead of one read per type (ten) takes nine round trips off every
    batch's start, and off the server's CPU while a wave of batches starts together
    (issue 20). Secrets stay out of this answer; the types found are then loaded as
    before. Any failure (an old server, a refused credential) loads every type, so each
    block still says for itself why it was not used.
    """
    from prefect.client.orchestration import get_client

    slugs = {t.get_block_type_slug(): t for t in types}
    body = {
        "block_documents": {"name": {"any_": [name]}, "is_anonymous": {"eq_": False}},
        "block_types": {"slug": {"any_": sorted(slugs)}},
        "include_secrets": False,
        "limit": len(slugs),
    }
    try:
        async with get_client() as client:
            response = await client.request("POST", "/block_documents/filter", json=body)
            response.raise_for_status()
            found = {(doc.get("block_type") or {}).get("slug") for doc in response.json()}
    except Exception as exc:
        log.debug("blocks: one-request lookup failed (%s), reading each", type(exc).__name__)
        return types
    return [t for slug, t in slugs.items() if slug in found]


async def _load(block_type: type[Block], name: str) -> Block | None:
    try:
        return await block_type.aload(name)
    except ValidationError:
        # a saved document that no longer validates (e.g. a URL that is not http(s)):
        # say which block, never its content (pydantic's message quotes the input)
        log.warning("Block %s not used: its saved values do not validate", _label(block_type, name))
        return None
    except ValueError as exc:  # not saved, or its type not registered: env alone is enough
        log.debug("block %s not used: %s", _label(block_type, name), type(exc).__name__)
        return None
    except Exception as exc:
        # e.g. the API refused this process's credential (401): say so, or a batch would
        # quietly run without the configuration an operator saved
        status = getattr(getattr(exc, "response", None), "status_code", None)
        log.warning(
            "Block %s could not be read: %s%s", _label(block_type, name),
            type(exc).__name__, f" (HTTP {status})" if status else "",
        )
        return None


def _keyed_provider(
    provider: str,
    block_type: type[ProviderCredentialsBlock],
    block: ProviderCredentialsBlock | None,
    legacy: ProviderCredentials | None,
    env: set[str],
    name: str,
) -> dict[str, str]:
    """The variables to export for one keyed provider: both its URL and key, or nothing."""
    legacy_keys = legacy.keys_for(provider) if legacy is not None else {}
    legacy_label = _label(ProviderCredentials, name)
    if block is not None:
        source, values = _label(block_type, name), block.environment()
    elif legacy_keys and block_type.default_url:
        source = legacy_label
        values = {block_type.url_variable: block_type.default_url, **legacy_keys}
    elif legacy_keys:
        log.warning(
            "Block %s: its %s keys are not used; the endpoint and its keys go together "
            "in a %s block (or both in the environment)",
            legacy_label, provider, block_type.get_block_type_slug(),
        )
        return {}
    else:
        return {}
    in_env = sorted(v for v in block_type.variables() if v in env)
    if in_env:
        log.warning(
            "Block %s not used for %s: the environment sets %s, so the environment "
            "supplies %s's URL and key together",
            source, provider, ", ".join(in_env), provider,
        )
        return {}
    if block is None:
        log.warning(
            "Block %s is deprecated: its %s key is sent to %s only; save a %s block "
            "to choose the URL",
            legacy_label, provider, block_type.default_url, block_type.get_block_type_slug(),
        )
    return values


def _warn_ignored_endpoints(endpoints: ProviderEndpoints, name: str) -> None:
    ignored = endpoints.ignored_set()
    if not ignored:
        return
    providers = [ProviderEndpoints.ignored_fields[f] for f in ignored]
    log.warning(
        "Block %s: %s no longer used; a provider's URL comes with its key, from a %s "
        "block or with the key in the environment",
        _label(ProviderEndpoints, name),
        ", ".join(ignored),
        " / ".join(PROVIDER_CREDENTIAL_BLOCKS[p].get_block_type_slug() for p in providers),
    )


async def apply_registered_blocks(name: str = DEFAULT_BLOCK_NAME) -> list[str]:
    """Export the saved studio blocks called `name` by the rules above.

    Returns the variable names it set (never their values). A block type that is not
    registered, or has no document of that name, is skipped: environment variables
    alone are a complete configuration.
    """
    types: list[type[Block]] = [
        *PROVIDER_CREDENTIAL_BLOCKS.values(),
        ProviderCredentials,
        *PER_VARIABLE_BLOCKS,
        *ALL_OR_NOTHING_BLOCKS,
    ]
    saved = await _saved_types(types, name)
    loaded: dict[type[Block], Block | None] = dict.fromkeys(types)
    loaded.update(zip(saved, await asyncio.gather(*(_load(t, name) for t in saved)), strict=True))
    env = operator_environment()  # after the last await: nothing changes it from here on
    desired: dict[str, str] = {}

    legacy = loaded[ProviderCredentials]
    for provider, block_type in PROVIDER_CREDENTIAL_BLOCKS.items():
        block = loaded[block_type]
        desired.update(_keyed_provider(provider, block_type, block, legacy, env, name))  # type: ignore[arg-type]

    for block_type in PER_VARIABLE_BLOCKS:
        block = loaded[block_type]
        if block is None:
            continue
        if isinstance(block, ProviderEndpoints):
            _warn_ignored_endpoints(block, name)
        desired.update({v: x for v, x in block.as_environment().items() if v not in env})

    for block_type in ALL_OR_NOTHING_BLOCKS:
        block = loaded[block_type]
        if block is None:
            continue
        values = block.as_environment()
        in_env = sorted(v for v in block_type._env.values() if v in env)
        if values and in_env:
            log.warning(
                "Block %s not used: the environment sets %s, and this block is used "
                "whole or not at all",
                _label(block_type, name), ", ".join(in_env),
            )
            continue
        desired.update(values)

    if _swap_exports(desired):
        from studio.settings import reload_settings

        reload_settings()
    applied = sorted(desired)
    if applied:
        log.info("Configuration from Prefect blocks %r: %s", name, ", ".join(applied))
    return applied

"""Which hook writer a batch uses: Claude when ANTHROPIC_API_KEY is set, templates otherwise.

The writer is built per call (the step runs one call per group of pieces), but its
circuit breaker is shared per API endpoint and model for the whole process, so the
spec's "stop trying after 5 consecutive failures" holds across the groups of a batch
and across batches until the breaker's reset time has passed. The template catalogue
sent as the cached prompt prefix is the whole library, identical for every batch.

The Claude writer (and with it the `anthropic` SDK, over a second to import) is imported
only when it is built: a batch on the template stand-in never pays for it.
"""

from __future__ import annotations

import logging

from studio.breaker import CircuitBreaker
from studio.hooks.base import HookWriter
from studio.hooks.settings import HookSettings
from studio.hooks.template_writer import TemplateHookWriter
from studio.ledger.calls import HookCallLedger

logger = logging.getLogger("studio.hooks")

_BREAKERS: dict[tuple[str | None, str], CircuitBreaker] = {}
_ANNOUNCED: set[str] = set()


def shared_breaker(settings: HookSettings) -> CircuitBreaker:
    key = (settings.anthropic_base_url, settings.model)
    if key not in _BREAKERS:
        _BREAKERS[key] = CircuitBreaker(settings.breaker_threshold, settings.breaker_reset_seconds)
    return _BREAKERS[key]


def reset_breakers() -> None:
    _BREAKERS.clear()


def library_catalog() -> dict[str, str]:
    """Template id -> description for the cached prefix; empty when the library is absent."""
    try:
        from studio.catalog import template_library

        return {
            t.id: f"{t.niche}/{t.category}: {t.description}"
            for t in template_library().all_templates()
        }
    except Exception as exc:  # no database yet: the batch's own templates are used
        logger.debug("Template catalogue unavailable for hooks | Error: %s", type(exc).__name__)
        return {}


def _announce(message: str) -> None:
    if message not in _ANNOUNCED:
        _ANNOUNCED.add(message)
        logger.info(message)


def build_hook_writer(
    settings: HookSettings | None = None,
    *,
    use_message_batches: bool = False,
    time_budget_seconds: float | None = None,
) -> HookWriter:
    """`use_message_batches`: send every group of the call as one Message Batch within
    `time_budget_seconds` (ignored by the template stand-in, which calls nothing)."""
    settings = settings or HookSettings()
    if not settings.configured:
        _announce("Hook writer | Using: template stand-in (ANTHROPIC_API_KEY not set)")
        return TemplateHookWriter()
    _announce(f"Hook writer | Using: anthropic | Model: {settings.model}")
    from studio.hooks.anthropic_writer import AnthropicHookWriter

    return AnthropicHookWriter(
        settings,
        catalog=library_catalog(),
        breaker=shared_breaker(settings),
        use_message_batches=use_message_batches,
        time_budget_seconds=time_budget_seconds,
        ledger=HookCallLedger(),  # every call recorded and budgeted (studio/ledger)
    )


def hook_writer_status(settings: HookSettings | None = None) -> dict[str, object]:
    settings = settings or HookSettings()
    if not settings.configured:
        return {"writer": "template", "stand_in": True}
    breaker = shared_breaker(settings)
    return {
        "writer": "anthropic",
        "stand_in": False,
        "model": settings.model,
        "breaker_open": breaker.is_open,
        "consecutive_failures": breaker.consecutive_failures,
    }

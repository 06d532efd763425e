"""Hooks from Claude through the official `anthropic` client, 10 pieces a call.

Why it looks like this (spec: "Hook Generation Batching", "Template Reuse", Common
Issue 3):
- one Messages call per group of HOOK_BATCH_SIZE pieces, so 50 pieces are 5 calls;
- the instructions and template catalogue form a prefix marked for prompt caching; the
  first group is sent alone so that the others find the prefix cached, then the rest
  go out concurrently (HOOK_MAX_CONCURRENT);
- transient errors are retried with backoff honouring retry-after; a call that still
  fails counts towards a circuit breaker, which after 5 consecutive failures stops
  calling; the pieces of a failed group, and any piece whose hook is missing or
  unusable in an answer, get a template hook marked `source="template"`;
- the cost is priced from the usage each response reports, and every call is written to
  the cost ledger (`ledger`, studio/ledger/calls.py): reserved at an upper estimate
  before it is made (a budget may refuse it: that group gets template hooks, which are
  free) and settled at the reported usage's price;
- with `use_message_batches` (a scheduled batch's hook_mode, see `modes.py`), all the
  groups go out as ONE Message Batch (half price); the groups it does not finish within
  the time budget go out as direct calls (see `message_batches.py`).
The API key goes to the client only, pinned to the base URL's origin (a redirect elsewhere
is refused: studio/providers/same_origin.py): it is never logged, and errors are reported by
their type name and HTTP status, never with their message (which may echo a request).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from anthropic import AsyncAnthropic, DefaultAsyncHttpxClient

from studio.breaker import CircuitBreaker
from studio.hooks.fallback import template_hook
from studio.hooks.message_batches import run_message_batch
from studio.hooks.parsing import parse_hooks
from studio.hooks.platforms import fit
from studio.hooks.pricing import TokenUsage, usage_cost
from studio.hooks.prompt import catalogue_text, message_params
from studio.hooks.retrying import call_with_retries, status_of
from studio.hooks.settings import HookSettings
from studio.ledger.calls import CallCharge, HookCallLedger
from studio.ledger.jobs import BudgetRefused
from studio.ledger.pricing import hook_call_estimate
from studio.providers import pace
from studio.providers.same_origin import pin_origin
from studio.types import AvatarRef, Hook, HookBatch, PieceSpec, Platform

logger = logging.getLogger("studio.hooks")


#: stop reasons of an answer that ended before the model finished writing
CUT_SHORT = frozenset({"max_tokens", "model_context_window_exceeded", "pause_turn"})


def describe_error(exc: BaseException) -> str:
    """Type name, status, the API's error type and request id; never the SDK's message.

    SDK messages can quote request bodies or headers; the error body's `error.type`
    (e.g. overloaded_error) and the `request-id` header are what support asks for.
    """
    status = status_of(exc)
    if not status:
        return type(exc).__name__
    parts = []
    body = getattr(exc, "body", None)
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("type"), str):
        parts.append(error["type"])
    request_id = getattr(exc, "request_id", None)
    if isinstance(request_id, str) and request_id:
        parts.append(f"request {request_id}")
    extra = f" [{', '.join(parts)}]" if parts else ""
    return f"{type(exc).__name__} (HTTP {status}){extra}"


def response_text(message: Any) -> str:
    return "".join(
        getattr(block, "text", "") for block in getattr(message, "content", []) or []
    )


@dataclass
class GroupResult:
    """One group's hooks from the model (missing pieces are filled by the caller)."""

    texts: dict[str, str] = field(default_factory=dict)
    usage: TokenUsage = field(default_factory=TokenUsage)
    calls: int = 0
    error: str | None = None
    repaired: bool = False


class AnthropicHookWriter:
    name = "anthropic"
    stand_in = False

    def __init__(
        self,
        settings: HookSettings,
        *,
        catalog: Mapping[str, str] | None = None,
        use_message_batches: bool = False,
        time_budget_seconds: float | None = None,
        breaker: CircuitBreaker | None = None,
        ledger: HookCallLedger | None = None,
    ) -> None:
        if not settings.configured:
            raise ValueError("AnthropicHookWriter needs ANTHROPIC_API_KEY")
        self.settings = settings
        self.catalog = dict(catalog or {})
        self.use_message_batches = use_message_batches
        self.time_budget_seconds = (
            settings.message_batch_budget_seconds
            if time_budget_seconds is None
            else time_budget_seconds
        )
        self.breaker = breaker or CircuitBreaker(
            settings.breaker_threshold, settings.breaker_reset_seconds
        )
        #: where each call is reserved and settled (None: not recorded, e.g. a tool)
        self.ledger = ledger
        self._owner: tuple[str | None, str] = (None, "")  # (batch id, avatar id) of write()

    async def reserve_charge(
        self, specs: Sequence[PieceSpec], params: Sequence[dict[str, Any]], discount: float = 1.0
    ) -> CallCharge | None:
        """Reserve the calls' estimate in the ledger; raises BudgetRefused over budget."""
        if self.ledger is None:
            return None
        estimate = sum(hook_call_estimate(p, self.settings, discount) for p in params)
        batch_id, avatar_id = self._owner
        return await self.ledger.reserve(
            [s.piece_id for s in specs], batch_id or specs[0].batch_id, avatar_id, estimate
        )

    def _client(self) -> AsyncAnthropic:
        key = self.settings.anthropic_api_key
        assert key is not None
        base_url = self.settings.api_base_url
        fleet = pace.event_hooks("anthropic")
        return AsyncAnthropic(
            api_key=key.get_secret_value(),
            base_url=base_url,
            max_retries=0,
            timeout=self.settings.timeout_seconds,
            # the SDK follows redirects; the key (and the prompts) go to this origin only
            # (and throttling, 429/529, is reported to the fleet, which paces the calls)
            http_client=DefaultAsyncHttpxClient(
                event_hooks={
                    "request": [pin_origin(base_url), *fleet["request"]],
                    "response": fleet["response"],
                }
            ),
        )

    def _groups(self, specs: Sequence[PieceSpec]) -> list[list[PieceSpec]]:
        size = self.settings.batch_size
        return [list(specs[i : i + size]) for i in range(0, len(specs), size)]

    def _params(
        self, group: Sequence[PieceSpec], avatar: AvatarRef, platform: Platform, catalogue: str
    ) -> dict[str, Any]:
        return message_params(
            group, avatar, platform,
            catalogue=catalogue,
            model=self.settings.model,
            max_output_tokens=self.settings.max_output_tokens,
            prompt_max_tokens=self.settings.prompt_max_tokens,
            structured=self.settings.structured_output,
        )

    def read_message(
        self, message: Any, group: Sequence[PieceSpec], *, discount: float = 1.0
    ) -> GroupResult:
        """The group's hooks from one answer, as its stop_reason allows.

        A refusal's text is never used (it may hold a partial answer the model
        withdrew): every piece gets its template hook with the reason logged. An answer
        cut short (max_tokens, a full context window, a paused turn) keeps the hooks
        that survive repair; the rest fall back per piece. The tokens are billed either way.
        """
        usage = usage_cost(message.usage, self.settings, discount=discount)
        stop_reason = getattr(message, "stop_reason", None)
        if stop_reason == "refusal":
            return GroupResult(usage=usage, error="Refusal (stop_reason refusal)")
        parsed = parse_hooks(response_text(message), [s.piece_id for s in group])
        if stop_reason in CUT_SHORT:
            logger.warning(
                "Hook generation cut short | Stop reason: %s | Written: %d/%d | "
                "Fallback: template",
                stop_reason, len(parsed.texts), len(group),
            )
        return GroupResult(texts=parsed.texts, usage=usage, repaired=parsed.repaired)

    async def _call_group(
        self, client: AsyncAnthropic, group: Sequence[PieceSpec], params: dict[str, Any]
    ) -> GroupResult:
        if not self.breaker.allow():
            return GroupResult(error="CircuitOpen")
        try:
            charge = await self.reserve_charge(group, [params])
        except BudgetRefused:
            self.breaker.release_trial()  # not a call
            return GroupResult(error="budget")
        attempts = 0

        async def attempt() -> Any:
            nonlocal attempts
            attempts += 1
            return await client.messages.create(**params)

        def on_retry(exc: BaseException, number: int) -> None:
            logger.info(
                "Hook generation retry | Error: %s | Attempt: %d | Pieces: %d",
                describe_error(exc), number, len(group),
            )

        try:
            message = await call_with_retries(
                attempt,
                retries=self.settings.max_retries,
                backoff_base=self.settings.backoff_base_seconds,
                backoff_max=self.settings.backoff_max_seconds,
                on_retry=on_retry,
            )
        except Exception as exc:  # any SDK or transport failure falls back per group
            self.breaker.record_failure()
            if charge is not None:
                await charge.failed()
            return GroupResult(calls=attempts, error=describe_error(exc))
        self.breaker.record_success()
        result = self.read_message(message, group)
        result.calls = attempts
        if charge is not None:  # billed as answered, whether or not its hooks parse
            charge.created(getattr(message, "id", None))
            await charge.billed(result.usage.cost_usd)
        return result

    async def _direct(
        self,
        client: AsyncAnthropic,
        groups: list[list[PieceSpec]],
        params: list[dict[str, Any]],
    ) -> list[GroupResult]:
        if not groups:
            return []
        # the first call alone writes the cache, so the others read it
        first = await self._call_group(client, groups[0], params[0])
        gate = asyncio.Semaphore(self.settings.max_concurrent)

        async def bounded(index: int) -> GroupResult:
            async with gate:
                return await self._call_group(client, groups[index], params[index])

        rest = await asyncio.gather(*(bounded(i) for i in range(1, len(groups))))
        return [first, *rest]

    async def write(
        self, specs: list[PieceSpec], avatar: AvatarRef, platform: Platform
    ) -> HookBatch:
        started = time.monotonic()
        platform = Platform(platform)
        self._owner = (specs[0].batch_id if specs else None, avatar.id)
        groups = self._groups(specs)
        catalogue = catalogue_text(specs, self.catalog)
        params = [self._params(group, avatar, platform, catalogue) for group in groups]
        results: list[GroupResult | None] = [None] * len(groups)
        batch_calls = 0
        async with self._client() as client:
            if self.use_message_batches and groups:
                outcome = await run_message_batch(
                    client, self, groups, params, budget_seconds=self.time_budget_seconds
                )
                batch_calls = outcome.calls
                for index, result in outcome.results.items():
                    results[index] = result
            pending = [i for i, result in enumerate(results) if result is None]
            direct = await self._direct(
                client, [groups[i] for i in pending], [params[i] for i in pending]
            )
            for index, result in zip(pending, direct, strict=True):
                results[index] = result
        return self._assemble(specs, groups, results, avatar, platform, batch_calls, started)

    def _assemble(
        self,
        specs: list[PieceSpec],
        groups: list[list[PieceSpec]],
        results: list[GroupResult | None],
        avatar: AvatarRef,
        platform: Platform,
        extra_calls: int,
        started: float,
    ) -> HookBatch:
        batch = HookBatch(calls=extra_calls)
        usage = TokenUsage()
        for group, result in zip(groups, results, strict=True):
            result = result or GroupResult(error="NoResult")
            usage.add(result.usage)
            batch.calls += result.calls
            if result.error:
                logger.warning(
                    "Hook generation failed | Error: %s | Pieces: %d | Fallback: template",
                    result.error, len(group),
                )
            for spec in group:
                text = result.texts.get(spec.piece_id)
                if text:
                    batch.hooks[spec.piece_id] = Hook(
                        piece_id=spec.piece_id, text=fit(text, platform), source="claude"
                    )
                else:
                    batch.hooks[spec.piece_id] = template_hook(spec, avatar, platform)
                    batch.failures += 1
            missing = [s.piece_id for s in group if s.piece_id not in result.texts]
            if not result.error and missing:
                logger.warning(
                    "Hook generation incomplete | Error: MissingHooks | Pieces: %d | "
                    "Fallback: template",
                    len(missing),
                )
        batch.cost_usd = usage.cost_usd
        batch.tokens = {
            "input": usage.input_tokens,
            "output": usage.output_tokens,
            "cache_write": usage.cache_write_tokens,
            "cache_read": usage.cache_read_tokens,
        }
        success = len(specs) - batch.failures
        # per call of the step; the flow logs the batch's `Hook generation summary`
        logger.info(
            "Hook writer result | Written: %d/%d | Fallback: %d | Calls: %d | "
            "Tokens in: %d, out: %d, cache write: %d, cache read: %d | Cost: $%.4f | "
            "Duration: %.2fs",
            success, len(specs), batch.failures, batch.calls,
            usage.input_tokens, usage.output_tokens, usage.cache_write_tokens,
            usage.cache_read_tokens, usage.cost_usd, time.monotonic() - started,
        )
        return batch

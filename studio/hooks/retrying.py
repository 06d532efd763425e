"""Retrying calls to the hosted APIs: exponential backoff that honours retry-after.

Both official SDKs (anthropic, openai) raise errors carrying the HTTP status and the
response, so one policy serves the hook writer and the moderator. The SDKs' own retry
loops are turned off (max_retries=0) so that this policy, and the circuit breaker
around it, see every attempt and the backoff is configured in one place.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

T = TypeVar("T")

RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})


def status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def is_transient(exc: BaseException) -> bool:
    """Rate limits, overloads, 5xx, timeouts and dropped connections are worth a retry.

    Connection and timeout errors of both SDKs carry no status but a `request`; a 4xx
    such as 400/401/403 would fail the same way again, so it is not retried.
    """
    if getattr(exc, "transient", False):  # e.g. a well-formed answer of the wrong size
        return True
    status = status_of(exc)
    if status is not None:
        return status in RETRYABLE_STATUSES or status >= 500
    name = type(exc).__name__
    return name in {"APIConnectionError", "APITimeoutError"} or isinstance(
        exc, (TimeoutError, ConnectionError)
    )


def retry_after_seconds(exc: BaseException) -> float | None:
    """The server's requested wait, from `retry-after-ms` or `retry-after` (seconds/date)."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


class BackoffHonouringRetryAfter:
    """tenacity wait: the server's retry-after when given (capped), else jittered backoff."""

    def __init__(self, base: float, cap: float) -> None:
        self.cap = cap
        self._exponential = wait_exponential_jitter(initial=base, max=cap, jitter=base)

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hinted = retry_after_seconds(exc) if exc is not None else None
        if hinted is not None:
            return min(hinted, self.cap)
        return self._exponential(state)


async def call_with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    retries: int,
    backoff_base: float,
    backoff_max: float,
    on_retry: Callable[[BaseException, int], Any] | None = None,
) -> T:
    """Run `call` with up to `retries` retries of transient errors; re-raise the last."""

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            exc = state.outcome.exception()
            if exc is not None:
                on_retry(exc, state.attempt_number)

    retrying = AsyncRetrying(
        stop=stop_after_attempt(retries + 1),
        wait=BackoffHonouringRetryAfter(backoff_base, backoff_max),
        retry=retry_if_exception(is_transient),
        before_sleep=before_sleep,
        reraise=True,
    )
    async def attempt() -> T:
        # awaited here, so lambdas returning coroutines work too
        return await call()

    return await retrying(attempt)

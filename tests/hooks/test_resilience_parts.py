"""The breaker and the retry-after policy on their own (no timing involved)."""

from __future__ import annotations

import httpx2
import pytest
from anthropic import AuthenticationError, RateLimitError
from tenacity import RetryCallState

from studio.breaker import CircuitBreaker
from studio.hooks.retrying import BackoffHonouringRetryAfter, is_transient, retry_after_seconds


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_threshold_and_half_opens_after_reset():
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=5, recovery_seconds=60, clock=clock)
    for _ in range(4):
        breaker.record_failure()
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.is_open and not breaker.allow()
    clock.now = 61
    assert breaker.allow()  # one trial
    assert not breaker.allow()  # only one
    breaker.record_success()
    assert not breaker.is_open and breaker.allow()


def test_a_success_resets_the_count():
    breaker = CircuitBreaker(failure_threshold=2)
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert not breaker.is_open


def _error(cls, status: int, headers: dict[str, str]):
    request = httpx2.Request("POST", "http://127.0.0.1/v1/messages")
    response = httpx2.Response(status, headers=headers, request=request)
    return cls("boom", response=response, body=None)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [({"retry-after": "7"}, 7.0), ({"retry-after-ms": "250"}, 0.25), ({}, None)],
)
def test_retry_after_is_read_from_the_response(headers, expected):
    assert retry_after_seconds(_error(RateLimitError, 429, headers)) == expected


def test_wait_prefers_retry_after_capped_else_backoff():
    wait = BackoffHonouringRetryAfter(base=0.5, cap=10)

    def state_with(exc: BaseException) -> RetryCallState:
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.set_exception((type(exc), exc, None))
        return state

    assert wait(state_with(_error(RateLimitError, 429, {"retry-after": "3"}))) == 3
    assert wait(state_with(_error(RateLimitError, 429, {"retry-after": "120"}))) == 10
    assert 0 <= wait(state_with(_error(RateLimitError, 429, {}))) <= 10


def test_only_transient_errors_are_retried():
    assert is_transient(_error(RateLimitError, 429, {}))
    assert not is_transient(_error(AuthenticationError, 401, {}))
    assert not is_transient(ValueError("x"))

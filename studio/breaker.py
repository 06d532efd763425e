"""The circuit breaker (spec: "Circuit Breaker Pattern", Common Issue 3), one per
image provider and one for the hook API.

After `failure_threshold` consecutive failures the circuit opens and the chain skips
the provider at once instead of spending a timeout on it; after `recovery_seconds` it
half-opens and lets exactly one trial call through: success closes it, failure opens
it for another period. The clock is injectable so tests need no sleeping.

State is per process: every worker learns a provider's health on its own, which costs
at most `failure_threshold` failed calls per process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int = 5,
        recovery_seconds: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.recovery_seconds = recovery_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False

    @property
    def is_open(self) -> bool:
        """Open or half-open: the last `failure_threshold` calls failed."""
        return self.state is not BreakerState.CLOSED

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state()

    def _state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self.recovery_seconds:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def would_allow(self) -> bool:
        """A peek that reserves nothing: used to skip a provider before waiting for a slot."""
        with self._lock:
            state = self._state()
            return state is BreakerState.CLOSED or (
                state is BreakerState.HALF_OPEN and not self._trial_in_flight
            )

    def allow(self) -> bool:
        """True when a call may go through; in half-open state, reserves the single trial."""
        with self._lock:
            state = self._state()
            if state is BreakerState.CLOSED:
                return True
            if state is BreakerState.HALF_OPEN and not self._trial_in_flight:
                self._trial_in_flight = True
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._trial_in_flight = False

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._trial_in_flight or self._failures >= self.failure_threshold:
                self._opened_at = self._clock()
            self._trial_in_flight = False

    def release_trial(self) -> None:
        """A reserved trial that never reached the provider (cancelled) gives its turn back."""
        with self._lock:
            self._trial_in_flight = False

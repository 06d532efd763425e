"""A consecutive-failure circuit breaker for the hook API (spec: Common Issue 3).

After `threshold` calls in a row have failed (each after its retries), the writer stops
calling for `reset_seconds` and writes template hooks instead; then one trial call is
let through (half-open) and a success closes the breaker again. It is per writer, and a
writer lives for one batch, so an outage costs at most `threshold` failed calls a batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class CircuitBreaker:
    def __init__(
        self,
        threshold: int = 5,
        reset_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.reset_seconds = reset_seconds
        self._clock = clock
        self.consecutive_failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def allow(self) -> bool:
        """Whether a call may go out now; in half-open state, only one trial call."""
        if self._opened_at is None:
            return True
        if self._trial_in_flight or self._clock() - self._opened_at < self.reset_seconds:
            return False
        self._trial_in_flight = True
        return True

    def record_success(self) -> None:
        self.consecutive_failures = 0
        self._opened_at = None
        self._trial_in_flight = False

    def record_failure(self) -> None:
        self.consecutive_failures += 1
        self._trial_in_flight = False
        if self.consecutive_failures >= self.threshold:
            self._opened_at = self._clock()

"""A provider's hidden true capacity: how many jobs it accepts in flight, and what it saw.

Why: a provider's real capacity moves (Replicate throttles an account with 429 and
Retry-After, a Modal endpoint answers 429/503 when its containers are full), and the
fleet's adaptive limits (issue 20) must follow it without being told. The Replicate and
Modal emulators hold one `Capacity`: above `limit` jobs in flight a job-starting request
is refused with `status` and `Retry-After: retry_after`. `limit` can be changed at any
time (a plain assignment from any thread) or follow a `schedule` of (seconds, limit)
steps. What the provider saw is kept for a bench: accepted jobs, refusals, the peak in
flight and a timeline of (time.monotonic(), in flight) at every change, so a bench can
say when the fleet followed a change of the capacity.

The emulator's handler calls `admit()` and, when it returns True, `leave()` once the job
ended; both run on the emulator's event loop with no await between the check and the
count, so the limit is exact. The lock is for readers in other threads (the bench).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable


class Capacity:
    """How many jobs a provider accepts at once (None: no limit), and what it saw."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._limit: int | None = None
        self._schedule: list[tuple[float, int | None]] = []  # (monotonic start, limit)
        #: answer to a job above the limit: 429 (rate limited) or 503 (overloaded)
        self.status = 429
        #: seconds sent in the refusal's Retry-After header (None: no header)
        self.retry_after: float | None = 1.0
        self._in_flight = 0
        self._peak = 0
        self._accepted = 0
        self._refused = 0
        #: (time.monotonic(), jobs in flight) after each change of the count
        self.timeline: list[tuple[float, int]] = []
        #: time.monotonic() of each refusal (where in a run the throttling was)
        self.refused_at: list[float] = []
        #: (time.monotonic(), limit) each time the limit was set or a scheduled step began
        self.changes: list[tuple[float, int | None]] = []

    # -- the hidden limit ----------------------------------------------------------------
    @property
    def limit(self) -> int | None:
        """The limit in force now (the schedule's current step when one is set)."""
        with self._lock:
            return self._limit_at(time.monotonic())

    @limit.setter
    def limit(self, value: int | None) -> None:
        if value is not None and value < 0:
            raise ValueError(f"capacity: limit must be >= 0 or None, got {value}")
        now = time.monotonic()
        with self._lock:
            self._schedule = []  # a hand-set limit replaces any schedule
            self._limit = value
            self.changes.append((now, value))

    def schedule(self, steps: Iterable[tuple[float, int | None]]) -> list[float]:
        """Follow `steps` [(seconds, limit), ...] from now; after the last step its limit
        stays. Returns the monotonic time each step begins."""
        start = time.monotonic()
        planned: list[tuple[float, int | None]] = []
        at = start
        for seconds, value in steps:
            if seconds < 0 or (value is not None and value < 0):
                raise ValueError(f"capacity: bad schedule step ({seconds}, {value})")
            planned.append((at, value))
            at += seconds
        with self._lock:
            self._schedule = planned
            if planned:
                self._limit = planned[-1][1]
            self.changes.extend(planned)
        return [begin for begin, _ in planned]

    def _limit_at(self, now: float) -> int | None:
        for begin, value in reversed(self._schedule):
            if now >= begin:
                return value
        return self._limit

    # -- the emulator's side -------------------------------------------------------------
    def admit(self) -> bool:
        """Count one job in flight if the limit allows it; False: refuse it."""
        now = time.monotonic()
        with self._lock:
            limit = self._limit_at(now)
            if limit is not None and self._in_flight >= limit:
                self._refused += 1
                self.refused_at.append(now)
                return False
            self._in_flight += 1
            self._accepted += 1
            self._peak = max(self._peak, self._in_flight)
            self.timeline.append((now, self._in_flight))
            return True

    def leave(self) -> None:
        """One admitted job ended (succeeded, failed or canceled)."""
        now = time.monotonic()
        with self._lock:
            self._in_flight -= 1
            self.timeline.append((now, self._in_flight))

    def retry_after_header(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": f"{self.retry_after:g}"}

    # -- what it saw ---------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    @property
    def peak(self) -> int:
        """The most jobs in flight at once since the start (or the last `reset_peak`)."""
        with self._lock:
            return self._peak

    @property
    def accepted(self) -> int:
        """Job-starting requests accepted (jobs admitted)."""
        with self._lock:
            return self._accepted

    @property
    def refused(self) -> int:
        """Job-starting requests refused for being above the limit."""
        with self._lock:
            return self._refused

    def reset_peak(self) -> None:
        with self._lock:
            self._peak = self._in_flight

    def snapshot(self) -> dict[str, int | None]:
        """Counts read together (a bench takes one at each end of a window)."""
        with self._lock:
            return {
                "limit": self._limit_at(time.monotonic()), "in_flight": self._in_flight,
                "peak": self._peak, "accepted": self._accepted, "refused": self._refused,
                "timeline": len(self.timeline),
            }


class CapacitySwitches:
    """The capacity switches of an emulator holding a `Capacity` as `flight`."""

    flight: Capacity

    @property
    def capacity(self) -> int | None:
        """Jobs accepted in flight at once (None: no limit); settable at any time."""
        return self.flight.limit

    @capacity.setter
    def capacity(self, value: int | None) -> None:
        self.flight.limit = value

    @property
    def capacity_status(self) -> int:
        """What a job-starting request above the capacity answers: 429 (default) or 503."""
        return self.flight.status

    @capacity_status.setter
    def capacity_status(self, value: int) -> None:
        self.flight.status = value

    @property
    def capacity_retry_after(self) -> float | None:
        """Seconds in that answer's Retry-After (default 1; None: no header)."""
        return self.flight.retry_after

    @capacity_retry_after.setter
    def capacity_retry_after(self, value: float | None) -> None:
        self.flight.retry_after = value

    def capacity_schedule(self, steps: list[tuple[float, int | None]]) -> list[float]:
        """The capacity follows [(seconds, C), ...] from now; returns each step's start."""
        return self.flight.schedule(steps)

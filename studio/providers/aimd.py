"""The AIMD decision on one provider's fleet-wide limit: pure, no I/O.

Why a pure function: the same decision runs in every process of every host against the
one `provider_pace` row (studio/db/provider_pace.py locks it, engine/provider_pace.py
tells Prefect), and its rules are what keep a limit inside its bounds, so they are
tested here alone, with the clock passed in.

The rules (knobs in studio/providers/pace_settings.py):

- a throttling answer (429, 529, 503 with Retry-After) lowers the limit multiplicatively,
  `max(1, floor(min(current, in_flight) * factor))` and at least 1 lower, once per
  throttling event. A throttled call sent before the last decrease was in force
  (`IN_FORCE_SECONDS` after it) is the same event and lowers nothing (TCP NewReno's
  recovery point, RFC 6582: one decrease per window of calls); a call sent after it and
  still throttled says the lowered limit is still too high, a new event at once. When the
  answer does not say when its call was sent, the cooldown (`cooldown_seconds` after the
  decrease) stands in. `in_flight` is the number of the limit's slots in use when the
  decision is taken (TCP's "flight size", RFC 5681 section 3.1): a fleet using 12 slots of
  a limit of 20 is throttled at 12, and 20 x 0.75 = 15 would bind nothing, so every call
  started until two more events had passed was a wasted round trip into a full provider
  (the same load, not the limit, is the throttle point the raises below probe carefully);
- a raise is a probe until it has held its own quiet window: a call let in under it and
  throttled steps back to the limit that held, one lower, instead of a decrease: the
  capacity did not move, the probe only found it (the raise back to the limit where the
  provider last throttled, after a whole probe window one below it, and every step of a
  climb alike). Should it have moved, the next throttled call sent after the step back
  is a new event; a limit that held its window is throttled by a capacity that fell;
- every throttling answer with a Retry-After pushes the fleet-wide `throttled_until` out
  (never back), to its end counted from when the answer arrived, whether or not the
  limit changes, and starts the quiet window again;
- an accepted job raises the limit by 1 when nothing throttled for the quiet window
  (`raise_after_seconds`) since the last throttling answer and the last change, no
  Retry-After is in force, and the fleet uses every slot of the limit (TCP's validated
  window, RFC 7661: a quiet limit the fleet does not fill says nothing of the provider's
  capacity, and a probe whose extra call was refused at once, its slot given back, had
  looked quiet for a whole window to a fleet that then raised past it); the raise that
  reaches the limit at which the provider last throttled (a probe) waits
  `probe_after_seconds` instead; the raise past that limit (the probe held a quiet window
  with every slot in use) forgets the old throttle point;
- a raise counts only a success of a call let in under the limit in force (sent after
  its last change): right after a decrease the fleet still runs the calls the old limit
  let in, and their successes, a window later, raised a limit no call had yet run under
  (8 -> 6 -> 7 at a capacity of 3, an event more to come down);
- a limit that held `probe_after_seconds` with no throttling answer is the held limit;
  a new throttling event on a limit raised past it (a climb, not a probe's step back)
  lowers it to no less than the held limit: the climb found the capacity, it did not
  fall (slots held count calls not yet or no longer at the provider, so a limit climbs
  a step or two past the capacity before one is refused: 15 -> 8 at a capacity of 12,
  then 16 s back up). A throttle on the held limit itself is the capacity falling;
- past the last throttle point the provider's capacity is not known: each raise doubles
  the one before (TCP's slow start: +1, +2, +4, ...; 3 -> 12 in four windows instead of
  nine, each window a second and a half of calls at a capacity that had grown), and a
  call refused under such a raise steps back the whole raise, to the limit that held, the
  refused limit becoming the throttle point (additive from there: the capacity is
  between the two). Below a known throttle point every raise is +1;
- never above `min(ceiling, manual_cap)` (the configured `*_MAX_CONCURRENT` and the cap
  an operator set by hand), never below 1;
- `adaptive=False`: the limit never changes, Retry-After is still honoured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

from studio.providers.pace_settings import PaceSettings

#: how long after a decrease is decided a call may still have been sent at the old limit:
#: the change reaches Prefect in a round trip or two, and every process's slot pool reads
#: the limit in force at least twice a second (engine/provider_pace.py FLEET_CACHE_SECONDS)
IN_FORCE_SECONDS = 0.5


@dataclass(frozen=True)
class Knobs:
    adaptive: bool = True
    decrease_factor: float = 0.75
    cooldown_seconds: float = 2.0
    raise_after_seconds: float = 1.0
    probe_after_seconds: float = 10.0

    @classmethod
    def from_settings(cls, settings: PaceSettings) -> Knobs:
        return cls(
            adaptive=settings.adaptive,
            decrease_factor=settings.decrease_factor,
            cooldown_seconds=settings.cooldown_seconds,
            raise_after_seconds=settings.raise_after_seconds,
            probe_after_seconds=settings.probe_after_seconds,
        )


@dataclass(frozen=True)
class PaceState:
    """What the decision reads and writes of one provider's `provider_pace` row.

    `current` and `ceiling` None: there is no limit to adjust (a provider without a
    `provider:<name>` limit, such as Anthropic): only the fleet-wide Retry-After applies.
    `current` None with a ceiling: a limit whose value is not known now (a change on its
    way to Prefect): nothing is decided on it, and a throttle is that change's event."""

    current: int | None
    ceiling: int | None
    manual_cap: int | None = None
    last_throttle_limit: int | None = None
    last_throttle_at: datetime | None = None
    last_decrease_at: datetime | None = None
    last_change_at: datetime | None = None
    last_success_at: datetime | None = None
    throttled_until: datetime | None = None
    #: the highest limit that has held `probe_after_seconds` without a throttling answer,
    #: lowered with every decrease to the limit decreased to (a climb's throttle steps
    #: back no lower than this)
    held_limit: int | None = None
    #: how much the last raise added (None: the last change was not a raise)
    raise_step: int | None = None

    @property
    def cap(self) -> int | None:
        """The highest limit a raise may reach (None: no bound known, so no raise)."""
        bounds = [b for b in (self.ceiling, self.manual_cap) if b is not None]
        return min(bounds) if bounds else None


@dataclass(frozen=True)
class Throttled:
    status: int
    retry_after: float | None = None
    #: when the throttled call was sent (None: not known, the cooldown decides the event)
    sent_at: datetime | None = None
    #: when the answer arrived (None: at the decision): what its Retry-After counts from
    answered_at: datetime | None = None


@dataclass(frozen=True)
class Succeeded:
    #: when the accepted call was let in (None: not known, any success counts)
    sent_at: datetime | None = None


Event = Throttled | Succeeded


@dataclass(frozen=True)
class Decision:
    """The next state, and the limit change to put on Prefect (None: the limit stays)."""

    state: PaceState
    to_limit: int | None = None
    reason: Literal["throttled", "recovered"] | None = None
    #: a throttling answer that opened a new throttling event (not one inside a cooldown)
    new_event: bool = False


def _in_use(current: int, in_flight: int | None) -> int:
    """The load the provider throttled at: the slots in use, when known and lower. None
    slots in use says nothing (the throttled call held none of the fleet's: a provider
    without slots, or a call that already gave its slot back): the limit, then."""
    return min(current, in_flight) if in_flight else current


def decreased(current: int, factor: float, in_flight: int | None = None) -> int:
    """`max(1, floor(min(current, in_flight) * factor))`, and at least 1 lower than
    `current` (5 -> 3; 20 with 12 in use -> 9)."""
    return max(1, min(current - 1, math.floor(_in_use(current, in_flight) * factor)))


def cooldown_end(state: PaceState, knobs: Knobs) -> datetime | None:
    """Until when throttling answers belong to the last decrease's event.

    Only the cooldown, not the fleet's Retry-After: while a Retry-After holds, no call
    starts, so the answers inside it come from calls sent before it (the same event);
    the calls that start once it has passed and are throttled again are a new event.
    Counting the Retry-After in, every throttled re-send pushed it out and a provider
    that kept throttling was taken for one endless event (the limit never went lower)."""
    if state.last_decrease_at is None:
        return None
    return state.last_decrease_at + timedelta(seconds=knobs.cooldown_seconds)


def raise_window(state: PaceState, knobs: Knobs) -> float:
    """The quiet window before the next +1: longer for the raise that reaches the last
    throttle point. Once there, a plain window confirms it: a provider at its capacity
    throttles the first extra call within a fraction of a second when calls wait, and a
    second long window at the point (as this was) kept a capacity that had grown 3 -> 12
    at 4 for 10 s more."""
    assert state.current is not None
    point = state.last_throttle_limit
    if point is not None and state.current + 1 == point:
        return knobs.probe_after_seconds
    return knobs.raise_after_seconds


def same_event(state: PaceState, event: Throttled, now: datetime, knobs: Knobs) -> bool:
    """Whether a throttling answer belongs to the last decrease's event (lowers nothing)."""
    end = cooldown_end(state, knobs)
    if end is None or now >= end:
        return False
    if event.sent_at is None or state.last_decrease_at is None:
        return True
    return event.sent_at < state.last_decrease_at + timedelta(seconds=IN_FORCE_SECONDS)


def failed_probe(state: PaceState, event: Throttled, now: datetime, knobs: Knobs) -> bool:
    """A call let in under the limit's last raise, throttled before the raise held the
    window the next raise waits for: the raise found the capacity (the limit below held
    a quiet window with every slot in use). A probe back to the last throttle point is
    one such raise, and so is every step of a climb: read as a new capacity, the first
    refusal of 12 -> 13 was a multiplicative decrease (9, and ~4 s to climb back to the
    12 that had held). A limit that has held its window is no probe any more: a throttle
    there is the capacity falling (a limit raised to its ceiling long ago and throttled
    stepped back one, 20 -> 19, a whole event before the decrease). A call let in before
    the raise and throttled says the old limit is too high now: a decrease too. An answer
    that does not say when its call was let in is a probe's only at the limit where the
    provider last throttled (the raise that went there was the probe)."""
    if state.current is None or state.current <= 1 or state.last_change_at is None:
        return False
    if state.last_decrease_at is not None and state.last_change_at <= state.last_decrease_at:
        return False  # the last change was a decrease, not a raise
    if event.sent_at is None:
        if state.current != state.last_throttle_limit:
            return False
    elif event.sent_at < state.last_change_at:
        return False
    return (now - state.last_change_at).total_seconds() < raise_window(state, knobs)


def decide(
    state: PaceState, event: Event, now: datetime, knobs: Knobs, in_flight: int | None = None
) -> Decision | None:
    """What `event` at `now` changes; None when it changes nothing at all. `in_flight`:
    the limit's slots in use now, when known (a decrease starts from it when lower; a
    raise needs all of them in use). None or 0 says nothing: the calls that reported
    held none of the fleet's slots (a provider without them, a test's keeper)."""
    if isinstance(event, Throttled):
        return _on_throttled(state, event, now, knobs, in_flight)
    return _on_success(state, event, now, knobs, in_flight)


def _on_throttled(
    state: PaceState, event: Throttled, now: datetime, knobs: Knobs, in_flight: int | None
) -> Decision:
    until = state.throttled_until
    if event.retry_after is not None and event.retry_after > 0:
        # from the answer (HTTP's meaning), not the decision: a decision that waited its
        # turn behind other processes' (a second under load, issue 20's bench) pushed the
        # fleet's pause out by that second while the provider sat empty
        answered = now if event.answered_at is None else min(event.answered_at, now)
        wanted = answered + timedelta(seconds=event.retry_after)
        if until is None or wanted > until:
            until = wanted
    state_after = replace(state, throttled_until=until, last_throttle_at=now)
    if same_event(state, event, now, knobs):
        return Decision(state_after)
    if state.current is None and state.ceiling is not None:
        # a limit whose value is not known now (a change on its way to Prefect, or Prefect
        # away): the throttle belongs to that change's event; counted as a new one it would
        # be told as "Limit: 10 -> 10" and restart the cooldown without lowering anything
        return Decision(state_after)
    # a new throttling event: it opens a cooldown even when the limit cannot go lower
    # (already 1, fixed caps, or no limit at all), so it is counted and told once
    probe = failed_probe(state, event, now, knobs)
    if state.current is None:
        point = state.last_throttle_limit
    else:  # a failed probe keeps its point: the slots in use fell as its call was refused
        point = state.current if probe else _in_use(state.current, in_flight)
    state_after = replace(state_after, last_decrease_at=now, last_throttle_limit=point)
    if not knobs.adaptive or state.current is None or state.current <= 1:
        return Decision(state_after, new_event=True)
    if probe:  # the whole raise back: the limit before it held its window
        to = max(1, state.current - (state.raise_step or 1))
    else:
        to = decreased(state.current, knobs.decrease_factor, in_flight)
        floor = state.held_limit
        if floor is not None and to < floor < state.current:  # a climb found the capacity
            to = floor
    lowered = to if state.held_limit is None else min(state.held_limit, to)
    return Decision(
        replace(state_after, current=to, last_change_at=now, held_limit=lowered,
                raise_step=None),
        to_limit=to, reason="throttled", new_event=True,
    )


def _held_after(state: PaceState, now: datetime, knobs: Knobs) -> int | None:
    """The held limit after `now`: the limit in force when it has gone
    `probe_after_seconds` without a throttling answer or a change."""
    quiet_since = _quiet_since(state)
    if (
        state.current is None or quiet_since is None
        or (now - quiet_since).total_seconds() < knobs.probe_after_seconds
        or (state.held_limit is not None and state.held_limit >= state.current)
    ):
        return state.held_limit
    return state.current


def _quiet_since(state: PaceState) -> datetime | None:
    return max(
        (t for t in (state.last_throttle_at, state.last_change_at) if t is not None),
        default=None,
    )


def _on_success(
    state: PaceState, event: Succeeded, now: datetime, knobs: Knobs,
    in_flight: int | None = None,
) -> Decision | None:
    seen = replace(state, last_success_at=now, held_limit=_held_after(state, now, knobs))
    cap = state.cap
    if not knobs.adaptive or state.current is None or cap is None or state.current >= cap:
        return Decision(seen) if seen != state else None
    if state.throttled_until is not None and now < state.throttled_until:
        return Decision(seen)
    quiet_since = _quiet_since(state)
    if quiet_since is not None and (now - quiet_since).total_seconds() < raise_window(
        state, knobs
    ):
        return Decision(seen)
    if in_flight and in_flight < state.current:  # not using the limit it has
        return Decision(seen)
    if (
        event.sent_at is not None and state.last_change_at is not None
        and event.sent_at < state.last_change_at
    ):  # a call the limit before the last change let in: it says nothing of this one
        return Decision(seen)
    point = state.last_throttle_limit
    forget = point is not None and state.current >= point  # the probe held a window
    step = 2 * state.raise_step if point is None and state.raise_step else 1
    to = min(cap, state.current + step)
    return Decision(
        replace(
            seen,
            current=to,
            last_change_at=now,
            last_throttle_limit=None if forget else point,
            raise_step=to - state.current,
        ),
        to_limit=to,
        reason="recovered",
    )

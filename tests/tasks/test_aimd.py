"""The AIMD decision alone (studio/providers/aimd.py): the clock passed in, no I/O."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from studio.providers.aimd import (
    Knobs,
    PaceState,
    Succeeded,
    Throttled,
    decide,
    decreased,
)
from studio.providers.pace_settings import PaceSettings

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
KNOBS = Knobs(raise_after_seconds=2.0, probe_after_seconds=6.0)  # 0.75, cooldown 2 s


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def run(state: PaceState, events: list[tuple[float, Throttled | Succeeded]],
        knobs: Knobs = KNOBS) -> tuple[PaceState, list[tuple[float, int, str]]]:
    """Feed events in order; the state after and every limit change (time, to, reason)."""
    changes = []
    for when, event in events:
        decision = decide(state, event, at(when), knobs)
        if decision is None:
            continue
        state = decision.state
        if decision.to_limit is not None:
            changes.append((when, decision.to_limit, decision.reason))
    return state, changes


def test_the_defaults_are_the_interfaces_and_bad_knobs_are_refused(monkeypatch) -> None:
    settings = PaceSettings(_env_file=None)
    assert Knobs.from_settings(settings) == Knobs(True, 0.75, 2.0, 1.0, 10.0)
    monkeypatch.setenv("PROVIDER_LIMIT_DECREASE_FACTOR", "1.0")
    with pytest.raises(ValidationError, match="PROVIDER_LIMIT_DECREASE_FACTOR"):
        PaceSettings(_env_file=None)
    monkeypatch.setenv("PROVIDER_LIMIT_DECREASE_FACTOR", "0.5")
    monkeypatch.setenv("PROVIDER_LIMITS_ADAPTIVE", "false")
    s = PaceSettings(_env_file=None)
    assert (s.decrease_factor, s.adaptive) == (0.5, False)


def test_multiplicative_decrease_five_to_three_never_below_one() -> None:
    assert decreased(5, 0.75) == 3  # floor(3.75), the example
    assert decreased(20, 0.75) == 15
    assert decreased(2, 0.75) == 1
    assert decreased(3, 0.9) == 2  # floor(2.7) = 2
    assert decreased(10, 0.99) == 9  # always at least one lower
    assert decreased(1, 0.75) == 1
    decision = decide(PaceState(current=5, ceiling=5), Throttled(429, 10.0), T0, KNOBS)
    assert decision is not None
    assert (decision.to_limit, decision.reason, decision.new_event) == (3, "throttled", True)
    assert decision.state.current == 3
    assert decision.state.throttled_until == at(10)
    assert decision.state.last_throttle_limit == 5
    # a throttling event at 1 is counted (told once) but lowers nothing
    one = decide(PaceState(current=1, ceiling=5), Throttled(429, None), T0, KNOBS)
    assert one is not None and one.to_limit is None and one.new_event
    assert one.state.current == 1


def test_a_decrease_starts_from_the_slots_in_use_when_fewer_than_the_limit() -> None:
    """TCP's flight size: a fleet using 12 slots of a limit of 20 is throttled at 12, so
    the decrease starts there (20 x 0.75 = 15 would bind nothing)."""
    assert decreased(20, 0.75, in_flight=12) == 9
    assert decreased(20, 0.75, in_flight=20) == 15 == decreased(20, 0.75, in_flight=30)
    assert decreased(5, 0.75, in_flight=None) == 3  # not known: from the limit
    assert decreased(5, 0.75, in_flight=0) == 3  # no slot in use says nothing: the limit
    assert decreased(5, 0.75, in_flight=1) == 1
    decision = decide(PaceState(current=20, ceiling=20), Throttled(429, 1.0), T0, KNOBS,
                      in_flight=12)
    assert decision is not None and (decision.to_limit, decision.state.current) == (9, 9)
    assert decision.state.last_throttle_limit == 12  # the load it throttled at: the probe point
    # inside the cooldown nothing is lowered, whatever is in flight
    again = decide(decision.state, Throttled(429, 1.0), at(0.5), KNOBS, in_flight=2)
    assert again is not None and again.to_limit is None


def test_one_decrease_per_event_however_many_calls_reported_it() -> None:
    # 30 calls in flight all answer 429 within the cooldown: one decrease
    burst = [(0.01 * n, Throttled(429, None)) for n in range(30)]
    state, changes = run(PaceState(current=10, ceiling=10), burst)
    assert changes == [(0.0, 7, "throttled")]
    # the next throttling answer after the cooldown is a new event
    state, changes = run(state, [(2.5, Throttled(429, None))])
    assert changes == [(2.5, 5, "throttled")]
    # a Retry-After does not stretch the cooldown: no call starts while it holds, so an
    # answer after the cooldown came from a call sent after the decrease (a process the
    # Retry-After did not reach in time): a new event. A provider that keeps throttling
    # is not taken for one endless event whose limit never goes lower.
    state, changes = run(state, [(5.0, Throttled(429, 10.0)), (9.0, Throttled(429, 1.0)),
                                 (10.5, Throttled(429, None))])
    assert changes == [(5.0, 3, "throttled"), (9.0, 2, "throttled")]  # 10.5: cooldown
    assert state.throttled_until is not None  # the longest Retry-After still holds
    # many events never go below 1
    events = [(20.0 + 3 * n, Throttled(429, None)) for n in range(10)]
    state, changes = run(state, events)
    assert [to for _, to, _ in changes] == [1]
    assert state.current == 1


def test_retry_after_only_moves_forward_and_restarts_the_quiet_window() -> None:
    state = PaceState(current=5, ceiling=5)
    state, _ = run(state, [(0, Throttled(429, 10.0)), (1, Throttled(503, 2.0))])
    assert state.throttled_until == at(10)  # a shorter later one does not shorten it
    assert state.last_throttle_at == at(1)


def test_retry_after_counts_from_when_the_answer_arrived() -> None:
    """A decision taken a second after its answer (queued behind other processes' under
    load) pauses the fleet until the answer's Retry-After ends, not a second longer; an
    answer that does not say when it arrived counts from the decision, and one stamped
    later than the decision (another host's clock) no later than it."""
    state = PaceState(current=5, ceiling=5)
    late, _ = run(state, [(1.2, Throttled(429, 1.0, answered_at=at(0.2)))])
    assert late.throttled_until == at(1.2)
    unknown, _ = run(state, [(1.2, Throttled(429, 1.0))])
    assert unknown.throttled_until == at(2.2)
    ahead, _ = run(state, [(1.2, Throttled(429, 1.0, answered_at=at(3.0)))])
    assert ahead.throttled_until == at(2.2)


def test_additive_increase_only_after_the_quiet_window_and_only_with_a_success() -> None:
    state, _ = run(PaceState(current=10, ceiling=10), [(0, Throttled(429, None))])
    assert state.current == 7
    # quiet but no accepted job: nothing rises (the raise is decided on a success)
    state, changes = run(state, [(1.0, Succeeded()), (1.9, Succeeded())])
    assert changes == [] and state.current == 7
    state, changes = run(state, [(2.0, Succeeded())])
    assert changes == [(2.0, 8, "recovered")]
    # +1 per window, not per success
    state, changes = run(state, [(2.5, Succeeded()), (3.9, Succeeded()), (4.0, Succeeded())])
    assert changes == [(4.0, 9, "recovered")]
    # a throttling answer inside the cooldown (no decrease) still restarts the quiet window
    state = replace(state, last_decrease_at=at(4.5), last_throttle_at=at(4.5))
    state, changes = run(state, [(5.0, Throttled(429, None)), (6.5, Succeeded())])
    assert changes == []
    # no raise while a Retry-After is in force, however quiet
    held = replace(state, throttled_until=at(30))
    _, changes = run(held, [(20.0, Succeeded())])
    assert changes == []


def test_plateau_under_the_last_throttle_point_then_a_probe_that_forgets_it() -> None:
    state, _ = run(PaceState(current=9, ceiling=20), [(0, Throttled(429, None))])
    assert (state.current, state.last_throttle_limit) == (6, 9)
    state, changes = run(state, [(2.0, Succeeded()), (4.0, Succeeded())])
    assert changes == [(2.0, 7, "recovered"), (4.0, 8, "recovered")]
    # 8 -> 9 reaches the throttle point: the probe waits 6 s, not 2
    state, changes = run(state, [(6.0, Succeeded()), (9.9, Succeeded())])
    assert changes == []
    state, changes = run(state, [(10.0, Succeeded())])
    assert changes == [(10.0, 9, "recovered")]
    assert state.last_throttle_limit == 9
    # at the point, a plain window confirms the probe (a second long one kept a capacity
    # that had grown at the old point for 10 s more) and the old point is forgotten
    state, changes = run(state, [(11.9, Succeeded())])
    assert changes == []
    state, changes = run(state, [(12.0, Succeeded())])
    assert changes == [(12.0, 10, "recovered")]
    assert state.last_throttle_limit is None
    # plain 2 s windows again, each raise twice the last past the forgotten point
    state, changes = run(state, [(14.0, Succeeded()), (16.0, Succeeded())])
    assert changes == [(14.0, 12, "recovered"), (16.0, 16, "recovered")]


def test_a_failed_probe_steps_back_to_the_limit_that_held() -> None:
    state, _ = run(PaceState(current=12, ceiling=20, last_throttle_limit=13, last_change_at=T0),
                   [(5.9, Succeeded()), (6.0, Succeeded())])
    assert state.current == 13  # the probe, after its 6 s window
    # refused at the probe: back to 12, not 13 x 0.75 = 9, and the point stays at 13
    # even though the slots in use fell to 12 as the refused call gave its slot back
    decision = decide(state, Throttled(429, 1.0, sent_at=at(6.2)), at(6.3), KNOBS, in_flight=12)
    assert decision is not None and decision.new_event
    assert (decision.to_limit, decision.state.last_throttle_limit) == (12, 13)
    # the next probe waits the probe window again
    state, changes = run(decision.state, [(8.0, Succeeded()), (12.2, Succeeded())])
    assert changes == []
    _, changes = run(state, [(12.4, Succeeded())])
    assert changes == [(12.4, 13, "recovered")]
    # had the capacity itself fallen, the next refused call sent after the step back is a
    # new event, and from 12 (not the point) it is a multiplicative decrease
    decision = decide(decision.state, Throttled(429, None, sent_at=at(7.0)), at(7.1), KNOBS)
    assert decision is not None and (decision.to_limit, decision.new_event) == (9, True)


def test_a_raise_refused_before_it_held_its_window_steps_back_to_the_limit_below() -> None:
    # climbing with no throttle point known: 11 held a quiet window, 11 -> 12 at 4.0
    state, changes = run(PaceState(current=11, ceiling=20, last_change_at=at(2.0)),
                         [(4.0, Succeeded())])
    assert changes == [(4.0, 12, "recovered")] and state.last_throttle_limit is None
    # a call let in under the raise, refused before the raise held its 2 s window: the
    # raise found the capacity; back to 11, which held (not 12 x 0.75 = 9), point 12
    decision = decide(state, Throttled(429, 1.0, sent_at=at(4.2)), at(4.4), KNOBS, in_flight=12)
    assert decision is not None and decision.new_event
    assert (decision.to_limit, decision.state.last_throttle_limit) == (11, 12)
    # the next try at 12 is a probe: it waits the probe window
    _, changes = run(decision.state, [(8.0, Succeeded()), (10.5, Succeeded())])
    assert changes == [(10.5, 12, "recovered")]
    # a call let in before the raise and refused after it: the old limit is too high now
    decision = decide(state, Throttled(429, 1.0, sent_at=at(3.9)), at(4.4), KNOBS, in_flight=12)
    assert decision is not None and decision.to_limit == 9
    # a raise that held its window is the capacity's: a refusal then is a decrease
    decision = decide(state, Throttled(429, 1.0, sent_at=at(6.1)), at(6.2), KNOBS, in_flight=12)
    assert decision is not None and decision.to_limit == 9
    # the send time unknown: nothing says it ran under the raise, so a decrease; at the
    # limit where the provider last throttled the raise was the probe, and it failed
    decision = decide(state, Throttled(429, 1.0), at(4.4), KNOBS, in_flight=12)
    assert decision is not None and decision.to_limit == 9
    probe = replace(state, last_throttle_limit=12)
    assert decide(probe, Throttled(429, 1.0), at(4.4), KNOBS, in_flight=12).to_limit == 11
    assert decide(probe, Throttled(429, 1.0), at(6.1), KNOBS, in_flight=12).to_limit == 9
    # a probe that held long ago is no probe: at its ceiling (20, the throttle point of
    # its warm-up) for a minute, then throttled with 18 in flight: a decrease, not 19
    held = PaceState(current=20, ceiling=20, last_throttle_limit=20, last_change_at=at(0))
    decision = decide(held, Throttled(429, 1.0, sent_at=at(60)), at(60.1), KNOBS, in_flight=18)
    assert decision is not None and decision.to_limit == 13
    # after a decrease the last change is no raise: a refusal is a new event's decrease
    lowered = replace(state, last_decrease_at=at(4.0))
    decision = decide(lowered, Throttled(429, 1.0, sent_at=at(6.5)), at(6.6), KNOBS)
    assert decision is not None and decision.to_limit == 9


def test_a_raise_needs_the_fleet_to_use_every_slot_of_the_limit() -> None:
    state = PaceState(current=9, ceiling=20, last_change_at=T0)
    # quiet for a whole window, but 7 of 9 slots in use: the limit is not what binds, and
    # the quiet says nothing of the provider (TCP's validated window, RFC 7661)
    assert decide(state, Succeeded(), at(5.0), KNOBS, in_flight=7).to_limit is None
    # a probe whose extra call was refused at once gave its slot back: 12 of 13 in use
    probe = PaceState(current=13, ceiling=20, last_throttle_limit=13, last_change_at=T0)
    assert decide(probe, Succeeded(), at(5.0), KNOBS, in_flight=12).to_limit is None
    # every slot in use (or more, a moment before a decrease binds): +1
    assert decide(state, Succeeded(), at(5.0), KNOBS, in_flight=9).to_limit == 10
    assert decide(state, Succeeded(), at(5.0), KNOBS, in_flight=11).to_limit == 10
    # slots in use unknown, or none (the calls held none of the fleet's): the window decides
    assert decide(state, Succeeded(), at(5.0), KNOBS).to_limit == 10
    assert decide(state, Succeeded(), at(5.0), KNOBS, in_flight=0).to_limit == 10


def test_a_call_sent_after_the_decrease_and_still_throttled_is_a_new_event() -> None:
    state, changes = run(PaceState(current=20, ceiling=20), [(0.0, Throttled(429, 1.0))])
    assert changes == [(0.0, 15, "throttled")]
    # calls sent before the decrease was in force, answered inside the cooldown: the
    # same event, however late their answers come
    for sent in (-1.0, 0.2, 0.49):
        same = decide(state, Throttled(429, 1.0, sent_at=at(sent)), at(1.5), KNOBS)
        assert same is not None and same.to_limit is None and not same.new_event
    # a call sent once the Retry-After passed, at the lowered limit, and refused again:
    # 15 is still too high, a new event now, not after the cooldown
    state, changes = run(state, [(1.1, Throttled(429, 1.0, sent_at=at(1.05)))])
    assert changes == [(1.1, 11, "throttled")]
    state, changes = run(state, [(2.2, Throttled(429, 1.0, sent_at=at(2.15)))])
    assert changes == [(2.2, 8, "throttled")]
    # an answer that does not say when its call was sent: the cooldown decides
    _, changes = run(state, [(3.0, Throttled(429, None)), (4.3, Throttled(429, None))])
    assert changes == [(4.3, 6, "throttled")]


def test_never_above_the_ceiling_or_a_manual_cap() -> None:
    state = PaceState(current=4, ceiling=5, last_change_at=T0)
    state, changes = run(state, [(2.0 * n, Succeeded()) for n in range(1, 10)])
    assert changes == [(2.0, 5, "recovered")]
    assert state.current == 5
    capped = PaceState(current=2, ceiling=5, manual_cap=3, last_change_at=T0)
    state, changes = run(capped, [(2.0 * n, Succeeded()) for n in range(1, 10)])
    assert [to for _, to, _ in changes] == [3]
    # a manual cap above the ceiling: the ceiling still holds
    above = PaceState(current=4, ceiling=5, manual_cap=8, last_change_at=T0)
    state, _ = run(above, [(2.0 * n, Succeeded()) for n in range(1, 10)])
    assert state.current == 5
    # no ceiling known (a provider without a limit): no raise
    assert decide(PaceState(current=None, ceiling=None), Succeeded(), at(9), KNOBS) is not None
    _, changes = run(PaceState(current=None, ceiling=None), [(9.0, Succeeded())])
    assert changes == []


def test_fixed_caps_honour_retry_after_only() -> None:
    fixed = Knobs(adaptive=False)
    state, changes = run(PaceState(current=5, ceiling=5),
                         [(0, Throttled(429, 4.0)), (3, Throttled(429, None)), (30, Succeeded())],
                         fixed)
    assert changes == []
    assert state.current == 5 and state.throttled_until == at(4)


def test_a_throttle_while_a_change_is_on_its_way_is_that_changes_event() -> None:
    # the row's change is pending (its value not known until Prefect has it): the throttle
    # pushes the Retry-After out and restarts the quiet window, and opens no event of its
    # own (it was told as "Limit: 10 -> 10", and restarted the cooldown lowering nothing)
    pending = PaceState(current=None, ceiling=20, last_decrease_at=at(-10))
    decision = decide(pending, Throttled(429, 1.0, sent_at=at(-0.1)), T0, KNOBS)
    assert decision is not None and not decision.new_event and decision.to_limit is None
    assert decision.state.last_decrease_at == at(-10)
    assert (decision.state.throttled_until, decision.state.last_throttle_at) == (at(1), T0)


def test_no_limit_shares_the_retry_after_and_counts_events_once() -> None:
    state = PaceState(current=None, ceiling=None)
    first = decide(state, Throttled(529, 3.0), T0, KNOBS)
    assert first is not None and first.to_limit is None and first.new_event
    again = decide(first.state, Throttled(529, 3.0), at(1), KNOBS)
    assert again is not None and not again.new_event
    assert again.state.throttled_until == at(4)


def test_a_climbs_throttle_steps_back_to_the_limit_that_held_and_a_held_one_falls() -> None:
    """12 held a probe window (6 s here), then climbed to 15 a window at a time (+1:
    under the point where the provider last throttled, 17); a
    throttle after the last raise's window is not that probe's, but the climb past the
    held limit found the capacity: 12, not 15 x 0.75 = 11. A throttle on the held limit
    itself is the capacity falling: 12 x 0.75 = 9."""
    state = PaceState(current=12, ceiling=20, last_change_at=at(0), last_throttle_limit=17)
    state, changes = run(state, [
        (6.5, Succeeded()), (9.0, Succeeded()), (11.5, Succeeded()),
        (14.0, Throttled(429, 1.0, sent_at=at(13.0))),
        (17.0, Throttled(429, 1.0, sent_at=at(16.5))),
    ])
    assert changes == [(6.5, 13, "recovered"), (9.0, 14, "recovered"),
                       (11.5, 15, "recovered"), (14.0, 12, "throttled"), (17.0, 9, "throttled")]
    assert state.held_limit == 9  # lowered with the limit: a fall is not undone by it


def test_a_limit_that_never_held_a_window_decreases_multiplicatively() -> None:
    """No held limit yet (every limit changed within a probe window): 15 -> 11."""
    state = PaceState(current=14, ceiling=20, last_change_at=at(0))
    _, changes = run(state, [(2.5, Succeeded()), (5.0, Throttled(429, 1.0, sent_at=at(4.8)))])
    assert changes == [(2.5, 15, "recovered"), (5.0, 11, "throttled")]


def test_a_raise_waits_for_a_success_let_in_under_the_limit_in_force() -> None:
    """After 8 -> 6, successes of calls the old limit let in raise nothing however long
    the quiet: only a call let in under 6 says 6 holds."""
    state = PaceState(current=6, ceiling=20, last_change_at=at(0), last_decrease_at=at(0),
                      last_throttle_at=at(0))
    _, changes = run(state, [
        (2.5, Succeeded(sent_at=at(-1.0))), (3.0, Succeeded(sent_at=at(-0.2))),
        (3.5, Succeeded(sent_at=at(1.0))),
    ])
    assert changes == [(3.5, 7, "recovered")]


def test_past_the_throttle_point_each_raise_doubles_and_a_refused_one_steps_back_whole() -> None:
    """The probe back to 4 held (+1, the point forgotten): the capacity grew by an
    unknown amount, so the next raises are +2, +4 (3 -> 11 in four windows). A call
    refused under the +4 steps back to 7, the limit that held, and 11 is the new point:
    +1 from there."""
    state = PaceState(current=3, ceiling=20, last_throttle_limit=4, last_change_at=at(0))
    state, changes = run(state, [
        (6.0, Succeeded()),  # the probe window (6 s here): 3 -> 4, the point
        (8.0, Succeeded()),  # a plain window at the point: past it, the point forgotten
        (10.0, Succeeded()), (12.0, Succeeded()),
        (12.5, Throttled(429, 1.0, sent_at=at(12.2))),
        (14.6, Succeeded()),
    ])
    assert changes == [(6.0, 4, "recovered"), (8.0, 5, "recovered"), (10.0, 7, "recovered"),
                       (12.0, 11, "recovered"), (12.5, 7, "throttled"), (14.6, 8, "recovered")]
    assert state.last_throttle_limit == 11 and state.raise_step == 1


def test_a_doubling_raise_stops_at_the_cap() -> None:
    state = PaceState(current=16, ceiling=20, last_change_at=at(0), raise_step=8)
    state, changes = run(state, [(2.0, Succeeded())])
    assert changes == [(2.0, 20, "recovered")] and state.raise_step == 4

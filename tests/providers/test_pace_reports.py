"""What the provider clients tell the fleet (studio/providers/pace.py): every throttling
answer, every accepted job, and a wait before every job-starting request, through the
official clients against the emulators. What the fleet does with it is tested with its
listener (engine/provider_pace.py, engine/provider_rates.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from studio.providers import pace
from studio.providers.replicate_flux import ReplicateFluxProvider
from tests.emulators.replicate_api import ReplicateEmulator
from tests.providers.conftest import REPLICATE_TOKEN


class Recorder:  # also used by tests/hooks/test_anthropic_pace.py
    """A listener that writes down what it is told, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple] = []
        self.sent_at: list[float | None] = []
        self.accepted_sent_at: list[float | None] = []

    async def before_call(self, provider: str) -> None:
        self.seen.append(("before", provider))

    def throttled(self, provider: str, status: int, retry_after: float | None,
                  sent_at: float | None = None) -> None:
        self.seen.append(("throttled", provider, status, retry_after))
        self.sent_at.append(sent_at)

    async def taken_in(self, provider: str) -> None:
        self.seen.append(("taken in", provider))

    def succeeded(self, provider: str, sent_at: float | None = None) -> None:
        self.seen.append(("ok", provider))
        self.accepted_sent_at.append(sent_at)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    listener = Recorder()
    pace.register(listener)
    pace.register(listener)  # idempotent: told once per answer
    try:
        yield listener
    finally:
        pace.unregister(listener)
    assert listener not in pace.listeners()


@pytest.mark.parametrize(
    ("provider", "status", "headers", "expected"),
    [
        ("replicate", 429, {"Retry-After": "10"}, 10.0),
        ("replicate", 429, {}, None),  # throttled, no hint
        ("replicate", 503, {"Retry-After": "2.5"}, 2.5),
        ("replicate", 503, {}, False),  # a bare 503 is an outage, not a pace
        ("modal", 503, {"Retry-After": "1"}, 1.0),
        ("anthropic", 529, {}, None),  # overloaded_error
        ("anthropic", 429, {"Retry-After": "x"}, None),  # unreadable hint: none
        ("comfyui", 503, {"Retry-After": "1"}, False),  # ComfyUI documents no overload answer
        ("replicate", 500, {"Retry-After": "1"}, False),
        ("replicate", 201, {}, False),
    ],
)
def test_which_answers_are_throttling(provider, status, headers, expected) -> None:
    assert pace.throttle_of(provider, status, headers) == expected


def test_an_http_date_retry_after_is_read() -> None:
    assert pace.retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert pace.retry_after_seconds(None) is None


async def test_replicate_reports_each_429_and_waits_before_each_create(
    replicate_api: ReplicateEmulator, spec, avatar, recorder: Recorder
) -> None:
    replicate_api.behaviour.throttle_next = 2
    replicate_api.behaviour.retry_after = 0.05
    provider = ReplicateFluxProvider(
        REPLICATE_TOKEN, base_url=replicate_api.url, poll_interval=0.02
    )
    began = time.time()
    try:
        await provider.generate(spec, avatar)
    finally:
        await provider.aclose()
    # each 429 says when its create was sent (the fleet tells an answer to a call sent
    # before its last decrease from one sent after it): in order, the re-send after the
    # first one's Retry-After
    first, second = recorder.sent_at
    assert first is not None and second is not None
    assert began <= first and first + 0.05 <= second <= time.time()
    creates = [e for e in recorder.seen if e[0] != "ok" or e[1] == "replicate"]
    assert creates[:5] == [
        ("before", "replicate"),
        ("throttled", "replicate", 429, 0.05),
        ("before", "replicate"),  # the re-sent create waits for the fleet again
        ("throttled", "replicate", 429, 0.05),
        ("before", "replicate"),
    ]
    assert ("ok", "replicate") in recorder.seen  # the accepted create
    assert replicate_api.counters.requests("create") == 3


async def test_a_call_under_a_fleet_slot_reports_when_it_got_the_slot(
    replicate_api: ReplicateEmulator, spec, avatar, recorder: Recorder
) -> None:
    """A create that took its fleet slot (the chain marks it `pace.admitted()`), waited
    (for the fleet's Retry-After, say) and was then refused tells the fleet when it got
    the slot: it ran under the limit in force then, and its refusal says nothing of a
    limit lowered while it waited. Read by its send time it was a new throttling event
    (the adaptive bench: 3 -> 2 at a capacity of 3, one probe window at 2)."""
    replicate_api.behaviour.throttle_next = 1
    replicate_api.behaviour.retry_after = 0.05
    provider = ReplicateFluxProvider(
        REPLICATE_TOKEN, base_url=replicate_api.url, poll_interval=0.02
    )
    before = time.time()
    token = pace.admitted()
    after = time.time()
    try:
        await asyncio.sleep(0.3)  # holding the slot, not sending yet
        await provider.generate(spec, avatar)
    finally:
        pace.admitted_reset(token)
    [slot_time] = recorder.sent_at
    assert slot_time is not None and before <= slot_time <= after
    # and so does its accepted re-send: a raise counts only calls let in under its limit
    assert recorder.accepted_sent_at[-1] == slot_time

    replicate_api.behaviour.throttle_next = 1  # a call with no slot: its send time
    began = time.time()
    try:
        await provider.generate(spec, avatar)
    finally:
        await provider.aclose()
    sent = recorder.sent_at[-1]
    assert sent is not None and began <= sent <= time.time()

"""The emulators' throttling switches (issue 20), through the clients the project uses:
the official `replicate` SDK inside ReplicateFluxProvider, httpx inside ModalSDXLProvider.

Each switch (tests/emulators/README.md): a hidden true capacity, changed by hand or on a
schedule, above which a create answers 429 (or 503) with Retry-After; 503 overloaded
with Retry-After; the counters a bench reads (accepted, refused, peak, timeline). The
fleet hears each throttling answer through studio/providers/pace.py (a Recorder here).
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import replicate
from replicate.exceptions import ReplicateError

from studio.providers.base import ProviderError
from studio.providers.modal_endpoint import ModalSDXLProvider
from studio.providers.replicate_flux import ReplicateFluxProvider
from tests.emulators.billing import RecordingJob
from tests.emulators.capacity import Capacity
from tests.emulators.modal_endpoint import ModalEndpointEmulator
from tests.emulators.replicate_api import ReplicateEmulator
from tests.providers.conftest import MODAL_KEY, MODAL_SECRET, REPLICATE_TOKEN, make_spec
from tests.providers.test_pace_reports import Recorder, recorder  # noqa: F401 - fixture

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
async def flux(replicate_api: ReplicateEmulator):
    client = ReplicateFluxProvider(REPLICATE_TOKEN, base_url=replicate_api.url, poll_interval=0.02)
    yield client
    await client.aclose()


@pytest.fixture
async def sdxl(modal: ModalEndpointEmulator):
    client = ModalSDXLProvider(modal.url, token_id=MODAL_KEY, token_secret=MODAL_SECRET)
    yield client
    await client.aclose()


# -- Replicate ----------------------------------------------------------------------------
async def test_replicate_above_capacity_answers_429_retry_after_and_counts_it(
    replicate_api: ReplicateEmulator, flux, avatar, recorder: Recorder  # noqa: F811
) -> None:
    replicate_api.capacity = 1
    replicate_api.capacity_retry_after = 0.05
    replicate_api.behaviour.latency = (0.15, 0.15)  # < 5 re-sends x 0.05 s
    jobs = [RecordingJob(), RecordingJob()]
    await asyncio.gather(
        *(flux.generate(make_spec(i), avatar, job) for i, job in enumerate(jobs))
    )
    flight = replicate_api.flight
    assert flight.peak == 1  # never two in flight: the second create waited its Retry-After
    assert flight.accepted == 2 and flight.refused >= 1
    assert replicate_api.counters.requests("throttled") == flight.refused
    assert replicate_api.counters.requests("accepted") == 2 == replicate_api.billed_jobs
    assert [len(job.created_ids) for job in jobs] == [1, 1]
    assert ("throttled", "replicate", 429, 0.05) in recorder.seen
    # the timeline: 1 in flight, 0, 1, 0 (a bench reads when the fleet followed C)
    assert [n for _, n in flight.timeline] == [1, 0, 1, 0]
    times = [t for t, _ in flight.timeline]
    assert times == sorted(times)


async def test_replicate_429_body_is_the_documented_one_on_both_create_paths(
    replicate_api: ReplicateEmulator,
) -> None:
    """{"detail": "Request was throttled. Your rate limit resets in ~Ns."} with status 429
    (problem+json, as every Replicate error), Retry-After in seconds; no prediction made."""
    replicate_api.capacity = 0
    replicate_api.capacity_retry_after = 2.5
    token = {"Authorization": f"Bearer {REPLICATE_TOKEN}"}
    async with httpx.AsyncClient(base_url=replicate_api.url, headers=token) as http:
        for path, body in [
            ("/v1/models/black-forest-labs/flux-dev-lora/predictions", {"input": {"prompt": "x"}}),
            ("/v1/predictions", {"version": "v1", "input": {"prompt": "x"}}),
        ]:
            answer = await http.post(path, json=body)
            assert answer.status_code == 429
            assert answer.headers["Retry-After"] == "2.5"
            assert answer.headers["Content-Type"].startswith("application/problem+json")
            assert answer.json() == {
                "title": "Request was throttled", "status": 429,
                "detail": "Request was throttled. Your rate limit resets in ~3s.",
            }
    assert replicate_api.billed_jobs == 0 and replicate_api.predictions == {}
    assert replicate_api.flight.refused == 2 and replicate_api.flight.accepted == 0


async def test_replicate_sdk_reads_the_429_as_a_replicate_error(
    replicate_api: ReplicateEmulator,
) -> None:
    replicate_api.capacity = 0
    replicate_api.capacity_retry_after = None  # a throttle without a hint: no header
    client = replicate.Client(api_token=REPLICATE_TOKEN, base_url=replicate_api.url)
    with pytest.raises(ReplicateError) as caught:
        await client.predictions.async_create(version="v1", input={"prompt": "x"})
    assert caught.value.status == 429
    assert caught.value.detail == "Request was throttled."
    await client._async_client.aclose()


async def test_replicate_capacity_answering_503_fails_the_attempt_retryable_unbilled(
    replicate_api: ReplicateEmulator, flux, spec, avatar, recorder: Recorder  # noqa: F811
) -> None:
    replicate_api.capacity = 0
    replicate_api.capacity_status = 503
    replicate_api.capacity_retry_after = 0.5
    job = RecordingJob()
    with pytest.raises(ProviderError) as caught:
        await flux.generate(spec, avatar, job)
    assert "create answered HTTP 503" in str(caught.value) and caught.value.retryable
    assert job.created_ids == [] and replicate_api.billed_jobs == 0
    assert replicate_api.counters.requests("overloaded") == 1
    assert ("throttled", "replicate", 503, 0.5) in recorder.seen  # 503 + Retry-After


async def test_replicate_overload_next_answers_503_with_retry_after_once(
    replicate_api: ReplicateEmulator, flux, spec, avatar, recorder: Recorder  # noqa: F811
) -> None:
    replicate_api.overload_next = 1
    replicate_api.behaviour.retry_after = 0.25
    with pytest.raises(ProviderError, match="HTTP 503"):
        await flux.generate(spec, avatar, RecordingJob())
    assert ("throttled", "replicate", 503, 0.25) in recorder.seen
    image = await flux.generate(spec, avatar, RecordingJob())  # the next one is accepted
    assert image.data and replicate_api.billed_jobs == 1
    assert replicate_api.counters.requests("overloaded") == 1


async def test_replicate_capacity_follows_a_schedule_and_a_change_while_running(
    replicate_api: ReplicateEmulator, flux, spec, avatar
) -> None:
    starts = replicate_api.capacity_schedule([(0.4, 0), (0.4, 3)])
    replicate_api.capacity_retry_after = 0.1
    assert replicate_api.capacity == 0
    started = time.monotonic()
    await flux.generate(spec, avatar, RecordingJob())  # refused until the second step
    assert time.monotonic() - started >= starts[1] - started - 0.05
    assert replicate_api.capacity == 3 and replicate_api.flight.refused >= 1
    assert [limit for _, limit in replicate_api.flight.changes] == [0, 3]
    replicate_api.capacity = None  # set by hand: the schedule is gone, no limit
    time.sleep(0.5)
    assert replicate_api.capacity is None
    with pytest.raises(ValueError, match="capacity"):
        replicate_api.capacity = -1


# -- Modal --------------------------------------------------------------------------------
async def test_modal_throttle_next_answers_429_with_retry_after_from_the_front_door(
    modal: ModalEndpointEmulator, sdxl, spec, avatar, recorder: Recorder  # noqa: F811
) -> None:
    modal.behaviour.throttle_next = 1
    modal.behaviour.retry_after = 0.5
    job = RecordingJob()
    with pytest.raises(ProviderError, match="429") as caught:
        await sdxl.generate(spec, avatar, job)
    assert caught.value.retryable
    assert job.created_ids == [] and modal.billed_jobs == 0  # no function ran
    assert ("throttled", "modal", 429, 0.5) in recorder.seen
    assert modal.counters.requests("throttled") == 1
    await sdxl.generate(spec, avatar, RecordingJob())
    assert modal.billed_jobs == 1


async def test_modal_overload_next_answers_503_with_retry_after(
    modal: ModalEndpointEmulator, sdxl, spec, avatar, recorder: Recorder  # noqa: F811
) -> None:
    modal.overload_next = 1
    modal.behaviour.retry_after = 2
    job = RecordingJob()
    with pytest.raises(ProviderError, match="503"):
        await sdxl.generate(spec, avatar, job)
    assert job.created_ids == [] and modal.billed_jobs == 0
    assert ("throttled", "modal", 503, 2.0) in recorder.seen  # overload, not an outage
    async with httpx.AsyncClient() as http:  # the raw answer
        modal.overload_next = 1
        answer = await http.post(
            modal.url, json={}, headers={"Modal-Key": MODAL_KEY, "Modal-Secret": MODAL_SECRET}
        )
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "2"
    assert answer.text.startswith("modal-http:")


@pytest.mark.parametrize("status", [429, 503])
async def test_modal_above_capacity_refuses_with_retry_after_and_counts_it(
    modal: ModalEndpointEmulator, sdxl, avatar, recorder: Recorder, status: int  # noqa: F811
) -> None:
    modal.capacity = 1
    modal.capacity_status = status
    modal.behaviour.latency = (0.3, 0.3)
    first = asyncio.create_task(sdxl.generate(make_spec(0), avatar, RecordingJob()))
    while modal.flight.in_flight < 1:
        await asyncio.sleep(0.01)
    second = RecordingJob()
    with pytest.raises(ProviderError, match=str(status)):
        await sdxl.generate(make_spec(1), avatar, second)
    await first
    assert second.created_ids == [] and modal.billed_jobs == 1
    assert modal.flight.peak == 1 and modal.flight.accepted == 1 and modal.flight.refused == 1
    assert ("throttled", "modal", status, 1.0) in recorder.seen  # default Retry-After 1 s
    assert [n for _, n in modal.flight.timeline] == [1, 0]
    modal.capacity = 2  # changed while running: two at once now
    await asyncio.gather(*(sdxl.generate(make_spec(i), avatar, RecordingJob()) for i in (2, 3)))
    assert modal.flight.peak == 2 and modal.flight.refused == 1


# -- the capacity itself --------------------------------------------------------------------
async def test_capacity_schedule_steps_and_snapshot() -> None:
    capacity = Capacity()
    assert capacity.limit is None and capacity.admit() and capacity.admit()
    starts = capacity.schedule([(0.2, 1), (0.2, 3)])
    assert capacity.limit == 1 and not capacity.admit()  # 2 in flight, limit 1
    capacity.leave()
    capacity.leave()
    time.sleep(max(0.0, starts[1] - time.monotonic()) + 0.01)
    assert capacity.limit == 3
    assert [capacity.admit() for _ in range(4)] == [True, True, True, False]
    snapshot = capacity.snapshot()
    assert snapshot | {"timeline": 0} == {
        "limit": 3, "in_flight": 3, "peak": 3, "accepted": 5, "refused": 2, "timeline": 0,
    }
    capacity.reset_peak()
    assert capacity.peak == 3
    with pytest.raises(ValueError, match="schedule"):
        capacity.schedule([(-1, 2)])


async def test_a_throttled_create_gives_its_slot_back_and_asks_again_in_turn(
    replicate_api: ReplicateEmulator, avatar, caplog
) -> None:
    """In the chain a create the provider throttles raises ProviderThrottled: its slot
    goes back while it waits the Retry-After, then it asks for one again (a slot per
    try), so calls the fleet's lowered limit no longer admits wait for it instead of
    re-sending into the provider. No attempt is used and no breaker failure counted."""
    import contextlib
    import logging

    from studio.providers.chain import ProviderChain, ProviderPolicy
    from studio.providers.slots import LocalSlots

    class CountedSlots(LocalSlots):
        acquired = 0

        @contextlib.asynccontextmanager
        async def __call__(self, provider: str, *, wait: bool = True):
            async with super().__call__(provider, wait=wait):
                CountedSlots.acquired += 1
                yield

    replicate_api.capacity = 1
    replicate_api.capacity_retry_after = 0.05
    replicate_api.behaviour.latency = (0.15, 0.15)
    provider = ReplicateFluxProvider(REPLICATE_TOKEN, base_url=replicate_api.url,
                                     poll_interval=0.02, throttle_retries=20)
    chain = ProviderChain([provider], {"replicate": ProviderPolicy(max_attempts=1, timeout=10)},
                          slot=CountedSlots({"replicate": 2}))
    caplog.set_level(logging.INFO, logger="studio.providers")
    try:
        results = await asyncio.gather(*(chain.generate(make_spec(i), avatar) for i in range(2)))
    finally:
        await provider.aclose()
    flight = replicate_api.flight
    assert [r.provider for r in results] == ["replicate", "replicate"]
    assert flight.peak == 1 and flight.refused >= 1 and replicate_api.billed_jobs == 2
    assert CountedSlots.acquired == 2 + flight.refused  # a slot per try, given back between
    throttled = [r.getMessage() for r in caplog.records if "outcome=throttled" in r.getMessage()]
    assert len(throttled) == flight.refused
    assert chain.breakers["replicate"].state == "closed"


async def test_a_call_waits_for_the_fleets_retry_after_before_it_takes_a_slot(
    replicate_api: ReplicateEmulator, avatar
) -> None:
    """A call that waited for the Retry-After holding its slot kept it through the fleet's
    decrease and fired with every other such call the moment the Retry-After passed; the
    chain asks the fleet first, so the slots are taken under the limit in force then."""
    import contextlib

    from studio.providers import pace
    from studio.providers.chain import ProviderChain, ProviderPolicy
    from studio.providers.slots import LocalSlots

    order: list[str] = []
    passed = asyncio.Event()

    class Fleet:  # a Retry-After in force until `passed` is set
        async def before_call(self, provider: str) -> None:
            order.append(f"ask {provider}")
            await passed.wait()

        def throttled(self, *args: object) -> None: ...

        async def taken_in(self, provider: str) -> None: ...

        def succeeded(self, provider: str, sent_at: float | None = None) -> None: ...

    class Slots(LocalSlots):
        @contextlib.asynccontextmanager
        async def __call__(self, provider: str, *, wait: bool = True):
            async with super().__call__(provider, wait=wait):
                order.append(f"slot {provider}")
                yield

    provider = ReplicateFluxProvider(REPLICATE_TOKEN, base_url=replicate_api.url,
                                     poll_interval=0.02)
    chain = ProviderChain([provider], {"replicate": ProviderPolicy(max_attempts=1, timeout=10)},
                          slot=Slots({"replicate": 2}))
    fleet = Fleet()
    pace.register(fleet)
    try:
        call = asyncio.create_task(chain.generate(make_spec(0), avatar))
        await asyncio.sleep(0.2)
        assert order == ["ask replicate"]  # waiting, and holding no slot
        passed.set()
        result = await call
    finally:
        pace.unregister(fleet)
        await provider.aclose()
    assert result.provider == "replicate"
    # then the slot, and the create's own ask (a throttle may have come meanwhile)
    assert order == ["ask replicate", "slot replicate", "ask replicate"]
    # a provider that never reports to the fleet is not asked (no database read for it)
    assert "comfyui" not in pace.REPORTING


async def test_a_throttled_call_keeps_its_slot_until_the_fleet_has_taken_its_throttle_in(
    replicate_api: ReplicateEmulator, avatar
) -> None:
    """Given back at once, a refused call's slot went to the next waiting call under the
    limit its throttle was about to lower, and that call was refused too; the chain waits
    for the fleet to take the throttle in (pace.taken_in), then gives the slot back."""
    import contextlib

    from studio.providers import pace
    from studio.providers.chain import ProviderChain, ProviderPolicy
    from studio.providers.slots import LocalSlots

    order: list[str] = []
    taken = asyncio.Event()

    class Fleet:  # takes a throttle in once `taken` is set
        async def before_call(self, provider: str) -> None: ...

        def throttled(self, provider: str, *args: object) -> None:
            order.append(f"throttled {provider}")

        async def taken_in(self, provider: str) -> None:
            order.append(f"taking in {provider}")
            await taken.wait()

        def succeeded(self, provider: str, sent_at: float | None = None) -> None: ...

    class Slots(LocalSlots):
        @contextlib.asynccontextmanager
        async def __call__(self, provider: str, *, wait: bool = True):
            try:
                async with super().__call__(provider, wait=wait):
                    order.append(f"slot {provider}")
                    yield
            finally:
                order.append(f"slot back {provider}")

    replicate_api.behaviour.throttle_next = 1
    provider = ReplicateFluxProvider(REPLICATE_TOKEN, base_url=replicate_api.url,
                                     poll_interval=0.02)
    chain = ProviderChain([provider], {"replicate": ProviderPolicy(max_attempts=1, timeout=10)},
                          slot=Slots({"replicate": 1}))
    fleet = Fleet()
    pace.register(fleet)
    try:
        call = asyncio.create_task(chain.generate(make_spec(0), avatar))
        for _ in range(100):
            if "taking in replicate" in order:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        assert order == ["slot replicate", "throttled replicate", "taking in replicate"]
        taken.set()
        result = await call
    finally:
        pace.unregister(fleet)
        await provider.aclose()
    assert result.provider == "replicate"
    assert order[3:] == ["slot back replicate", "slot replicate", "slot back replicate"]

"""The provider chain against the three emulators, through the real clients."""

from __future__ import annotations

import asyncio
import logging

import pytest

from studio.breaker import BreakerState, CircuitBreaker
from studio.providers.chain import ChainExhausted, ProviderChain, ProviderPolicy
from studio.providers.comfyui import ComfyUIProvider
from studio.providers.modal_endpoint import ModalSDXLProvider
from studio.providers.replicate_flux import ReplicateFluxProvider
from tests.emulators.comfyui import ComfyUIEmulator
from tests.emulators.modal_endpoint import ModalEndpointEmulator
from tests.emulators.replicate_api import ReplicateEmulator
from tests.providers.conftest import MODAL_KEY, MODAL_SECRET, REPLICATE_TOKEN, make_spec

FAST = ProviderPolicy(max_attempts=1, timeout=10)


def comfy(emulator: ComfyUIEmulator) -> ComfyUIProvider:
    return ComfyUIProvider(emulator.url, poll_interval=0.01)


def modal_provider(emulator: ModalEndpointEmulator, secret: str = MODAL_SECRET):
    return ModalSDXLProvider(
        emulator.url, token_id=MODAL_KEY, token_secret=secret, price_usd=0.01
    )


def replicate_provider(emulator: ReplicateEmulator, token: str = REPLICATE_TOKEN):
    return ReplicateFluxProvider(token, base_url=emulator.url, poll_interval=0.02, price_usd=0.03)


class FakeSleep:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(round(seconds, 4))


async def test_comfyui_at_70_percent_still_yields_every_piece(
    comfyui: ComfyUIEmulator, modal: ModalEndpointEmulator, avatar
):
    comfyui.behaviour.failure_rate = 0.3
    chain = ProviderChain(
        [comfy(comfyui), modal_provider(modal)],
        {"comfyui": FAST, "modal": ProviderPolicy(max_attempts=3, timeout=10)},
        caps={"comfyui": 10, "modal": 3},
        breakers={"comfyui": CircuitBreaker(failure_threshold=1000)},
    )
    results = await asyncio.gather(*(chain.generate(make_spec(i), avatar) for i in range(30)))
    assert len(results) == 30
    served = {r.provider for r in results}
    assert served == {"comfyui", "modal"}
    fell_back = [r for r in results if r.provider == "modal"]
    assert len(fell_back) == comfyui.counters.requests("failed") > 0
    assert all("execution error" in r.failures["comfyui"] for r in fell_back)
    assert sum(r.cost_usd for r in results) == pytest.approx(0.01 * len(fell_back))
    assert modal.counters.peak <= 3


async def test_hung_provider_times_out_and_next_serves(
    comfyui: ComfyUIEmulator, replicate_api: ReplicateEmulator, spec, avatar, caplog
):
    comfyui.behaviour.hang = True
    chain = ProviderChain(
        [comfy(comfyui), replicate_provider(replicate_api)],
        {"comfyui": ProviderPolicy(timeout=0.3), "replicate": FAST},
    )
    with caplog.at_level(logging.INFO, logger="studio.providers"):
        result = await chain.generate(spec, avatar)
    assert result.provider == "replicate"
    assert "timed out" in result.failures["comfyui"]
    assert any("outcome=timeout" in r.getMessage() for r in caplog.records)
    # the abandoned prompt was running: interrupted (a delete would leave the GPU busy)
    assert comfyui.counters.requests("interrupt") == 1 and comfyui.executing == 0


async def test_node_errors_are_not_retried_and_the_next_serves(
    comfyui: ComfyUIEmulator, modal: ModalEndpointEmulator, spec, avatar
):
    comfyui.behaviour.extra["missing_loras"] = ["nova_v2.safetensors"]
    chain = ProviderChain(
        [comfy(comfyui), modal_provider(modal)],
        {"comfyui": ProviderPolicy(max_attempts=3, timeout=5), "modal": FAST},
        sleep=FakeSleep(),
    )
    result = await chain.generate(spec, avatar)
    assert result.provider == "modal"
    assert comfyui.counters.requests("prompt") == 1
    assert result.attempts == 2


async def test_retries_use_the_spec_backoff(modal: ModalEndpointEmulator, spec, avatar):
    modal.behaviour.failure_rate = 1.0
    sleep = FakeSleep()
    chain = ProviderChain(
        [modal_provider(modal)],
        {"modal": ProviderPolicy(max_attempts=3, backoff_factor=1.5, timeout=5)},
        sleep=sleep,
    )
    with pytest.raises(ChainExhausted) as caught:
        await chain.generate(spec, avatar)
    assert modal.counters.requests("post") == 3
    assert sleep.waits == [1.5, 2.25]
    assert caught.value.attempts == 3
    assert "HTTP 500" in caught.value.reasons["modal"]


async def test_exhausted_chain_names_every_provider(
    comfyui: ComfyUIEmulator, modal: ModalEndpointEmulator, replicate_api: ReplicateEmulator,
    spec, avatar,
):
    comfyui.behaviour.failure_rate = 1.0
    modal.behaviour.failure_rate = 1.0
    replicate_api.behaviour.failure_rate = 1.0
    chain = ProviderChain(
        [comfy(comfyui), modal_provider(modal), replicate_provider(replicate_api)],
        {"comfyui": FAST, "modal": FAST, "replicate": FAST},
    )
    with pytest.raises(ChainExhausted) as caught:
        await chain.generate(spec, avatar)
    assert set(caught.value.reasons) == {"comfyui", "modal", "replicate"}
    assert "comfyui: execution error" in str(caught.value)


async def test_breaker_opens_skips_and_recovers(
    comfyui: ComfyUIEmulator, modal: ModalEndpointEmulator, avatar, caplog
):
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=5, recovery_seconds=60, clock=lambda: now[0])
    comfyui.behaviour.failure_rate = 1.0
    chain = ProviderChain(
        [comfy(comfyui), modal_provider(modal)],
        {"comfyui": FAST, "modal": FAST},
        breakers={"comfyui": breaker},
    )
    for i in range(5):
        assert (await chain.generate(make_spec(i), avatar)).provider == "modal"
    assert breaker.state is BreakerState.OPEN
    assert comfyui.counters.requests("prompt") == 5

    with caplog.at_level(logging.INFO, logger="studio.providers"):
        result = await chain.generate(make_spec(5), avatar)
    assert result.provider == "modal"
    assert result.failures["comfyui"] == "circuit open"
    assert comfyui.counters.requests("prompt") == 5  # skipped: no call
    assert any("outcome=skipped" in r.getMessage() for r in caplog.records)

    now[0] = 61.0  # half-open: one trial goes through and, succeeding, closes the circuit
    comfyui.behaviour.failure_rate = 0.0
    assert breaker.state is BreakerState.HALF_OPEN
    result = await chain.generate(make_spec(6), avatar)
    assert result.provider == "comfyui"
    assert breaker.state is BreakerState.CLOSED


def test_half_open_failure_reopens_and_allows_one_trial():
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=2, recovery_seconds=10, clock=lambda: now[0])
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure()
    assert not breaker.allow()
    now[0] = 10.0
    assert breaker.allow()
    assert not breaker.allow()  # a single trial at a time
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    now[0] = 19.0
    assert not breaker.allow()


async def test_peak_concurrency_never_exceeds_the_caps(
    comfyui: ComfyUIEmulator, modal: ModalEndpointEmulator, avatar
):
    comfyui.behaviour.latency = (0.02, 0.08)
    comfyui.behaviour.failure_rate = 0.5
    modal.behaviour.latency = (0.05, 0.1)
    chain = ProviderChain(
        [comfy(comfyui), modal_provider(modal)],
        {"comfyui": FAST, "modal": FAST},
        caps={"comfyui": 4, "modal": 2},
        breakers={"comfyui": CircuitBreaker(failure_threshold=1000)},
    )
    results = await asyncio.gather(*(chain.generate(make_spec(i), avatar) for i in range(40)))
    assert len(results) == 40
    assert comfyui.counters.peak == 4  # the cap was reached...
    assert modal.counters.peak == 2  # ...and never passed


async def test_speed_strategy_routes_to_a_free_provider(
    comfyui: ComfyUIEmulator, modal: ModalEndpointEmulator, replicate_api: ReplicateEmulator,
    avatar,
):
    comfyui.behaviour.latency = (0.5, 0.5)
    chain = ProviderChain(
        [comfy(comfyui), modal_provider(modal), replicate_provider(replicate_api)],
        {"comfyui": FAST, "modal": FAST, "replicate": FAST},
        caps={"comfyui": 1, "modal": 1, "replicate": 1},
        speed=True,
    )
    first = asyncio.create_task(chain.generate(make_spec(0), avatar))
    while comfyui.counters.in_flight == 0:  # until it holds ComfyUI's only slot
        await asyncio.sleep(0.01)
    second = await chain.generate(make_spec(1), avatar)
    assert second.provider == "modal"
    assert (await first).provider == "comfyui"


async def test_default_strategy_queues_for_the_first_provider(
    comfyui: ComfyUIEmulator, modal: ModalEndpointEmulator, avatar
):
    comfyui.behaviour.latency = (0.2, 0.2)
    chain = ProviderChain(
        [comfy(comfyui), modal_provider(modal)],
        {"comfyui": FAST, "modal": FAST},
        caps={"comfyui": 1, "modal": 1},
    )
    results = await asyncio.gather(*(chain.generate(make_spec(i), avatar) for i in range(3)))
    assert {r.provider for r in results} == {"comfyui"}


async def test_no_secret_in_logs_or_exceptions(
    modal: ModalEndpointEmulator, replicate_api: ReplicateEmulator, spec, avatar, caplog
):
    bad_secret = "ws-SECRET-never-print-0042"
    bad_token = "r8_SECRET_never_print_0042"
    chain = ProviderChain(
        [modal_provider(modal, secret=bad_secret), replicate_provider(replicate_api, bad_token)],
        {"modal": FAST, "replicate": FAST},
        secrets=[MODAL_KEY, bad_secret, bad_token],
    )
    with caplog.at_level(logging.DEBUG), pytest.raises(ChainExhausted) as caught:
        await chain.generate(spec, avatar)
    text = caplog.text + str(caught.value) + repr(caught.value.reasons)
    for secret in (MODAL_KEY, bad_secret, bad_token):
        assert secret not in text
    assert "401" in caught.value.reasons["modal"]


async def test_attempt_lines_carry_provider_attempt_duration_outcome(
    comfyui: ComfyUIEmulator, spec, avatar, caplog
):
    chain = ProviderChain([comfy(comfyui)], {"comfyui": FAST})
    with caplog.at_level(logging.INFO, logger="studio.providers"):
        await chain.generate(spec, avatar)
    line = next(r.getMessage() for r in caplog.records if "provider_attempt" in r.getMessage())
    for part in (f"piece={spec.piece_id}", "provider=comfyui", "attempt=1", "duration=",
                 "outcome=ok"):
        assert part in line


class LeakyProvider:
    """A provider whose error text carries a secret, as a careless client might."""

    name = "modal"
    stand_in = False

    async def generate(self, spec, avatar, job=None):
        from studio.providers.base import ProviderError

        raise ProviderError("modal", f"upstream said: bad key {MODAL_SECRET}")


async def test_secrets_in_provider_errors_are_redacted(spec, avatar, caplog):
    chain = ProviderChain([LeakyProvider()], {"modal": FAST}, secrets=[MODAL_SECRET])
    with caplog.at_level(logging.DEBUG), pytest.raises(ChainExhausted) as caught:
        await chain.generate(spec, avatar)
    assert MODAL_SECRET not in caplog.text + str(caught.value)
    assert "***" in str(caught.value)


async def test_speed_waits_for_whichever_provider_frees_first(
    comfyui: ComfyUIEmulator, modal: ModalEndpointEmulator, avatar
):
    comfyui.behaviour.latency = (1.0, 1.0)
    modal.behaviour.latency = (0.1, 0.1)
    chain = ProviderChain(
        [comfy(comfyui), modal_provider(modal)],
        {"comfyui": FAST, "modal": FAST},
        caps={"comfyui": 1, "modal": 1},
        speed=True,
    )
    first = asyncio.create_task(chain.generate(make_spec(0), avatar))
    while comfyui.counters.in_flight == 0:
        await asyncio.sleep(0.01)
    second = asyncio.create_task(chain.generate(make_spec(1), avatar))
    while modal.counters.in_flight == 0:
        await asyncio.sleep(0.01)
    third = await chain.generate(make_spec(2), avatar)  # both saturated: waits for either
    assert third.provider == "modal"  # Modal freed its slot first; no queueing on ComfyUI
    assert (await second).provider == "modal"
    assert (await first).provider == "comfyui"


async def test_cost_strategy_retries_the_free_provider_before_a_billed_one(
    comfyui: ComfyUIEmulator, modal: ModalEndpointEmulator, avatar, monkeypatch
):
    from studio.providers.build import build_provider_chain
    from studio.providers.settings import ProviderSettings

    for key, value in {
        "PROVIDER_STRATEGY": "cost-optimized", "COMFYUI_ENABLED": "true",
        "COMFYUI_ENDPOINT": comfyui.url, "COMFYUI_POLL_INTERVAL": "0.01",
        "MODAL_SDXL_ENDPOINT": modal.url, "MODAL_TOKEN_ID": MODAL_KEY,
        "MODAL_TOKEN_SECRET": MODAL_SECRET, "PROVIDER_BACKOFF_UNIT": "0",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("LORA_INFERENCE_PROVIDER_ORDER", raising=False)
    monkeypatch.delenv("REPLICATE_API_TOKEN", raising=False)
    chain = build_provider_chain(ProviderSettings(_env_file=None))
    assert chain.names == ["comfyui", "modal"] and chain.policy("comfyui").max_attempts == 2
    comfyui.behaviour.failure_rate = 1.0
    result = await chain.generate(make_spec(0), avatar)
    assert result.provider == "modal" and result.attempts == 3  # comfyui twice, then paid
    assert comfyui.counters.requests("failed") == 2

    def free_attempts() -> int:
        return build_provider_chain(ProviderSettings(_env_file=None)).policy("comfyui").max_attempts

    monkeypatch.setenv("COST_OPTIMIZED_FREE_RETRIES", "0")
    assert free_attempts() == 1
    monkeypatch.setenv("PROVIDER_STRATEGY", "default")
    monkeypatch.delenv("COST_OPTIMIZED_FREE_RETRIES")
    assert free_attempts() == 1

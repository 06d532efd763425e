"""Requests per second as Prefect rate limits (issue 20, part 3), in one process on a real
Prefect API: the settings refuse bad values naming the variable, `apply_rate_limits`
creates, updates and deletes `rate:<provider>`, and the listener of
engine/provider_rates.py paces `pace.before_call` with Prefect's `rate_limit` only when
such a limit is in force (a studio without one pays nothing per call). Several
processes and the Replicate emulator: tests/prefect_server/test_rate_limits.py."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.exceptions import ObjectNotFound

from deployments.rate_limits import apply_rate_limits, read_rate_limits
from engine import provider_rates
from engine.provider_rates import RateListener
from studio.providers import pace
from studio.providers.rate_settings import RATE_VARIABLES, burst, load_rate_settings
from studio.request import BatchRequestError

NAMES = ("rate:replicate", "rate:anthropic")


async def _delete_rate_limits() -> None:
    async with get_client() as client:
        for name in NAMES:
            try:
                await client.delete_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                pass


@pytest.fixture(autouse=True)
async def _clean(monkeypatch, tmp_path) -> AsyncIterator[None]:
    """No rate variable, no rate limit on the server, no listener, before and after."""
    for variable in RATE_VARIABLES.values():
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.chdir(tmp_path)  # no .env of a checkout
    await _delete_rate_limits()
    provider_rates.uninstall()
    yield
    provider_rates.uninstall()
    await _delete_rate_limits()


@pytest.fixture
def listener() -> Iterator[RateListener]:
    made = RateListener()
    pace.register(made)
    try:
        yield made
    finally:
        pace.unregister(made)


async def _times(n: int, provider: str = "replicate") -> list[float]:
    """Seconds from the start at which each of `n` concurrent before_call returned."""
    start = time.monotonic()

    async def one() -> float:
        await pace.before_call(provider)
        return time.monotonic() - start

    return sorted(await asyncio.gather(*(one() for _ in range(n))))


# --- settings ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [("REPLICATE_RPS", "0"), ("REPLICATE_RPS", "-1"), ("REPLICATE_RPS", "fast"),
     ("REPLICATE_RPS", "nan"), ("REPLICATE_RPS", "inf"), ("ANTHROPIC_RPM", "0"),
     ("ANTHROPIC_RPM", "fifty")],
)
async def test_bad_values_are_refused_naming_the_variable_before_prefect_is_touched(
    monkeypatch, variable, value
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(BatchRequestError) as refused:
        load_rate_settings()
    assert refused.value.field == variable
    assert "\n" not in str(refused.value)
    assert str(refused.value).startswith(f"{variable}: must be a number above 0")
    with pytest.raises(BatchRequestError):
        await apply_rate_limits()
    report = await read_rate_limits()  # nothing was created; showing does not fail on it
    assert not report["rate:replicate"]["exists"] and not report["rate:anthropic"]["exists"]


def test_unset_or_empty_means_no_rate(monkeypatch) -> None:
    monkeypatch.setenv("REPLICATE_RPS", "")
    settings = load_rate_settings()
    assert settings.per_second("replicate") is None and settings.per_second("anthropic") is None
    assert settings.per_second("modal") is None  # a provider that documents no rate


def test_burst_is_one_seconds_worth_and_at_least_one() -> None:
    assert [burst(r) for r in (0.2, 1, 1.5, 2, 10)] == [1, 1, 2, 2, 10]


# --- apply / read -----------------------------------------------------------


async def test_apply_creates_updates_keeps_and_deletes(monkeypatch) -> None:
    assert await apply_rate_limits() == {
        "rate:replicate": "none (REPLICATE_RPS unset)",
        "rate:anthropic": "none (ANTHROPIC_RPM unset)",
    }
    monkeypatch.setenv("REPLICATE_RPS", "2.5")
    monkeypatch.setenv("ANTHROPIC_RPM", "50")
    done = await apply_rate_limits()
    assert done["rate:replicate"] == "created (limit 3, 2.5/s from REPLICATE_RPS=2.5)"
    assert done["rate:anthropic"] == "created (limit 1, 0.833333/s from ANTHROPIC_RPM=50)"
    report = await read_rate_limits()
    assert report["rate:replicate"] | {"active_slots": 0} == {
        "provider": "replicate", "variable": "REPLICATE_RPS", "configured": 2.5,
        "exists": True, "limit": 3, "slot_decay_per_second": 2.5, "active_slots": 0,
        "active": True,
    }
    assert report["rate:anthropic"]["slot_decay_per_second"] == pytest.approx(50 / 60)
    assert report["rate:anthropic"]["configured"] == 50

    again = await apply_rate_limits()
    assert again["rate:replicate"].startswith("unchanged (limit 3")

    # an operator's hand edit (deactivated) is put back to the variable's rate
    async with get_client() as client:
        await client.update_global_concurrency_limit(
            "rate:replicate", GlobalConcurrencyLimitUpdate(active=False)
        )
    monkeypatch.setenv("REPLICATE_RPS", "0.5")
    changed = await apply_rate_limits()
    assert changed["rate:replicate"] == (
        "updated (limit 3, 2.5/s -> limit 1, 0.5/s from REPLICATE_RPS=0.5)"
    )
    report = await read_rate_limits()
    assert report["rate:replicate"]["active"] and report["rate:replicate"]["limit"] == 1

    # unset: an old rate limit must not keep throttling
    monkeypatch.delenv("REPLICATE_RPS")
    monkeypatch.delenv("ANTHROPIC_RPM")
    assert await apply_rate_limits() == {
        "rate:replicate": "deleted (REPLICATE_RPS unset)",
        "rate:anthropic": "deleted (ANTHROPIC_RPM unset)",
    }
    report = await read_rate_limits()
    assert report["rate:replicate"] == {
        "provider": "replicate", "variable": "REPLICATE_RPS", "configured": None,
        "exists": False,
    }


async def test_apply_and_read_take_a_given_client_and_settings() -> None:
    settings = load_rate_settings(REPLICATE_RPS=4)
    async with get_client() as client:
        done = await apply_rate_limits(client, settings)
        report = await read_rate_limits(client, settings)
    assert done["rate:replicate"].startswith("created (limit 4, 4/s")
    assert report["rate:replicate"]["configured"] == 4


# --- the listener -----------------------------------------------------------


def test_install_is_idempotent() -> None:
    provider_rates.install()
    provider_rates.install()
    mine = [x for x in pace.listeners() if isinstance(x, RateListener)]
    assert mine == [provider_rates.listener()]
    provider_rates.uninstall()
    assert not [x for x in pace.listeners() if isinstance(x, RateListener)]


async def test_without_a_rate_limit_a_call_pays_nothing(listener: RateListener) -> None:
    first = time.perf_counter()
    await pace.before_call("replicate")  # reads once that there is no rate:replicate
    first = time.perf_counter() - first
    start = time.perf_counter()
    for _ in range(500):
        await pace.before_call("replicate")
    each = (time.perf_counter() - start) / 500
    # a dictionary look-up, not a request: Prefect's own rate_limit() would POST
    # /v2/concurrency_limits/increment for every call (several ms each) and log a
    # "do not exist" warning into the run's logs every time
    assert each < 0.0005, f"{each * 1000:.3f} ms per call without a rate limit"
    assert not await listener.in_force("replicate")
    assert first < 30


async def test_a_rate_limit_paces_the_calls(monkeypatch, listener: RateListener) -> None:
    await apply_rate_limits(settings=load_rate_settings(REPLICATE_RPS=4))
    times = await _times(10)
    # a burst of 4 at once, then 6 more at 4 per second: at least ~1.5 s (loose: 1.2 s),
    # never quicker than the decay allows
    assert times[-1] >= 1.2, times
    assert times[-1] < 30, times
    for later, earlier in zip(times[4:], times, strict=False):
        # any 5 calls span at least one slot's decay (0.25 s), less a scheduling margin
        assert later - earlier >= 0.1, times


async def test_anthropic_rpm_paces_per_minute(listener: RateListener) -> None:
    await apply_rate_limits(settings=load_rate_settings(ANTHROPIC_RPM=120))  # 2 per second
    times = await _times(4, "anthropic")
    assert times[-1] >= 1.0, times  # burst 2, two more at 2/s
    assert (await _times(1, "replicate"))[0] < 5  # Replicate has none: not paced


async def test_a_limit_made_or_removed_later_is_seen_within_the_check_window() -> None:
    window = 3.0
    listener = RateListener(check_seconds=window)
    pace.register(listener)
    try:
        assert not await listener.in_force("replicate")
        read_at = time.monotonic()
        await apply_rate_limits(settings=load_rate_settings(REPLICATE_RPS=1))
        if time.monotonic() - read_at < window:  # (a loaded machine may take longer)
            assert not await listener.in_force("replicate")  # still trusted as absent
        await asyncio.sleep(max(0.0, read_at + window + 0.1 - time.monotonic()))
        assert await listener.in_force("replicate")
        times = await _times(3)
        assert times[-1] >= 1.5, times  # 1 at once, then 1 per second
        await apply_rate_limits(settings=load_rate_settings())  # unset: deleted
        listener.forget("replicate")  # (or wait out the window)
        assert not await listener.in_force("replicate")
        assert (await _times(5))[-1] < 1.0
    finally:
        pace.unregister(listener)


@pytest.mark.parametrize(
    "made",
    [
        GlobalConcurrencyLimitCreate(name="rate:replicate", limit=1),  # no decay: plain
        GlobalConcurrencyLimitCreate(
            name="rate:replicate", limit=1, slot_decay_per_second=0.1, active=False
        ),
    ],
    ids=["plain-limit", "inactive"],
)
async def test_a_limit_that_cannot_pace_never_holds_a_call(
    listener: RateListener, made
) -> None:
    async with get_client() as client:
        await client.create_global_concurrency_limit(made)
    assert not await listener.in_force("replicate")
    assert (await _times(5))[-1] < 1.0  # 0.1/s would take 40 s


async def test_a_limit_changed_under_a_process_lets_the_call_go_and_is_read_again(
    listener: RateListener, caplog
) -> None:
    await apply_rate_limits(settings=load_rate_settings(REPLICATE_RPS=1))
    assert await listener.in_force("replicate")
    async with get_client() as client:  # by hand: made a plain limit (Prefect answers 422)
        await client.update_global_concurrency_limit(
            "rate:replicate", GlobalConcurrencyLimitUpdate(slot_decay_per_second=0.0)
        )
    with caplog.at_level(logging.WARNING, logger="studio.providers"):
        await pace.before_call("replicate")
    assert "provider_rate_skipped provider=replicate limit=rate:replicate" in caplog.text
    assert not await listener.in_force("replicate")  # read again: no longer a rate limit


async def test_an_unreachable_prefect_api_never_holds_a_call(listener, caplog) -> None:
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_CLIENT_MAX_RETRIES,
        temporary_settings,
    )

    with temporary_settings(
        {PREFECT_API_URL: "http://127.0.0.1:9/api", PREFECT_CLIENT_MAX_RETRIES: 0}
    ), caplog.at_level(logging.WARNING, logger="studio.providers"):
        start = time.monotonic()
        for _ in range(3):
            await pace.before_call("replicate")
        assert time.monotonic() - start < 10
    warned = [r for r in caplog.records if "provider_rate_unknown" in r.getMessage()]
    assert len(warned) == 1  # said once, not per call
    assert "provider=replicate limit=rate:replicate" in warned[0].getMessage()

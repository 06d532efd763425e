"""The chain writes every billed attempt to the ledger, recovers lost jobs by id instead
of buying them again, and stops billed calls at a budget (counted at the emulator)."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from sqlalchemy import select

from studio.db.engine import session_scope
from studio.db.models import CostLedgerEntry
from studio.ledger.jobs import ImageCallLedger
from studio.ledger.settings import LedgerSettings
from studio.ledger.store import CostLedger
from studio.ledger.totals import batch_cost
from studio.providers.chain import ChainExhausted, ProviderChain, ProviderPolicy
from studio.providers.modal_endpoint import ModalSDXLProvider
from tests.emulators.base import Behaviour
from tests.emulators.modal_endpoint import ModalEndpointEmulator
from tests.ledger.conftest import AVATAR, SeamProvider, piece

KEY, SECRET = "wk-ledger", "ws-ledger"
TWICE = ProviderPolicy(max_attempts=2, backoff_unit=0.0, timeout=10)


def ledger(**budgets: float) -> ImageCallLedger:
    return ImageCallLedger(CostLedger(LedgerSettings(_env_file=None, **budgets)))


def rows(piece_id: str | None = None) -> list[CostLedgerEntry]:
    with session_scope() as session:
        stmt = select(CostLedgerEntry).order_by(CostLedgerEntry.created_at)
        if piece_id:
            stmt = stmt.where(CostLedgerEntry.piece_id == piece_id)
        return list(session.scalars(stmt))


def billed_total(batch_id: str = "batch-ledger") -> float:
    with session_scope() as session:
        return batch_cost(session, batch_id).total_usd


async def test_each_billed_attempt_is_a_row_with_its_job_id(any_database) -> None:
    provider = SeamProvider()
    chain = ProviderChain([provider], {"replicate": TWICE}, ledger=ledger())
    results = await asyncio.gather(*(chain.generate(piece(i), AVATAR) for i in range(4)))
    assert {r.job_id for r in results} == {f"replicate-job-{i}" for i in range(4)}
    billed = [r for r in rows() if r.status == "billed"]
    assert len(billed) == 4 == len(provider.created_jobs)
    assert {r.job_id for r in billed} == set(provider.created_jobs)
    assert {(r.kind, r.provider, r.outcome, r.avatar_id) for r in billed} == {
        ("image", "replicate", "ok", AVATAR.id)
    }
    assert billed_total() == pytest.approx(0.12)


async def test_a_lost_output_is_fetched_by_id_on_retry_not_bought_twice(any_database) -> None:
    provider = SeamProvider()
    spec = piece(0)
    provider.lose.add(spec.piece_id)
    chain = ProviderChain([provider], {"replicate": TWICE}, ledger=ledger())
    result = await chain.generate(spec, AVATAR)
    assert result.attempts == 2
    assert provider.created_jobs == ["replicate-job-0"]  # one job bought
    assert provider.fetched == ["replicate-job-0"]  # the retry fetched it
    first, retry = rows(spec.piece_id)
    assert (first.status, first.outcome, first.job_id) == ("billed", "recovered", "replicate-job-0")
    assert (retry.status, retry.outcome) == ("released", "recovered")
    assert billed_total() == pytest.approx(0.03)


async def test_a_resumed_batch_recovers_a_job_a_killed_process_left_billed(any_database) -> None:
    spec = piece(1)
    store = CostLedger(LedgerSettings(_env_file=None))
    first = ledger()
    job = await first.open(
        batch_id=spec.batch_id, avatar_id=AVATAR.id, piece_id=spec.piece_id,
        provider="replicate", price_usd=0.03,
    )
    job.created("replicate-job-77")  # billed, then the process died mid-poll
    await asyncio.sleep(0.2)  # the billed mark is written from a worker thread
    provider = SeamProvider()
    chain = ProviderChain([provider], {"replicate": TWICE}, ledger=ImageCallLedger(store))
    await chain.generate(spec, AVATAR)
    assert provider.fetched == ["replicate-job-77"] and provider.created_jobs == []
    assert billed_total() == pytest.approx(0.03)
    assert [r.outcome for r in rows(spec.piece_id)] == ["recovered", "recovered"]


async def test_an_expired_job_is_replaced_and_the_new_one_billed(any_database) -> None:
    provider = SeamProvider()
    spec = piece(2)
    provider.lose.add(spec.piece_id)
    provider.expired.add("replicate-job-0")
    chain = ProviderChain([provider], {"replicate": TWICE}, ledger=ledger())
    await chain.generate(spec, AVATAR)
    assert provider.created_jobs == ["replicate-job-0", "replicate-job-1"]
    assert [(r.status, r.outcome) for r in rows(spec.piece_id)] == [
        ("billed", "abandoned"), ("billed", "ok")
    ]
    assert billed_total() == pytest.approx(0.06)


async def test_a_call_that_never_reached_billing_is_released(any_database) -> None:
    provider = SeamProvider()
    provider.refuse_create = True
    chain = ProviderChain([provider], {"replicate": TWICE}, ledger=ledger())
    with pytest.raises(ChainExhausted):
        await chain.generate(piece(3), AVATAR)
    assert [(r.status, r.outcome) for r in rows()] == [("released", "failed")]
    assert billed_total() == 0


async def test_free_providers_write_nothing(any_database) -> None:
    free = SeamProvider("comfyui", price_usd=0.0)
    chain = ProviderChain([free], ledger=ledger())
    result = await chain.generate(piece(4), AVATAR)
    assert result.provider == "comfyui" and result.job_id == "comfyui-job-0"
    assert rows() == []


async def test_budget_stops_billed_calls_and_sends_the_rest_to_a_free_provider(
    any_database, caplog
) -> None:
    paid, free = SeamProvider("replicate"), SeamProvider("comfyui", price_usd=0.0)
    chain = ProviderChain(
        [paid, free], {"replicate": TWICE}, ledger=ledger(batch_budget_usd=0.07)
    )
    batch = f"bb-{uuid.uuid4().hex[:8]}"  # the warning is once per batch and process
    with caplog.at_level(logging.WARNING, logger="studio.ledger"):
        results = [await chain.generate(piece(i, batch), AVATAR) for i in range(5)]
    assert [r.provider for r in results] == ["replicate", "replicate"] + ["comfyui"] * 3
    assert results[2].failures == {"replicate": "budget"}
    assert len(paid.created_jobs) == 2
    assert billed_total(batch) == pytest.approx(0.06)
    lines = [r.getMessage() for r in caplog.records if "Budget reached" in r.getMessage()]
    assert lines == [f"Budget reached | Batch: {batch} | Spent: $0.06 | Budget: $0.07"]


@pytest.fixture
def modal():
    emulator = ModalEndpointEmulator(Behaviour(seed=5), token_id=KEY, token_secret=SECRET)
    with emulator:
        yield emulator


async def test_budget_below_a_batch_stops_at_the_budget_counted_at_the_emulator(
    any_database, modal
) -> None:
    provider = ModalSDXLProvider(modal.url, token_id=KEY, token_secret=SECRET, price_usd=0.01)
    chain = ProviderChain(
        [provider], {"modal": ProviderPolicy(timeout=10)}, caps={"modal": 3},
        ledger=ledger(batch_budget_usd=0.05),
    )
    outcomes = await asyncio.gather(
        *(chain.generate(piece(i, "batch-modal"), AVATAR) for i in range(12)),
        return_exceptions=True,
    )
    made = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, ChainExhausted)]
    assert len(made) == 5 and len(refused) == 7
    assert all(o.budget for o in refused)
    assert modal.counters.requests("post") == 5  # the provider saw exactly the budget
    assert billed_total("batch-modal") == pytest.approx(0.05)


@pytest.fixture
def replicate_api():
    from tests.emulators.replicate_api import ReplicateEmulator

    with ReplicateEmulator(Behaviour(seed=6), token="r8_ledger") as emulator:
        yield emulator


async def test_a_lost_download_at_replicate_is_recovered_by_id_without_a_second_job(
    any_database, replicate_api
) -> None:
    from studio.providers.replicate_flux import ReplicateFluxProvider

    replicate_api.file_fail_next = 1  # the prediction succeeds, its download fails once
    provider = ReplicateFluxProvider(
        "r8_ledger", base_url=replicate_api.url, poll_interval=0.02, price_usd=0.03
    )
    chain = ProviderChain([provider], {"replicate": TWICE}, ledger=ledger())
    spec = piece(0, f"br-{uuid.uuid4().hex[:8]}")
    result = await chain.generate(spec, AVATAR)
    assert result.attempts == 2
    assert replicate_api.billed_jobs == 1  # counted at the provider: bought once
    first, retry = rows(spec.piece_id)
    assert (first.status, first.outcome) == ("billed", "recovered")
    assert first.job_id == result.job_id or retry.job_id == first.job_id
    assert retry.status == "released"
    assert billed_total(spec.batch_id) == pytest.approx(0.03)

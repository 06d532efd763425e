"""The real clients through the provider chain and the cost ledger, against emulators
answering documented (and undocumented) shapes: the issue's "done when" at chain level.

Billing is counted twice, independently: at the emulator (what the provider bills) and
in the ledger (what we say we were billed); they must agree.
"""

from __future__ import annotations

import asyncio

import pytest

from studio.ledger.jobs import ImageCallLedger
from studio.ledger.settings import LedgerSettings
from studio.ledger.store import CostLedger
from studio.ledger.totals import batch_cost
from studio.providers.chain import ChainExhausted, ProviderChain, ProviderPolicy
from studio.providers.comfyui import ComfyUIProvider
from studio.providers.modal_endpoint import ModalSDXLProvider
from studio.providers.replicate_flux import ReplicateFluxProvider
from tests.emulators.modal_endpoint import ModalEndpointEmulator
from tests.emulators.replicate_api import ReplicateEmulator
from tests.providers.conftest import MODAL_KEY, MODAL_SECRET, REPLICATE_TOKEN, make_spec

ONCE = ProviderPolicy(max_attempts=1, timeout=10)
TWICE = ProviderPolicy(max_attempts=2, backoff_unit=0.0, timeout=10)
PNG = b"\x89PNG\r\n\x1a\n"


def ledger() -> ImageCallLedger:
    return ImageCallLedger(CostLedger(LedgerSettings(_env_file=None)))


def billed_usd(batch_id: str = "b-1") -> float:
    from studio.db.engine import session_scope

    with session_scope() as session:
        return batch_cost(session, batch_id).total_usd


def replicate(emulator: ReplicateEmulator) -> ReplicateFluxProvider:
    return ReplicateFluxProvider(
        REPLICATE_TOKEN, base_url=emulator.url, poll_interval=0.02, price_usd=0.03
    )


async def test_comfyui_down_and_sync_data_uris_deliver_every_piece_billed_once(
    any_database, replicate_api: ReplicateEmulator, avatar
):
    replicate_api.output_scheme = "data"
    down = ComfyUIProvider("http://127.0.0.1:9", poll_interval=0.01)
    chain = ProviderChain(
        [down, replicate(replicate_api)], {"comfyui": ONCE, "replicate": TWICE},
        ledger=ledger(),
    )
    results = await asyncio.gather(*(chain.generate(make_spec(i), avatar) for i in range(10)))
    assert [r.provider for r in results] == ["replicate"] * 10
    assert all(r.image.data.startswith(PNG) for r in results)
    assert replicate_api.billed_jobs == 10
    assert {r.job_id for r in results} == set(replicate_api.predictions)
    assert billed_usd() == pytest.approx(10 * 0.03)


async def test_a_lost_download_is_recovered_by_the_chain_retry_without_a_second_bill(
    any_database, replicate_api: ReplicateEmulator, spec, avatar
):
    replicate_api.file_fail_next = 1
    chain = ProviderChain([replicate(replicate_api)], {"replicate": TWICE}, ledger=ledger())
    result = await chain.generate(spec, avatar)
    assert result.attempts == 2 and result.image.data.startswith(PNG)
    assert replicate_api.billed_jobs == 1 and replicate_api.counters.requests("create") == 1
    assert billed_usd() == pytest.approx(0.03)


async def test_a_lost_modal_result_is_recovered_by_call_id_without_a_second_bill(
    any_database, modal: ModalEndpointEmulator, spec, avatar
):
    modal.redirect_after = 0.02
    modal.behaviour.latency = (0.3, 0.3)
    modal.result_fail_next = 1
    provider = ModalSDXLProvider(
        modal.url, token_id=MODAL_KEY, token_secret=MODAL_SECRET, price_usd=0.01
    )
    chain = ProviderChain([provider], {"modal": TWICE}, ledger=ledger())
    result = await chain.generate(spec, avatar)
    assert result.attempts == 2
    assert modal.billed_jobs == 1 and billed_usd() == pytest.approx(0.01)


async def test_an_undocumented_output_is_retried_and_every_billed_call_counted(
    any_database, replicate_api: ReplicateEmulator, spec, avatar
):
    replicate_api.output_override = []
    chain = ProviderChain([replicate(replicate_api)], {"replicate": TWICE}, ledger=ledger())
    with pytest.raises(ChainExhausted) as caught:
        await chain.generate(spec, avatar)
    assert "replicate: unexpected output shape: empty list" in str(caught.value)
    assert caught.value.attempts == 2
    assert replicate_api.billed_jobs == 2  # the retry bought a new prediction...
    assert billed_usd() == pytest.approx(2 * 0.03)  # ...and both stay in the ledger

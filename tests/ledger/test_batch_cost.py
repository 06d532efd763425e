"""Through the real flow on a real Prefect API: the batch's cost, its row, its result and
its `[BATCH COMPLETE]` line are sums of the ledger; a resumed batch adds only its new
calls; a budget below one batch's cost stops billed calls and the rest say `budget`."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import select

from studio.db.engine import session_scope
from studio.db.models import Batch, CostLedgerEntry
from tests.ledger.conftest import SeamProvider
from tests.tasks.conftest import emulators, provider_env  # noqa: F401 - fixtures

PROMPTS = [f"a calm studio portrait, soft light, scene {i}" for i in range(6)]


@pytest.fixture(autouse=True)
def _prefect(prefect_api) -> None:
    return None


@pytest.fixture
def demo(studio_env) -> str:
    from studio.bootstrap import ensure_demo_avatar

    ensure_demo_avatar()
    return "demo"


def batch_row(batch_id: str) -> Batch:
    with session_scope() as session:
        return session.get(Batch, batch_id)


@pytest.fixture
def seam_chain(monkeypatch):
    """The image step's chain with a billed provider that implements the seam."""
    import tasks.generate_images as generate_images
    from studio.ledger.jobs import ImageCallLedger
    from studio.providers.chain import ProviderChain

    provider = SeamProvider()
    monkeypatch.setattr(
        generate_images, "_chain", ProviderChain([provider], ledger=ImageCallLedger())
    )
    return provider


def ledger_rows(batch_id: str) -> list[CostLedgerEntry]:
    with session_scope() as session:
        return list(session.scalars(
            select(CostLedgerEntry).where(CostLedgerEntry.batch_id == batch_id)
        ))


async def test_failed_pieces_after_billed_calls_report_the_billed_total_and_resume_adds_only_new(
    demo, seam_chain, caplog
) -> None:
    from flows.content_batch import content_batch

    seam_chain.lose_index.update({0, 1})  # billed, then their outputs were lost
    with caplog.at_level(logging.INFO):
        state = await content_batch(
            avatar_id=demo, num_pieces=6, custom_prompts=PROMPTS, upload_to_storage=False,
            return_state=True,
        )
    assert state.is_failed()  # 4/6 made, below min_success_ratio: resumable
    first = batch_row(_only_batch_id())
    assert first.failed == 2 and first.requested == 6
    assert first.cost_usd == pytest.approx(0.18)  # 6 billed calls, 4 images delivered
    assert first.cost_breakdown["images"] == pytest.approx(0.18)
    assert "| Cost: $0.18" in caplog.text

    # resume: piece 0's job is fetched by id (free), piece 1's expired and is bought again
    seam_chain.expired.add(seam_chain.job_of_index[1])
    resumed = await content_batch(
        avatar_id=demo, resume_batch_id=first.id, upload_to_storage=False
    )
    assert seam_chain.fetched == [seam_chain.job_of_index[0]]
    assert len(seam_chain.created_jobs) == 7
    assert resumed.failed == 0
    assert resumed.cost_usd == pytest.approx(0.21)  # the first run's 0.18 + one new call
    assert sum(p.cost_usd for p in resumed.pieces) == pytest.approx(0.21)
    billed = [r for r in ledger_rows(first.id) if r.status == "billed"]
    assert len(billed) == 7
    assert batch_row(first.id).cost_usd == pytest.approx(0.21)


def _only_batch_id() -> str:
    with session_scope() as session:
        return session.scalars(select(Batch.id)).one()


async def test_budget_below_one_batch_stops_billed_calls_at_the_budget(
    demo, provider_env, emulators, monkeypatch, caplog  # noqa: F811
) -> None:
    from flows.content_batch import content_batch
    from studio.settings import reload_settings

    monkeypatch.setenv("MIN_SUCCESS_RATIO", "0")
    reload_settings()
    comfyui, modal, replicate = emulators
    comfyui.behaviour.failure_rate = 1.0  # the free provider is down: Modal ($0.01) serves
    monkeypatch.setenv("BATCH_BUDGET_USD", "0.05")
    with caplog.at_level(logging.INFO):
        result = await content_batch(
            avatar_id=demo, num_pieces=8, custom_prompts=PROMPTS + PROMPTS[:2],
            upload_to_storage=False,
        )
    assert modal.counters.requests("post") == 5  # counted at the provider
    assert replicate.billed_jobs == 0  # $0.03 never fit in what was left
    assert result.requested - result.failed == 5
    assert sorted(p.reason for p in result.pieces if p.status.value == "failed") == ["budget"] * 3
    assert result.cost_usd == pytest.approx(0.05)
    warned = [r for r in caplog.records if r.getMessage().startswith("Budget reached")]
    assert len(warned) == 1
    assert f"Batch: {result.batch_id} | Spent: $0.05" in warned[0].getMessage()
    assert "Budget: $0.05" in warned[0].getMessage()


async def test_comfyui_down_replicate_sync_data_uris_deliver_every_piece_billed_once(
    demo, provider_env, emulators, monkeypatch  # noqa: F811
) -> None:
    """The issue's "done when": 10/10 through Replicate's sync mode answering `data:`
    URIs, each piece billed once, and the batch cost equals the billed calls."""
    from flows.content_batch import content_batch

    comfyui, modal, replicate = emulators
    comfyui.behaviour.failure_rate = 1.0
    replicate.output_scheme = "data"
    monkeypatch.setenv("LORA_INFERENCE_PROVIDER_ORDER", "comfyui,replicate")
    result = await content_batch(
        avatar_id=demo, num_pieces=10, custom_prompts=PROMPTS + PROMPTS[:4],
        upload_to_storage=False,
    )
    assert result.requested - result.failed == 10
    assert replicate.billed_jobs == 10 and modal.counters.requests("post") == 0
    billed = [r for r in ledger_rows(result.batch_id) if r.status == "billed"]
    assert len(billed) == 10 and len({r.piece_id for r in billed}) == 10
    assert result.cost_usd == pytest.approx(0.30) == sum(r.price_usd for r in billed)
    assert batch_row(result.batch_id).cost_usd == pytest.approx(0.30)

"""A whole batch with Claude and OpenAI configured (emulated): the registries pick the
real clients, and the batch's cost line comes from measured usage and call counts."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from studio.db.engine import session_scope
from studio.db.models import CostLedgerEntry
from studio.hooks import registry as hooks_registry
from tests.emulators.anthropic_api import AnthropicEmulator
from tests.emulators.base import Behaviour
from tests.emulators.openai_api import OpenAIModerationEmulator

KEY_A = "sk-ant-batch-SECRET-1"
KEY_O = "sk-openai-batch-SECRET-2"


@pytest.fixture
def apis(monkeypatch: pytest.MonkeyPatch, prefect_api) -> Iterator[tuple]:
    with AnthropicEmulator(Behaviour(retry_after=0), api_key=KEY_A) as claude, \
            OpenAIModerationEmulator(Behaviour(retry_after=0), api_key=KEY_O) as moderation:
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY_A)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", claude.url)
        monkeypatch.setenv("OPENAI_API_KEY", KEY_O)
        monkeypatch.setenv("OPENAI_BASE_URL", f"{moderation.url}/v1")
        monkeypatch.setenv("HOOK_BACKOFF_BASE_SECONDS", "0.01")
        monkeypatch.setenv("MODERATION_BACKOFF_BASE_SECONDS", "0.01")
        hooks_registry.reset_breakers()
        yield claude, moderation


async def test_a_batch_uses_both_apis_and_prices_what_it_measured(
    studio_env, apis, caplog
) -> None:
    from flows.content_batch import content_batch
    from studio.bootstrap import ensure_demo_avatar

    caplog.set_level(logging.INFO)
    claude, moderation = apis
    ensure_demo_avatar()

    result = await content_batch(avatar_id="demo", num_pieces=20, seed=3)

    assert claude.counters.requests("messages") == 2
    assert moderation.counters.requests("moderations.text") == 1
    assert moderation.counters.requests("moderations.image") == 20
    assert not {"hooks:template", "moderation:local"} & set(result.stand_ins)
    assert result.cost_breakdown["hooks"] > 0
    # moderation is free (the ledger's $0 billed); the spec's $0.001 a call is its estimate
    assert result.cost_breakdown["safety"] == 0
    rows = [r for r in _ledger(result.batch_id) if r.kind == "moderation"]
    assert len(rows) == 21 and sum(r.estimate_usd for r in rows) == pytest.approx(21 * 0.001)
    hook_rows = [r for r in _ledger(result.batch_id) if r.kind == "hook"]
    assert len(hook_rows) == 2 and all(r.status == "billed" and r.job_id for r in hook_rows)
    assert sum(r.price_usd for r in hook_rows) == pytest.approx(
        result.cost_breakdown["hooks"], abs=1e-6
    )
    log = Path(studio_env.log_file).read_text()
    assert "Hook generation summary | Success: 20/20 | Template fallback: 0 | Calls: 2" in log
    assert log.count("Hook generation summary") == 1 and log.count("Safety check summary") == 1
    assert "Safety check summary | Passed: 20, Rejected: 0/20" in log
    assert KEY_A not in log and KEY_O not in log
    assert KEY_A not in caplog.text and KEY_O not in caplog.text


async def test_a_moderation_outage_holds_the_batch_for_review(studio_env, apis) -> None:
    from flows.content_batch import content_batch
    from studio.bootstrap import ensure_demo_avatar

    _, moderation = apis
    moderation.fail_always = 503
    ensure_demo_avatar()

    result = await content_batch(avatar_id="demo", num_pieces=5, seed=4)

    assert result.pending_review == 5 and result.published == 0
    assert all(p.url is None for p in result.pieces)


async def test_a_flagged_capa1_piece_is_published_only_as_capa2(
    studio_env, apis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy import select

    from flows.content_batch import content_batch
    from studio.bootstrap import ensure_demo_avatar
    from studio.db.engine import session_scope
    from studio.db.models import ContentPiece

    _, moderation = apis
    moderation.text_flags["MARKER_TIER_MISMATCH"] = ["sexual"]
    monkeypatch.setenv("CAPA1_SEXUAL_ACTION", "retier")
    ensure_demo_avatar()

    result = await content_batch(
        avatar_id="demo",
        num_pieces=2,
        custom_prompts=["studio portrait MARKER_TIER_MISMATCH", "city walk at dusk"],
        custom_tiers=["capa1", "capa1"],
    )

    flagged, plain = sorted(result.pieces, key=lambda p: p.index)
    assert (flagged.status, flagged.tier) == ("published", "capa2")
    assert (plain.status, plain.tier) == ("published", "capa1")
    with session_scope() as session:
        row = session.scalars(
            select(ContentPiece).where(ContentPiece.id == flagged.piece_id)
        ).one()
    assert row.access_tier == "capa2"


async def test_hook_generation_disabled_skips_the_step(
    studio_env, apis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.content_batch import content_batch
    from studio.bootstrap import ensure_demo_avatar
    from studio.settings import reload_settings

    claude, _ = apis
    monkeypatch.setenv("HOOK_GENERATION_ENABLED", "false")
    reload_settings()
    ensure_demo_avatar()

    result = await content_batch(avatar_id="demo", num_pieces=3, seed=5)

    assert claude.counters.requests("messages") == 0
    assert result.cost_breakdown["hooks"] == 0


def _ledger(batch_id: str) -> list[CostLedgerEntry]:
    with session_scope() as session:
        return list(
            session.scalars(select(CostLedgerEntry).where(CostLedgerEntry.batch_id == batch_id))
        )

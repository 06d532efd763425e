"""Screen before spending (issue 16, "Why" 4): a prompt the policy rejects is never sent
to an image provider, so it costs nothing.

Real parts: the `studio batch run` command on a real Prefect API, the ComfyUI and Modal
emulators as image providers, the OpenAI moderation emulator. The vocabulary is the one
the moderation tests already use ("schoolgirl" is the local rules' minor term).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from studio.db.engine import session_scope
from studio.db.models import ContentPiece, CostLedgerEntry
from studio.db.piece_progress import BatchProgress
from studio.moderation.screen import PromptScreen, prompt_items
from studio.moderation.settings import ModerationSettings
from studio.types import PieceSpec, SafetyVerdict
from tests.emulators.base import Behaviour
from tests.emulators.comfyui import ComfyUIEmulator
from tests.emulators.modal_endpoint import ModalEndpointEmulator
from tests.moderation.conftest import API_KEY

BLOCKED = "portrait of a schoolgirl"  # local rules: sexual/minors (always blocked)
CLEAN = "city walk at dusk"
MODAL_KEY = "wk-screen-key-0001"
MODAL_SECRET = "ws-screen-secret-0001"
runner = CliRunner()


@pytest.fixture(autouse=True)
def _prefect(prefect_api) -> None:
    return None


@pytest.fixture
def image_providers(
    studio_env, monkeypatch
) -> Iterator[tuple[ComfyUIEmulator, ModalEndpointEmulator]]:
    """ComfyUI first, Modal (billed) behind it, both emulated; no OpenAI key."""
    comfyui = ComfyUIEmulator(Behaviour(seed=21))
    modal = ModalEndpointEmulator(Behaviour(seed=22), token_id=MODAL_KEY, token_secret=MODAL_SECRET)
    with comfyui, modal:
        env = {
            "COMFYUI_ENABLED": "true",
            "COMFYUI_ENDPOINT": comfyui.url,
            "COMFYUI_POLL_INTERVAL": "0.02",
            "MODAL_SDXL_ENDPOINT": modal.url,
            "MODAL_TOKEN_ID": MODAL_KEY,
            "MODAL_TOKEN_SECRET": MODAL_SECRET,
            "LORA_INFERENCE_PROVIDER_ORDER": "comfyui,modal",
            "PROVIDER_BACKOFF_UNIT": "0.01",
            "ALLOW_STAND_INS": "true",  # hooks and moderation are local stand-ins here
        }
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        for key in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "REPLICATE_API_TOKEN"):
            monkeypatch.delenv(key, raising=False)
        from studio.bootstrap import ensure_demo_avatar
        from studio.settings import reload_settings

        reload_settings()
        ensure_demo_avatar()
        import tasks.generate_images as generate_images

        generate_images._chain = None
        yield comfyui, modal
        generate_images._chain = None


def _batch(*args: str):
    result = runner.invoke(app(), ["batch", "run", "--avatar", "demo", *args])
    assert result.exit_code == 0, result.output
    return result


def app():
    from cli.app import app as studio_app

    return studio_app


def _rows() -> list[ContentPiece]:
    with session_scope() as session:
        return list(session.scalars(select(ContentPiece).order_by(ContentPiece.created_at)))


def _ledger_rows(kind: str | None = None) -> int:
    with session_scope() as session:
        query = select(func.count()).select_from(CostLedgerEntry)
        if kind:
            query = query.where(CostLedgerEntry.kind == kind)
        return int(session.scalar(query) or 0)


def test_a_blocked_custom_prompt_reaches_no_image_provider(image_providers) -> None:
    comfyui, modal = image_providers
    out = _batch("--pieces", "1", "--prompt", BLOCKED, "--tier", "capa2")
    assert "piece 0 rejected: hard-blocked category sexual/minors" in out.output
    (row,) = _rows()
    assert row.status == "rejected"
    assert row.provider is None and row.cost_usd == 0.0
    assert "sexual/minors" in row.verdict_info["reason"]
    assert "before image generation" in row.verdict_info["reason"]
    assert comfyui.counters.requests("prompt") == 0  # never sent, not even to the free one
    assert modal.billed_jobs == 0 and comfyui.billed_jobs == 0
    assert _ledger_rows() == 0  # nothing reserved, nothing billed


def test_only_the_blocked_piece_is_held_back(image_providers) -> None:
    comfyui, modal = image_providers
    _batch(
        "--pieces", "2", "--prompt", BLOCKED, "--prompt", CLEAN,
        "--tier", "capa1", "--tier", "capa1", "--no-upload",
    )
    by_prompt = {row.prompt: row for row in _rows()}
    assert by_prompt[BLOCKED].status == "rejected"
    assert by_prompt[CLEAN].status == "published"
    assert comfyui.billed_jobs == 1  # the clean prompt only
    assert modal.billed_jobs == 0


def test_always_blocked_whatever_the_configuration(image_providers, monkeypatch) -> None:
    comfyui, _ = image_providers
    monkeypatch.setenv("HARD_BLOCKED_CATEGORIES", "violence")  # leaves minors out: put back
    _batch("--pieces", "1", "--prompt", BLOCKED, "--tier", "capa3", "--no-safety")
    (row,) = _rows()
    assert row.status == "rejected" and "sexual/minors" in row.verdict_info["reason"]
    assert comfyui.counters.requests("prompt") == 0


def test_openai_text_moderation_screens_custom_prompts(
    image_providers, openai_emu, monkeypatch
) -> None:
    """With OpenAI configured its text moderation judges the prompt: a flag the local
    rules do not know still stops the piece before generation."""
    comfyui, modal = image_providers
    openai_emu.text_flags["velvet-marker"] = ["violence/graphic"]
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", f"{openai_emu.url}/v1")
    _batch("--pieces", "1", "--prompt", "velvet-marker sunset", "--tier", "capa2", "--no-hooks")
    (row,) = _rows()
    assert row.status == "rejected"
    assert "violence/graphic" in row.verdict_info["reason"]
    assert row.verdict_info["checked_by"] == "openai"
    assert comfyui.counters.requests("prompt") == 0 and modal.billed_jobs == 0
    assert _ledger_rows("image") == 0  # the moderation call is free (recorded at $0)
    assert openai_emu.counters.requests("moderations.text") >= 1


# the screen itself, without a batch


def _spec(piece_id: str, prompt: str, *, tier: str = "capa1", custom: bool = True) -> PieceSpec:
    return PieceSpec(piece_id=piece_id, batch_id="b1", index=0, prompt=prompt, tier=tier,  # type: ignore[arg-type]
                     custom=custom)


async def test_an_outage_still_blocks_on_the_local_rules(openai_emu, moderation_settings) -> None:
    """OpenAI down at screening: the local hard-blocked flags still stop the piece; a
    prompt only OpenAI would flag goes on (step 4 checks it again and holds it)."""
    from studio.moderation.openai_moderator import OpenAIModerator

    openai_emu.fail_always = 503
    openai_emu.text_flags["velvet-marker"] = ["violence/graphic"]
    screen = PromptScreen(OpenAIModerator(moderation_settings), moderation_settings)
    rejected = await screen.run(
        prompt_items([_spec("a", BLOCKED, tier="capa2"), _spec("b", "velvet-marker sunset")])
    )
    assert list(rejected) == ["a"]
    assert rejected["a"].checked_by == "local"


async def test_template_prompts_only_stop_on_hard_blocked_flags() -> None:
    """A template prompt is curated: only a hard-blocked flag of the free local screen
    stops it; a capa1 tier mismatch is left to step 4 (which may re-tier it)."""
    from studio.moderation.local import LocalModerator

    settings = ModerationSettings()
    screen = PromptScreen(LocalModerator(), settings)
    rejected = await screen.run(
        prompt_items([
            _spec("t1", "lingerie editorial", custom=False),
            _spec("t2", BLOCKED, custom=False),
            _spec("c1", "lingerie editorial"),  # custom capa1: the policy rejects it
        ])
    )
    assert sorted(rejected) == ["c1", "t2"]
    assert "tier mismatch" in (rejected["c1"].reason or "")


async def test_a_resume_neither_screens_again_nor_generates(prefect_api) -> None:
    from tasks.screen_prompts import screen_before_generation

    earlier = SafetyVerdict(piece_id="a", status="rejected", tier="capa1",
                            reason="hard-blocked category sexual/minors")
    done = BatchProgress(batch_id="b1", verdicts={"a": earlier})
    blocked = await screen_before_generation([_spec("a", CLEAN)], done)
    assert blocked == {"a": earlier}  # from the rows: not screened (nor flagged) again


async def test_a_hung_moderator_is_an_outage_not_a_failed_batch(
    openai_emu, moderation_settings, monkeypatch, caplog
) -> None:
    """A moderator that does not answer in time at screening is treated as an outage:
    the local hard-blocked flags still stop a piece; the rest go on to step 4."""
    import studio.moderation.screen as screen_module
    from studio.moderation.openai_moderator import OpenAIModerator

    monkeypatch.setattr(screen_module, "MODERATOR_SECONDS", 0.3)
    openai_emu.behaviour.hang = True
    try:
        screen = PromptScreen(OpenAIModerator(moderation_settings), moderation_settings)
        rejected = await screen.run(
            prompt_items([_spec("a", BLOCKED, tier="capa2"), _spec("b", CLEAN)])
        )
    finally:
        openai_emu.behaviour.hang = False
    assert list(rejected) == ["a"]
    assert "Prompt screening unavailable | Error: TimeoutError" in caplog.text

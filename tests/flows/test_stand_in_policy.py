"""Only real content is published where real content is expected (studio/stand_ins.py).

Flows run on the real temporary Prefect API with the real database; Claude is the
Anthropic emulator reached through the real SDK; images come from the ComfyUI emulator
or the preview renderer. The suite sets ALLOW_STAND_INS=true (tests/conftest.py); every
test here sets it itself.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from flows.content_batch import content_batch
from studio.db.engine import session_scope
from studio.db.models import ContentPiece
from studio.hooks import registry as hooks_registry
from studio.request import BatchRequestError
from studio.stand_ins import StandInPolicy, hold_stand_ins, is_remote_api
from studio.types import GeneratedImage, Hook, SafetyVerdict
from tests.emulators.anthropic_api import AnthropicEmulator
from tests.emulators.base import Behaviour
from tests.emulators.comfyui import ComfyUIEmulator

KEY = "sk-ant-stand-in-SECRET-1"


def policy(**overrides: object) -> StandInPolicy:
    values: dict[str, object] = {
        "allowed": False, "production": False, "where": "", "image_configured": False,
        "hooks_configured": False, "moderation_configured": False,
    }
    values.update(overrides)
    return StandInPolicy(**values)  # type: ignore[arg-type]


def rows(batch_id: str) -> list[ContentPiece]:
    with session_scope() as session:
        return list(session.scalars(select(ContentPiece).where(ContentPiece.batch_id == batch_id)))


@pytest.fixture
def strict(monkeypatch) -> None:
    monkeypatch.setenv("ALLOW_STAND_INS", "false")


@pytest.fixture
def failing_claude(monkeypatch, studio_env) -> Iterator[AnthropicEmulator]:
    """Claude configured, but every call refused (a key the API does not accept): the
    hook step falls back to template hooks, the stand-in for a configured Claude."""
    with AnthropicEmulator(Behaviour(retry_after=0), api_key="sk-ant-the-real-one") as emulator:
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", emulator.url)
        monkeypatch.setenv("HOOK_BACKOFF_BASE_SECONDS", "0.01")
        monkeypatch.setenv("HOOK_MAX_RETRIES", "0")
        hooks_registry.reset_breakers()
        yield emulator
        hooks_registry.reset_breakers()


# --- the rule ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "remote"),
    [
        (None, False),
        ("http://127.0.0.1:4200/api", False),
        ("http://localhost:4200/api", False),
        ("http://[::1]:4200/api", False),
        ("http://10.0.0.7:4200/api", True),
        ("https://prefect.studio.example/api", True),
    ],
)
def test_a_remote_prefect_api_expects_real_content(url, remote) -> None:
    assert is_remote_api(url) is remote


def test_a_production_run_without_an_image_provider_is_refused_naming_the_fix() -> None:
    message = policy(production=True, where="a run of deployment d-1").refusal()
    assert message is not None
    assert "no image provider is configured for a run of deployment d-1" in message
    assert "job variables" in message and "ALLOW_STAND_INS=true" in message
    assert policy(production=True, where="x", image_configured=True).refusal() is None
    assert policy(production=True, where="x", allowed=True).refusal() is None
    assert policy().refusal() is None  # the embedded demo


def test_what_holds_a_piece_where_real_content_is_expected() -> None:
    marks = ["image:preview", "hooks:template", "moderation:local"]
    assert policy().unpublishable(marks) == []  # the demo: all published, marked
    assert policy(production=True).unpublishable(marks) == ["image:preview"]
    assert policy(hooks_configured=True).unpublishable(marks) == ["hooks:template"]
    assert policy(moderation_configured=True).unpublishable(marks) == ["moderation:local"]
    everything = policy(production=True, hooks_configured=True, moderation_configured=True)
    assert everything.unpublishable(marks) == marks
    assert policy(production=True, hooks_configured=True, allowed=True).unpublishable(marks) == []


def test_preview_pieces_of_a_production_run_are_held_with_reason_stand_in() -> None:
    images = {
        "a": GeneratedImage(piece_id="a", provider="preview", path="/a", stand_in=True),
        "b": GeneratedImage(piece_id="b", provider="comfyui", path="/b"),
    }
    hooks = {p: Hook(piece_id=p, text="hi", source="anthropic") for p in images}
    verdicts = {
        p: SafetyVerdict(piece_id=p, status="passed", tier="capa1", checked_by="openai")
        for p in images
    }
    held = hold_stand_ins(policy(production=True, where="x"), images, hooks, verdicts)
    assert list(held) == ["a"]
    assert held["a"].status == "pending_review"
    assert held["a"].reason.startswith("stand-in: image:preview")


def test_a_resume_of_a_batch_with_real_images_expects_real_ones() -> None:
    real = GeneratedImage(piece_id="a", provider="comfyui", path="/a")
    preview = GeneratedImage(piece_id="b", provider="preview", path="/b", stand_in=True)
    assert policy().resuming([preview]).production is False
    resumed = policy().resuming([preview, real])
    assert resumed.production and resumed.refusal() is not None


# --- through the flow ------------------------------------------------------------------


async def test_the_embedded_demo_still_publishes_its_marked_stand_ins(
    strict, studio_env, demo_avatar
) -> None:
    result = await content_batch(avatar_id=demo_avatar, num_pieces=5, seed=2)
    assert result.published >= 4
    assert {"image:preview", "hooks:template", "moderation:local"} <= set(result.stand_ins)
    assert all(p.reason is None or "stand-in" not in p.reason for p in result.pieces)


async def test_template_hooks_standing_in_for_a_configured_claude_are_held(
    strict, failing_claude, demo_avatar
) -> None:
    result = await content_batch(avatar_id=demo_avatar, num_pieces=5, seed=2)

    assert failing_claude.counters.requests("messages") >= 1  # Claude was really asked
    assert result.published == 0
    held = [p for p in result.pieces if p.status == "pending_review"]
    assert len(held) + result.rejected == 5 and held
    assert all(p.reason and p.reason.startswith("stand-in: ") for p in held)
    assert all("hooks:template" in (p.reason or "") for p in held)
    saved = rows(result.batch_id)
    assert {r.status for r in saved} <= {"pending_review", "rejected"}
    assert all(r.url is None for r in saved if r.status == "pending_review")


async def test_allow_stand_ins_publishes_them_marked(
    monkeypatch, failing_claude, demo_avatar
) -> None:
    monkeypatch.setenv("ALLOW_STAND_INS", "true")
    result = await content_batch(avatar_id=demo_avatar, num_pieces=5, seed=2)
    assert result.published >= 4
    assert "hooks:template" in result.stand_ins


async def test_a_batch_with_real_images_is_not_finished_with_previews(
    strict, monkeypatch, studio_env, demo_avatar
) -> None:
    """A batch a worker made with ComfyUI, its run crashed, resumed here by hand with no
    provider configured: refused, naming the providers, before anything is made."""
    import tasks.generate_images as generate_images
    from studio.db.models import Batch

    with ComfyUIEmulator(Behaviour(seed=4)) as comfyui:
        monkeypatch.setenv("COMFYUI_ENABLED", "true")
        monkeypatch.setenv("COMFYUI_ENDPOINT", comfyui.url)
        monkeypatch.setenv("COMFYUI_POLL_INTERVAL", "0.02")
        generate_images._chain = None
        first = await content_batch(avatar_id=demo_avatar, num_pieces=3, seed=5)
    assert {p.provider for p in first.pieces} == {"comfyui"}
    with session_scope() as session:  # as if its run had crashed before saving
        session.get(Batch, first.batch_id).status = "crashed"
    monkeypatch.delenv("COMFYUI_ENABLED")
    monkeypatch.delenv("COMFYUI_ENDPOINT")
    generate_images._chain = None
    before = {(r.id, r.status, r.provider) for r in rows(first.batch_id)}

    with pytest.raises(BatchRequestError) as refused:
        await content_batch(
            avatar_id=demo_avatar, num_pieces=3, resume_batch_id=first.batch_id
        )

    assert refused.value.field == "providers"
    assert "a resume of a batch with real images" in refused.value.message
    assert {(r.id, r.status, r.provider) for r in rows(first.batch_id)} == before
    generate_images._chain = None

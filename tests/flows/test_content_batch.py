"""The content-batch flow end to end on the embedded defaults, under a real Prefect API."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prefect.exceptions import ParameterTypeError
from sqlalchemy import func, select

from flows.content_batch import content_batch
from studio.db.engine import session_scope
from studio.db.models import Batch, ContentPiece
from studio.request import BatchRequestError


async def test_batch_runs_all_steps_and_persists(studio_env, demo_avatar) -> None:
    result = await content_batch(avatar_id="demo", num_pieces=10, seed=7)

    assert result.requested == 10
    assert result.published + result.rejected + result.failed + result.pending_review == 10
    assert result.published >= 8
    assert set(result.step_seconds) == {
        "template_selection",
        "image_generation",
        "hook_generation",
        "safety_check",
        "storage_upload",
        "database_save",
        "statistics",
    }
    # every stand-in says so in the result and in the rows
    assert {"image:preview", "hooks:template", "moderation:local", "storage:local"} <= set(
        result.stand_ins
    )
    with session_scope() as session:
        rows = session.scalars(select(ContentPiece).where(ContentPiece.batch_id == result.batch_id))
        rows = list(rows)
        batch = session.get(Batch, result.batch_id)
    assert len(rows) == 10
    assert batch is not None and batch.status == "completed" and batch.finished_at is not None
    published = [r for r in rows if r.status == "published"]
    for row in published:
        assert row.provider == "preview" and "image:preview" in row.stand_ins
        assert row.hook_text
        path = Path(row.url.removeprefix("file://"))
        assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # tier counts from the distribution: 10 at 0.6/0.3/0.1 -> 6/3/1
    tiers = sorted(p.tier for p in result.pieces)
    assert tiers.count("capa1") + tiers.count("capa2") + tiers.count("capa3") == 10


async def test_log_lines_follow_the_spec(studio_env, demo_avatar) -> None:
    await content_batch(avatar_id="demo", num_pieces=5)
    text = Path(studio_env.log_file).read_text()
    assert "[BATCH START] Avatar: " in text and ", Pieces: 5, Platform: instagram" in text
    for n in range(1, 8):
        assert re.search(rf"\[STEP {n}/7\] [A-Za-z ]+ \|.*Duration: [0-9.]+s", text), n
    assert re.search(
        r"\[BATCH COMPLETE\] Avatar: \S+ \| Total Duration: [0-9.]+s \| "
        r"Pieces: \d+ \| Cost: \$[0-9.]+",
        text,
    )


async def test_custom_prompts_and_tiers(studio_env, demo_avatar) -> None:
    result = await content_batch(
        avatar_id="demo",
        num_pieces=2,
        custom_prompts=["studio portrait, soft light", "morning run on the beach"],
        custom_tiers=["capa2", "capa1"],
    )
    assert [p.template_id for p in result.pieces] == [None, None]
    assert [p.tier for p in sorted(result.pieces, key=lambda p: p.index)] == ["capa2", "capa1"]


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"num_pieces": 0}, "num_pieces"),
        ({"num_pieces": 501}, "num_pieces"),
        ({"tier_distribution": {"capa1": 1.2, "capa2": -0.1, "capa3": -0.1}}, "tier_distribution"),
        ({"platform": "myspace"}, "platform"),
        ({"hook_mode": "fast"}, "hook_mode"),
        ({"num_pieces": 1, "custom_prompts": ["a"], "custom_tiers": ["gold"]}, "custom_tiers"),
        ({"num_pieces": 1, "custom_prompts": [""]}, "custom_prompts"),
    ],
)
async def test_what_the_schema_says_is_refused_before_the_flow_runs(
    studio_env, demo_avatar, kwargs, field
) -> None:
    """Prefect validates the typed parameters before the flow body starts."""
    args = {"avatar_id": "demo", "num_pieces": 5, **kwargs}
    with pytest.raises(ParameterTypeError, match=field):
        await content_batch(**args)
    _assert_nothing_written(studio_env)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"avatar_id": "nobody"}, "avatar_id"),
        ({"tier_distribution": {"capa1": 0.5, "capa2": 0.3, "capa3": 0.1}}, "tier_distribution"),
        ({"tier_distribution": {"capa1": 0.6, "capa2": 0.6, "capa3": 0.1}}, "tier_distribution"),
        ({"num_pieces": 2, "custom_prompts": ["only one"]}, "custom_prompts"),
        ({"num_pieces": 1, "custom_tiers": ["capa1"]}, "custom_tiers"),
    ],
)
async def test_bad_input_refused_before_anything_is_written(
    studio_env, demo_avatar, kwargs, field
) -> None:
    args = {"avatar_id": "demo", "num_pieces": 5, **kwargs}
    with pytest.raises(BatchRequestError) as exc:
        await content_batch(**args)
    assert exc.value.field == field
    _assert_nothing_written(studio_env)
    state = await content_batch(**args, return_state=True)
    assert state.is_failed() and state.name == "Refused"
    assert state.message.startswith(f"{field}: ")


async def test_avatar_without_lora_refused(studio_env) -> None:
    from studio.avatars import add_avatar

    with session_scope() as session:
        add_avatar(session, "untrained", "food", None)
    with pytest.raises(BatchRequestError, match="lora_weights_url"):
        await content_batch(avatar_id="untrained", num_pieces=3)
    _assert_nothing_written(studio_env)


def _assert_nothing_written(settings) -> None:
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Batch)) == 0
        assert session.scalar(select(func.count()).select_from(ContentPiece)) == 0
    for folder in (settings.work_dir, settings.studio_home / "content"):
        assert not folder.exists() or not any(p.is_file() for p in folder.rglob("*"))


async def test_flow_retry_creates_no_duplicates(studio_env, demo_avatar, monkeypatch) -> None:
    """A flow run that fails after saving and is retried by Prefect makes nothing twice."""
    import flows.content_batch as module
    from studio.providers.build import PREVIEW

    calls = {"n": 0}
    real_stats = module.calculate_statistics

    def flaky_statistics(avatar_id: str):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("database went away")
        return real_stats(avatar_id)

    monkeypatch.setattr(module, "calculate_statistics", flaky_statistics)
    before = PREVIEW.rendered
    result = await content_batch.with_options(retries=1, retry_delay_seconds=0)(
        avatar_id="demo", num_pieces=6
    )
    assert calls["n"] == 2
    assert PREVIEW.rendered - before == 6  # the retry reused staged images
    with session_scope() as session:
        count = session.scalar(
            select(func.count())
            .select_from(ContentPiece)
            .where(ContentPiece.batch_id == result.batch_id)
        )
        batches = session.scalar(select(func.count()).select_from(Batch))
    assert count == 6
    assert batches == 1

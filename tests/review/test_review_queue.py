"""The review queue end to end (issue 19): held pieces listed, approved and rejected
through `studio review` and through the functions the `review` flow calls, on SQLite and
PostgreSQL, with the real S3 server (SeaweedFS) as the content store and the real
Prefect API receiving the events.

The held batch is real: the demo avatar's batch run by the flow while the OpenAI
moderation emulator answers 503, so every piece is held as `moderation unavailable`
with its image staged in the private bucket.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventResourceFilter
from typer.testing import CliRunner

from cli.app import app
from flows.review_events import emit_decision_events
from studio.db.engine import session_scope
from studio.db.models import Batch, ContentPiece
from studio.review import Decision, apply_decisions, held_pieces
from studio.types import BatchResult
from tests.review.conftest import Store

runner = CliRunner()


def _row(piece_id: str) -> ContentPiece:
    with session_scope() as session:
        row = session.get(ContentPiece, piece_id)
        assert row is not None
        return row


def _batch(batch_id: str) -> Batch:
    with session_scope() as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None
        return batch


def _of_tier(result: BatchResult, tier: str) -> list[str]:
    return [p.piece_id for p in result.pieces if p.tier == tier]


async def _events(resource_id: str, wanted: str, seconds: float = 20.0) -> list[str]:
    """Event names on a resource, polled until `wanted` shows (events land asynchronously)."""
    names: list[str] = []
    async with get_client() as client:
        for _ in range(int(seconds / 0.5)):
            page = await client.read_events(
                filter=EventFilter(resource=EventResourceFilter(id=[resource_id])), limit=50
            )
            names = [event.event for event in page.events]
            if wanted in names:
                break
            await asyncio.sleep(0.5)
    return names


# --- list --------------------------------------------------------------------------------


async def test_list_shows_every_held_piece_with_a_link_to_judge_it_by(
    held_batch: BatchResult, store: Store
) -> None:
    with session_scope() as session:
        held = held_pieces(session, avatar="demo")
        assert [p.piece_id for p in held_pieces(session, batch_id=held_batch.batch_id)] == [
            p.piece_id for p in held
        ]
        assert held_pieces(session, avatar="nobody") == []
        assert held_pieces(session, batch_id="00000000-0000-0000-0000-000000000000") == []
    assert {p.piece_id for p in held} == {p.piece_id for p in held_batch.pieces}
    for piece in held:
        assert piece.reason == "moderation unavailable"
        assert piece.avatar_name == "demo" and piece.hook_text and piece.prompt
        assert piece.provider == "preview" and piece.tier in ("capa1", "capa3")
        # a presigned link to the private staged copy, minted now, that answers
        assert piece.image_url and f"/{store.private}/staging/" in piece.image_url
        assert piece.image_url_expires_at is not None
        answer = httpx.get(piece.image_url)
        assert answer.status_code == 200 and answer.content.startswith(b"\x89PNG")
    # the staged object itself is not anonymous
    key = held[0].image_url.split(f"/{store.private}/", 1)[1].split("?", 1)[0]  # type: ignore[union-attr]
    assert httpx.get(f"{store.server.endpoint_url}/{store.private}/{key}").status_code == 403

    listed = runner.invoke(app, ["review", "list", "--avatar", "demo", "--json"])
    assert listed.exit_code == 0, listed.output
    document = json.loads(listed.output)
    assert {d["piece_id"] for d in document} == {p.piece_id for p in held}
    assert all(d["reason"] == "moderation unavailable" and d["image_url"] for d in document)
    by_batch = runner.invoke(app, ["review", "list", "--batch", held_batch.batch_id])
    assert by_batch.exit_code == 0 and "moderation unavailable" in by_batch.output
    assert "image links expire at" in by_batch.output
    empty = runner.invoke(app, ["review", "list", "--avatar", "nobody"])
    assert empty.exit_code == 0 and "no pieces held for review" in empty.output


# --- approve -----------------------------------------------------------------------------


async def test_approved_capa1_is_public_and_approved_capa3_is_not(
    held_batch: BatchResult, store: Store
) -> None:
    capa1 = _of_tier(held_batch, "capa1")[0]
    capa3 = _of_tier(held_batch, "capa3")[0]
    before = _batch(held_batch.batch_id)

    outcomes = apply_decisions(
        [
            Decision(piece_id=capa1, action="approve", reviewer="rita", reason="looks fine"),
            Decision(piece_id=capa3, action="approve", reviewer="rita"),
        ]
    )

    assert [(o.result, o.status, o.tier) for o in outcomes] == [
        ("applied", "published", "capa1"),
        ("applied", "published", "capa3"),
    ]
    assert emit_decision_events(outcomes) == 2  # as the review flow announces them
    public, premium = _row(capa1), _row(capa3)
    assert public.status == "published" and public.safety_rating == "approved"
    assert public.review_decision == "approve" and public.reviewed_by == "rita"
    assert public.review_reason == "looks fine" and public.reviewed_at is not None
    assert public.storage_backend == "r2" and public.url == store.public_link(public.storage_key)
    answer = httpx.get(public.url)  # anonymously, at the public bucket
    assert answer.status_code == 200 and answer.content.startswith(b"\x89PNG")

    assert premium.status == "published" and premium.access_tier == "capa3"
    assert premium.storage_backend == "r2" and not premium.url  # no lasting link
    assert premium.storage_key in store.keys(store.private)
    assert premium.storage_key not in store.keys(store.public)
    assert httpx.get(store.public_link(premium.storage_key)).status_code != 200
    anonymous = f"{store.server.endpoint_url}/{store.private}/{premium.storage_key}"
    assert httpx.get(anonymous).status_code == 403
    assert outcomes[1].url is None

    batch = _batch(held_batch.batch_id)
    assert (batch.published, batch.pending_review) == (2, before.pending_review - 2)
    with session_scope() as session:
        still_held = {p.piece_id for p in held_pieces(session, batch_id=held_batch.batch_id)}
    assert still_held == {p.piece_id for p in held_batch.pieces} - {capa1, capa3}
    events = await _events(f"studio.piece.{capa1}", "studio.piece.published")
    assert "studio.piece.published" in events


async def test_approving_twice_publishes_once(held_batch: BatchResult, store: Store) -> None:
    piece = _of_tier(held_batch, "capa1")[0]
    before = store.puts(store.public)

    first = runner.invoke(app, ["review", "approve", piece, "--reviewer", "ana"])
    assert first.exit_code == 0, first.output
    assert "applied" in first.output and "published" in first.output
    stored = _row(piece)
    second = runner.invoke(app, ["review", "approve", piece, "--reviewer", "ben"])
    assert second.exit_code == 0, second.output
    assert "already-decided" in second.output and "approve by ana" in second.output
    (again,) = apply_decisions([Decision(piece_id=piece, action="approve", reviewer="cy")])
    assert again.result == "already-decided" and again.storage_key == stored.storage_key
    assert emit_decision_events([again]) == 0  # nothing to announce twice

    assert store.puts(store.public) - before == 1  # one upload
    after = _row(piece)
    assert (after.reviewed_by, after.reviewed_at) == ("ana", stored.reviewed_at)
    assert _batch(held_batch.batch_id).published == 1
    names = await _events(f"studio.piece.{piece}", "studio.piece.published")
    await asyncio.sleep(2)  # room for a second event to land, were there one
    names = await _events(f"studio.piece.{piece}", "never", seconds=1)
    assert names.count("studio.piece.published") == 1  # one event


async def test_a_rejection_cannot_be_overturned_by_an_approval(
    held_batch: BatchResult, store: Store
) -> None:
    piece = held_batch.pieces[0].piece_id
    apply_decisions([Decision(piece_id=piece, action="reject", reason="off-brand", reviewer="ana")])
    (outcome,) = apply_decisions([Decision(piece_id=piece, action="approve", reviewer="ben")])
    assert outcome.result == "already-decided" and outcome.status == "rejected"
    assert "reject by ana" in (outcome.detail or "")
    assert _row(piece).status == "rejected" and _row(piece).storage_key is None


# --- reject ------------------------------------------------------------------------------


async def test_reject_records_reason_reviewer_and_time(
    held_batch: BatchResult, store: Store, monkeypatch
) -> None:
    monkeypatch.setenv("USER", "maria")
    pieces = [p.piece_id for p in held_batch.pieces[:2]]
    before = _batch(held_batch.batch_id)

    result = runner.invoke(app, ["review", "reject", *pieces, "--reason", "blurry hands"])

    assert result.exit_code == 0, result.output
    for piece in pieces:
        row = _row(piece)
        assert row.status == "rejected" and row.safety_rating == "rejected"
        assert row.review_decision == "reject" and row.reviewed_by == "maria"
        assert row.review_reason == "blurry hands" and row.reviewed_at is not None
        assert row.storage_key is None and row.url is None  # nothing stored
    batch = _batch(held_batch.batch_id)
    assert (batch.rejected, batch.pending_review, batch.published) == (
        before.rejected + 2, before.pending_review - 2, 0
    )
    assert store.keys(store.public) == [] and store.keys(store.private) == []
    events = await _events(f"studio.piece.{pieces[0]}", "studio.piece.rejected")
    assert "studio.piece.rejected" in events


async def test_reject_without_a_reason_is_refused(held_batch: BatchResult, store: Store) -> None:
    piece = held_batch.pieces[0].piece_id
    missing = runner.invoke(app, ["review", "reject", piece])
    assert missing.exit_code == 2 and "--reason" in missing.output
    blank = runner.invoke(app, ["review", "reject", piece, "--reason", "  "])
    assert blank.exit_code == 2 and "reason" in blank.output
    with pytest.raises(ValueError, match="reason"):
        Decision(piece_id=piece, action="reject", reviewer="ana")
    with pytest.raises(ValueError, match="reviewer"):
        Decision(piece_id=piece, action="approve", reviewer=" ")
    assert _row(piece).status == "pending_review"


# --- rules -------------------------------------------------------------------------------


def _mark_hard_blocked(piece_id: str) -> None:
    """As if moderation had flagged sexual/minors and the row still said pending_review."""
    with session_scope() as session:
        row = session.get(ContentPiece, piece_id)
        assert row is not None
        row.verdict_info = {
            **(row.verdict_info or {}),
            "categories": ["sexual/minors"],
            "reason": "moderation unavailable",
        }


async def test_a_hard_blocked_piece_is_refused_by_the_function_and_the_cli(
    held_batch: BatchResult, store: Store
) -> None:
    blocked, other = (p.piece_id for p in held_batch.pieces[:2])
    _mark_hard_blocked(blocked)

    (outcome,) = apply_decisions([Decision(piece_id=blocked, action="approve", reviewer="ana")])
    assert outcome.result == "refused" and "hard-blocked" in (outcome.detail or "")
    assert "sexual/minors" in (outcome.detail or "")

    cli = runner.invoke(app, ["review", "approve", blocked, other, "--reviewer", "ana"])
    assert cli.exit_code == 1  # refused; the other decision still applied
    assert "refused" in cli.output and "hard-blocked" in cli.output
    row = _row(blocked)
    assert row.status == "pending_review" and row.review_decision is None
    assert row.storage_key is None
    assert _row(other).status == "published"
    assert len(store.keys(store.public)) + len(store.keys(store.private)) == 1

    # rejecting it is what a reviewer can do
    rejected = runner.invoke(
        app, ["review", "reject", blocked, "--reason", "hard-blocked", "--reviewer", "ana"]
    )
    assert rejected.exit_code == 0 and _row(blocked).status == "rejected"


async def test_a_caption_the_local_screen_hard_blocks_is_refused(
    held_batch: BatchResult, store: Store
) -> None:
    piece = held_batch.pieces[0].piece_id
    with session_scope() as session:
        row = session.get(ContentPiece, piece)
        assert row is not None
        row.hook_text = "underage models wanted"
    (outcome,) = apply_decisions([Decision(piece_id=piece, action="approve", reviewer="ana")])
    assert outcome.result == "refused" and "sexual/minors" in (outcome.detail or "")
    assert _row(piece).status == "pending_review"


async def test_approving_capa3_as_capa1_without_a_moderation_check_is_refused(
    held_batch: BatchResult, store: Store
) -> None:
    capa3 = _of_tier(held_batch, "capa3")[0]
    cli = runner.invoke(app, ["review", "approve", capa3, "--tier", "capa1", "--reviewer", "ana"])
    assert cli.exit_code == 1 and "never checked" in cli.output
    assert _row(capa3).status == "pending_review" and store.keys(store.public) == []


async def test_a_flagged_piece_is_never_re_tiered_to_capa1(
    held_batch: BatchResult, store: Store
) -> None:
    piece = _of_tier(held_batch, "capa3")[0]
    with session_scope() as session:
        row = session.get(ContentPiece, piece)
        assert row is not None
        row.verdict_info = {**(row.verdict_info or {}), "categories": ["sexual"]}
    (outcome,) = apply_decisions(
        [Decision(piece_id=piece, action="approve", tier="capa1", reviewer="ana")]
    )
    assert outcome.result == "refused" and "capa1 is public" in (outcome.detail or "")
    (kept,) = apply_decisions([Decision(piece_id=piece, action="approve", reviewer="ana")])
    assert kept.result == "applied" and kept.tier == "capa3"
    assert store.keys(store.public) == []


async def test_re_tiering_capa1_to_capa3_makes_it_private(
    held_batch: BatchResult, store: Store
) -> None:
    piece = _of_tier(held_batch, "capa1")[0]
    result = runner.invoke(
        app, ["review", "approve", piece, "--tier", "capa3", "--reviewer", "ana", "--json"]
    )
    assert result.exit_code == 0, result.output
    (outcome,) = json.loads(result.output)
    assert outcome["tier"] == "capa3" and outcome["url"] is None
    row = _row(piece)
    assert row.access_tier == "capa3" and row.storage_key in store.keys(store.private)
    assert store.keys(store.public) == []


async def test_bad_tier_exits_2(held_batch: BatchResult, store: Store) -> None:
    piece = held_batch.pieces[0].piece_id
    result = runner.invoke(app, ["review", "approve", piece, "--tier", "capa9"])
    assert result.exit_code == 2 and "tier" in result.output
    assert _row(piece).status == "pending_review"


# --- unknown and undecidable pieces ------------------------------------------------------


async def test_unknown_ids_exit_2_naming_them_and_nothing_is_applied(
    held_batch: BatchResult, store: Store
) -> None:
    known = held_batch.pieces[0].piece_id
    for command in (["approve"], ["reject", "--reason", "no"]):
        result = runner.invoke(app, ["review", *command, known, "nope-1", "nope-2"])
        assert result.exit_code == 2
        assert "nope-1" in result.output and "nope-2" in result.output
        assert known not in result.output
    assert _row(known).status == "pending_review" and _row(known).review_decision is None
    assert store.keys(store.public) == [] and store.keys(store.private) == []
    (outcome,) = apply_decisions([Decision(piece_id="nope-3", action="approve", reviewer="a")])
    assert outcome.result == "refused" and outcome.detail == "no such piece"


async def test_a_piece_not_held_is_refused(held_batch: BatchResult, store: Store) -> None:
    piece = held_batch.pieces[0].piece_id
    with session_scope() as session:
        row = session.get(ContentPiece, piece)
        assert row is not None
        row.status = "failed"
    (outcome,) = apply_decisions([Decision(piece_id=piece, action="approve", reviewer="a")])
    assert outcome.result == "refused" and "not held" in (outcome.detail or "")
    assert _row(piece).status == "failed"


async def test_a_piece_whose_staged_image_is_gone_stays_held(
    held_batch: BatchResult, store: Store
) -> None:
    from pathlib import Path

    piece = held_batch.pieces[0].piece_id
    image = _row(piece).image_info or {}
    Path(image["path"]).unlink()
    store.server.client().delete_object(Bucket=store.private, Key=image["staged_key"])
    (outcome,) = apply_decisions([Decision(piece_id=piece, action="approve", reviewer="a")])
    assert outcome.result == "refused" and "staged image is gone" in (outcome.detail or "")
    assert _row(piece).status == "pending_review"


async def test_the_image_is_read_from_the_private_staging_when_this_host_has_none(
    held_batch: BatchResult, store: Store
) -> None:
    """Another host reviews: the local staged file is absent, the private copy is used."""
    from pathlib import Path

    piece = _of_tier(held_batch, "capa1")[0]
    Path((_row(piece).image_info or {})["path"]).unlink()
    (outcome,) = apply_decisions([Decision(piece_id=piece, action="approve", reviewer="a")])
    assert outcome.result == "applied"
    assert httpx.get(_row(piece).url or "").content.startswith(b"\x89PNG")


# --- the local store ---------------------------------------------------------------------


async def test_with_the_local_store_an_approved_piece_is_a_local_file(
    any_database, moderation_down
) -> None:
    from pathlib import Path

    from tests.review.conftest import make_held_batch

    result = await make_held_batch(seed=23)
    with session_scope() as session:
        held = held_pieces(session, batch_id=result.batch_id)
    assert all(p.image_path and p.image_url is None for p in held)
    piece = held[0].piece_id
    (outcome,) = apply_decisions([Decision(piece_id=piece, action="approve", reviewer="a")])
    assert outcome.result == "applied" and outcome.status == "published"
    row = _row(piece)
    assert row.storage_backend == "local" and "storage:local" in row.stand_ins
    if row.access_tier == "capa1":
        assert (row.url or "").startswith("file://")
    assert Path(str(_stored_path(row))).read_bytes().startswith(b"\x89PNG")


def _stored_path(row: ContentPiece) -> str:
    from studio.settings import get_settings
    from studio.storage.registry import build_local_store

    return str(build_local_store(get_settings()).path_for(row.storage_key or ""))


async def test_two_reviewers_approving_at_once_publish_once(
    held_batch: BatchResult, store: Store
) -> None:
    """The row is locked while a decision is applied: the second waits, then finds it made."""
    from concurrent.futures import ThreadPoolExecutor

    piece = _of_tier(held_batch, "capa1")[0]
    before = store.puts(store.public)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(
            pool.map(
                lambda who: apply_decisions(
                    [Decision(piece_id=piece, action="approve", reviewer=who)]
                )[0],
                ["ana", "ben", "cy", "di"],
            )
        )
    assert sorted(r.result for r in results) == ["already-decided"] * 3 + ["applied"]
    assert store.puts(store.public) - before == 1
    assert _batch(held_batch.batch_id).published == 1

"""Every image durable the moment it exists: in the database and in a private staging area.

Real parts: SQLite/PostgreSQL rows, the SeaweedFS S3 server standing in for R2, the
offline preview renderer as the image provider (it counts its renders).
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import select

from studio.db.engine import session_scope
from studio.db.models import Batch, ContentPiece
from studio.db.piece_progress import record_plan
from studio.types import AvatarRef, PieceSpec
from tests.tasks.conftest import emulators, provider_env  # noqa: F401 - fixtures

AVATAR = AvatarRef(id="demo", name="demo", niche="fitness", lora_weights_url="https://w/l.st")


def _spec(batch_id: str, i: int = 0) -> PieceSpec:
    return PieceSpec(
        piece_id=f"{batch_id}-p{i}", batch_id=batch_id, index=i, prompt="a gym at dawn",
        tier="capa1", template_id="tpl-durable",
    )


def _plan(batch_id: str, specs: list[PieceSpec]) -> None:
    from studio.bootstrap import ensure_demo_avatar

    avatar_id = ensure_demo_avatar()
    with session_scope() as session:
        session.add(Batch(id=batch_id, avatar_id=avatar_id, config={}, requested=len(specs)))
    with session_scope() as session:
        record_plan(session, avatar_id, batch_id, specs)


@pytest.fixture
def staged_in_s3(studio_env, s3_server, monkeypatch):
    """R2 configured with a public content bucket and a separate private staging bucket."""
    from studio.settings import reload_settings
    from studio.staging_outage import reset_outages

    s3_server.start()  # an outage test before may have left it down
    content = s3_server.new_bucket("content", public=True)
    private = s3_server.new_bucket("staging")
    env = {
        "R2_ENDPOINT_URL": s3_server.endpoint_url,
        "R2_ACCESS_KEY_ID": s3_server.access_key,
        "R2_SECRET_ACCESS_KEY": s3_server.secret_key,
        "R2_BUCKET_NAME": content,
        "R2_PUBLIC_URL": s3_server.public_url(content),
        "R2_PRIVATE_BUCKET_NAME": private,
        "R2_STAGING_BUCKET": private,
        "R2_MAX_ATTEMPTS": "1",
        "R2_CONNECT_TIMEOUT_SECONDS": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    reload_settings()
    reset_outages()
    yield s3_server, content, private
    s3_server.start()
    reset_outages()


def _rendered() -> int:
    from studio.providers.build import PREVIEW

    return PREVIEW.rendered if PREVIEW is not None else 0


async def test_durable_image_is_recorded_as_generated_the_moment_it_is_staged(
    prefect_api, studio_env
) -> None:
    from tasks.generate_images import produce_image

    specs = [_spec("durable-db", i) for i in range(2)]
    _plan("durable-db", specs)
    image = await produce_image(specs[0], AVATAR, str(studio_env.work_dir))
    with session_scope() as session:
        rows = {r.id: r for r in session.scalars(select(ContentPiece))}
    assert rows[specs[0].piece_id].status == "generated"  # before the step ended
    assert rows[specs[1].piece_id].status == "planned"
    info = rows[specs[0].piece_id].image_info
    assert info["path"] == image.path and "provider_job_id" in info
    assert rows[specs[0].piece_id].provider == image.provider


async def test_durable_staging_lets_another_host_resume_without_paying_again(
    prefect_api, staged_in_s3, tmp_path
) -> None:
    from tasks.generate_images import produce_image

    server, content, private = staged_in_s3
    spec = _spec("durable-s3")
    _plan("durable-s3", [spec])
    host_a, host_b = tmp_path / "host-a" / "work", tmp_path / "host-b" / "work"
    made = await produce_image(spec, AVATAR, str(host_a))
    renders = _rendered()
    assert made.staged_key == f"staging/durable-s3/{Path(made.path).name}"

    listing = server.client().list_objects_v2(Bucket=private).get("Contents", [])
    assert sorted(o["Key"] for o in listing) == sorted(
        [made.staged_key, f"staging/durable-s3/{spec.piece_id}.json"]
    )
    assert not server.client().list_objects_v2(Bucket=content).get("Contents")  # nothing public
    with pytest.raises(urllib.error.HTTPError) as missing:  # the public URL layout: nothing
        urllib.request.urlopen(f"{server.public_url(content)}/{made.staged_key}", timeout=5)
    assert missing.value.code in (403, 404)

    again = await produce_image(spec, AVATAR, str(host_b))  # another host, empty disk
    assert _rendered() == renders  # no provider call: the staged image was fetched
    assert Path(again.path).is_relative_to(host_b)
    assert Path(again.path).read_bytes() == Path(made.path).read_bytes()


def test_durable_staging_stays_local_when_the_content_bucket_is_public(
    studio_env, s3_server, monkeypatch, caplog
) -> None:
    from studio.settings import reload_settings
    from studio.staging import remote_staging

    content = s3_server.new_bucket("public-only", public=True)
    for key, value in {
        "R2_ENDPOINT_URL": s3_server.endpoint_url,
        "R2_ACCESS_KEY_ID": s3_server.access_key,
        "R2_SECRET_ACCESS_KEY": s3_server.secret_key,
        "R2_BUCKET_NAME": content,
        "R2_PUBLIC_URL": s3_server.public_url(content),
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("R2_STAGING_BUCKET", raising=False)
    monkeypatch.delenv("R2_PRIVATE_BUCKET_NAME", raising=False)
    reload_settings()
    caplog.set_level(logging.WARNING)
    assert remote_staging() is None  # a public bucket would serve staged (rejected) images
    assert "set R2_PRIVATE_BUCKET_NAME (or R2_STAGING_BUCKET) to a private" in caplog.text

    monkeypatch.delenv("R2_PUBLIC_URL")  # no public domain: the bucket's staging/ prefix
    remote = remote_staging()
    assert remote is not None and remote.bucket == content and remote.prefix == "staging"


def test_durable_staging_is_local_only_with_the_local_store(studio_env, monkeypatch) -> None:
    from studio.staging import remote_staging

    for key in ("R2_ENDPOINT_URL", "R2_ACCOUNT_ID", "R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key, raising=False)
    assert remote_staging() is None


async def test_durable_image_row_carries_the_billed_provider_job_id(
    prefect_api, studio_env, provider_env, emulators  # noqa: F811
) -> None:
    from tasks.generate_images import produce_image

    comfyui, modal, replicate = emulators
    comfyui.behaviour.failure_rate = modal.behaviour.failure_rate = 1.0  # Replicate serves
    spec = _spec("durable-job")
    _plan("durable-job", [spec])
    image = await produce_image(spec, AVATAR, str(studio_env.work_dir))
    assert image.provider == "replicate" and image.provider_job_id
    with session_scope() as session:
        row = session.get(ContentPiece, spec.piece_id)
        assert row is not None and row.status == "generated"
        assert row.image_info["provider_job_id"] == image.provider_job_id
    assert replicate.billed_jobs == 1


PNG = b"\x89PNG\r\n\x1a\n" + b"staged while the store is down" * 20


def _count_calls(remote, operation: str) -> list[int]:
    """One entry per `operation` the staging's client tries (before it is sent)."""
    tried: list[int] = []
    remote.client.meta.events.register(f"before-call.s3.{operation}", lambda **_: tried.append(1))
    return tried


def test_staging_with_the_store_down_keeps_the_image_here_and_warns_once(
    staged_in_s3, tmp_path, caplog, monkeypatch
) -> None:
    """A put that fails leaves the paid image staged on this host (and reusable), one
    warning for the batch, and the store skipped until its retry time; then used again."""
    import studio.staging_outage as staging_outage
    from studio.staging import open_staging
    from studio.types import GeneratedImage

    server, _, private = staged_in_s3
    monkeypatch.setattr(staging_outage, "STORE_RETRY_SECONDS", 1.0)
    staging_outage.reset_outages()
    staging = open_staging(tmp_path / "work", "outage-put")
    assert staging.remote is not None
    puts = _count_calls(staging.remote, "PutObject")
    server.stop()
    caplog.set_level(logging.INFO)
    staged = [
        staging.save(GeneratedImage(piece_id=f"p{i}", provider="replicate", path=""), PNG)
        for i in range(5)
    ]
    assert all(i.staged_key is None and Path(i.path).read_bytes() == PNG for i in staged)
    assert [staging.existing(f"p{i}") for i in range(5)] == staged  # reused, not bought again
    assert len(puts) == 1  # the first put failed; the others did not wait on the store
    lines = [r for r in caplog.records if r.getMessage().startswith("Staging on local disk only")]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert "outage-put" in lines[0].getMessage() and "write failed" in lines[0].getMessage()
    assert server.secret_key not in caplog.text and server.endpoint_url not in caplog.text

    server.start()
    time.sleep(1.1)  # past the retry time: the next image goes to the store again
    back = staging.save(GeneratedImage(piece_id="p5", provider="replicate", path=""), PNG)
    assert back.staged_key == "staging/outage-put/p5.png"
    keys = {o["Key"] for o in server.client().list_objects_v2(Bucket=private)["Contents"]}
    assert keys == {"staging/outage-put/p5.png", "staging/outage-put/p5.json"}


def test_a_store_read_that_fails_is_not_a_failed_piece(staged_in_s3, tmp_path, caplog) -> None:
    """Resume while the store is down: this host's copy is used without asking the store;
    a host without one gets "not staged" (made again) instead of an error."""
    from studio.staging import open_staging
    from studio.types import GeneratedImage

    server, _, _ = staged_in_s3
    host_a = open_staging(tmp_path / "a", "outage-read")
    made = host_a.save(GeneratedImage(piece_id="p0", provider="replicate", path=""), PNG)
    assert made.staged_key  # staged in the store while it was up
    gets = _count_calls(host_a.remote, "GetObject")
    server.stop()
    caplog.set_level(logging.WARNING)
    assert host_a.existing("p0") == made and not gets  # local copy, no store read

    host_b = open_staging(tmp_path / "b", "outage-read")
    assert host_b.existing("p0") is None
    assert host_b.existing("p0") is None
    lines = [r for r in caplog.records if r.getMessage().startswith("Staging on local disk only")]
    assert len(lines) == 1 and "read failed" in lines[0].getMessage()


async def test_an_image_made_while_the_store_is_down_is_paid_once(
    prefect_api, staged_in_s3, studio_env
) -> None:
    from tasks.generate_images import produce_image

    server, _, _ = staged_in_s3
    spec = _spec("durable-down")
    _plan("durable-down", [spec])
    server.stop()
    before = _rendered()
    made = await produce_image(spec, AVATAR, str(studio_env.work_dir))
    assert _rendered() == before + 1 and made.staged_key is None
    again = await produce_image(spec, AVATAR, str(studio_env.work_dir))  # a retried piece
    assert _rendered() == before + 1 and again.path == made.path
    with session_scope() as session:
        row = session.get(ContentPiece, spec.piece_id)
        assert row is not None and row.status == "generated"


async def test_an_image_the_local_disk_refuses_fails_the_piece_without_buying_it_again(
    prefect_api, studio_env
) -> None:
    """Staging after the provider billed: a write that keeps failing fails the piece as
    ImageGenerationFailed (not retried), rather than a piece retry that buys it again."""
    from studio.staging import open_staging
    from tasks.generate_images import ImageGenerationFailed, generate_piece_image

    spec = _spec("durable-disk")
    _plan("durable-disk", [spec])
    root = studio_env.work_dir
    blocked = open_staging(root, spec.batch_id).image_path(spec.piece_id)
    blocked.mkdir(parents=True)  # the image's path is a directory: every write fails
    before = _rendered()
    with pytest.raises(ImageGenerationFailed, match="not staged on local disk"):
        await generate_piece_image(spec, AVATAR, str(root))
    assert _rendered() == before + 1  # billed once, written three times, never re-bought

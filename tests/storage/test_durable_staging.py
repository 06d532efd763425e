"""Every image durable the moment it exists: in the database and in a private staging area.

Real parts: SQLite/PostgreSQL rows, the SeaweedFS S3 server standing in for R2, the
offline preview renderer as the image provider (it counts its renders).
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import select

from studio.db.engine import session_scope
from studio.db.models import Batch, ContentPiece
from studio.db.progress import record_plan
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
    content, private = s3_server.new_bucket("content"), s3_server.new_bucket("staging")
    env = {
        "R2_ENDPOINT_URL": s3_server.endpoint_url,
        "R2_ACCESS_KEY_ID": s3_server.access_key,
        "R2_SECRET_ACCESS_KEY": s3_server.secret_key,
        "R2_BUCKET_NAME": content,
        "R2_PUBLIC_URL": s3_server.public_url(content),
        "R2_STAGING_BUCKET": private,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from studio.settings import reload_settings

    reload_settings()
    return s3_server, content, private


def _rendered() -> int:
    from studio.providers import registry

    return registry._PREVIEW.rendered if registry._PREVIEW is not None else 0


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

    content = s3_server.new_bucket("public-only")
    for key, value in {
        "R2_ENDPOINT_URL": s3_server.endpoint_url,
        "R2_ACCESS_KEY_ID": s3_server.access_key,
        "R2_SECRET_ACCESS_KEY": s3_server.secret_key,
        "R2_BUCKET_NAME": content,
        "R2_PUBLIC_URL": s3_server.public_url(content),
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("R2_STAGING_BUCKET", raising=False)
    reload_settings()
    caplog.set_level(logging.WARNING)
    assert remote_staging() is None  # a public bucket would serve staged (rejected) images
    assert "set R2_STAGING_BUCKET to a private bucket" in caplog.text

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

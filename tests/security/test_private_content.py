"""Premium content stays private (issue 15, finding 3), on a real S3 server shaped like R2.

The content bucket is public (anyone can GET its objects, as R2's public domain serves
them), the private bucket is not. A batch with capa1, capa2 and capa3 pieces and a
rejected one writes through a recording proxy that, after every PUT the server
accepted, GETs the same object with no signature: so every object the batch wrote is
probed while it exists, staged images included, before the cleanup removes them. Only
published capa1 pieces may answer 200. (The rejected prompt is screened before image
generation since issue 16, so no image of it is ever made, staged or stored.)
"""

from __future__ import annotations

import json
import re
import time
import uuid
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from sqlalchemy import func, select
from typer.testing import CliRunner

from flows.content_batch import content_batch
from studio.db.engine import session_scope
from studio.db.models import Batch, ContentPiece, CostLedgerEntry
from tests.storage.conftest import r2_env
from tests.storage.recording_proxy import RecordingProxy

PROMPTS = [
    ("portrait of a schoolgirl", "capa2"),  # the local moderator rejects it, before step 2
    ("city walk at dusk", "capa1"),
    ("studio portrait, soft light", "capa1"),
    ("beach run at sunrise", "capa2"),
    ("evening gown on a balcony", "capa3"),
    ("coffee shop morning", "capa2"),
]


@pytest.fixture(autouse=True)
def _prefect(prefect_api) -> None:
    return None


@pytest.fixture
def demo_avatar(studio_env) -> str:
    from studio.bootstrap import ensure_demo_avatar

    return ensure_demo_avatar()


@pytest.fixture
def shaped_like_r2(studio_env, s3_server, monkeypatch):
    """R2 through a recording proxy that probes every written object anonymously."""
    s3_server.start()
    public = s3_server.new_bucket("content", public=True)
    private = s3_server.new_bucket("private")
    probes: dict[str, int] = {}

    def probe(path: str) -> None:
        probes[path] = httpx.get(f"{s3_server.endpoint_url}{path}").status_code

    proxy = RecordingProxy(upstream=s3_server.endpoint_url, on_put=probe).start()
    env = {**r2_env(s3_server, public, private), "R2_ENDPOINT_URL": proxy.url}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from studio.settings import reload_settings

    reload_settings()
    try:
        yield {"public": public, "private": private, "probes": probes, "env": env}
    finally:
        proxy.stop()


def _listing(s3_server, bucket: str) -> list[str]:
    pages = s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


async def _artifacts(flow_run_id) -> list:
    async with get_client() as client:
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


async def test_only_published_capa1_is_readable_without_a_signature(
    shaped_like_r2, demo_avatar, s3_server
) -> None:
    public, private, probes = (shaped_like_r2[k] for k in ("public", "private", "probes"))
    state = await content_batch(
        avatar_id="demo",
        num_pieces=len(PROMPTS),
        custom_prompts=[p for p, _ in PROMPTS],
        custom_tiers=[t for _, t in PROMPTS],
        return_state=True,
    )
    result = await state.result()
    with session_scope() as session:
        rows = list(
            session.scalars(select(ContentPiece).where(ContentPiece.batch_id == result.batch_id))
        )
    published = {r.access_tier for r in rows if r.status == "published"}
    assert published == {"capa1", "capa2", "capa3"}
    assert [r.access_tier for r in rows if r.status == "rejected"] == ["capa2"]
    capa1 = {
        f"/{public}/{r.storage_key}"
        for r in rows
        if r.status == "published" and r.access_tier == "capa1"
    }
    assert len(capa1) == 2

    # every object the batch wrote, probed anonymously the moment it was written
    staged = [p for p in probes if p.startswith(f"/{private}/staging/{result.batch_id}/")]
    rejected = next(r for r in rows if r.status == "rejected")
    assert staged  # staged images were probed too ...
    assert not any(rejected.id in p for p in probes)  # rejected on its prompt: never made
    assert len(probes) >= (len(rows) - 1) * 2 + 4  # image + metadata per made piece, 4 premium
    answered_200 = {path for path, status in probes.items() if status == 200}
    assert answered_200 == capa1
    assert all(status == 403 for path, status in probes.items() if path.startswith(f"/{private}/"))

    # what is left: both buckets listed with the admin client, each object GET anonymously
    left = [f"/{public}/{k}" for k in _listing(s3_server, public)]
    left += [f"/{private}/{k}" for k in _listing(s3_server, private)]
    readable = {p for p in left if httpx.get(f"{s3_server.endpoint_url}{p}").status_code == 200}
    assert readable == capa1
    assert not [p for p in left if "/staging/" in p]  # ... and are gone with the staging
    assert not [p for p in left if rejected.id in p]
    from studio.settings import get_settings

    assert not (get_settings().work_dir / result.batch_id).exists()  # local staging too

    # a key guessed from a public capa1 link: the old pattern, for every piece of the batch
    link = next(r.url for r in rows if r.access_tier == "capa1" and r.url)
    assert link.startswith(shaped_like_r2["env"]["R2_PUBLIC_URL"])
    base = link.rsplit("/", 1)[0]
    assert all(r.id not in link for r in rows)  # the link names no piece
    prefix = base.split(f"/{public}/", 1)[1]  # avatars/<avatar>/batches/<batch>
    for row in rows:
        in_private = f"{s3_server.endpoint_url}/{private}/{prefix}/{row.id}.png"
        for guess in (f"{base}/{row.id}.png", in_private):
            assert httpx.get(guess).status_code in (403, 404)

    # rows and the lasting artifacts keep keys, never a signed link
    assert not [r for r in rows if r.url and "X-Amz-Signature" in r.url]
    assert all(r.url in (None, "") for r in rows if r.access_tier != "capa1")
    assert all(r.storage_key for r in rows if r.status == "published")
    artifacts = await _artifacts(state.state_details.flow_run_id)
    lasting = [a for a in artifacts if not (a.key or "").startswith("links-")]
    assert lasting and all("X-Amz-Signature" not in json.dumps(a.data) for a in lasting)
    (links,) = [a for a in artifacts if (a.key or "").startswith("links-")]
    assert "PRESIGNED_URL_TTL_SECONDS=3600" in links.description


async def test_pieces_links_are_minted_on_demand_and_expire(
    shaped_like_r2, demo_avatar, monkeypatch
) -> None:
    result = await content_batch(
        avatar_id="demo",
        num_pieces=3,
        custom_prompts=["city walk at dusk", "beach run at sunrise", "evening gown on a balcony"],
        custom_tiers=["capa1", "capa2", "capa3"],
    )
    assert result.published == 3
    runner = CliRunner()
    from cli.app import app

    listed = runner.invoke(app, ["pieces", "--avatar", "demo"])
    assert listed.exit_code == 0, listed.output
    assert "X-Amz-Signature" not in listed.output  # keys, not links, unless asked

    monkeypatch.setenv("PRESIGNED_URL_TTL_SECONDS", "3")
    minted = runner.invoke(app, ["pieces", "--avatar", "demo", "--links"])
    assert minted.exit_code == 0, minted.output
    links = re.findall(r"(https?://\S+X-Amz-Signature=\S+)", minted.output)
    assert len(links) == 2  # capa2 and capa3; capa1 shows its public URL
    assert "expire at" in minted.output and "PRESIGNED_URL_TTL_SECONDS=3" in minted.output
    for link in links:
        assert parse_qs(urlsplit(link).query)["X-Amz-Expires"] == ["3"]
        assert httpx.get(link).status_code == 200
    time.sleep(4.5)
    for link in links:
        assert httpx.get(link).status_code == 403  # expired


async def test_public_url_without_private_bucket_is_refused_before_spend(
    studio_env, demo_avatar, s3_server, monkeypatch
) -> None:
    s3_server.start()
    public = s3_server.new_bucket("content", public=True)
    env = r2_env(s3_server, public, "unused")
    del env["R2_PRIVATE_BUCKET_NAME"]
    monkeypatch.delenv("R2_PRIVATE_BUCKET_NAME", raising=False)
    monkeypatch.delenv("R2_STAGING_BUCKET", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from studio.health import health_report
    from studio.settings import reload_settings

    reload_settings()
    batch_id = str(uuid.uuid4())
    state = await content_batch(
        avatar_id="demo", num_pieces=3, batch_id=batch_id, return_state=True
    )
    assert state.name == "Refused"
    assert "R2_PRIVATE_BUCKET_NAME" in state.message and "R2_PUBLIC_URL" in state.message
    assert "\n" not in state.message
    with session_scope() as session:
        assert session.get(Batch, batch_id) is None
        assert session.scalar(select(func.count()).select_from(ContentPiece)) == 0
        assert session.scalar(select(func.count()).select_from(CostLedgerEntry)) == 0
    assert _listing(s3_server, public) == []

    report = health_report()
    assert report["status"] == "unhealthy"
    storage = report["checks"]["r2_storage"]
    assert storage["status"] == "misconfigured"
    assert "R2_PRIVATE_BUCKET_NAME" in storage["error"]
    assert s3_server.secret_key not in json.dumps(storage)

"""The artifacts an operator reads on a batch's run: the table (each piece's link and
image provider), the gallery (thumbnails with tier and status), the image step's
progress; and the health check as tables."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows.content_batch import content_batch
from flows.health_check import health_check


async def _artifacts(flow_run_id) -> dict[str, list]:
    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    by_type: dict[str, list] = {}
    for artifact in found:
        by_type.setdefault(artifact.type, []).append(artifact)
    return by_type


@pytest.fixture
def r2_env(studio_env, s3_server, monkeypatch):
    """Uploads go to R2's API on the loopback SeaweedFS (public URL for capa1)."""
    bucket = s3_server.new_bucket("artifacts")
    env = {
        "R2_ENDPOINT_URL": s3_server.endpoint_url,
        "R2_ACCESS_KEY_ID": s3_server.access_key,
        "R2_SECRET_ACCESS_KEY": s3_server.secret_key,
        "R2_BUCKET_NAME": bucket,
        "R2_PUBLIC_URL": s3_server.public_url(bucket),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from studio.settings import reload_settings

    reload_settings()
    return env


async def test_batch_table_gallery_and_progress(r2_env, demo_avatar) -> None:
    state = await content_batch(avatar_id="demo", num_pieces=10, seed=5, return_state=True)
    result = await state.result()
    artifacts = await _artifacts(state.state_details.flow_run_id)

    (table,) = artifacts["table"]
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert len(rows) == 10
    published = [r for r in rows if r["status"] == "published"]
    assert len(published) == result.published >= 8
    for row in published:
        assert row["image_provider"] == "preview"
        if row["tier"] == "capa1":
            assert row["link"].startswith(r2_env["R2_PUBLIC_URL"])
        else:  # capa2/capa3: a presigned GET, never the public URL
            assert "X-Amz-Signature=" in row["link"] and "X-Amz-Expires=" in row["link"]
    assert {r["tier"] for r in published} >= {"capa1", "capa2"}

    (gallery,) = artifacts["markdown"]
    assert gallery.key.startswith("gallery-")
    thumbnails = gallery.data.count("](data:image/jpeg;base64,")
    assert thumbnails == result.published
    first = gallery.data.split("data:image/jpeg;base64,", 1)[1].split(")", 1)[0]
    with Image.open(io.BytesIO(base64.b64decode(first))) as image:
        assert max(image.size) <= 96
    for row in rows:  # every piece captioned with its tier and status
        assert f"#{row['piece']} {row['tier']} {row['status']}" in gallery.data
    # a thumbnail opens the piece's own (presigned or public) link
    assert all(f"]({row['link']})" in gallery.data for row in published)

    (progress,) = artifacts["progress"]
    assert float(progress.data) == 100.0
    assert progress.description == "Images: 10/10 made, 0 failed"


async def test_gallery_pictures_only_published_pieces(studio_env, demo_avatar) -> None:
    state = await content_batch(
        avatar_id="demo",
        num_pieces=2,
        custom_prompts=["portrait of a schoolgirl", "city walk at dusk"],
        custom_tiers=["capa1", "capa1"],
        return_state=True,
    )
    result = await state.result()
    assert result.rejected == 1
    (gallery,) = (await _artifacts(state.state_details.flow_run_id))["markdown"]
    assert gallery.data.count("data:image/jpeg;base64,") == 1  # the rejected one is not shown
    assert "#0 capa1 rejected" in gallery.data


async def test_health_artifact_is_tables(studio_env) -> None:
    state = await health_check(return_state=True)
    (health,) = (await _artifacts(state.state_details.flow_run_id))["markdown"]
    text = health.data
    assert text.startswith("# Health: healthy")
    assert "| Check | Status | Details |" in text
    assert "| database | healthy | backend: sqlite; response_ms: " in text
    assert "| preview | yes |" in text and "## Image providers" in text
    assert "{'" not in text  # no Python dict text

"""The artifacts an operator reads on a batch's run: the table (each piece's key, lasting
link and image provider), the premium links minted for an hour, the gallery (thumbnails
with tier and status), the image step's progress; and the health check as tables."""

from __future__ import annotations

import base64
import io
import json

import httpx
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
    """Uploads go to R2's API on the loopback SeaweedFS: a public content bucket (capa1)
    and a private one (premium, staging)."""
    from tests.storage.conftest import r2_env as shaped_like_r2

    public = s3_server.new_bucket("artifacts", public=True)
    env = shaped_like_r2(s3_server, public, s3_server.new_bucket("artifacts-private"))
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
    assert "X-Amz-Signature" not in json.dumps(rows)  # the lasting record keeps keys
    published = [r for r in rows if r["status"] == "published"]
    assert len(published) == result.published >= 8
    for row in published:
        assert row["image_provider"] == "preview"
        assert row["key"].startswith("avatars/")
        if row["tier"] == "capa1":
            assert row["link"] == f"{r2_env['R2_PUBLIC_URL']}/{row['key']}"
        else:  # capa2/capa3: no lasting link at all
            assert row["link"] == ""
    premium = [r for r in published if r["tier"] != "capa1"]
    assert premium and {r["tier"] for r in published} >= {"capa1", "capa2"}
    assert "expire at" in table.description
    assert "PRESIGNED_URL_TTL_SECONDS=3600" in table.description

    by_key = {a.key.split("-", 1)[0]: a for a in artifacts["markdown"]}
    links = by_key["links"]
    assert "PRESIGNED_URL_TTL_SECONDS=3600" in links.description and "UTC" in links.description
    minted = [line for line in links.data.splitlines() if "X-Amz-Signature=" in line]
    assert len(minted) == len(premium)
    for line in minted:
        link = line.split("](", 1)[1].rsplit(")", 1)[0]
        assert "X-Amz-Expires=3600" in link
        assert httpx.get(link).status_code == 200

    gallery = by_key["gallery"]
    assert "X-Amz-Signature" not in gallery.data
    thumbnails = gallery.data.count("](data:image/jpeg;base64,")
    assert thumbnails == result.published
    first = gallery.data.split("data:image/jpeg;base64,", 1)[1].split(")", 1)[0]
    with Image.open(io.BytesIO(base64.b64decode(first))) as image:
        assert max(image.size) <= 96
    for row in rows:  # every piece captioned with its tier and status
        assert f"#{row['piece']} {row['tier']} {row['status']}" in gallery.data
    # a capa1 thumbnail opens its public link; a premium one links nowhere
    for row in published:
        assert (f"]({row['link']})" in gallery.data) == (row["tier"] == "capa1")

    (progress,) = artifacts["progress"]
    assert float(progress.data) == 100.0
    assert progress.description == "Images: 10/10 made, 0 failed"


def test_premium_thumbnails_are_blurred(tmp_path) -> None:
    """capa2 and capa3 thumbnails are blurred like each other; capa1 is sharp."""
    from studio.gallery import thumbnail_data_uri

    image = Image.new("RGB", (96, 96), "white")
    for x in range(0, 96, 2):  # a fine stripe pattern: a blur turns it grey
        for y in range(96):
            image.putpixel((x, y), (0, 0, 0))
    path = tmp_path / "stripes.png"
    image.save(path)

    def spread(tier: str) -> int:
        uri = thumbnail_data_uri(path, tier)
        assert uri is not None
        data = base64.b64decode(uri.split(",", 1)[1])
        with Image.open(io.BytesIO(data)) as thumb:
            low, high = thumb.convert("L").getextrema()
        return high - low

    assert spread("capa1") > 200
    assert spread("capa2") < 100 and spread("capa3") < 100


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
    markdown = (await _artifacts(state.state_details.flow_run_id))["markdown"]
    (gallery,) = [a for a in markdown if a.key.startswith("gallery-")]
    assert gallery.data.count("data:image/jpeg;base64,") == 1  # the rejected one is not shown
    assert "#0 capa1 rejected" in gallery.data


async def test_health_artifact_is_tables(studio_env) -> None:
    state = await health_check(return_state=True)
    (health,) = (await _artifacts(state.state_details.flow_run_id))["markdown"]
    text = health.data
    assert text.startswith("# Health: degraded")  # the embedded stand-ins are in use
    assert "| Component | Status | Reason |" in text
    assert "| images | degraded | stand-in: no image provider configured" in text
    assert "| Check | Status | Details |" in text
    assert "| database | healthy | backend: sqlite; response_ms: " in text
    assert "| preview | yes |" in text and "## Image providers" in text
    assert "{'" not in text  # no Python dict text

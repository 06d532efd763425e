"""The gallery says what its thumbnails do (issue 16): on the local store a capa1
thumbnail has no link (its piece is a file:// path, which a browser does not open from
the UI), and the gallery's text says so instead of promising a link."""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows.content_batch import content_batch


async def test_local_store_gallery_links_nowhere_and_says_so(studio_env, demo_avatar) -> None:
    state = await content_batch(
        avatar_id="demo",
        num_pieces=2,
        custom_prompts=["city walk at dusk", "morning run on the beach"],
        custom_tiers=["capa1", "capa1"],
        include_hooks=False,
        return_state=True,
    )
    result = await state.result()
    assert result.published == 2
    assert all(p.url and p.url.startswith("file://") for p in result.pieces)
    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    (gallery,) = [a for a in artifacts if (a.key or "").startswith("gallery-")]
    assert gallery.data.count("](data:image/jpeg;base64,") == 2  # both pictured
    assert "](file://" not in gallery.data  # no link a browser would refuse
    assert "[![" not in gallery.data  # no thumbnail is a link
    assert "pieces on the local store link nowhere" in gallery.data

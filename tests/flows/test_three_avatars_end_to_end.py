"""Issue 18 as a studio meets it: three avatars from one YAML file, a scheduled fan-out.

The avatars of docs/examples/avatars.yaml (run size cut to 4 so the test stays short)
are imported with `studio avatar import`, then the daily fan-out runs once per image
provider (ComfyUI, Modal, Replicate: each alone in the chain, each an emulator speaking
its API). Checked where it matters: every prompt carries its avatar's trigger word,
every template belongs to its avatar's niche, each avatar's run is split over its
platforms, and the size each provider was asked for (ComfyUI's latent, Modal's width and
height, Replicate's aspect_ratio) is the platform's (or the avatar's own format). Then a
studio's own ComfyUI workflow: refused before any prompt while the server lacks one of
its nodes (named), delivering through the same client once the node is installed.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from sqlalchemy import select
from typer.testing import CliRunner

from cli.app import app
from flows.batch_runs import BATCH_DEPLOYMENT
from flows.content_batch import content_batch
from flows.scheduled import scheduled_batches
from studio.catalog import template_library
from studio.db.engine import session_scope
from studio.db.models import Avatar, Batch, ContentPiece
from tests.emulators.base import Behaviour
from tests.emulators.comfyui import ComfyUIEmulator
from tests.emulators.modal_endpoint import ModalEndpointEmulator
from tests.emulators.replicate_api import ReplicateEmulator
from tests.tasks.conftest import MODAL_KEY, MODAL_SECRET, PROVIDER_ENV, REPLICATE_TOKEN

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "avatars.yaml"
#: platform -> (aspect ratio, SDXL width, height): docs/formats.md
FORMATS = {"instagram": ("4:5", 896, 1152), "tiktok": ("9:16", 768, 1344)}
runner = CliRunner()


@pytest.fixture
def three_avatars(studio_env, tmp_path: Path) -> dict[str, dict[str, Any]]:
    """The example file, every avatar daily with 4 pieces a run, imported by the CLI."""
    document = yaml.safe_load(EXAMPLE.read_text())
    for entry in document["avatars"]:
        entry.update(cadence="daily", pieces_per_run=4)
    path = tmp_path / "avatars.yaml"
    path.write_text(yaml.safe_dump(document))
    result = runner.invoke(app, ["avatar", "import", str(path)])
    assert result.exit_code == 0, result.output
    return {entry["name"]: entry for entry in document["avatars"]}


@pytest.fixture
def emulators() -> Iterator[dict[str, Any]]:
    comfyui = ComfyUIEmulator(Behaviour(seed=31))
    modal = ModalEndpointEmulator(Behaviour(seed=32), token_id=MODAL_KEY, token_secret=MODAL_SECRET)
    replicate = ReplicateEmulator(Behaviour(seed=33), token=REPLICATE_TOKEN)
    with comfyui, modal, replicate:
        yield {"comfyui": comfyui, "modal": modal, "replicate": replicate}


def use_only(monkeypatch: pytest.MonkeyPatch, emulators: dict[str, Any], provider: str) -> None:
    """Every provider configured at its emulator; the chain holds `provider` alone."""
    import tasks.generate_images as generate_images

    for key in PROVIDER_ENV:
        monkeypatch.delenv(key, raising=False)
    env = {
        "COMFYUI_ENABLED": "true",
        "COMFYUI_ENDPOINT": emulators["comfyui"].url,
        "COMFYUI_POLL_INTERVAL": "0.02",
        "MODAL_SDXL_ENDPOINT": emulators["modal"].url,
        "MODAL_TOKEN_ID": MODAL_KEY,
        "MODAL_TOKEN_SECRET": MODAL_SECRET,
        "REPLICATE_API_TOKEN": REPLICATE_TOKEN,
        "REPLICATE_BASE_URL": emulators["replicate"].url,
        "REPLICATE_POLL_INTERVAL": "0.02",
        "PROVIDER_BACKOFF_UNIT": "0.01",
        "LORA_INFERENCE_PROVIDER_ORDER": provider,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    generate_images._chain = None


async def no_batch_deployment() -> None:
    """The fan-out runs its batches in this process when there is no deployment to submit to."""
    async with get_client() as client:
        try:
            found = await client.read_deployment_by_name(BATCH_DEPLOYMENT)
        except ObjectNotFound:
            return
        await client.delete_deployment(found.id)


def pieces_by_avatar() -> dict[str, list[tuple[ContentPiece, Batch]]]:
    with session_scope() as session:
        rows = session.execute(
            select(ContentPiece, Batch, Avatar.name)
            .join(Batch, ContentPiece.batch_id == Batch.id)
            .join(Avatar, Batch.avatar_id == Avatar.id)
        ).all()
        session.expunge_all()
    found: dict[str, list[tuple[ContentPiece, Batch]]] = {}
    for piece, batch, name in rows:
        found.setdefault(name, []).append((piece, batch))
    return found


def expected_format(avatar: dict[str, Any], platform: str) -> tuple[str, int, int]:
    if avatar.get("format"):
        return FORMATS["instagram"] if avatar["format"] == "4:5" else FORMATS["tiktok"]
    return FORMATS[platform]


def asked_sizes(provider: str, emulator: Any, since: int) -> Counter[tuple[Any, ...]]:
    """What each billed job asked the provider for, as (aspect or width, height)."""
    if provider == "comfyui":
        sizes = []
        for graph in emulator.prompts[since:]:
            latent = next(n for n in graph.values() if n["class_type"] == "EmptyLatentImage")
            sizes.append((latent["inputs"]["width"], latent["inputs"]["height"]))
        return Counter(sizes)
    if provider == "modal":
        return Counter((job["width"], job["height"]) for job in emulator.jobs[since:])
    return Counter((job["aspect_ratio"],) for job in emulator.jobs[since:])


def recorded(provider: str, emulator: Any) -> int:
    return len(emulator.prompts if provider == "comfyui" else emulator.jobs)


@pytest.mark.parametrize("provider", ["comfyui", "modal", "replicate"])
async def test_three_imported_avatars_run_a_scheduled_fan_out_true_to_their_profiles(
    three_avatars, emulators, monkeypatch, provider
) -> None:
    await no_batch_deployment()
    use_only(monkeypatch, emulators, provider)
    emulator = emulators[provider]
    since = recorded(provider, emulator)

    summary = await scheduled_batches(cadence="daily")

    # one batch per avatar and platform: the run of 4 split 2 + 2
    assert set(summary) == {f"{name}/{p}" for name in three_avatars for p in FORMATS}, summary
    library = template_library()
    made = pieces_by_avatar()
    expected_sizes: Counter[tuple[Any, ...]] = Counter()
    for name, avatar in three_avatars.items():
        rows = made[name]
        assert len(rows) == 4
        assert Counter(batch.config["platform"] for _, batch in rows) == {"instagram": 2,
                                                                          "tiktok": 2}
        trigger = avatar["trigger_words"][0]
        for piece, batch in rows:
            assert piece.prompt.startswith(f"{trigger}, "), piece.prompt
            template = library.by_id(piece.template_id)
            assert template is not None and template.niche == avatar["niche"], piece.template_id
            aspect, width, height = expected_format(avatar, batch.config["platform"])
            assert (piece.width, piece.height) == (width, height)
            assert piece.provider == provider and piece.status == "published", piece.status
            expected_sizes[(aspect,) if provider == "replicate" else (width, height)] += 1
        assert len({piece.prompt for piece, _ in rows}) == 4  # no prompt twice
    # the provider was asked for exactly those sizes, one job per piece
    assert asked_sizes(provider, emulator, since) == expected_sizes


def own_workflow(tmp_path: Path) -> Path:
    """A studio's export: the shipped hires-fix example with a node of its own choosing."""
    from studio.providers.comfyui_workflow import WORKFLOWS_DIR

    graph = json.loads((WORKFLOWS_DIR / "sdxl_lora_hires.json").read_text())
    path = tmp_path / "studio_hires.json"
    path.write_text(json.dumps(graph))
    return path


async def test_a_studio_workflow_is_refused_naming_the_missing_node_then_delivers(
    three_avatars, emulators, monkeypatch, tmp_path
) -> None:
    use_only(monkeypatch, emulators, "comfyui")
    comfyui = emulators["comfyui"]
    workflow = own_workflow(tmp_path)
    graph = json.loads(workflow.read_text())
    lacking = next(n["class_type"] for n in graph.values()
                   if n["class_type"] in {"LatentUpscaleBy", "LatentUpscale"})
    result = runner.invoke(app, ["avatar", "update", "mara-moves", "--workflow", str(workflow)])
    assert result.exit_code == 0, result.output

    comfyui.missing_nodes = {lacking}
    state = await content_batch(avatar_id="mara-moves", num_pieces=2, return_state=True)
    assert state.is_failed() and state.name == "Refused"
    assert state.message.startswith("workflow: ") and lacking in state.message
    assert comfyui.counters.requests("prompt") == 0  # nothing posted, nothing spent

    comfyui.missing_nodes = set()
    made = await content_batch(avatar_id="mara-moves", num_pieces=2, seed=3)
    assert made.published == 2 and {p.provider for p in made.pieces} == {"comfyui"}
    posted = comfyui.prompts[-2:]
    assert all(any(n["class_type"] == lacking for n in g.values()) for g in posted)
    prompts = [n["inputs"]["text"] for g in posted for n in g.values()
               if n.get("_meta", {}).get("title") == "studio:prompt"]
    assert len(prompts) == 2 and all(p.startswith("mrmv woman, ") for p in prompts)

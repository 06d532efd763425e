"""The flows use the avatar's profile (issue 18, parts 1 and 2).

A request that leaves num_pieces, tier_distribution, platform or format empty gets the
avatar's pieces per run, tier mix, first platform and format (else 50, 0.6/0.3/0.1,
instagram, the platform's format); what the request gives wins. Every piece is planned
for its platform's size with the avatar's trigger words in its prompt. The scheduled
fan-out splits each avatar's run over its platforms. A format no configured provider
can serve, or a ComfyUI workflow the server cannot run, is refused before any spend.
Real database, real Prefect API, real CLI; providers are the emulators.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
)
from prefect.exceptions import ObjectNotFound
from sqlalchemy import func, select
from typer.testing import CliRunner

from cli.app import app
from flows.batch_runs import BATCH_DEPLOYMENT
from flows.content_batch import content_batch
from flows.fan_out_plan import plan_batches, split_pieces
from flows.scheduled import due_avatars, scheduled_batches, submit_batches
from studio.avatars import add_avatar
from studio.db.engine import session_scope
from studio.db.models import Batch, ContentPiece
from studio.request import BatchRequestError, make_request, resolve_request
from studio.types import AvatarRef, PieceSpec
from tasks.piece_progress import load_batch_progress
from tasks.select_templates import for_avatar_and_platform, with_trigger_words
from tasks.validate import validate_batch_request
from tests.emulators.base import Behaviour
from tests.emulators.comfyui import ComfyUIEmulator

LORA_URL = "https://weights.example/loras/nova_v2.safetensors"
NOVA = {
    "trigger_words": ["nv0va woman"],
    "tier_mix": {"capa1": 0.5, "capa2": 0.5, "capa3": 0.0},
    "platforms": ["tiktok", "instagram"],
    "pieces_per_run": 3,
}
runner = CliRunner()


def add(name: str, niche: str = "fitness", cadence: str = "daily", **profile: Any) -> str:
    with session_scope() as session:
        return add_avatar(session, name, niche, LORA_URL, cadence, profile=profile).id


def batch_config(batch_id: str) -> dict[str, Any]:
    with session_scope() as session:
        return dict(session.get(Batch, batch_id).config)


def nothing_written() -> bool:
    with session_scope() as session:
        batches = session.scalar(select(func.count()).select_from(Batch))
        pieces = session.scalar(select(func.count()).select_from(ContentPiece))
    return batches == 0 and pieces == 0


def ref(**profile: Any) -> AvatarRef:
    return AvatarRef(id="a1", name="nova", niche="fitness", lora_weights_url=LORA_URL, **profile)


# --- part 1: what the request leaves empty comes from the profile ---


def test_an_empty_request_takes_the_profile_and_a_given_field_wins() -> None:
    avatar = ref(**NOVA, format="4:5")
    resolved = resolve_request(make_request(avatar_id="nova"), avatar)
    assert resolved.num_pieces == 3 and resolved.platform == "tiktok"
    assert resolved.tier_distribution.as_dict() == {"capa1": 0.5, "capa2": 0.5, "capa3": 0.0}
    assert resolved.format == "4:5"
    # the resolved request is whole: a run's (or a resume's) parameters say what it makes
    assert set(resolved.run_parameters()) >= {
        "num_pieces", "platform", "tier_distribution", "format"
    }
    given = make_request(
        avatar_id="nova", num_pieces=7, platform="twitter", tier_distribution="1,0,0",
        format="16x9",
    )
    resolved = resolve_request(given, avatar)
    assert (resolved.num_pieces, resolved.platform, resolved.format) == (7, "twitter", "16:9")
    assert resolved.tier_distribution.capa1 == 1.0


def test_an_avatar_without_a_profile_gets_todays_defaults() -> None:
    resolved = resolve_request(make_request(avatar_id="old"), ref())
    assert resolved.num_pieces == 50 and resolved.platform == "instagram"
    assert resolved.tier_distribution.as_dict() == {"capa1": 0.6, "capa2": 0.3, "capa3": 0.1}
    assert resolved.format is None  # the platform's own, decided at planning
    prompts = make_request(avatar_id="old", custom_prompts=["a", "b"])
    assert resolve_request(prompts, ref(**NOVA)).num_pieces == 2  # one per prompt


@pytest.mark.parametrize(
    "profile, field, hint",
    [
        ({"pieces_per_run": 900}, "num_pieces", "outside 1..500"),
        ({"platforms": ["myspace"]}, "platform", "myspace"),
        ({"tier_mix": {"capa1": 0.5, "capa2": 0.4, "capa3": 0.0}}, "tier_distribution", "0.9"),
        ({"tier_mix": {"gold": 1.0}}, "tier_distribution", "gold"),
        ({"format": "portrait"}, "format", "portrait"),
    ],
)
def test_a_profile_value_the_request_cannot_hold_is_refused_naming_field_and_avatar(
    profile: dict[str, Any], field: str, hint: str
) -> None:
    with pytest.raises(BatchRequestError) as refused:
        resolve_request(make_request(avatar_id="nova"), ref(**profile))
    assert refused.value.field == field
    assert "avatar 'nova'" in refused.value.message and hint in refused.value.message


async def test_a_batch_left_to_the_profile_makes_what_the_profile_says(studio_env) -> None:
    add("nova", **NOVA)
    state = await content_batch(avatar_id="nova", seed=1, return_state=True)
    result = await state.result()
    assert result.requested == 3
    config = batch_config(result.batch_id)  # what a resume uses: whole
    assert config["num_pieces"] == 3 and config["platform"] == "tiktok"
    assert config["tier_distribution"] == {"capa1": 0.5, "capa2": 0.5, "capa3": 0.0}
    specs = load_batch_progress(result.batch_id).specs
    assert all(spec.prompt.startswith("nv0va woman, ") for spec in specs)
    assert {spec.tier for spec in specs} <= {"capa1", "capa2"}
    async with get_client() as client:
        run = await client.read_flow_run(state.state_details.flow_run_id)
    assert run.name == "content-batch-nova-3"  # named by the size the profile gave


async def test_a_resume_uses_the_stored_request_not_todays_profile(studio_env) -> None:
    add("nova", **NOVA)
    first = await content_batch(avatar_id="nova", seed=2)
    with session_scope() as session:
        session.get(Batch, first.batch_id).status = "crashed"
    from studio.avatars import update_avatar

    with session_scope() as session:  # and a niche with no templates: the plan is stored
        update_avatar(
            session, "nova", niche="sailing",
            profile={"pieces_per_run": 9, "platforms": ["twitter"]},
        )
    again = await content_batch(avatar_id="nova", resume_batch_id=first.batch_id)
    assert again.batch_id == first.batch_id and again.requested == 3
    assert batch_config(first.batch_id)["platform"] == "tiktok"


# --- part 2: the format, per batch over the avatar's over the platform's ---


def spec(prompt: str = "a sunrise run on the beach", custom: bool = False) -> PieceSpec:
    return PieceSpec(
        piece_id="p1", batch_id="b1", index=0, prompt=prompt, tier="capa1", custom=custom
    )


def test_each_piece_gets_its_platform_size_and_the_overrides_win_in_order() -> None:
    tiktok = make_request(avatar_id="nova", num_pieces=1, platform="tiktok")
    [planned] = for_avatar_and_platform([spec()], tiktok, ref())
    assert (planned.platform, planned.aspect_ratio) == ("tiktok", "9:16")
    assert (planned.width, planned.height) == (768, 1344)
    [planned] = for_avatar_and_platform([spec()], tiktok, ref(format="1:1"))
    assert (planned.aspect_ratio, planned.width, planned.height) == ("1:1", 1024, 1024)
    batch = make_request(avatar_id="nova", num_pieces=1, platform="tiktok", format="16:9")
    [planned] = for_avatar_and_platform([spec()], batch, ref(format="1:1"))
    assert planned.aspect_ratio == "16:9" and planned.width > planned.height
    instagram = make_request(avatar_id="nova", num_pieces=1, platform="instagram")
    [planned] = for_avatar_and_platform([spec()], instagram, ref())
    assert (planned.aspect_ratio, planned.width, planned.height) == ("4:5", 896, 1152)


def test_trigger_words_lead_every_prompt_once() -> None:
    words = ["nv0va woman", "freckles"]
    assert with_trigger_words("a run", words) == "nv0va woman, freckles, a run"
    assert with_trigger_words("NV0VA WOMAN on a run", words) == "freckles, NV0VA WOMAN on a run"
    assert with_trigger_words("freckles and nv0va woman", words) == "freckles and nv0va woman"
    assert with_trigger_words("a run", []) == "a run"
    assert with_trigger_words("frecklesque light", ["freckles"]) == "freckles, frecklesque light"
    custom = make_request(avatar_id="nova", custom_prompts=["my own prompt"], platform="tiktok")
    [planned] = for_avatar_and_platform([spec("my own prompt", custom=True)], custom, ref(**NOVA))
    assert planned.prompt == "nv0va woman, my own prompt"


async def test_custom_prompts_carry_the_trigger_words_in_the_batch(studio_env) -> None:
    add("nova", **NOVA)
    result = await content_batch(avatar_id="nova", custom_prompts=["a rooftop stretch"], seed=3)
    assert result.requested == 1
    with session_scope() as session:
        [prompt] = session.scalars(
            select(ContentPiece.prompt).where(ContentPiece.batch_id == result.batch_id)
        )
    assert prompt == "nv0va woman, a rooftop stretch"


@pytest.fixture
def replicate_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replicate in the chain (nothing is sent: the refusal comes first)."""
    monkeypatch.setenv("REPLICATE_API_TOKEN", "r8_test_not_a_real_token")
    monkeypatch.setenv("REPLICATE_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("LORA_INFERENCE_PROVIDER_ORDER", "replicate")


async def test_a_format_a_configured_provider_cannot_serve_is_refused_naming_it(
    studio_env, demo_avatar, replicate_configured
) -> None:
    state = await content_batch(avatar_id="demo", num_pieces=2, format="7:5", return_state=True)
    assert state.is_failed() and state.name == "Refused"
    assert state.message.startswith("format: ") and "replicate" in state.message
    assert nothing_written()
    add("wide", format="7:5")  # the avatar's format: refused the same way
    with pytest.raises(BatchRequestError) as refused:
        await content_batch(avatar_id="wide", num_pieces=2)
    assert refused.value.field == "format" and "replicate" in refused.value.message
    assert nothing_written()
    # a format its enum holds goes through validation
    assert validate_batch_request(make_request(avatar_id="wide", format="21:9")).request.format


async def test_an_unreadable_format_is_refused_before_the_run(studio_env, demo_avatar) -> None:
    state = await content_batch(avatar_id="demo", num_pieces=2, format="9:0", return_state=True)
    assert state.name == "Refused" and state.message.startswith("format: ")
    assert nothing_written()


@pytest.mark.parametrize("command", ["run", "submit"])
def test_batch_commands_refuse_a_bad_format_with_exit_2(studio_env, demo_avatar, command) -> None:
    result = runner.invoke(app, ["batch", command, "--avatar", "demo", "--format", "portrait"])
    assert result.exit_code == 2, result.output
    assert "format" in result.output and "portrait" in result.output
    assert nothing_written()


def test_batch_submit_refuses_a_format_replicate_cannot_serve(
    studio_env, demo_avatar, replicate_configured
) -> None:
    result = runner.invoke(app, ["batch", "submit", "--avatar", "demo", "--format", "7:5"])
    assert result.exit_code == 2, result.output
    assert "replicate" in result.output


@pytest.fixture
def batch_deployment() -> uuid.UUID:
    async def apply() -> uuid.UUID:
        deployment = await content_batch.ato_deployment(
            name="on-demand", parameters={"avatar_id": "demo", "num_pieces": 10}
        )
        return await deployment.apply()

    return asyncio.run(apply())


def test_batch_submit_sends_the_resolved_request_and_the_format(
    studio_env, batch_deployment
) -> None:
    add("nova", **NOVA)
    result = runner.invoke(
        app, ["batch", "submit", "--avatar", "nova", "--format", "9x16"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert "content-batch-nova-3" in result.output  # the profile's size, not the form's 10
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[batch_deployment]))
        )
    [run] = [r for r in runs if r.name == "content-batch-nova-3"]
    assert run.parameters["num_pieces"] == 3 and run.parameters["platform"] == "tiktok"
    assert run.parameters["format"] == "9:16"
    assert run.parameters["tier_distribution"] == {"capa1": 0.5, "capa2": 0.5, "capa3": 0.0}


# --- the scheduled fan-out: each avatar's platforms, size and mix ---


def test_pieces_split_over_platforms_by_the_largest_remainder() -> None:
    assert split_pieces(50, ["instagram", "tiktok"]) == {"instagram": 25, "tiktok": 25}
    assert split_pieces(50, ["instagram", "tiktok", "twitter"]) == {
        "instagram": 17, "tiktok": 17, "twitter": 16
    }
    assert split_pieces(1, ["instagram", "tiktok"]) == {"instagram": 1}
    assert split_pieces(5, []) == {}


def test_the_fan_out_plans_one_batch_per_profile_platform() -> None:
    shared = {"num_pieces": 4, "platform": None, "tier_distribution": None, "hook_mode": "auto"}
    nova = ref(**{**NOVA, "pieces_per_run": 7})
    plain = AvatarRef(id="a2", name="plain", niche="food", lora_weights_url=LORA_URL)
    planned = plan_batches([nova, plain], shared)
    assert [(b.run_name, b.label) for b in planned] == [
        ("content-batch-nova-4-tiktok", "nova/tiktok"),
        ("content-batch-nova-3-instagram", "nova/instagram"),
        ("content-batch-plain-4", "plain"),  # no profile: as before
    ]
    keys = {b.idempotency_key("daily", "slot") for b in planned}
    assert keys == {
        "scheduled-batches:daily:slot:a1:tiktok",
        "scheduled-batches:daily:slot:a1:instagram",
        "scheduled-batches:daily:slot:a2",
    }
    assert planned[0].parameters["tier_distribution"] == NOVA["tier_mix"]
    assert planned[2].parameters["tier_distribution"] == {"capa1": 0.6, "capa2": 0.3, "capa3": 0.1}
    assert planned[2].parameters["platform"] == "instagram"
    # a platform or mix given to the fan-out wins over the profiles: one batch each
    forced = plan_batches([nova], {**shared, "platform": "twitter", "tier_distribution": "1,0,0"})
    assert [(b.run_name, b.parameters["platform"]) for b in forced] == [
        ("content-batch-nova-7", "twitter")
    ]
    assert forced[0].parameters["tier_distribution"] == {"capa1": 1.0, "capa2": 0.0, "capa3": 0.0}


async def test_the_fan_out_submits_each_platforms_batch_once(studio_env) -> None:
    add("nova", cadence="weekly", **{**NOVA, "pieces_per_run": 5})
    add("plain", niche="food", cadence="weekly")
    deployment = await content_batch.ato_deployment(
        name="on-demand", parameters={"avatar_id": "demo", "num_pieces": 10}
    )
    deployment_id = await deployment.apply()
    parent = await scheduled_batches(cadence="weekly", num_pieces=2, return_state=True)
    assert parent.is_completed(), parent.message
    summary = await parent.result()
    assert set(summary) == {"nova/tiktok", "nova/instagram", "plain"}
    async with get_client() as client:
        children = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(
                    any_=[parent.state_details.flow_run_id]
                )
            )
        )
    by_name = {run.name: run for run in children}
    assert set(by_name) == {
        "content-batch-nova-3-tiktok", "content-batch-nova-2-instagram", "content-batch-plain-2"
    }
    for run in children:
        assert run.deployment_id == deployment_id
    tiktok = by_name["content-batch-nova-3-tiktok"].parameters
    assert tiktok["platform"] == "tiktok" and tiktok["num_pieces"] == 3
    assert tiktok["tier_distribution"] == NOVA["tier_mix"]
    assert by_name["content-batch-nova-2-instagram"].parameters["platform"] == "instagram"
    keys = {run.idempotency_key for run in children}
    assert len(keys) == 3 and any(key.endswith(":tiktok") for key in keys)
    # a retried slot starts no batch twice, per platform too
    ready = due_avatars("weekly")
    params = {"num_pieces": 2, "platform": None, "tier_distribution": None, "hook_mode": "auto"}
    first = await submit_batches("weekly", "2026-12-07T06:00:00+00:00", ready, params)
    again = await submit_batches("weekly", "2026-12-07T06:00:00+00:00", ready, params)
    assert first == again and len(first) == 3


async def test_the_fan_out_in_process_runs_each_platform_batch(studio_env) -> None:
    async with get_client() as client:
        try:
            gone = await client.read_deployment_by_name(BATCH_DEPLOYMENT)
            await client.delete_deployment(gone.id)
        except ObjectNotFound:
            pass
    add("nova", cadence="monthly", **{**NOVA, "pieces_per_run": 2})
    summary = await scheduled_batches(cadence="monthly", num_pieces=5)
    assert set(summary) == {"nova/tiktok", "nova/instagram"}
    with session_scope() as session:
        configs = [b.config for b in session.scalars(select(Batch))]
        prompts = list(session.scalars(select(ContentPiece.prompt)))
    assert sorted(c["platform"] for c in configs) == ["instagram", "tiktok"]
    assert all(c["num_pieces"] == 1 for c in configs)
    assert prompts and all(p.startswith("nv0va woman, ") for p in prompts)


# --- ComfyUI: the studio's own workflow checked at admission ---


@pytest.fixture
def comfyui(monkeypatch: pytest.MonkeyPatch):
    import tasks.generate_images as generate_images

    with ComfyUIEmulator(Behaviour(seed=7)) as emulator:
        emulator.installed["loras"] = ["nova_v2.safetensors"]
        monkeypatch.setenv("COMFYUI_ENABLED", "true")
        monkeypatch.setenv("COMFYUI_ENDPOINT", emulator.url)
        monkeypatch.setenv("COMFYUI_POLL_INTERVAL", "0.02")
        monkeypatch.setenv("LORA_INFERENCE_PROVIDER_ORDER", "comfyui")
        generate_images._chain = None
        yield emulator
        generate_images._chain = None


def own_workflow(tmp_path: Path) -> Path:
    """The default workflow plus a node type the server lacks (a face detailer)."""
    from studio.providers.comfyui_workflow import DEFAULT_WORKFLOW, WORKFLOWS_DIR

    graph = json.loads((WORKFLOWS_DIR / f"{DEFAULT_WORKFLOW}.json").read_text())
    graph["12"] = {
        "class_type": "FaceDetailer",
        "inputs": {"image": ["8", 0], "model": ["10", 0], "guide_size": 512},
        "_meta": {"title": "Face fix"},
    }
    graph["9"]["inputs"]["images"] = ["12", 0]
    path = tmp_path / "studio_face.json"
    path.write_text(json.dumps(graph))
    return path


async def test_a_workflow_the_server_cannot_run_ends_the_run_refused(
    studio_env, comfyui, tmp_path
) -> None:
    add("nova", **{**NOVA, "workflow": str(own_workflow(tmp_path))})
    state = await content_batch(avatar_id="nova", num_pieces=2, return_state=True)
    assert state.is_failed() and state.name == "Refused"
    assert state.message.startswith("workflow: ") and "FaceDetailer" in state.message
    assert comfyui.counters.requests("prompt") == 0
    assert nothing_written()


async def test_with_every_node_present_the_images_have_the_platform_size(
    studio_env, comfyui
) -> None:
    add("nova", **NOVA)
    result = await content_batch(avatar_id="nova", num_pieces=2, seed=4)
    assert {piece.provider for piece in result.pieces} == {"comfyui"}
    assert comfyui.counters.requests("prompt") == 2
    specs = load_batch_progress(result.batch_id).specs
    assert {(s.platform, s.width, s.height) for s in specs} == {("tiktok", 768, 1344)}


# --- a niche without templates: refused at validation, not by the planning step ---


async def test_a_niche_without_templates_is_refused_before_the_run(studio_env) -> None:
    add("sailor", niche="sailing")
    state = await content_batch(avatar_id="sailor", num_pieces=2, return_state=True)
    assert state.is_failed() and state.name == "Refused"
    assert state.message.startswith("niche: ") and "'sailing'" in state.message
    assert "TEMPLATES_ALLOW_OTHER_NICHES" in state.message
    assert nothing_written()
    result = runner.invoke(app, ["batch", "submit", "--avatar", "sailor"])
    assert result.exit_code == 2 and "sailing" in result.output
    # custom prompts need no template: that batch runs
    made = await content_batch(avatar_id="sailor", custom_prompts=["a calm harbour"], seed=1)
    assert made.requested == 1


async def test_a_platform_batch_keeps_its_name_when_a_worker_runs_it(studio_env) -> None:
    """Prefect renames a run with the flow's name function as it starts: the fan-out's
    `-<platform>` stays (run here as a worker's process runs it)."""
    from prefect.flow_engine import run_flow_async

    add("nova", **NOVA)
    # no num_pieces of its own: a run of it is as big as the avatar's pieces per run
    deployment_id = await (await content_batch.ato_deployment(name="profile-sized")).apply()
    async with get_client() as client:
        planned = await client.create_flow_run_from_deployment(
            deployment_id,
            parameters={"avatar_id": "nova", "num_pieces": 1, "platform": "instagram"},
            name="content-batch-nova-1-instagram",
        )
        unnamed = await client.create_flow_run_from_deployment(
            deployment_id, parameters={"avatar_id": "nova"}, name="quick-fox"
        )
    for run in (planned, unnamed):
        state = await run_flow_async(
            content_batch, flow_run=run, parameters=run.parameters, return_type="state"
        )
        assert state.is_completed(), state.message
    async with get_client() as client:
        assert (await client.read_flow_run(planned.id)).name == "content-batch-nova-1-instagram"
        assert (await client.read_flow_run(unnamed.id)).name == "content-batch-nova-3"

"""The studio's own ComfyUI workflows, against the ComfyUI emulator's real HTTP API.

Every bad workflow is refused before a prompt is posted (the emulator's /prompt counter
stays 0): offline by `load_workflow`, at admission by `workflow_refusal` (against
GET /object_info), in the provider (not retryably), and by `studio workflow check`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from studio.providers.base import ProviderError
from studio.providers.comfyui import ENTRY, ComfyUIProvider, seed_for
from studio.providers.comfyui_workflow import (
    DEFAULT_WORKFLOW,
    WORKFLOWS_DIR,
    BindValues,
    WorkflowError,
    avatar_values,
    bind,
    check_against_server,
    choices,
    load_workflow,
    resolve_workflow,
    shipped_workflows,
    workflow_refusal,
)
from studio.providers.settings import ProviderSettings
from studio.types import AvatarRef, PieceSpec
from tests.emulators.comfyui import ComfyUIEmulator

PNG = b"\x89PNG\r\n\x1a\n"
LORA = "nova_v2.safetensors"
EXAMPLES = ["sdxl_lora", "sdxl_lora_hires", "sdxl_lora_refiner", "sdxl_base"]


def shipped(name: str = DEFAULT_WORKFLOW) -> dict[str, Any]:
    return json.loads((WORKFLOWS_DIR / f"{name}.json").read_text())


def write(tmp_path: Path, graph: Any, name: str = "studio_flow.json") -> Path:
    path = tmp_path / name
    path.write_text(graph if isinstance(graph, str) else json.dumps(graph))
    return path


def settings_for(comfyui: ComfyUIEmulator, **more: Any) -> ProviderSettings:
    return ProviderSettings(
        _env_file=None, comfyui_enabled=True, comfyui_endpoint=comfyui.url,
        provider_order=["comfyui"], **more,
    )


@pytest.fixture
def installed(comfyui: ComfyUIEmulator) -> ComfyUIEmulator:
    """A server with the avatar's LoRA file (and only it) in models/loras."""
    comfyui.installed["loras"] = [LORA]
    return comfyui


def with_face_detailer() -> dict[str, Any]:
    """A studio's own workflow: the default plus a node type the server lacks."""
    graph = shipped()
    graph["12"] = {
        "class_type": "FaceDetailer",
        "inputs": {"image": ["8", 0], "model": ["10", 0], "guide_size": 512},
        "_meta": {"title": "Face fix"},
    }
    graph["9"]["inputs"]["images"] = ["12", 0]
    return graph


# --- offline checks: load_workflow ---


def test_every_shipped_workflow_loads_with_its_bindings():
    assert set(EXAMPLES) <= set(shipped_workflows())
    for name in EXAMPLES:
        workflow = load_workflow(resolve_workflow(name))
        assert {"prompt", "negative", "seed", "size", "checkpoint"} <= set(workflow.bound)
        assert workflow.binds_lora == (name != "sdxl_base")
        assert workflow.outputs == ("9",)
    assert resolve_workflow(None) == resolve_workflow("sdxl_lora.json")


def test_not_json_is_refused_naming_the_file(tmp_path):
    path = write(tmp_path, "{ not json")
    with pytest.raises(WorkflowError) as caught:
        load_workflow(path)
    assert str(path) in str(caught.value) and "not JSON" in str(caught.value)


def test_an_unreadable_or_absent_file_is_refused_naming_it(tmp_path):
    with pytest.raises(WorkflowError, match="no such file"):
        resolve_workflow(str(tmp_path / "gone.json"))
    with pytest.raises(WorkflowError, match="cannot read it"):
        load_workflow(tmp_path / "gone.json")
    folder = tmp_path / "folder.json"
    folder.mkdir()
    with pytest.raises(WorkflowError, match=r"folder\.json: cannot read it"):
        load_workflow(folder)


def test_a_ui_export_is_refused_saying_how_to_export_in_api_format(tmp_path):
    ui = {"last_node_id": 9, "nodes": [{"id": 3, "type": "KSampler"}], "links": [[1, 4, 0]]}
    with pytest.raises(WorkflowError) as caught:
        load_workflow(write(tmp_path, ui))
    message = str(caught.value)
    assert "UI-format export" in message and "Export (API)" in message
    with pytest.raises(WorkflowError, match="API-format node"):
        load_workflow(write(tmp_path, {"3": {"type": "KSampler"}}, "half.json"))
    with pytest.raises(WorkflowError, match="not an API-format workflow"):
        load_workflow(write(tmp_path, [1, 2], "list.json"))


@pytest.mark.parametrize("binding", ["prompt", "negative", "seed", "size"])
def test_a_missing_binding_is_named(tmp_path, binding):
    graph = shipped()
    for node in graph.values():
        if node["_meta"]["title"] == f"studio:{binding}":
            node["_meta"]["title"] = "untitled"
    with pytest.raises(WorkflowError) as caught:
        load_workflow(write(tmp_path, graph))
    assert f"studio:{binding} is missing" in str(caught.value)


def test_no_output_image_node_is_refused(tmp_path):
    graph = shipped()
    del graph["9"]
    with pytest.raises(WorkflowError, match="no output image node"):
        load_workflow(write(tmp_path, graph))


def test_a_custom_save_node_counts_when_titled_studio_output(tmp_path):
    graph = shipped()
    graph["9"]["class_type"] = "Image Save"
    graph["9"]["_meta"]["title"] = "studio:output"
    assert load_workflow(write(tmp_path, graph)).outputs == ("9",)


def test_title_typos_linked_bindings_and_broken_links_are_named(tmp_path):
    graph = shipped()
    graph["6"]["_meta"]["title"] = "studio:promt"
    with pytest.raises(WorkflowError, match="unknown binding 'studio:promt'"):
        load_workflow(write(tmp_path, graph, "typo.json"))
    graph = shipped()
    graph["3"]["inputs"]["seed"] = ["20", 0]
    graph["20"] = {"class_type": "PrimitiveInt", "inputs": {"value": 1}}
    with pytest.raises(WorkflowError, match="input seed is linked to node 20"):
        load_workflow(write(tmp_path, graph, "linked.json"))
    graph = shipped()
    graph["8"]["inputs"]["samples"] = ["99", 0]
    with pytest.raises(WorkflowError, match="links to node 99, which the workflow lacks"):
        load_workflow(write(tmp_path, graph, "broken.json"))
    graph = shipped()
    graph["5"]["_meta"]["title"] = "studio:size"
    del graph["5"]["inputs"]["height"]
    with pytest.raises(WorkflowError, match="has no input height for studio:size"):
        load_workflow(write(tmp_path, graph, "half_size.json"))


def test_a_title_may_carry_words_around_the_binding(tmp_path):
    graph = shipped()
    graph["6"]["_meta"]["title"] = "Positive (studio:prompt)"
    assert load_workflow(write(tmp_path, graph)).bound["prompt"] == ("6",)


# --- binding ---


def test_bind_fills_every_binding_and_leaves_the_file_as_it_was():
    workflow = load_workflow(resolve_workflow("sdxl_lora_hires"))
    before = json.dumps(workflow.graph, sort_keys=True)
    graph = bind(workflow, BindValues(
        prompt="p", negative="n", seed=7, width=896, height=1152, lora_name=LORA,
        lora_strength=0.6, checkpoint="other.safetensors", filename_prefix="studio_x",
    ))
    assert graph["6"]["inputs"]["text"] == "p" and graph["7"]["inputs"]["text"] == "n"
    assert graph["3"]["inputs"]["seed"] == graph["12"]["inputs"]["seed"] == 7  # both passes
    assert (graph["5"]["inputs"]["width"], graph["5"]["inputs"]["height"]) == (896, 1152)
    lora = graph["10"]["inputs"]
    assert (lora["lora_name"], lora["strength_model"], lora["strength_clip"]) == (LORA, 0.6, 0.6)
    assert graph["4"]["inputs"]["ckpt_name"] == "other.safetensors"
    assert graph["9"]["inputs"]["filename_prefix"] == "studio_x"
    assert graph["11"]["inputs"]["scale_by"] == 1.5  # unbound inputs keep the file's value
    assert json.dumps(workflow.graph, sort_keys=True) == before


def test_refiner_binds_noise_seed_and_both_prompts():
    workflow = load_workflow(resolve_workflow("sdxl_lora_refiner"))
    graph = bind(workflow, BindValues(prompt="p", negative="n", seed=11))
    assert graph["3"]["inputs"]["noise_seed"] == graph["23"]["inputs"]["noise_seed"] == 11
    assert graph["6"]["inputs"]["text"] == graph["21"]["inputs"]["text"] == "p"
    assert graph["20"]["inputs"]["ckpt_name"] == "sd_xl_refiner_1.0.safetensors"


def test_object_info_combo_shapes():
    assert choices([["a", "b"], {}]) == ["a", "b"]
    assert choices(["COMBO", {"options": ["a"]}]) == ["a"]
    assert choices(["INT", {"min": 0}]) is None


# --- against /object_info: each example validates on the emulator ---


@pytest.mark.parametrize("name", EXAMPLES)
async def test_each_example_validates_against_object_info_and_runs(
    installed: ComfyUIEmulator, spec, avatar, name
):
    import httpx

    if name == "sdxl_base":
        avatar = avatar.model_copy(update={"lora_weights_url": None})
    avatar = avatar.model_copy(update={"workflow": name})
    workflow = load_workflow(resolve_workflow(name))
    values = avatar_values(avatar, checkpoint=None, prompt="x", seed=1)
    async with httpx.AsyncClient(base_url=installed.url) as client:
        assert await check_against_server(workflow, values, client) == []
    settings = settings_for(installed)
    assert await workflow_refusal(avatar, settings) is None
    provider = ComfyUIProvider(installed.url, poll_interval=0.01)
    try:
        image = await provider.generate(spec, avatar)
    finally:
        await provider.aclose()
    assert image.data.startswith(PNG)
    posted = installed.prompts[-1]
    assert {n["class_type"] for n in posted.values()} == {
        n["class_type"] for n in workflow.graph.values()
    }


# --- refused before anything is spent ---


async def test_a_node_the_server_lacks_is_refused_before_any_prompt(
    installed: ComfyUIEmulator, avatar, tmp_path
):
    path = write(tmp_path, with_face_detailer())
    refusal = await workflow_refusal(
        avatar.model_copy(update={"workflow": str(path)}), settings_for(installed)
    )
    assert refusal is not None
    assert "node type FaceDetailer is not installed (node 12 'Face fix')" in refusal
    assert path.name in refusal
    assert installed.counters.requests("object_info") == 1
    assert installed.counters.requests("prompt") == 0 and installed.billed_jobs == 0


async def test_missing_model_files_are_each_named(installed: ComfyUIEmulator, avatar):
    installed.installed["loras"] = ["someone_else.safetensors"]
    refused_avatar = avatar.model_copy(update={"checkpoint": "juggernaut_xl.safetensors"})
    refusal = await workflow_refusal(refused_avatar, settings_for(installed))
    assert refusal is not None
    assert f"LoraLoader.lora_name '{LORA}' is not on the server" in refusal
    assert "CheckpointLoaderSimple.ckpt_name 'juggernaut_xl.safetensors'" in refusal
    assert installed.counters.requests("prompt") == 0


async def test_a_model_file_the_workflow_names_itself_is_checked(
    installed: ComfyUIEmulator, avatar
):
    installed.installed["checkpoints"] = ["sd_xl_base_1.0.safetensors"]  # no refiner
    refusal = await workflow_refusal(
        avatar.model_copy(update={"workflow": "sdxl_lora_refiner"}), settings_for(installed)
    )
    assert refusal is not None and "'sd_xl_refiner_1.0.safetensors'" in refusal
    assert "node 20 'Refiner checkpoint'" in refusal
    assert installed.counters.requests("prompt") == 0


def without_seed_title() -> dict[str, Any]:
    graph = shipped()
    graph["3"]["_meta"]["title"] = "KSampler"
    return graph


def without_output() -> dict[str, Any]:
    graph = shipped()
    del graph["9"]
    return graph


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (lambda: "{ not json", "not JSON"),
        (lambda: {"nodes": [], "links": []}, "Export (API)"),
        (without_seed_title, "studio:seed is missing"),
        (without_output, "no output image node"),
    ],
    ids=["not-json", "ui-export", "missing-binding", "no-output"],
)
async def test_a_bad_file_is_refused_at_admission_and_in_the_provider(
    installed: ComfyUIEmulator, spec, avatar, tmp_path, make, said
):
    path = write(tmp_path, make())
    avatar = avatar.model_copy(update={"workflow": str(path)})
    refusal = await workflow_refusal(avatar, settings_for(installed))
    assert refusal is not None and str(path) in refusal and said in refusal
    provider = ComfyUIProvider(installed.url)
    try:
        with pytest.raises(ProviderError) as caught:
            await provider.generate(spec, avatar)
    finally:
        await provider.aclose()
    assert not caught.value.retryable and str(path) in str(caught.value)
    assert installed.counters.requests("object_info") == 0  # refused offline
    assert installed.counters.requests("prompt") == 0


async def test_a_lora_mismatch_between_avatar_and_workflow_is_refused(
    installed: ComfyUIEmulator, spec, avatar
):
    refusal = await workflow_refusal(
        avatar.model_copy(update={"workflow": "sdxl_base"}), settings_for(installed)
    )
    assert refusal is not None and "studio:lora" in refusal and "Nova" in refusal
    refusal = await workflow_refusal(
        avatar.model_copy(update={"lora_weights_url": None}), settings_for(installed)
    )
    assert refusal is not None and "has no LoRA weights" in refusal
    assert installed.counters.requests("prompt") == 0


async def test_no_refusal_when_comfyui_is_not_in_the_chain_or_does_not_answer(avatar, tmp_path):
    bad = avatar.model_copy(update={"workflow": str(write(tmp_path, "{"))})
    off = ProviderSettings(_env_file=None, comfyui_enabled=False)
    assert await workflow_refusal(bad, off) is None
    down = ProviderSettings(
        _env_file=None, comfyui_enabled=True, comfyui_endpoint="http://127.0.0.1:9",
        provider_order=["comfyui"],
    )
    assert await workflow_refusal(avatar, down) is None  # the chain falls back as usual
    assert await workflow_refusal(bad, down) is not None  # but a bad file is bad anyway


# --- the studio's own workflow delivers images through the same client ---


async def test_a_studio_workflow_with_every_node_present_delivers_images(
    installed: ComfyUIEmulator, avatar, tmp_path
):
    graph = shipped("sdxl_lora_hires")
    graph["6"]["_meta"]["title"] = "Positive studio:prompt"
    graph["13"] = {  # an intermediate preview: the saved image is still the one fetched
        "class_type": "PreviewImage", "inputs": {"images": ["8", 0]},
        "_meta": {"title": "Preview"},
    }
    path = write(tmp_path, graph)
    own = avatar.model_copy(update={"workflow": str(path), "lora_strength": 0.7})
    assert await workflow_refusal(own, settings_for(installed)) is None
    provider = ComfyUIProvider(installed.url, poll_interval=0.01)
    specs = [
        PieceSpec(piece_id=f"b-9-p{i:03d}", batch_id="b-9", index=i, prompt=f"scene {i}",
                  tier="capa1", width=896, height=1152, aspect_ratio="4:5")
        for i in range(3)
    ]
    try:
        images = [await provider.generate(s, own) for s in specs]
    finally:
        await provider.aclose()
    assert all(image.data.startswith(PNG) for image in images)
    assert installed.counters.requests("prompt") == 3
    for s, posted in zip(specs, installed.prompts[-3:], strict=True):
        assert posted["6"]["inputs"]["text"] == s.prompt
        assert posted["3"]["inputs"]["seed"] == posted["12"]["inputs"]["seed"] == seed_for(
            s.piece_id
        )
        assert (posted["5"]["inputs"]["width"], posted["5"]["inputs"]["height"]) == (896, 1152)
        assert posted["10"]["inputs"]["lora_name"] == LORA
        assert posted["10"]["inputs"]["strength_model"] == 0.7
        assert posted["9"]["inputs"]["filename_prefix"] == f"studio_{s.piece_id}"
        assert posted["11"]["class_type"] == "LatentUpscaleBy"


async def test_the_avatars_workflow_overrides_comfyui_workflow(
    installed: ComfyUIEmulator, spec, avatar, monkeypatch
):
    monkeypatch.setenv("COMFYUI_WORKFLOW", "sdxl_lora_refiner")
    settings = ProviderSettings(_env_file=None, comfyui_enabled=True,
                                comfyui_endpoint=installed.url)
    provider = ENTRY.build(settings, settings.tuning("comfyui"))
    try:
        await provider.generate(spec, avatar)  # COMFYUI_WORKFLOW
        await provider.generate(spec, avatar.model_copy(update={"workflow": "sdxl_lora_hires"}))
    finally:
        await provider.aclose()
    first, second = installed.prompts[-2:]
    assert first["23"]["class_type"] == "KSamplerAdvanced"  # the refiner pass
    assert second["11"]["class_type"] == "LatentUpscaleBy" and "23" not in second


async def test_checkpoint_avatar_over_setting_over_the_file(installed: ComfyUIEmulator, spec,
                                                            avatar):
    own = "v1-5-pruned-emaonly.safetensors"
    provider = ComfyUIProvider(installed.url, poll_interval=0.01)
    try:
        await provider.generate(spec, avatar)
        provider.checkpoint = "sd_xl_refiner_1.0.safetensors"
        await provider.generate(spec, avatar)
        await provider.generate(spec, avatar.model_copy(update={"checkpoint": own}))
    finally:
        await provider.aclose()
    names = [p["4"]["inputs"]["ckpt_name"] for p in installed.prompts[-3:]]
    assert names == ["sd_xl_base_1.0.safetensors", "sd_xl_refiner_1.0.safetensors", own]


def test_size_defaults_to_square_1024(avatar):
    values = avatar_values(AvatarRef(id="a", name="A", niche="n"), checkpoint=None)
    assert (values.width, values.height, values.lora_name) == (1024, 1024, None)
    values = avatar_values(avatar, checkpoint=None, width=768, height=1344)
    assert (values.width, values.height, values.lora_name) == (768, 1344, LORA)


# --- studio workflow check ---

runner = CliRunner()


def cli(*args: str):
    from cli.app import app

    return runner.invoke(app, ["workflow", "check", *args])


def test_cli_check_passes_a_good_workflow(installed: ComfyUIEmulator, monkeypatch):
    monkeypatch.delenv("COMFYUI_ENABLED", raising=False)
    result = cli("sdxl_lora_hires", "--url", installed.url, "--lora", f"https://w/{LORA}")
    assert result.exit_code == 0, result.output
    assert "every node type and model file is on" in result.output
    offline = cli("sdxl_lora")
    assert offline.exit_code == 0 and "not checked against a server" in offline.output


def test_cli_check_exits_2_naming_the_missing_node(installed: ComfyUIEmulator, tmp_path):
    path = write(tmp_path, with_face_detailer())
    result = cli(str(path), "--url", installed.url)
    assert result.exit_code == 2
    assert "node type FaceDetailer is not installed" in result.output
    installed.installed["loras"] = []
    result = cli("sdxl_lora", "--url", installed.url, "--lora", LORA)
    assert result.exit_code == 2 and f"'{LORA}' is not on the server" in result.output
    assert installed.counters.requests("prompt") == 0


def test_cli_check_exits_2_on_a_bad_file_and_1_when_the_server_is_down(tmp_path):
    ui = cli(str(write(tmp_path, {"nodes": [], "links": []})))
    assert ui.exit_code == 2 and "Export (API)" in ui.output
    down = cli("sdxl_lora", "--url", "http://127.0.0.1:9")
    assert down.exit_code == 1 and "did not answer GET /object_info" in down.output

"""ComfyUI as it really behaves (issue 18, part 4): one test per point, at the emulator
(does it answer as comfyanonymous/ComfyUI's server.py / execution.py do?) and at the
client (does the provider cope, and keep what the operator needs?).

- /object_info: the core nodes with the installed model files in their combo lists;
  an unknown class is 200 `{}`.
- POST /prompt validates every node an output depends on and lists each failing node
  (a missing checkpoint as well as a missing LoRA, each error with its input_config and
  received_value; a model list past 20 files is not echoed). An unknown class refuses
  the whole graph (`missing_node_type`; `invalid_prompt` on older servers).
- Cancel: POST /queue {"delete"} removes a waiting prompt only; a running one goes on
  until POST /interrupt. The client interrupts its running prompt and deletes its
  waiting one when it gives up, and the GPU is free afterwards.
- A wholly cached prompt still sends `executed` and its history exists when POST
  /prompt answers.
- The client's errors keep the node, input, received value and exception message.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import httpx
import pytest

from studio.providers.base import ProviderError
from studio.providers.comfyui import ComfyUIProvider
from tests.emulators.billing import RecordingJob
from tests.emulators.comfyui import ComfyUIEmulator
from tests.providers.conftest import make_spec

PNG = b"\x89PNG\r\n\x1a\n"
pytestmark = pytest.mark.asyncio(loop_scope="session")


def _graph() -> dict[str, Any]:
    """An API-format SDXL + LoRA graph as ComfyUI's "Export (API)" writes it."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple",
              "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
        "10": {"class_type": "LoraLoader", "inputs": {
            "model": ["4", 0], "clip": ["4", 1], "lora_name": "nova.safetensors",
            "strength_model": 0.8, "strength_clip": 0.8}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a park", "clip": ["10", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["10", 1]}},
        "5": {"class_type": "EmptyLatentImage",
              "inputs": {"width": 832, "height": 1216, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 7, "steps": 20, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1.0, "model": ["10", 0], "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "t", "images": ["8", 0]}},
    }


@pytest.fixture
async def http(comfyui: ComfyUIEmulator):
    async with httpx.AsyncClient(base_url=comfyui.url, timeout=10) as client:
        yield client


@pytest.fixture
async def provider(comfyui: ComfyUIEmulator):
    client = ComfyUIProvider(comfyui.url, poll_interval=0.01)
    yield client
    await client.aclose()


async def _until(check, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


# --- /object_info ---------------------------------------------------------------------


async def test_object_info_lists_core_nodes_with_the_installed_files(
    comfyui: ComfyUIEmulator, http: httpx.AsyncClient
):
    comfyui.installed["checkpoints"] = ["juggernaut_xl.safetensors"]
    comfyui.installed["upscale_models"] = ["4x-UltraSharp.pth"]
    info = (await http.get("/object_info")).json()
    for name in ("CheckpointLoaderSimple", "LoraLoader", "LoraLoaderModelOnly", "KSampler",
                 "KSamplerAdvanced", "CLIPTextEncode", "EmptyLatentImage", "VAEDecode",
                 "VAEEncode", "VAELoader", "SaveImage", "PreviewImage", "LatentUpscale",
                 "LatentUpscaleBy", "ImageScale", "ImageScaleBy", "UpscaleModelLoader",
                 "ImageUpscaleWithModel", "LoadImage"):
        assert info[name]["name"] == name
    checkpoint = info["CheckpointLoaderSimple"]
    assert checkpoint["input"]["required"]["ckpt_name"][0] == ["juggernaut_xl.safetensors"]
    assert checkpoint["output"] == ["MODEL", "CLIP", "VAE"]
    assert checkpoint["input_order"] == {"required": ["ckpt_name"]}
    assert checkpoint["output_node"] is False and info["SaveImage"]["output_node"] is True
    upscaler = info["UpscaleModelLoader"]["input"]["required"]["model_name"]
    assert upscaler[0] == ["4x-UltraSharp.pth"]
    assert info["KSampler"]["input"]["required"]["steps"] == [
        "INT", {"default": 20, "min": 1, "max": 10000, "step": 1}]
    assert "euler" in info["KSampler"]["input"]["required"]["sampler_name"][0]


async def test_object_info_of_one_class_and_of_a_class_the_server_lacks(
    comfyui: ComfyUIEmulator, http: httpx.AsyncClient
):
    one = await http.get("/object_info/LoraLoader")
    assert list(one.json()) == ["LoraLoader"]
    unknown = await http.get("/object_info/FaceDetailer")
    assert unknown.status_code == 200 and unknown.json() == {}  # not 404
    comfyui.missing_nodes = {"LoraLoader"}
    assert (await http.get("/object_info/LoraLoader")).json() == {}
    assert "LoraLoader" not in (await http.get("/object_info")).json()


async def test_a_folder_that_accepts_any_name_is_not_listed(
    comfyui: ComfyUIEmulator, http: httpx.AsyncClient
):
    """Default: any LoRA name is accepted (every avatar's LoRA copied in), and
    /object_info cannot list "any": the input shows as a free string."""
    assert comfyui.installed["loras"] is None
    info = (await http.get("/object_info/LoraLoader")).json()
    assert info["LoraLoader"]["input"]["required"]["lora_name"][0] == "STRING"
    answer = await http.post("/prompt", json={"prompt": _graph()})
    assert answer.status_code == 200
    comfyui.installed["loras"] = ["nova.safetensors"]
    info = (await http.get("/object_info/LoraLoader")).json()
    assert info["LoraLoader"]["input"]["required"]["lora_name"][0] == ["nova.safetensors"]


# --- POST /prompt validation ----------------------------------------------------------


async def test_every_failing_node_is_listed_with_its_input_and_received_value(
    comfyui: ComfyUIEmulator, http: httpx.AsyncClient
):
    comfyui.installed["checkpoints"] = ["other.safetensors"]
    comfyui.installed["loras"] = ["someone_else.safetensors"]
    answer = await http.post("/prompt", json={"prompt": _graph()})
    assert answer.status_code == 400
    body = answer.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["error"]["details"] == ""  # SaveImage's own inputs are fine
    assert set(body["node_errors"]) == {"4", "10"}
    checkpoint = body["node_errors"]["4"]
    assert checkpoint["class_type"] == "CheckpointLoaderSimple"
    assert checkpoint["dependent_outputs"] == ["9"]
    [error] = checkpoint["errors"]
    assert error["type"] == "value_not_in_list"
    assert error["details"] == (
        "ckpt_name: 'sd_xl_base_1.0.safetensors' not in ['other.safetensors']")
    assert error["extra_info"] == {
        "input_name": "ckpt_name",
        "input_config": [["other.safetensors"],
                         {"tooltip": "The name of the checkpoint (model) to load."}],
        "received_value": "sd_xl_base_1.0.safetensors",
    }
    [lora] = body["node_errors"]["10"]["errors"]
    assert lora["extra_info"]["received_value"] == "nova.safetensors"
    assert lora["extra_info"]["input_config"][0] == ["someone_else.safetensors"]
    assert comfyui.billed_jobs == 0


async def test_past_twenty_installed_files_the_list_is_not_echoed(
    comfyui: ComfyUIEmulator, http: httpx.AsyncClient
):
    comfyui.installed["checkpoints"] = [f"model_{i:02d}.safetensors" for i in range(21)]
    body = (await http.post("/prompt", json={"prompt": _graph()})).json()
    [error] = body["node_errors"]["4"]["errors"]
    assert error["details"] == "ckpt_name: 'sd_xl_base_1.0.safetensors' not in (list of length 21)"
    assert error["extra_info"]["input_config"] is None
    assert error["extra_info"]["received_value"] == "sd_xl_base_1.0.safetensors"
    comfyui.installed["checkpoints"] = comfyui.installed["checkpoints"][:20]  # 20: echoed
    body = (await http.post("/prompt", json={"prompt": _graph()})).json()
    assert "model_19.safetensors" in body["node_errors"]["4"]["errors"][0]["details"]


@pytest.mark.parametrize(
    ("legacy", "kind", "message"),
    [
        (False, "missing_node_type",
         "Node 'Face Detailer' not found. The custom node may not be installed."),
        (True, "invalid_prompt", "Cannot execute because node FaceDetailer does not exist."),
    ],
)
async def test_an_unknown_class_refuses_the_whole_graph(
    comfyui: ComfyUIEmulator, http: httpx.AsyncClient, legacy, kind, message
):
    comfyui.legacy_missing_node = legacy
    graph = _graph()
    graph["11"] = {"class_type": "FaceDetailer", "inputs": {"image": ["8", 0]},
                   "_meta": {"title": "Face Detailer"}}
    answer = await http.post("/prompt", json={"prompt": graph})
    assert answer.status_code == 400
    body = answer.json()
    assert body["node_errors"] == {}
    assert body["error"]["type"] == kind and body["error"]["message"] == message
    assert body["error"]["details"] == "Node ID '#11'"
    if not legacy:
        assert body["error"]["extra_info"] == {
            "node_id": "11", "class_type": "FaceDetailer", "node_title": "Face Detailer"}


def _mutate(path: tuple[str, str], value: Any) -> dict[str, Any]:
    graph = _graph()
    node, name = path
    if value is KeyError:
        del graph[node]["inputs"][name]
    else:
        graph[node]["inputs"][name] = value
    return graph


@pytest.mark.parametrize(
    ("graph", "node", "kind", "details"),
    [
        (_mutate(("6", "text"), KeyError), "6", "required_input_missing", "text"),
        (_mutate(("5", "width"), 8), "5", "value_smaller_than_min", "width"),
        (_mutate(("3", "steps"), 20000), "3", "value_bigger_than_max", "steps"),
        (_mutate(("3", "steps"), "many"), "3", "invalid_input_type",
         "steps, many, invalid literal for int() with base 10: 'many'"),
        (_mutate(("3", "sampler_name"), "euler_x"), "3", "value_not_in_list",
         "sampler_name: 'euler_x' not in (list of length 32)"),
        (_mutate(("3", "model"), ["4", 0, 1]), "3", "bad_linked_input", "model"),
        (_mutate(("3", "model"), ["4", 1]), "3", "return_type_mismatch",
         "model, received_type(CLIP) mismatch input_type(MODEL)"),
        # a link to a node that is not there raises inside the real validation
        (_mutate(("3", "model"), ["99", 0]), "3", "exception_during_inner_validation", "'99'"),
        (_mutate(("3", "model"), ["4", 5]), "3", "exception_during_inner_validation",
         "tuple index out of range"),
    ],
)
async def test_input_errors_as_validate_inputs_reports_them(
    http: httpx.AsyncClient, graph, node, kind, details
):
    answer = await http.post("/prompt", json={"prompt": graph})
    assert answer.status_code == 400
    failing = answer.json()["node_errors"]
    assert list(failing) == [node]
    [error] = failing[node]["errors"]
    assert (error["type"], error["details"]) == (kind, details)
    assert error["extra_info"]["input_name"]


async def test_a_graph_without_an_output_node(http: httpx.AsyncClient):
    graph = _graph()
    del graph["9"]
    body = (await http.post("/prompt", json={"prompt": graph})).json()
    assert body == {"error": {"type": "prompt_no_outputs", "message": "Prompt has no outputs",
                              "details": "", "extra_info": {}}, "node_errors": {}}


async def test_a_node_without_class_type(http: httpx.AsyncClient):
    graph = _graph()
    del graph["7"]["class_type"]
    body = (await http.post("/prompt", json={"prompt": graph})).json()
    assert body["error"]["type"] == "missing_node_type"
    assert body["error"]["message"].startswith("Node 'ID #7' has no class_type.")


async def test_one_valid_output_runs_and_the_failing_one_is_reported(
    comfyui: ComfyUIEmulator, http: httpx.AsyncClient
):
    graph = _graph()
    graph["12"] = {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "none.pth"}}
    graph["13"] = {"class_type": "ImageUpscaleWithModel",
                   "inputs": {"upscale_model": ["12", 0], "image": ["8", 0]}}
    graph["14"] = {"class_type": "PreviewImage", "inputs": {"images": ["13", 0]}}
    answer = await http.post("/prompt", json={"prompt": graph})
    assert answer.status_code == 200
    body = answer.json()
    assert body["prompt_id"] and list(body["node_errors"]) == ["12"]
    assert body["node_errors"]["12"]["dependent_outputs"] == ["14"]


# --- cancel: queued vs running --------------------------------------------------------


async def test_delete_removes_only_a_waiting_prompt_and_interrupt_stops_the_running_one(
    comfyui: ComfyUIEmulator, http: httpx.AsyncClient
):
    comfyui.gpus = 1
    comfyui.behaviour.hang = True
    first = (await http.post("/prompt", json={"prompt": _graph()})).json()["prompt_id"]
    second = (await http.post("/prompt", json={"prompt": _graph()})).json()["prompt_id"]
    queue = (await http.get("/queue")).json()
    assert [item[1] for item in queue["queue_running"]] == [first]
    assert [item[1] for item in queue["queue_pending"]] == [second]
    await http.post("/queue", json={"delete": [first, second]})
    queue = (await http.get("/queue")).json()
    assert [item[1] for item in queue["queue_running"]] == [first]  # goes on
    assert queue["queue_pending"] == []
    assert comfyui.executing == 1
    await http.post("/interrupt", json={"prompt_id": second})  # not running: nothing
    await asyncio.sleep(0.05)
    assert comfyui.executing == 1
    await http.post("/interrupt", json={"prompt_id": first})
    await _until(lambda: comfyui.executing == 0)
    entry = (await http.get(f"/history/{first}")).json()[first]
    assert entry["status"]["status_str"] == "error"
    assert entry["status"]["messages"][-1][0] == "execution_interrupted"
    assert (await http.get(f"/history/{second}")).json() == {}
    assert comfyui.billed_jobs == 1  # the deleted one never reached the GPU


@pytest.mark.parametrize(("legacy", "body"), [(True, {"prompt_id": "another"}), (False, None)])
async def test_interrupt_without_a_prompt_id_or_on_older_servers_stops_what_runs(
    comfyui: ComfyUIEmulator, http: httpx.AsyncClient, legacy, body
):
    comfyui.legacy_interrupt = legacy
    comfyui.behaviour.hang = True
    await http.post("/prompt", json={"prompt": _graph()})
    await _until(lambda: comfyui.executing == 1)
    await http.post("/interrupt", **({"json": body} if body else {}))
    await _until(lambda: comfyui.executing == 0)
    assert comfyui.counters.requests("interrupted") == 1


@pytest.mark.parametrize("websocket", [True, False])
async def test_a_timed_out_running_prompt_is_interrupted_and_the_gpu_freed(
    comfyui: ComfyUIEmulator, provider, spec, avatar, websocket
):
    comfyui.websocket_enabled = websocket
    comfyui.gpus = 1
    comfyui.behaviour.hang = True
    job = RecordingJob()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(provider.generate(spec, avatar, job), 0.3)
    await _until(lambda: comfyui.executing == 0, timeout=2.0)
    assert comfyui.counters.requests("interrupt") == 1
    assert comfyui.counters.requests("interrupted") == 1
    assert comfyui.counters.requests("deleted") == 0
    [prompt_id] = job.created_ids
    assert comfyui.history[prompt_id]["status"]["status_str"] == "error"
    comfyui.behaviour.hang = False  # the GPU serves the next prompt at once
    image = await asyncio.wait_for(provider.generate(make_spec(1), avatar), 5)
    assert image.data.startswith(PNG)


async def test_a_timed_out_waiting_prompt_is_deleted_and_the_running_one_goes_on(
    comfyui: ComfyUIEmulator, provider, avatar
):
    """On a server that ignores /interrupt's prompt_id, interrupting for a prompt that
    only waits would stop someone else's: the client deletes it instead."""
    comfyui.gpus = 1
    comfyui.legacy_interrupt = True
    comfyui.behaviour.latency = (0.6, 0.6)
    first_job = RecordingJob()
    first = asyncio.create_task(provider.generate(make_spec(0), avatar, first_job))
    await _until(lambda: comfyui.executing == 1)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(provider.generate(make_spec(1), avatar), 0.2)
    assert comfyui.pending == 0 and comfyui.counters.requests("deleted") == 1
    image = await first
    assert image.data.startswith(PNG)
    assert comfyui.counters.requests("interrupt") == 0
    assert comfyui.billed_jobs == 1 and comfyui.executing == 0


async def test_a_resume_that_times_out_waiting_interrupts_the_prompt(
    comfyui: ComfyUIEmulator, http: httpx.AsyncClient, provider, spec, avatar
):
    """A retry waits for the prompt an earlier (dead) process left running; when that
    wait times out too, the prompt is interrupted like one of its own."""
    comfyui.behaviour.hang = True
    earlier = (await http.post("/prompt", json={"prompt": _graph()})).json()["prompt_id"]
    await _until(lambda: comfyui.executing == 1)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(provider.generate(spec, avatar, RecordingJob(earlier)), 0.3)
    await _until(lambda: comfyui.executing == 0, timeout=2.0)
    assert comfyui.counters.requests("interrupt") == 1
    assert comfyui.counters.requests("prompt") == 1  # nothing new was queued


async def test_a_prompt_that_finished_meanwhile_is_left_alone(
    comfyui: ComfyUIEmulator, provider, spec, avatar
):
    job = RecordingJob()
    await provider.generate(spec, avatar, job)
    await provider._forget(job.created_ids[0])
    assert comfyui.counters.requests("interrupt") == comfyui.counters.requests("queue") == 0


# --- cached prompts -------------------------------------------------------------------


@pytest.mark.parametrize(("legacy", "sequence"), [
    (False, ["execution_start", "execution_cached", "executed", "execution_success",
             "executing"]),
    (True, ["execution_start", "execution_cached", "execution_success", "executing"]),
])
async def test_a_cached_prompt_is_done_when_post_prompt_answers(
    comfyui: ComfyUIEmulator, http: httpx.AsyncClient, legacy, sequence
):
    comfyui.cached_next = 1
    comfyui.legacy_cached = legacy
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{comfyui.url}/ws?clientId=c1") as socket,
    ):
        await socket.receive_json()  # status
        answer = await http.post("/prompt", json={"prompt": _graph(), "client_id": "c1"})
        prompt_id = answer.json()["prompt_id"]
        history = (await http.get(f"/history/{prompt_id}")).json()
        assert history[prompt_id]["status"]["status_str"] == "success"
        kinds = []
        while not kinds or kinds[-1] != "executing":
            message = json.loads((await socket.receive(timeout=5)).data)
            kinds.append(message["type"])
            if message["type"] == "execution_cached":
                assert set(message["data"]["nodes"]) == set(_graph())
            if message["type"] == "executed":
                assert message["data"]["output"] == history[prompt_id]["outputs"]["9"]
    assert kinds == sequence


@pytest.mark.parametrize("websocket", [True, False])
async def test_the_client_takes_a_cached_prompt_that_finished_before_it_looked(
    comfyui: ComfyUIEmulator, provider, spec, avatar, websocket
):
    comfyui.websocket_enabled = websocket
    comfyui.cached_next = 1
    image = await provider.generate(spec, avatar)
    assert image.data.startswith(PNG)
    assert comfyui.counters.requests("history") == (0 if websocket else 1)


# --- what the client's errors keep ----------------------------------------------------


async def test_a_rejection_names_every_failing_node_input_and_value(
    comfyui: ComfyUIEmulator, provider, spec, avatar
):
    comfyui.installed["checkpoints"] = ["other.safetensors"]
    comfyui.behaviour.extra["missing_loras"] = ["nova_v2.safetensors"]
    job = RecordingJob()
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec, avatar, job)
    text = str(caught.value)
    assert not caught.value.retryable
    assert "prompt rejected (prompt_outputs_failed_validation)" in text
    assert ("CheckpointLoaderSimple: ckpt_name: 'sd_xl_base_1.0.safetensors' not in "
            "['other.safetensors'] (Value not in list)") in text
    assert "LoraLoader: lora_name: 'nova_v2.safetensors' not in" in text
    assert job.created_ids == [] and comfyui.billed_jobs == 0


async def test_a_rejection_past_twenty_files_says_how_many(
    comfyui: ComfyUIEmulator, provider, spec, avatar
):
    comfyui.installed["checkpoints"] = [f"model_{i:02d}.safetensors" for i in range(30)]
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec, avatar)
    assert ("ckpt_name: 'sd_xl_base_1.0.safetensors' not in (list of length 30)"
            in str(caught.value))


@pytest.mark.parametrize(
    ("legacy", "expected"),
    [
        (False, "prompt rejected (missing_node_type): node 10 LoraLoader: Node '"),
        (True, "prompt rejected (invalid_prompt): Cannot execute because node LoraLoader "
               "does not exist. (Node ID '#10')"),
    ],
)
async def test_an_unknown_node_type_is_named_in_the_error(
    comfyui: ComfyUIEmulator, provider, spec, avatar, legacy, expected
):
    comfyui.missing_nodes = {"LoraLoader"}
    comfyui.legacy_missing_node = legacy
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec, avatar)
    assert expected in str(caught.value)
    assert not caught.value.retryable
    if not legacy:
        assert "not found. The custom node may not be installed." in str(caught.value)


async def test_a_rejection_keeps_no_signed_url_of_the_lora(
    comfyui: ComfyUIEmulator, provider, spec, avatar
):
    comfyui.installed["loras"] = []
    signed = avatar.model_copy(update={
        "lora_weights_url": "https://w.example/loras/nova.safetensors?X-Amz-Signature=s3cr3t"})
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec, signed)
    assert "'nova.safetensors'" in str(caught.value)
    assert "s3cr3t" not in str(caught.value) and "Signature" not in str(caught.value)


@pytest.mark.parametrize("websocket", [True, False])
async def test_an_execution_error_keeps_the_node_and_the_exception_message(
    comfyui: ComfyUIEmulator, provider, spec, avatar, websocket
):
    comfyui.websocket_enabled = websocket
    comfyui.behaviour.failure_rate = 1.0
    comfyui.failure_message = (
        "Allocation on device\nThis error means you ran out of memory on your GPU.")
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec, avatar)
    assert caught.value.retryable
    assert str(caught.value) == (
        "comfyui: execution error: KSampler (node 3): torch.OutOfMemoryError: Allocation "
        "on device This error means you ran out of memory on your GPU."
    )


async def test_rejection_bodies_of_other_shapes_still_read():
    from studio.providers.comfyui import _rejection

    assert _rejection(None) == "prompt rejected"
    assert _rejection({"error": "no prompt", "node_errors": []}) == "prompt rejected (no prompt)"
    long_graph = {"node_errors": {str(i): {"class_type": "CLIPTextEncode", "errors": [
        {"type": "value_not_in_list", "message": "Value not in list", "details": "x" * 300,
         "extra_info": {"input_name": "text", "received_value": "y" * 500}}]}
        for i in range(20)}, "error": {"type": "prompt_outputs_failed_validation"}}
    text = _rejection(long_graph)
    assert len(text) <= 2000 and text.endswith("...")
    assert "y" * 100 not in text  # a received value is cut short


"""A loopback ComfyUI server speaking ComfyUI's HTTP API (the parts the provider uses).

Sources: comfyanonymous/ComfyUI `server.py` (routes), `execution.py` (`validate_prompt`,
`PromptExecutor`, `PromptQueue`), `main.py` (`prompt_worker`), `nodes.py` (core nodes);
the node catalogue and the validation live in `comfyui_nodes.py`.

- GET /object_info: `{class: node_info}` of the core nodes (comfyui_nodes.NODES) with
  the installed model files in their combo lists; GET /object_info/{class}:
  `{class: node_info}`, or 200 `{}` for a class the server lacks (not 404)
- POST /prompt {"prompt": <API-format graph>, "client_id": ...}
    200 {"prompt_id", "number", "node_errors": {}} (node_errors lists the failing nodes
        when only some outputs are valid: the valid ones run)
    400 {"error": {"type", "message", "details", "extra_info"}, "node_errors": {...}}
        as `validate_prompt` answers (unknown class_type, no output, a missing input, a
        broken link, a value out of range or not in its list, a model file not installed)
- GET /history/{prompt_id}: `{}` until the prompt finished, then
    {prompt_id: {"prompt": [...], "outputs": {node_id: {"images": [...]}},
                 "status": {"status_str": "success"|"error", "completed", "messages"}}}
- GET /view?filename=&subfolder=&type=output|temp|input: the PNG bytes (404 unless all
  three match the file)
- GET /queue: {"queue_running": [[number, prompt_id, graph, extra, outputs]],
  "queue_pending": [...]}
- POST /queue {"delete": [prompt_id]} removes a prompt only while it waits
  (`PromptQueue.delete_queue_item` looks at the pending heap only); {"clear": true}
  wipes the pending ones. A running prompt goes on.
- POST /interrupt: interrupts the running prompt. Body `{"prompt_id": id}` (servers since
  2025): only when that prompt is the one running, else nothing; no body: whatever runs.
  The prompt ends with `execution_interrupted` (sent to every socket) and a history
  entry of status "error".
- GET /ws?clientId=...: the event stream of the prompts that client submitted:
    {"type": "status"} on connect, then per prompt "execution_start", "execution_cached"
    (nodes served from cache), "executing" (node ids), "progress" and binary preview
    frames, "executed"/"execution_success" or "execution_error"/"execution_interrupted",
    and last {"type": "executing", "data": {"node": null, "prompt_id"}} once history is
    stored

Switches (one per documented variant, see tests/emulators/README.md): `Behaviour`
latency, failure_rate (execution_error), hang (prompt never finishes); `installed`
(model files per folder: checkpoints, loras, vae, upscale_models, input; a folder set to
None, the default for loras, accepts any name and /object_info shows its inputs as free
strings, since no list can say "any"); `missing_nodes` (classes the server lacks: absent
from /object_info, `missing_node_type` at /prompt); `extra["missing_loras"]`: LoRA file
names that are not installed even then; `legacy_missing_node` (servers before
`missing_node_type` answer an unknown class with `invalid_prompt`); `gpus` (None: every
prompt starts at once, as many GPUs as prompts; 1: one runs, the others wait in
queue_pending, as on one real server); `legacy_interrupt` (servers before 2025 ignore
/interrupt's prompt_id and interrupt whatever runs); `websocket_enabled`; `image_type`
("output" or "temp") and `subfolder` of the saved image; `previews` (progress events and
binary preview frames); `cached_next` (the next prompts are served wholly from cache:
they finish before POST /prompt answers, and send `executed` with the cached outputs);
`legacy_cached` (servers before the 2024 execution rewrite send no `executed` for a
cached output); `failure_message` (the execution_error's exception_message);
`interrupt_next`; `legacy_history` (history entries without "status");
`prompt_answer_override` (a /prompt answer without prompt_id); `outputs_override`
(history outputs of a shape ComfyUI does not document, e.g. no images);
`view_fail_next`/`view_fail_status` (a lost download); `restart()` (history and queue
are gone, as after a ComfyUI restart). `billed_jobs` counts prompts that started on a
GPU (ComfyUI is free; the count says how many GPU runs were asked for); `executing` is
how many run right now (a GPU left busy shows here).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.emulators.base import Behaviour, Emulator, png_bytes
from tests.emulators.comfyui_nodes import (
    DEFAULT_INSTALLED,
    FOLDERS,
    NODES,
    OUTPUT_NODES,
    Folder,
    Validator,
    node_info,
)

__all__ = ["OUTPUT_NODES", "ComfyUIEmulator"]


@dataclass
class _Prompt:
    """One accepted prompt: its queue item and, once started, its task."""

    number: int
    prompt_id: str
    graph: dict[str, Any]
    client_id: str
    outputs: list[str]
    cached: bool = False
    task: asyncio.Task[None] | None = None
    interrupted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0  # epoch seconds it took a GPU

    def item(self) -> list[Any]:
        """The queue item as GET /queue shows it."""
        return [self.number, self.prompt_id, self.graph, {"client_id": self.client_id},
                self.outputs]


class ComfyUIEmulator(Emulator):
    def __init__(self, behaviour: Behaviour | None = None, image_size: int = 64) -> None:
        super().__init__(behaviour)
        self.image_size = image_size
        self.history: dict[str, dict[str, Any]] = {}
        #: file name -> bytes of every image saved (whatever its folder)
        self.files: dict[str, bytes] = {}
        self._stored: dict[tuple[str, str, str], bytes] = {}
        self.prompts: list[dict[str, Any]] = []
        self._number = itertools.count()
        self._sockets: dict[str, web.WebSocketResponse] = {}
        #: switch: False makes /ws refuse the upgrade (clients must fall back to polling)
        self.websocket_enabled = True
        #: one (key, latency, failed) per generation; key = the SaveImage filename_prefix
        self.records: list[tuple[str, float, bool]] = []
        #: (took a GPU, gave it back), epoch seconds, per prompt that ran: the benches
        #: read how long a GPU stood free while prompts were still to come
        self.spans: list[tuple[float, float]] = []
        # --- response-variant switches (module docstring) ---
        self.installed: dict[str, list[str] | None] = {
            folder: (list(files) if files is not None else None)
            for folder, files in DEFAULT_INSTALLED.items()
        }
        self.legacy_missing_node = False
        #: core classes this server lacks (as a custom node not installed would be)
        self.missing_nodes: set[str] = set()
        self.gpus: int | None = None
        self.legacy_interrupt = False
        self.image_type = "output"
        self.subfolder = ""
        self.previews = False
        self.cached_next = 0
        self.legacy_cached = False
        self.failure_message = "Allocation on device failed"
        self.interrupt_next = 0
        self.legacy_history = False
        self.outputs_override: dict[str, Any] | None = None
        self.view_fail_next = 0
        self.view_fail_status = 500
        #: answered by POST /prompt instead of {"prompt_id", "number", "node_errors"}
        self.prompt_answer_override: Any = None
        #: LoRA names prompts used while `installed["loras"]` is None (listed by /object_info)
        self._seen: dict[str, list[str]] = {folder: [] for folder in FOLDERS}
        self._pending: dict[str, _Prompt] = {}
        self._running: dict[str, _Prompt] = {}

    # --- what the GPU is doing (read by tests) ---

    @property
    def executing(self) -> int:
        """Prompts running right now: a GPU left busy for nobody shows here."""
        return len(self._running)

    @property
    def pending(self) -> int:
        """Prompts waiting in the queue."""
        return len(self._pending)

    def restart(self) -> None:
        """ComfyUI restarted: running prompts, the queue and the history are gone."""
        running = list(self._running.values())
        self._pending.clear()
        self._running.clear()
        for prompt in running:
            if prompt.task is not None:
                prompt.task.get_loop().call_soon_threadsafe(prompt.task.cancel)
        self.history.clear()

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/prompt", self._post_prompt)
        app.router.add_get("/history/{prompt_id}", self._get_history)
        app.router.add_get("/view", self._view)
        app.router.add_post("/queue", self._post_queue)
        app.router.add_get("/queue", self._get_queue)
        app.router.add_post("/interrupt", self._post_interrupt)
        app.router.add_get("/object_info", self._object_info)
        app.router.add_get("/object_info/{node_class}", self._object_info_one)
        app.router.add_get("/system_stats", self._system_stats)
        app.router.add_get("/ws", self._websocket)
        return app

    # --- installed model files ---

    def _missing_loras(self) -> set[str]:
        return set(self.behaviour.extra.get("missing_loras", ()))

    def _files(self, graph: Any = None) -> dict[str, list[str]]:
        """The model files per folder as the server lists them.

        A folder set to None holds whatever a prompt names (the names used so far, and
        those of `graph`), less `extra["missing_loras"]`.
        """
        files: dict[str, list[str]] = {}
        for folder in FOLDERS:
            listed = self.installed.get(folder)
            if listed is None:
                names = list(self._seen[folder])
                names += [n for n in _names(graph, folder) if n not in names]
            else:
                names = list(listed)
            if folder == "loras":
                names = [n for n in names if n not in self._missing_loras()]
            files[folder] = names
        return files

    def _open_folders(self) -> set[str]:
        return {folder for folder in FOLDERS if self.installed.get(folder) is None}

    def _note_files(self, graph: dict[str, Any]) -> None:
        """Remember the names an accepted prompt used from folders that take any name."""
        accepted = self._files(graph)
        for folder in FOLDERS:
            if self.installed.get(folder) is None:
                self._seen[folder] = accepted[folder]

    # --- /object_info ---

    async def _object_info(self, request: web.Request) -> web.Response:
        self.counters.hit("object_info")
        files, open_folders = self._files(), self._open_folders()
        return web.json_response({
            name: node_info(name, files, open_folders)
            for name in NODES if name not in self.missing_nodes
        })

    async def _object_info_one(self, request: web.Request) -> web.Response:
        self.counters.hit("object_info")
        name = request.match_info["node_class"]
        if name not in NODES or name in self.missing_nodes:
            return web.json_response({})
        return web.json_response(
            {name: node_info(name, self._files(), self._open_folders())}
        )

    # --- /prompt ---

    def _validate(
        self, graph: Any
    ) -> tuple[dict[str, Any] | None, list[str], dict[str, Any]]:
        return Validator(
            graph, self._files(graph), self.legacy_missing_node, self.missing_nodes
        ).run()

    async def _post_prompt(self, request: web.Request) -> web.Response:
        self.counters.hit("prompt")
        try:
            body = await request.json()
        except ValueError:
            return web.json_response(
                {"error": {"type": "invalid_json", "message": "bad JSON", "details": "",
                           "extra_info": {}}, "node_errors": {}},
                status=400,
            )
        if not isinstance(body, dict) or "prompt" not in body:
            return web.json_response(
                {"error": {"type": "no_prompt", "message": "No prompt provided",
                           "details": "No prompt provided", "extra_info": {}},
                 "node_errors": {}},
                status=400,
            )
        graph = body["prompt"]
        error, outputs, node_errors = self._validate(graph)
        if error is not None:
            self.counters.hit("rejected")
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        if self.prompt_answer_override is not None:
            return web.json_response(self.prompt_answer_override)
        self._note_files(graph)
        prompt_id = body.get("prompt_id") or str(uuid.uuid4())
        number = next(self._number)
        self.prompts.append(graph)
        cached = self.cached_next > 0
        self.cached_next -= 1 if cached else 0
        prompt = _Prompt(number, prompt_id, graph, str(body.get("client_id", "")),
                         sorted(outputs, key=_node_order), cached=cached)
        self._pending[prompt_id] = prompt
        await self._pump()
        return web.json_response(
            {"prompt_id": prompt_id, "number": number, "node_errors": node_errors}
        )

    async def _pump(self) -> None:
        """Start waiting prompts while a GPU is free, in queue order.

        A wholly cached prompt needs no GPU time: it finishes here, before POST /prompt
        answers (on a real server the worker thread usually wins that race).
        """
        while self._pending and (self.gpus is None or len(self._running) < self.gpus):
            prompt_id, prompt = next(iter(self._pending.items()))
            del self._pending[prompt_id]
            self._running[prompt_id] = prompt
            prompt.started = time.time()
            if prompt.cached:
                await self._execute(prompt)
            else:
                prompt.task = asyncio.create_task(self._execute(prompt))

    # --- the event stream ---

    async def _send(self, client_id: str, kind: str, data: dict[str, Any]) -> None:
        socket = self._sockets.get(client_id)
        if socket is not None and not socket.closed:
            try:
                await socket.send_json({"type": kind, "data": data})
            except (ConnectionError, RuntimeError):
                pass

    async def _broadcast(self, kind: str, data: dict[str, Any]) -> None:
        for client_id in list(self._sockets):
            await self._send(client_id, kind, data)

    async def _send_preview(self, client_id: str) -> None:
        """A binary frame as server.py sends it: event type 1 (PREVIEW_IMAGE), format 2."""
        socket = self._sockets.get(client_id)
        if socket is not None and not socket.closed:
            frame = (1).to_bytes(4, "big") + (2).to_bytes(4, "big") + png_bytes("preview", 8)
            try:
                await socket.send_bytes(frame)
            except (ConnectionError, RuntimeError):
                pass

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        self.counters.hit("ws")
        if not self.websocket_enabled:
            return web.Response(status=404)
        client_id = request.query.get("clientId") or uuid.uuid4().hex
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self._sockets[client_id] = socket
        await socket.send_json(
            {"type": "status",
             "data": {"status": {"exec_info": {
                 "queue_remaining": len(self._running) + len(self._pending)}},
                 "sid": client_id}}
        )
        try:
            async for _ in socket:  # the client never needs to send anything
                pass
        finally:
            if self._sockets.get(client_id) is socket:
                self._sockets.pop(client_id, None)
        return socket

    # --- execution ---

    async def _execute(self, prompt: _Prompt) -> None:
        prompt_id, number, graph = prompt.prompt_id, prompt.number, prompt.graph
        client_id, cached = prompt.client_id, prompt.cached
        output_node = prompt.outputs[0]
        latency, fail = self.behaviour.draw()
        prefix = str(graph[output_node].get("inputs", {}).get("filename_prefix", ""))
        interrupted = self.interrupt_next > 0 and not cached
        self.interrupt_next -= 1 if interrupted else 0
        if cached:
            latency, fail = 0.0, False
        self.records.append((prefix, latency, fail))
        started = int(time.time() * 1000)
        self.bill()
        await self._send(client_id, "execution_start", {"prompt_id": prompt_id,
                                                         "timestamp": started})
        await self._send(client_id, "execution_cached", {
            "nodes": sorted(graph, key=_node_order) if cached else [],
            "prompt_id": prompt_id, "timestamp": started,
        })
        messages: list[Any] = [
            ["execution_start", {"prompt_id": prompt_id, "timestamp": started}],
            ["execution_cached", {"nodes": sorted(graph, key=_node_order) if cached else [],
                                  "prompt_id": prompt_id, "timestamp": started}],
        ]
        sampler = _first_of(graph, ("KSampler", "KSamplerAdvanced")) or output_node
        if not cached:
            await self._send(client_id, "executing", {"node": sampler, "display_node": sampler,
                                                       "prompt_id": prompt_id})
            async with self.counters.generating():
                try:
                    await self.behaviour.wait_while_hung()
                    if self.previews:
                        for step in (1, 2):
                            await self._send(client_id, "progress", {
                                "value": step, "max": 2, "prompt_id": prompt_id,
                                "node": sampler,
                            })
                            await self._send_preview(client_id)
                    await asyncio.sleep(latency)
                except asyncio.CancelledError:
                    if self._running.get(prompt_id) is not prompt:
                        return  # restart(): the server went away with it
                    interrupted = True  # POST /interrupt
        entry: dict[str, Any] = {
            "prompt": prompt.item(),
            "outputs": {},
            "meta": {},
        }
        sampler_type = graph[sampler]["class_type"]
        if interrupted:
            self.counters.hit("interrupted")
            info = {"prompt_id": prompt_id, "node_id": sampler, "node_type": sampler_type,
                    "executed": [], "timestamp": int(time.time() * 1000)}
            messages.append(["execution_interrupted", info])
            entry["status"] = {"status_str": "error", "completed": False, "messages": messages}
        elif fail:
            self.counters.hit("failed")
            messages.append(
                [
                    "execution_error",
                    {
                        "prompt_id": prompt_id,
                        "node_id": sampler,
                        "node_type": sampler_type,
                        "executed": [],
                        "exception_message": self.failure_message,
                        "exception_type": "torch.OutOfMemoryError",
                        "traceback": [],
                        "current_inputs": {},
                        "current_outputs": [],
                        "timestamp": int(time.time() * 1000),
                    },
                ]
            )
            entry["status"] = {"status_str": "error", "completed": False, "messages": messages}
        else:
            self.counters.hit("succeeded")
            filename = f"ComfyUI_{number:05d}_.png"
            key = (self.image_type, self.subfolder, filename)
            self.files[filename] = self._stored[key] = png_bytes(
                f"comfyui-{prompt_id}", self.image_size
            )
            image = {"filename": filename, "subfolder": self.subfolder, "type": self.image_type}
            entry["outputs"] = {output_node: {"images": [image]}}
            if self.outputs_override is not None:
                entry["outputs"] = self.outputs_override
            messages.append(["execution_success", {"prompt_id": prompt_id,
                                                   "timestamp": int(time.time() * 1000)}])
            entry["status"] = {"status_str": "success", "completed": True, "messages": messages}
            entry["meta"] = {output_node: {"node_id": output_node, "display_node": output_node,
                                           "parent_node": None, "real_node_id": output_node}}
        if self.legacy_history:
            entry.pop("status", None)
            entry.pop("meta", None)
        if interrupted:
            await self._broadcast(messages[-1][0], messages[-1][1])
        elif fail:
            await self._send(client_id, messages[-1][0], messages[-1][1])
        else:
            sends_executed = not (cached and self.legacy_cached)
            if sends_executed and output_node in entry["outputs"]:
                await self._send(client_id, "executed", {
                    "node": output_node, "display_node": output_node,
                    "output": entry["outputs"][output_node], "prompt_id": prompt_id,
                })
            await self._send(client_id, "execution_success", messages[-1][1])
        self.history[prompt_id] = entry
        if self._running.get(prompt_id) is prompt:
            del self._running[prompt_id]
            self.spans.append((prompt.started, time.time()))
        await self._send(client_id, "executing", {"node": None, "prompt_id": prompt_id})
        if not cached:
            await self._pump()

    # --- the other routes ---

    async def _get_history(self, request: web.Request) -> web.Response:
        self.counters.hit("history")
        prompt_id = request.match_info["prompt_id"]
        entry = self.history.get(prompt_id)
        return web.json_response({prompt_id: entry} if entry is not None else {})

    async def _view(self, request: web.Request) -> web.Response:
        self.counters.hit("view")
        if self.view_fail_next > 0:
            self.view_fail_next -= 1
            self.counters.hit("view_failed")
            return web.Response(status=self.view_fail_status)
        key = (
            request.query.get("type", "output"),
            request.query.get("subfolder", ""),
            request.query.get("filename", ""),
        )
        if key not in self._stored:
            return web.Response(status=404)
        return web.Response(body=self._stored[key], content_type="image/png")

    async def _post_queue(self, request: web.Request) -> web.Response:
        """Deletes waiting prompts only: a running one is not in the pending heap."""
        self.counters.hit("queue")
        body = await request.json()
        if body.get("clear"):
            self._pending.clear()
        for prompt_id in body.get("delete", []):
            if self._pending.pop(prompt_id, None) is not None:
                self.counters.hit("deleted")
        return web.Response(status=200)

    async def _post_interrupt(self, request: web.Request) -> web.Response:
        """The running prompt stops; with a prompt_id, only if that one runs."""
        self.counters.hit("interrupt")
        try:
            body = json.loads(await request.text() or "{}")
        except ValueError:
            body = {}
        wanted = body.get("prompt_id") if isinstance(body, dict) else None
        for prompt_id, prompt in list(self._running.items()):
            if wanted and not self.legacy_interrupt and prompt_id != wanted:
                continue
            if prompt.task is not None and not prompt.task.done():
                prompt.interrupted = True
                prompt.task.cancel()
        return web.Response(status=200)

    async def _get_queue(self, request: web.Request) -> web.Response:
        self.counters.hit("queue.get")
        return web.json_response({
            "queue_running": [p.item() for p in self._running.values()],
            "queue_pending": [p.item() for p in self._pending.values()],
        })

    async def _system_stats(self, request: web.Request) -> web.Response:
        return web.json_response({"system": {"comfyui_version": "emulator"}, "devices": []})


def _node_order(node_id: str) -> tuple[int, str]:
    return (int(node_id), "") if node_id.isdigit() else (1 << 30, node_id)


def _first_of(graph: dict[str, Any], kinds: tuple[str, ...]) -> str | None:
    found = [nid for nid, node in graph.items() if node.get("class_type") in kinds]
    return sorted(found, key=_node_order)[0] if found else None


def _names(graph: Any, folder: str) -> list[str]:
    """The file names a graph asks of one model folder."""
    names: list[str] = []
    if not isinstance(graph, dict):
        return names
    for node in graph.values():
        spec = NODES.get(node.get("class_type", "")) if isinstance(node, dict) else None
        if spec is None:
            continue
        inputs = node.get("inputs") or {}
        for section in ("required", "optional"):
            for name, (kind, _) in spec[3].get(section, {}).items():
                value = inputs.get(name) if isinstance(inputs, dict) else None
                if (isinstance(kind, Folder) and kind == folder and isinstance(value, str)
                        and value not in names):
                    names.append(value)
    return names

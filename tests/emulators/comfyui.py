"""A loopback ComfyUI server speaking ComfyUI's HTTP API (the parts the provider uses).

- POST /prompt {"prompt": <API-format graph>, "client_id": ...}
    200 {"prompt_id", "number", "node_errors": {}}
    400 {"error": {"type", "message", "details", "extra_info"}, "node_errors": {...}}
        when the graph fails validation (no output node, unknown LoRA file...)
- GET /history/{prompt_id}: `{}` until the prompt finished, then
    {prompt_id: {"prompt": [...], "outputs": {node_id: {"images": [...]}},
                 "status": {"status_str": "success"|"error", "completed", "messages"}}}
- GET /view?filename=&subfolder=&type=output|temp|input: the PNG bytes (404 unless all
  three match the file)
- GET /queue: {"queue_running": [[number, prompt_id, ...]], "queue_pending": [...]}
- POST /queue {"delete": [prompt_id]}: drops a queued/running prompt (client gave up)
- GET /ws?clientId=...: the event stream of the prompts that client submitted:
    {"type": "status"} on connect, then per prompt "execution_start", "execution_cached"
    (nodes served from cache), "executing" (node ids), "progress" and binary preview
    frames, "executed"/"execution_success" or "execution_error"/"execution_interrupted",
    and last {"type": "executing", "data": {"node": null, "prompt_id"}} once history is
    stored

Switches (one per documented variant, see tests/emulators/README.md): `Behaviour`
latency, failure_rate (execution_error), hang (prompt never finishes);
`extra["missing_loras"]`: LoRA file names to reject with 400 node_errors;
`websocket_enabled`; `image_type` ("output" or "temp") and `subfolder` of the saved
image; `previews` (progress events and binary preview frames); `cached_next` (the next
prompts are served wholly from cache: no "executed" event, outputs only in /history);
`interrupt_next`; `legacy_history` (history entries without "status");
`prompt_answer_override` (a /prompt answer without prompt_id); `outputs_override`
(history outputs of a shape ComfyUI does not document, e.g. no images);
`view_fail_next`/`view_fail_status` (a lost download); `restart()` (history and queue
are gone, as after a ComfyUI restart). `billed_jobs` counts executed prompts
(ComfyUI is free; the count says how many GPU runs were asked for).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from typing import Any

from aiohttp import web

from tests.emulators.base import Behaviour, Emulator, png_bytes

OUTPUT_NODES = {"SaveImage", "PreviewImage"}


class ComfyUIEmulator(Emulator):
    def __init__(self, behaviour: Behaviour | None = None, image_size: int = 64) -> None:
        super().__init__(behaviour)
        self.image_size = image_size
        self.history: dict[str, dict[str, Any]] = {}
        #: file name -> bytes of every image saved (whatever its folder)
        self.files: dict[str, bytes] = {}
        self._stored: dict[tuple[str, str, str], bytes] = {}
        self.prompts: list[dict[str, Any]] = []
        self._jobs: dict[str, asyncio.Task[None]] = {}
        self._number = itertools.count()
        self._sockets: dict[str, web.WebSocketResponse] = {}
        #: switch: False makes /ws refuse the upgrade (clients must fall back to polling)
        self.websocket_enabled = True
        #: one (key, latency, failed) per generation; key = the SaveImage filename_prefix
        self.records: list[tuple[str, float, bool]] = []
        # --- response-variant switches (module docstring) ---
        self.image_type = "output"
        self.subfolder = ""
        self.previews = False
        self.cached_next = 0
        self.interrupt_next = 0
        self.legacy_history = False
        self.outputs_override: dict[str, Any] | None = None
        self.view_fail_next = 0
        self.view_fail_status = 500
        #: answered by POST /prompt instead of {"prompt_id", "number", "node_errors"}
        self.prompt_answer_override: Any = None
        self._queue: dict[str, int] = {}

    def restart(self) -> None:
        """ComfyUI restarted: running prompts, the queue and the history are gone."""
        for job in list(self._jobs.values()):
            job.get_loop().call_soon_threadsafe(job.cancel)
        self._jobs.clear()
        self._queue.clear()
        self.history.clear()

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/prompt", self._post_prompt)
        app.router.add_get("/history/{prompt_id}", self._get_history)
        app.router.add_get("/view", self._view)
        app.router.add_post("/queue", self._post_queue)
        app.router.add_get("/queue", self._get_queue)
        app.router.add_get("/system_stats", self._system_stats)
        app.router.add_get("/ws", self._websocket)
        return app

    # --- validation, as ComfyUI's execution.validate_prompt reports it ---

    def _validate(self, graph: Any) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        if not isinstance(graph, dict) or not graph:
            error = {
                "type": "invalid_prompt",
                "message": "Cannot execute because the prompt is not a graph",
                "details": "",
                "extra_info": {},
            }
            return error, {}
        outputs = [nid for nid, node in graph.items() if node.get("class_type") in OUTPUT_NODES]
        if not outputs:
            error = {
                "type": "prompt_no_outputs",
                "message": "Prompt has no outputs",
                "details": "",
                "extra_info": {},
            }
            return error, {}
        missing = set(self.behaviour.extra.get("missing_loras", ()))
        node_errors: dict[str, Any] = {}
        for nid, node in graph.items():
            if node.get("class_type") != "LoraLoader":
                continue
            lora = node.get("inputs", {}).get("lora_name")
            if not lora or lora in missing:
                node_errors[nid] = {
                    "errors": [
                        {
                            "type": "value_not_in_list",
                            "message": "Value not in list",
                            "details": f"lora_name: '{lora}' not in []",
                            "extra_info": {"input_name": "lora_name"},
                        }
                    ],
                    "dependent_outputs": outputs,
                    "class_type": "LoraLoader",
                }
        if node_errors:
            error = {
                "type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation",
                "details": "",
                "extra_info": {},
            }
            return error, node_errors
        return None, {}

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
        if "prompt" not in body:
            return web.json_response(
                {"error": {"type": "no_prompt", "message": "No prompt provided", "details": "",
                           "extra_info": {}}, "node_errors": {}},
                status=400,
            )
        graph = body["prompt"]
        error, node_errors = self._validate(graph)
        if error is not None:
            self.counters.hit("rejected")
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        if self.prompt_answer_override is not None:
            return web.json_response(self.prompt_answer_override)
        prompt_id = body.get("prompt_id") or str(uuid.uuid4())
        number = next(self._number)
        self.prompts.append(graph)
        self._queue[prompt_id] = number
        output_node = next(n for n, v in graph.items() if v.get("class_type") in OUTPUT_NODES)
        client_id = str(body.get("client_id", ""))
        self._jobs[prompt_id] = asyncio.create_task(
            self._execute(prompt_id, number, graph, output_node, client_id)
        )
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": {}})

    async def _send(self, client_id: str, kind: str, data: dict[str, Any]) -> None:
        socket = self._sockets.get(client_id)
        if socket is not None and not socket.closed:
            try:
                await socket.send_json({"type": kind, "data": data})
            except (ConnectionError, RuntimeError):
                pass

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
             "data": {"status": {"exec_info": {"queue_remaining": len(self._jobs)}},
                      "sid": client_id}}
        )
        try:
            async for _ in socket:  # the client never needs to send anything
                pass
        finally:
            self._sockets.pop(client_id, None)
        return socket

    async def _execute(
        self, prompt_id: str, number: int, graph: dict[str, Any], output_node: str,
        client_id: str = "",
    ) -> None:
        latency, fail = self.behaviour.draw()
        prefix = str(graph[output_node].get("inputs", {}).get("filename_prefix", ""))
        cached = self.cached_next > 0
        interrupted = self.interrupt_next > 0 and not cached
        self.cached_next -= 1 if cached else 0
        self.interrupt_next -= 1 if interrupted else 0
        if cached:
            latency, fail = 0.0, False
        self.records.append((prefix, latency, fail))
        started = int(time.time() * 1000)
        self.bill()
        await self._send(client_id, "execution_start", {"prompt_id": prompt_id,
                                                         "timestamp": started})
        await self._send(client_id, "execution_cached", {
            "nodes": sorted(graph) if cached else [], "prompt_id": prompt_id,
            "timestamp": started,
        })
        if not cached:
            await self._send(client_id, "executing", {"node": "3", "display_node": "3",
                                                       "prompt_id": prompt_id})
        async with self.counters.generating():
            try:
                await self.behaviour.wait_while_hung()
                if self.previews and not cached:
                    for step in (1, 2):
                        await self._send(client_id, "progress", {
                            "value": step, "max": 2, "prompt_id": prompt_id, "node": "3",
                        })
                        await self._send_preview(client_id)
                await asyncio.sleep(latency)
            except asyncio.CancelledError:
                self._queue.pop(prompt_id, None)
                return
        messages: list[Any] = [["execution_start", {"prompt_id": prompt_id, "timestamp": started}]]
        entry: dict[str, Any] = {
            "prompt": [number, prompt_id, graph, {"client_id": client_id}, [output_node]],
            "outputs": {},
            "meta": {},
        }
        if interrupted:
            self.counters.hit("interrupted")
            info = {"prompt_id": prompt_id, "node_id": "3", "node_type": "KSampler",
                    "executed": []}
            messages.append(["execution_interrupted", info])
            entry["status"] = {"status_str": "error", "completed": False, "messages": messages}
        elif fail:
            self.counters.hit("failed")
            messages.append(
                [
                    "execution_error",
                    {
                        "prompt_id": prompt_id,
                        "node_id": "3",
                        "node_type": "KSampler",
                        "executed": [],
                        "exception_message": "Allocation on device failed",
                        "exception_type": "torch.OutOfMemoryError",
                        "traceback": [],
                        "current_inputs": {},
                        "current_outputs": {},
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
            messages.append(["execution_success", {"prompt_id": prompt_id}])
            entry["status"] = {"status_str": "success", "completed": True, "messages": messages}
            entry["meta"] = {output_node: {"node_id": output_node, "display_node": output_node}}
        if self.legacy_history:
            entry.pop("status", None)
            entry.pop("meta", None)
        if interrupted or fail:
            await self._send(client_id, messages[-1][0], messages[-1][1])
        else:
            if not cached and output_node in entry["outputs"]:
                await self._send(client_id, "executed", {
                    "node": output_node, "display_node": output_node,
                    "output": entry["outputs"][output_node], "prompt_id": prompt_id,
                })
            await self._send(client_id, "execution_success", {"prompt_id": prompt_id})
        self.history[prompt_id] = entry
        self._jobs.pop(prompt_id, None)
        self._queue.pop(prompt_id, None)
        await self._send(client_id, "executing", {"node": None, "prompt_id": prompt_id})

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
        self.counters.hit("queue")
        body = await request.json()
        for prompt_id in body.get("delete", []):
            job = self._jobs.pop(prompt_id, None)
            if job is not None:
                job.cancel()
        return web.Response(status=200)

    async def _get_queue(self, request: web.Request) -> web.Response:
        self.counters.hit("queue.get")
        running = [[n, pid, {}, {}, []] for pid, n in self._queue.items()]
        return web.json_response({"queue_running": running, "queue_pending": []})

    async def _system_stats(self, request: web.Request) -> web.Response:
        return web.json_response({"system": {"comfyui_version": "emulator"}, "devices": []})

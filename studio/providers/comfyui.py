"""ComfyUI over its HTTP API: free, local and fast, but it fails often (spec: ~30%).

One image = POST /prompt with an API-format workflow (the studio's own, named by
COMFYUI_WORKFLOW or the avatar's `workflow`; by default the shipped SDXL + LoRA graph
studio/workflows/sdxl_lora.json) whose bindings (prompt, negative prompt, seed, size,
LoRA and strength, checkpoint: studio/providers/comfyui_workflow.py) are filled for the
piece and the avatar, wait for it to finish, then GET /history/{prompt_id} and GET /view
for the file. A workflow that cannot be used (unreadable, no binding, a LoRA mismatch
with the avatar) is refused before anything is posted, not retryably.
Completion comes from ComfyUI's /ws event stream (opened before the prompt is
posted, under the same client id), which says the moment a prompt is done; polling
/history (which answers `{}` until done) would add up to one poll interval to every
image, and is only the fallback when the stream is unavailable. A 400 means the graph
was rejected (for example the LoRA file is not installed): trying again cannot help,
so it is not retryable.
If the caller gives up (timeout), the prompt is deleted from ComfyUI's queue so the
GPU is not left working for nobody.

ComfyUI is free, but a queued prompt is a GPU run: its prompt_id goes to
`job.created(...)` as soon as /prompt accepts it, and a retry with `job.resume_job_id`
reads that prompt's /history (or waits for it while it is still in /queue) before it
queues another. Answers of a shape ComfyUI does not document (no prompt_id, a finished
prompt without images, an image without a file name) fail the attempt, retryably, as
"unexpected output shape: ...".
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import posixpath
import uuid
from typing import Any
from urllib.parse import urlparse

import httpx
import websockets
from pydantic import Field
from pydantic_settings import BaseSettings
from websockets.exceptions import WebSocketException

from studio.ledger.dead_runs import JobAnswer, OpenRow
from studio.providers.base import BilledJob, NoJobTracking, ProviderError, ProviderImage
from studio.providers.comfyui_workflow import (
    Workflow,
    WorkflowError,
    avatar_values,
    load_workflow,
    resolve_workflow,
    workflow_graph,
)
from studio.providers.entry import (
    CANNOT_TELL,
    LOOKUP_TIMEOUT,
    BlockField,
    ProviderEntry,
    Tuning,
)
from studio.providers.shapes import UnexpectedShape
from studio.providers.tls import client_context
from studio.types import AvatarRef, PieceSpec

NEGATIVE_PROMPT = "blurry, low quality, distorted, watermark, text"


def lora_file_name(lora_weights_url: str) -> str:
    """ComfyUI loads LoRAs by file name from its loras folder; the URL's last segment."""
    name = posixpath.basename(urlparse(lora_weights_url).path) or "avatar.safetensors"
    return name if name.endswith(".safetensors") else f"{name}.safetensors"


def seed_for(piece_id: str) -> int:
    """A stable seed per piece, so a re-run of the same piece asks for the same image."""
    return int.from_bytes(hashlib.sha256(piece_id.encode()).digest()[:6], "big")


def workflow_for(
    spec: PieceSpec, avatar: AvatarRef, *, workflow: str | None, checkpoint: str | None
) -> tuple[Workflow, dict[str, Any]]:
    """The workflow to post for `spec` (the avatar's, else `workflow`, else the default)
    and its graph with every binding filled; WorkflowError when it cannot be used."""
    loaded = load_workflow(resolve_workflow(avatar.workflow or workflow))
    values = avatar_values(
        avatar, checkpoint=checkpoint, prompt=spec.prompt, seed=seed_for(spec.piece_id),
        width=spec.width, height=spec.height, piece_id=spec.piece_id,
    )
    graph = workflow_graph(
        loaded, values, has_lora=bool(avatar.lora_weights_url), avatar_name=avatar.name
    )
    return loaded, graph


def _rejection(body: Any) -> str:
    """What ComfyUI's 400 body says, keeping what an operator needs to fix the graph.

    The error's type, then each failing node as `node <id> <class>: <input>: <what>`,
    with the value it received; for a rejection of the whole graph (`missing_node_type`,
    an older server's `invalid_prompt`, `prompt_no_outputs`) the node, its class and
    ComfyUI's message. execution.py `validate_prompt` / `validate_inputs` shape it.
    """
    if not isinstance(body, dict):
        return "prompt rejected"
    error = body.get("error") or {}
    kind = error.get("type", "invalid_prompt") if isinstance(error, dict) else str(error)
    nodes = body.get("node_errors") or {}
    parts = []
    if isinstance(nodes, dict):
        for node_id, node in nodes.items():
            if not isinstance(node, dict):
                continue
            head = f"node {node_id} {node.get('class_type', '?')}"
            for err in node.get("errors") or []:
                if isinstance(err, dict):
                    parts.append(f"{head}: {_node_error(err)}")
    if not parts and isinstance(error, dict):
        parts.append(_graph_error(error))
    text = f"prompt rejected ({kind})" + (f": {'; '.join(p for p in parts if p)}" if parts else "")
    return text if len(text) <= _REJECTION_MAX else text[: _REJECTION_MAX - 3] + "..."


_REJECTION_MAX = 2000


def _short(value: Any, limit: int = 80) -> str:
    shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _node_error(err: dict[str, Any]) -> str:
    """One validation error: the input, ComfyUI's details and message, the value received."""
    extra = err.get("extra_info") if isinstance(err.get("extra_info"), dict) else {}
    name = str(extra.get("input_name") or "")
    message = str(err.get("message") or err.get("type") or "invalid")
    details = str(err.get("details") or "")
    if details and details != name:
        text = details if not name or details.startswith(name) else f"{name}: {details}"
        text += f" ({message})"
    else:
        text = f"{name}: {message}" if name else message
    if "received_value" in extra:
        received = _short(extra["received_value"])
        if received not in text:
            text += f", received {received}"
    return text


def _graph_error(error: dict[str, Any]) -> str:
    """A rejection of the whole graph: which node (id, class, title) and why."""
    extra = error.get("extra_info") if isinstance(error.get("extra_info"), dict) else {}
    message = str(error.get("message") or "")
    where = []
    if extra.get("node_id") is not None:
        where.append(f"node {extra['node_id']}")
    if extra.get("class_type"):
        where.append(str(extra["class_type"]))
    if where:
        return f"{' '.join(where)}: {message}".strip()
    details = str(error.get("details") or "")
    return f"{message} ({details})" if message and details else message or details


class _OutputGone(Exception):
    """A finished prompt whose image file is no longer served (a retry must re-queue)."""


class ComfyUIProvider:
    name = "comfyui"
    stand_in = False

    def __init__(
        self,
        endpoint: str,
        *,
        price_usd: float = 0.0,
        checkpoint: str | None = None,
        workflow: str | None = None,
        poll_interval: float = 0.2,
        use_websocket: bool = True,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.use_websocket = use_websocket
        self.price_usd = price_usd
        #: COMFYUI_CHECKPOINT (None: the workflow's own) and COMFYUI_WORKFLOW (None:
        #: the shipped sdxl_lora); an avatar's `checkpoint`/`workflow` override them
        self.checkpoint = checkpoint
        self.workflow = workflow
        self.poll_interval = poll_interval
        self._client = client or httpx.AsyncClient(
            base_url=self.endpoint,
            timeout=httpx.Timeout(30.0, connect=5.0),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
            verify=client_context(),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def generate(
        self, spec: PieceSpec, avatar: AvatarRef, job: BilledJob | None = None
    ) -> ProviderImage:
        job = job or NoJobTracking()
        try:
            workflow, graph = workflow_for(
                spec, avatar, workflow=self.workflow, checkpoint=self.checkpoint
            )
        except WorkflowError as exc:
            raise ProviderError(self.name, str(exc), retryable=False) from None
        if job.resume_job_id:
            resumed = await self._resume(job.resume_job_id)
            if resumed is not None:
                return resumed
        client_id = uuid.uuid4().hex
        async with contextlib.AsyncExitStack() as stack:
            events = await self._open_events(stack, client_id)
            try:
                prompt_id = await self._submit(graph, client_id)
            except httpx.HTTPError as exc:
                raise ProviderError(self.name, f"submit failed: {type(exc).__name__}") from None
            job.created(prompt_id)
            try:
                entry = None
                if events is not None:
                    entry = await self._wait_for_event(events, prompt_id)
                if entry is None:
                    entry = await self._wait_for(prompt_id)
                return await self._fetch_image(entry, prefer=workflow.outputs)
            except _OutputGone:
                raise ProviderError(self.name, "view answered HTTP 404") from None
            except asyncio.CancelledError:
                await asyncio.shield(self._forget(prompt_id))
                raise
            except httpx.HTTPError as exc:
                raise ProviderError(self.name, f"poll failed: {type(exc).__name__}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _open_events(
        self, stack: contextlib.AsyncExitStack, client_id: str
    ) -> websockets.ClientConnection | None:
        """ComfyUI's event stream for this client id, or None (then /history is polled)."""
        if not self.use_websocket:
            return None
        scheme = "wss" if self.endpoint.startswith("https") else "ws"
        url = f"{scheme}{self.endpoint[self.endpoint.index(':'):]}/ws?clientId={client_id}"
        try:
            return await stack.enter_async_context(
                websockets.connect(url, open_timeout=5, max_size=None, ping_interval=None)
            )
        except (OSError, TimeoutError, WebSocketException):
            return None

    async def _wait_for_event(
        self, events: websockets.ClientConnection, prompt_id: str
    ) -> dict[str, Any] | None:
        """Until ComfyUI says the prompt is done (`executing` with node null) or failed.

        Returns the outputs the `executed` events carried (as a history entry), so the
        image is fetched without reading /history; None when they carried no image or
        the stream closed, and then /history is the authority.
        """
        outputs: dict[str, Any] = {}
        try:
            async for raw in events:
                if isinstance(raw, bytes):  # preview frames
                    continue
                message = json.loads(raw)
                data = message.get("data") or {}
                if data.get("prompt_id") != prompt_id:
                    continue
                kind = message.get("type")
                if kind == "execution_error":
                    raise ProviderError(self.name, f"execution error: {_failure_text(data)}")
                if kind == "execution_interrupted":
                    raise ProviderError(self.name, "execution interrupted")
                if kind == "executed" and isinstance(data.get("output"), dict):
                    outputs[str(data.get("node"))] = data["output"]
                if kind == "executing" and data.get("node") is None:
                    images = any(o.get("images") for o in outputs.values())
                    return {"outputs": outputs} if images else None
        except (WebSocketException, ValueError):
            return None
        return None

    async def _submit(self, graph: dict[str, Any], client_id: str) -> str:
        response = await self._client.post(
            "/prompt", json={"prompt": graph, "client_id": client_id}
        )
        if response.status_code == 400:
            try:
                body = response.json()
            except ValueError:
                body = None
            raise ProviderError(self.name, _rejection(body), retryable=False)
        if response.status_code != 200:
            raise ProviderError(self.name, f"POST /prompt answered HTTP {response.status_code}")
        try:
            prompt_id = response.json().get("prompt_id")
        except (ValueError, AttributeError):
            prompt_id = None
        if not isinstance(prompt_id, str) or not prompt_id:
            raise UnexpectedShape(self.name, "/prompt answer without a prompt_id")
        return prompt_id

    async def _resume(self, prompt_id: str) -> ProviderImage | None:
        """The image of an earlier prompt; None when ComfyUI no longer has it or it failed."""
        try:
            entry = await self._history_entry(prompt_id)
            if entry is None:
                if not await self._queued(prompt_id):
                    return None  # gone (ComfyUI restarted, or the history was cleared)
                try:
                    entry = await self._wait_for(prompt_id)
                except asyncio.CancelledError:  # timed out waiting: free the GPU too
                    await asyncio.shield(self._forget(prompt_id))
                    raise
            elif (entry.get("status") or {}).get("status_str") == "error":
                return None
            return await self._fetch_image(entry)
        except (_OutputGone, UnexpectedShape):
            return None  # its image is gone, or would be as unusable on every re-read
        except httpx.HTTPError as exc:
            raise ProviderError(self.name, f"resume failed: {type(exc).__name__}") from None

    async def _history_entry(self, prompt_id: str) -> dict[str, Any] | None:
        response = await self._client.get(f"/history/{prompt_id}")
        if response.status_code != 200:
            raise ProviderError(self.name, f"history answered HTTP {response.status_code}")
        try:
            entry = response.json().get(prompt_id)
        except (ValueError, AttributeError):
            raise UnexpectedShape(self.name, "history that is not JSON") from None
        return entry if isinstance(entry, dict) and entry else None

    async def _queued(self, prompt_id: str) -> bool:
        """Whether the prompt is still running or waiting in ComfyUI's queue."""
        response = await self._client.get("/queue")
        if response.status_code != 200:
            raise ProviderError(self.name, f"queue answered HTTP {response.status_code}")
        body = response.json()
        for key in ("queue_running", "queue_pending"):
            for item in body.get(key) or []:
                if isinstance(item, list) and len(item) > 1 and item[1] == prompt_id:
                    return True
        return False

    async def _wait_for(self, prompt_id: str) -> dict[str, Any]:
        """Poll /history, quickly at first (most prompts take under 2 s), then steadily."""
        delay = min(0.02, self.poll_interval)
        while True:
            entry = await self._history_entry(prompt_id)
            if entry:
                status = entry.get("status") or {}
                if status.get("status_str") == "error":
                    raise ProviderError(self.name, f"execution error: {_execution_error(status)}")
                if status.get("completed", True):
                    return entry
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.poll_interval)

    async def _fetch_image(
        self, entry: dict[str, Any], prefer: tuple[str, ...] = ()
    ) -> ProviderImage:
        """The first image of the finished prompt, by filename, subfolder and type; the
        workflow's output nodes (`prefer`) first, so an intermediate PreviewImage of a
        studio's workflow is not taken for the finished image."""
        outputs = entry.get("outputs")
        if not isinstance(outputs, dict):
            raise UnexpectedShape(self.name, "history without outputs")
        rank = {node: i for i, node in enumerate(prefer)}
        ordered = sorted(outputs, key=lambda node: rank.get(str(node), len(rank)))
        for output in (outputs[node] for node in ordered):
            images = output.get("images") if isinstance(output, dict) else None
            for image in images or []:
                if not isinstance(image, dict) or not image.get("filename"):
                    raise UnexpectedShape(self.name, "image without a filename")
                response = await self._client.get(
                    "/view",
                    params={
                        "filename": image["filename"],
                        "subfolder": image.get("subfolder", ""),
                        "type": image.get("type", "output"),
                    },
                )
                if response.status_code == 404:
                    raise _OutputGone
                if response.status_code != 200:
                    raise ProviderError(self.name, f"view answered HTTP {response.status_code}")
                content_type = response.headers.get("content-type", "image/png").split(";")[0]
                return ProviderImage(response.content, content_type, self.price_usd)
        raise UnexpectedShape(self.name, "history entry without images")

    async def _forget(self, prompt_id: str) -> None:
        """Best effort, after we stopped waiting: free the GPU of a prompt nobody wants.

        `POST /queue {"delete": [id]}` removes a prompt only while it waits; a running
        one goes on until `POST /interrupt`. So: look where it is (`GET /queue`); a
        waiting one is deleted, then looked for again (it may have started meanwhile);
        a running one is interrupted, naming it (`{"prompt_id": id}`: current servers
        then interrupt only that prompt). /interrupt is never sent for a prompt that
        is not running: servers before 2025 ignore its body and would stop whatever
        runs, someone else's prompt. A finished or unknown prompt is left alone.
        """
        try:
            async with asyncio.timeout(_FORGET_BUDGET):
                for _ in range(3):
                    place = await self._queue_place(prompt_id)
                    if place == "running":
                        await self._client.post(
                            "/interrupt", json={"prompt_id": prompt_id}, timeout=2.0
                        )
                        return
                    if place != "pending":
                        return
                    await self._client.post(
                        "/queue", json={"delete": [prompt_id]}, timeout=2.0
                    )
        except (httpx.HTTPError, TimeoutError, ValueError, ProviderError):
            pass

    async def _queue_place(self, prompt_id: str) -> str | None:
        """"running", "pending", or None (finished, or never queued) per `GET /queue`."""
        response = await self._client.get("/queue", timeout=2.0)
        if response.status_code != 200:
            raise ProviderError(self.name, f"queue answered HTTP {response.status_code}")
        body = response.json()
        for key, place in (("queue_running", "running"), ("queue_pending", "pending")):
            for item in body.get(key) or []:
                if isinstance(item, list) and len(item) > 1 and item[1] == prompt_id:
                    return place
        return None


#: seconds `_forget` may take in all (it runs while the caller's cancellation waits)
_FORGET_BUDGET = 5.0


def _execution_error(status: dict[str, Any]) -> str:
    """The failure a history entry's status messages record (execution_error/interrupted)."""
    for message in status.get("messages", []):
        if not isinstance(message, list) or not message:
            continue
        info = message[1] if len(message) > 1 and isinstance(message[1], dict) else {}
        if message[0] == "execution_error":
            return _failure_text(info)
        if message[0] == "execution_interrupted":
            return f"{_failed_node(info)}: interrupted"
    return "unknown"


def _failed_node(info: dict[str, Any]) -> str:
    node_type = info.get("node_type") or "?"
    return f"{node_type} (node {info['node_id']})" if info.get("node_id") else str(node_type)


def _failure_text(info: dict[str, Any]) -> str:
    """An `execution_error`'s node, exception type and message (never its traceback or
    inputs: those can hold the whole prompt); the message on one line, cut at 300."""
    text = f"{_failed_node(info)}: {info.get('exception_type') or 'error'}"
    message = " ".join(str(info.get("exception_message") or "").split())
    if message:
        text += f": {message if len(message) <= 300 else message[:297] + '...'}"
    return text


class ComfyUISettings(BaseSettings):
    """ComfyUI's variables (spec: "ComfyUI (local, free, fast, flaky)")."""

    comfyui_enabled: bool = Field(False, validation_alias="COMFYUI_ENABLED")
    comfyui_endpoint: str = Field("http://localhost:8188", validation_alias="COMFYUI_ENDPOINT")
    comfyui_fallback_on_error: bool = Field(True, validation_alias="COMFYUI_FALLBACK_ON_ERROR")
    #: None: the checkpoint the workflow file names (the default's: SDXL base 1.0)
    comfyui_checkpoint: str | None = Field(None, validation_alias="COMFYUI_CHECKPOINT")
    #: an API-format workflow file, or a shipped one by name (docs/comfyui-workflows.md);
    #: None: the shipped sdxl_lora
    comfyui_workflow: str | None = Field(None, validation_alias="COMFYUI_WORKFLOW")
    comfyui_poll_interval: float = Field(0.2, validation_alias="COMFYUI_POLL_INTERVAL")


def _build(settings: ComfyUISettings, tuning: Tuning) -> ComfyUIProvider:
    return ComfyUIProvider(
        settings.comfyui_endpoint,
        price_usd=tuning.price_usd,
        checkpoint=settings.comfyui_checkpoint,
        workflow=settings.comfyui_workflow,
        poll_interval=settings.comfyui_poll_interval,
    )


async def find_job(settings: ComfyUISettings, row: OpenRow) -> JobAnswer:
    """A dead run's prompt: `GET /history/{prompt_id}`, then `GET /queue`."""
    if not row.job_id:
        return CANNOT_TELL
    async with httpx.AsyncClient(
        base_url=settings.comfyui_endpoint, timeout=LOOKUP_TIMEOUT
    ) as client:
        history = await client.get(f"/history/{row.job_id}")
        history.raise_for_status()
        if history.json().get(row.job_id):
            return JobAnswer(True, row.job_id)
        queue = await client.get("/queue")
        queue.raise_for_status()
        body = queue.json()
        for item in [*body.get("queue_running", []), *body.get("queue_pending", [])]:
            if isinstance(item, list) and len(item) > 1 and item[1] == row.job_id:
                return JobAnswer(True, row.job_id)
    return JobAnswer(False)


ENTRY = ProviderEntry(
    name="comfyui",
    settings=ComfyUISettings,
    tuning=Tuning(
        max_concurrent=10, max_attempts=1, backoff_factor=1.0, timeout=30.0, price_usd=0.0
    ),
    price_source='spec "ComfyUI (local, free)": the studio\'s own GPU',
    configured=lambda settings: settings.comfyui_enabled,
    build=_build,
    quality_rank=2,
    own_hardware=True,
    falls_back=lambda settings: settings.comfyui_fallback_on_error,
    endpoint_field=BlockField(
        "comfyui_endpoint", "COMFYUI_ENDPOINT", description="e.g. http://gpu-box:8188"
    ),
    find_job=find_job,
)

"""The studio's own ComfyUI workflows: load, check and bind an API-format workflow file.

A studio builds its graph in ComfyUI (face detailers, upscalers, other checkpoints) and
exports it with "Export (API)" (older versions: "Save (API Format)" once dev mode is on):
`{node_id: {"class_type", "inputs", "_meta": {"title"}}}`. `COMFYUI_WORKFLOW` names that
file (or one shipped in studio/workflows/, by name), and an avatar's `workflow`
overrides it; the shipped `sdxl_lora` is the default.

The inputs the pipeline fills are found by NODE TITLE, `studio:<binding>` anywhere in
the title ("Positive studio:prompt" works too):

    studio:prompt      text (or text_g/text_l)       the piece's prompt
    studio:negative    text (or text_g/text_l)       the studio's negative prompt
    studio:seed        seed or noise_seed            a stable seed per piece
    studio:size        width and height              PieceSpec.width/height (1024)
    studio:lora        lora_name, strength_model,    the avatar's LoRA file and
                       strength_clip                 AvatarRef.lora_strength
    studio:checkpoint  ckpt_name                     AvatarRef.checkpoint, else
                                                     COMFYUI_CHECKPOINT, else the file's
    studio:output      (marks a custom save node as the image to fetch)

prompt, negative, seed and size are required. Several nodes may carry one title (a
hires-fix second sampler takes the same seed). Why titles and not placeholders such as
`"{{seed}}"`: a title is set in ComfyUI's own editor (right-click > Title) and survives
"Export (API)" as `_meta.title`, so the file stays a valid graph that the studio opens,
runs and re-exports as it is; a placeholder cannot be typed into a number widget (seed,
width) and makes the file unrunnable in ComfyUI itself. Nor custom input nodes, as
ComfyDeploy uses (ComfyUIDeployExternalText ...): they must be installed on every
server, and comfyui-api's per-workflow TypeScript endpoints mean code per workflow.
Title annotations are what ComfyUI-Connect does (`$name` in a node title).

Every check that needs no server runs at `load_workflow` (not JSON, a UI-format
export, an unknown `studio:` binding, a binding on a node without its input or on a
linked input, a required binding missing, no output image node, a link to a node the
file lacks); `missing_on_server` then checks the graph to be posted against the
server's GET /object_info (every node type installed, every file-list input set to an
installed file). `workflow_refusal(avatar)` runs both at batch admission, so a
workflow that cannot run is refused before anything is spent.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from studio.providers.settings import ProviderSettings
    from studio.types import AvatarRef

log = logging.getLogger("studio.providers")

#: the shipped workflows (package data); `COMFYUI_WORKFLOW=sdxl_lora_hires` names one
WORKFLOWS_DIR = Path(__file__).resolve().parent.parent / "workflows"
DEFAULT_WORKFLOW = "sdxl_lora"

TITLE_MARK = re.compile(r"studio:([A-Za-z_]+)")


@dataclass(frozen=True)
class Binding:
    """One input the pipeline fills: which node inputs take it."""

    name: str
    #: the node must have at least one of these; every one present is filled
    inputs: tuple[str, ...]
    required: bool
    #: inputs the node must have all of (size: width AND height)
    all_of: tuple[str, ...] = ()
    #: filled when present, never required (LoRA strengths)
    extra: tuple[str, ...] = ()
    hint: str = ""


BINDINGS: dict[str, Binding] = {
    b.name: b
    for b in (
        Binding("prompt", ("text", "text_g", "text_l"), True,
                hint="a CLIPTextEncode for the positive prompt"),
        Binding("negative", ("text", "text_g", "text_l"), True,
                hint="a CLIPTextEncode for the negative prompt"),
        Binding("seed", ("seed", "noise_seed"), True,
                hint="a KSampler (seed) or KSamplerAdvanced (noise_seed)"),
        Binding("size", ("width", "height"), True, all_of=("width", "height"),
                hint="an EmptyLatentImage (width and height)"),
        Binding("lora", ("lora_name",), False, extra=("strength_model", "strength_clip"),
                hint="a LoraLoader"),
        Binding("checkpoint", ("ckpt_name",), False, hint="a CheckpointLoaderSimple"),
        Binding("output", (), False, hint="a node that saves the image"),
    )
}

#: core nodes whose outputs carry the finished image (history `outputs[..]["images"]`)
OUTPUT_IMAGE_NODES = frozenset({"SaveImage", "PreviewImage", "SaveAnimatedWEBP",
                                "SaveAnimatedPNG"})

UI_EXPORT_HELP = (
    "export it in API format: in ComfyUI, Workflow > Export (API) (older versions: enable "
    "dev mode options in the settings, then 'Save (API Format)')"
)


class WorkflowError(ValueError):
    """A workflow file that cannot be posted; the message names the file and the fault."""


@dataclass(frozen=True)
class Workflow:
    """A checked API-format workflow; `graph` is never changed (`bind` copies it)."""

    path: Path
    graph: dict[str, dict[str, Any]]
    #: binding name -> the ids of the nodes titled with it
    bound: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: the output image nodes, the one titled studio:output first
    outputs: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def binds_lora(self) -> bool:
        return bool(self.bound.get("lora"))

    def checkpoints(self) -> list[str]:
        """The checkpoint file(s) the file itself names at its studio:checkpoint nodes."""
        return [
            str(self.graph[nid]["inputs"]["ckpt_name"]) for nid in self.bound.get("checkpoint", ())
        ]


# --- finding and loading a workflow file ---


def shipped_workflows() -> list[str]:
    """The names of the workflows shipped with the studio (studio/workflows/*.json)."""
    return sorted(p.stem for p in WORKFLOWS_DIR.glob("*.json"))


def resolve_workflow(name: str | None) -> Path:
    """The file `name` means: a path (absolute or from the working directory), else a
    shipped workflow by name (with or without .json); None: the default workflow."""
    if not name or not name.strip():
        return WORKFLOWS_DIR / f"{DEFAULT_WORKFLOW}.json"
    name = name.strip()
    path = Path(name).expanduser()
    if path.exists():
        return path
    stem = name[:-5] if name.endswith(".json") else name
    if "/" not in stem and "\\" not in stem:
        shipped = WORKFLOWS_DIR / f"{stem}.json"
        if shipped.exists():
            return shipped
    raise WorkflowError(
        f"workflow {name}: no such file (nor a shipped workflow: "
        f"{', '.join(shipped_workflows())})"
    )


def load_workflow(path: str | Path) -> Workflow:
    """Read and check an API-format workflow file (no server needed); WorkflowError
    names the file and the first fault. Cached per file version (path, mtime, size)."""
    p = Path(path)
    try:
        stat = p.stat()
    except OSError as exc:
        raise WorkflowError(f"workflow {p}: cannot read it ({exc.strerror or exc})") from None
    return _load(str(p), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=64)
def _load(path: str, mtime_ns: int, size: int) -> Workflow:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise WorkflowError(f"workflow {p}: cannot read it ({reason or exc})") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        where = (
            f" (line {exc.lineno} column {exc.colno}: {exc.msg})"
            if isinstance(exc, json.JSONDecodeError) else ""
        )
        raise WorkflowError(f"workflow {p}: not JSON{where}") from None
    return check_graph(data, p)


def check_graph(data: Any, path: Path) -> Workflow:
    """The offline checks of `load_workflow`, on parsed JSON."""
    where = f"workflow {path}"
    if isinstance(data, dict) and isinstance(data.get("nodes"), list) and isinstance(
        data.get("links"), list
    ):
        raise WorkflowError(f"{where} is a UI-format export (it has 'nodes' and 'links'); "
                            f"{UI_EXPORT_HELP}")
    if not isinstance(data, dict) or not data:
        raise WorkflowError(
            f"{where}: not an API-format workflow (a JSON object of nodes expected); "
            f"{UI_EXPORT_HELP}"
        )
    graph: dict[str, dict[str, Any]] = {}
    for nid, node in data.items():
        if (
            not isinstance(node, dict)
            or not isinstance(node.get("class_type"), str)
            or not isinstance(node.get("inputs"), dict)
        ):
            raise WorkflowError(
                f"{where}: node {nid} is not an API-format node ('class_type' and 'inputs' "
                f"expected); {UI_EXPORT_HELP}"
            )
        graph[str(nid)] = node
    _check_links(graph, where)
    bound = _find_bindings(graph, where)
    outputs = [*bound.get("output", ())]
    outputs += [n for n, node in graph.items()
                if node["class_type"] in OUTPUT_IMAGE_NODES and n not in outputs]
    if not outputs:
        raise WorkflowError(
            f"{where} has no output image node (a SaveImage or PreviewImage, or a node "
            f"titled 'studio:output')"
        )
    return Workflow(path=path, graph=graph, bound=bound, outputs=tuple(outputs))


def _check_links(graph: dict[str, dict[str, Any]], where: str) -> None:
    for nid, node in graph.items():
        for name, value in node["inputs"].items():
            if _is_link(value) and str(value[0]) not in graph:
                raise WorkflowError(
                    f"{where}: node {nid} ({node['class_type']}) input {name} links to "
                    f"node {value[0]}, which the workflow lacks"
                )


def _is_link(value: Any) -> bool:
    """An API-format link: [source node id, output index]."""
    return (
        isinstance(value, list) and len(value) == 2
        and isinstance(value[0], str | int) and isinstance(value[1], int)
    )


def title_of(node: dict[str, Any]) -> str:
    meta = node.get("_meta")
    title = meta.get("title") if isinstance(meta, dict) else None
    return title if isinstance(title, str) else ""


def _find_bindings(graph: dict[str, dict[str, Any]], where: str) -> dict[str, tuple[str, ...]]:
    found: dict[str, list[str]] = {}
    for nid, node in graph.items():
        for mark in TITLE_MARK.findall(title_of(node)):
            name = mark.lower()
            binding = BINDINGS.get(name)
            label = f"node {nid} ({node['class_type']}, titled '{title_of(node)}')"
            if binding is None:
                raise WorkflowError(
                    f"{where}: {label} names an unknown binding 'studio:{mark}' "
                    f"(known: {', '.join('studio:' + b for b in BINDINGS)})"
                )
            inputs = node["inputs"]
            if binding.all_of:
                lacking = [i for i in binding.all_of if i not in inputs]
            else:
                lacking = [] if any(i in inputs for i in binding.inputs) else list(binding.inputs)
            if lacking:
                raise WorkflowError(
                    f"{where}: {label} has no input {' or '.join(lacking)} for "
                    f"studio:{name} (expected on {binding.hint})"
                )
            for i in (*binding.inputs, *binding.extra):
                if _is_link(inputs.get(i)):
                    raise WorkflowError(
                        f"{where}: {label} input {i} is linked to node {inputs[i][0]}; "
                        f"give studio:{name} to the node that holds the value"
                    )
            found.setdefault(name, []).append(nid)
    for binding in BINDINGS.values():
        if binding.required and binding.name not in found:
            raise WorkflowError(
                f"{where}: binding studio:{binding.name} is missing: title {binding.hint} "
                f"'studio:{binding.name}' in ComfyUI and export it again"
            )
    return {name: tuple(ids) for name, ids in found.items()}


# --- filling the bindings ---


@dataclass(frozen=True)
class BindValues:
    """What the pipeline puts into a workflow for one image."""

    prompt: str
    negative: str
    seed: int
    width: int = 1024
    height: int = 1024
    #: None: the LoRA nodes keep the file's own values (a check without an avatar)
    lora_name: str | None = None
    lora_strength: float = 1.0
    #: None: the file's own checkpoint
    checkpoint: str | None = None
    #: the output node's filename_prefix (traceable files on the server)
    filename_prefix: str | None = None


def bind(workflow: Workflow, values: BindValues) -> dict[str, dict[str, Any]]:
    """A copy of the workflow's graph with every binding filled, ready for POST /prompt
    (`_meta` is kept: ComfyUI ignores it, and it names the nodes in its errors)."""
    graph = copy.deepcopy(workflow.graph)

    def fill(binding: str, value: Any, names: Iterable[str] | None = None) -> None:
        for nid in workflow.bound.get(binding, ()):
            inputs = graph[nid]["inputs"]
            for name in names or BINDINGS[binding].inputs:
                if name in inputs:
                    inputs[name] = value

    fill("prompt", values.prompt)
    fill("negative", values.negative)
    fill("seed", values.seed)
    fill("size", values.width, ("width",))
    fill("size", values.height, ("height",))
    if values.lora_name is not None:
        fill("lora", values.lora_name)
        fill("lora", values.lora_strength, BINDINGS["lora"].extra)
    if values.checkpoint:
        fill("checkpoint", values.checkpoint)
    if values.filename_prefix:
        for nid in workflow.outputs:
            if "filename_prefix" in graph[nid]["inputs"]:
                graph[nid]["inputs"]["filename_prefix"] = values.filename_prefix
    return graph


# --- against the server's /object_info ---


def choices(spec: Any) -> list[Any] | None:
    """The allowed values of an /object_info input spec when it is a list (a combo:
    installed files, sampler names); None for other types. Both shapes ComfyUI has
    used: `[[...options], {...}]` and `["COMBO", {"options": [...]}]`."""
    if not isinstance(spec, list | tuple) or not spec:
        return None
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        options = spec[1].get("options")
        return options if isinstance(options, list) else None
    return None


def _input_spec(info: dict[str, Any], name: str) -> Any:
    inputs = info.get("input") if isinstance(info, dict) else None
    if not isinstance(inputs, dict):
        return None
    for group in ("required", "optional"):
        specs = inputs.get(group)
        if isinstance(specs, dict) and name in specs:
            return specs[name]
    return None


def missing_on_server(
    graph: dict[str, dict[str, Any]],
    object_info: dict[str, Any],
    *,
    skip: Iterable[tuple[str, str]] = (),
) -> list[str]:
    """Each node type the server lacks and each file-list input set to a file it does
    not have (checkpoint, LoRA, VAE, upscale model...), one message each; `skip` lists
    (node id, input) pairs not to check (a LoRA the caller will replace)."""
    skipped = set(skip)
    problems: list[str] = []
    for nid, node in graph.items():
        kind = node["class_type"]
        title = title_of(node)
        label = f"node {nid}" + (f" '{title}'" if title and title != kind else "")
        info = object_info.get(kind)
        if info is None:
            problems.append(f"node type {kind} is not installed ({label})")
            continue
        for name, value in node["inputs"].items():
            if (nid, name) in skipped or _is_link(value):
                continue
            allowed = choices(_input_spec(info, name))
            if allowed is not None and value not in allowed:
                problems.append(f"{kind}.{name} '{value}' is not on the server ({label})")
    return problems


async def fetch_object_info(client: httpx.AsyncClient) -> dict[str, Any]:
    """GET /object_info: every installed node class with its input specs."""
    response = await client.get("/object_info")
    response.raise_for_status()
    body = response.json()
    if not isinstance(body, dict):
        raise ValueError("/object_info answered something other than a JSON object")
    return body


# --- what the provider posts, and the admission check ---


def workflow_graph(
    workflow: Workflow,
    spec_values: BindValues,
    *,
    has_lora: bool,
    avatar_name: str,
) -> dict[str, dict[str, Any]]:
    """`bind`, after the checks that join the avatar and the workflow: a workflow that
    loads a LoRA needs the avatar's, and an avatar with a LoRA needs a workflow that
    loads it (else its face would not appear)."""
    if workflow.binds_lora and not has_lora:
        raise WorkflowError(
            f"workflow {workflow.name} loads a LoRA (studio:lora) but avatar {avatar_name} "
            f"has no LoRA weights"
        )
    if has_lora and not workflow.binds_lora:
        raise WorkflowError(
            f"workflow {workflow.name} has no node titled 'studio:lora' but avatar "
            f"{avatar_name} has LoRA weights (its face would not appear): title its "
            f"LoraLoader 'studio:lora', or use another workflow"
        )
    return bind(workflow, spec_values)


def avatar_values(
    avatar: AvatarRef, *, checkpoint: str | None, prompt: str = "", seed: int = 0,
    width: int | None = None, height: int | None = None, piece_id: str | None = None,
) -> BindValues:
    """The bind values for `avatar` (its LoRA file, strength and checkpoint override)."""
    from studio.providers.comfyui import NEGATIVE_PROMPT, lora_file_name

    return BindValues(
        prompt=prompt,
        negative=NEGATIVE_PROMPT,
        seed=seed,
        width=width or 1024,
        height=height or 1024,
        lora_name=lora_file_name(avatar.lora_weights_url) if avatar.lora_weights_url else None,
        lora_strength=avatar.lora_strength,
        checkpoint=avatar.checkpoint or checkpoint,
        filename_prefix=f"studio_{piece_id}" if piece_id else None,
    )


async def check_against_server(
    workflow: Workflow,
    values: BindValues,
    client: httpx.AsyncClient,
) -> list[str]:
    """What the server lacks to run `workflow` bound with `values` (empty: all there).
    The LoRA nodes are checked only when `values` names a LoRA."""
    graph = bind(workflow, values)
    skip = [] if values.lora_name is not None else [
        (nid, "lora_name") for nid in workflow.bound.get("lora", ())
    ]
    return missing_on_server(graph, await fetch_object_info(client), skip=skip)


async def workflow_refusal(
    avatar: AvatarRef,
    settings: ProviderSettings | None = None,
    *,
    client: httpx.AsyncClient | None = None,
) -> str | None:
    """Why `avatar`'s ComfyUI workflow cannot run, or None (it can, or ComfyUI is not in
    the chain). Called at batch admission: the offline checks, then the server's
    /object_info. A server that does not answer is not a refusal: ComfyUI is flaky and
    the chain falls back; its images fail (and fall back) as they would anyway."""
    from studio.providers.build import provider_order
    from studio.providers.settings import ProviderSettings
    from studio.providers.tls import client_context

    s = settings or ProviderSettings()
    if "comfyui" not in provider_order(s):
        return None
    try:
        workflow = load_workflow(resolve_workflow(avatar.workflow or s.comfyui_workflow))
        values = avatar_values(avatar, checkpoint=s.comfyui_checkpoint)
        workflow_graph(
            workflow, values, has_lora=bool(avatar.lora_weights_url), avatar_name=avatar.name
        )
    except WorkflowError as exc:
        return str(exc)
    owned = client is None
    client = client or httpx.AsyncClient(
        base_url=s.comfyui_endpoint, timeout=httpx.Timeout(30.0, connect=5.0),
        verify=client_context(),
    )
    try:
        missing = await check_against_server(workflow, values, client)
    except (httpx.HTTPError, ValueError) as exc:
        log.warning(
            "comfyui: workflow %s not checked against the server (%s)",
            workflow.name, type(exc).__name__,
        )
        return None
    finally:
        if owned:
            await client.aclose()
    if missing:
        return f"ComfyUI workflow {workflow.name} cannot run on the server: " + "; ".join(missing)
    return None

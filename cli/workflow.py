"""`studio workflow check FILE`: is a ComfyUI workflow file usable, before a batch uses it?

The same checks a batch makes at admission (studio/providers/comfyui_workflow.py): the
file parses, is an API-format export (not the UI format), has every binding
(`studio:prompt`, ... in node titles: docs/comfyui-workflows.md) and an output image
node; then, against the server's GET /object_info (`--url`, else COMFYUI_ENDPOINT when
COMFYUI_ENABLED), every node type installed and every model file it names present.
A fault exits 2 with one line naming it; a server that does not answer exits 1 (the
environment, not the file); 0 prints a short summary.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, NoReturn

import typer
from rich.markup import escape

from cli.output import console, environment_problem, err, one_line

workflow_app = typer.Typer(help="The studio's ComfyUI workflows.", no_args_is_help=True)


def _bad(message: str) -> NoReturn:
    err.print(f"[red]error[/red] {escape(one_line(message))}", soft_wrap=True, highlight=False)
    raise typer.Exit(code=2)


@workflow_app.command("check")
def check(
    file: Annotated[str, typer.Argument(help="an API-format workflow file, or a shipped name")],
    url: Annotated[
        str | None,
        typer.Option("--url", help="the ComfyUI server (default: COMFYUI_ENDPOINT when enabled)"),
    ] = None,
    lora: Annotated[
        str | None,
        typer.Option("--lora", help="an avatar's LoRA URL or file name, checked as installed"),
    ] = None,
    checkpoint: Annotated[
        str | None,
        typer.Option("--checkpoint", help="checkpoint file (default: COMFYUI_CHECKPOINT)"),
    ] = None,
) -> None:
    """Check a ComfyUI workflow file offline, then against the server's /object_info."""
    import httpx

    from studio.providers.comfyui import NEGATIVE_PROMPT, lora_file_name
    from studio.providers.comfyui_workflow import (
        BindValues,
        WorkflowError,
        check_against_server,
        load_workflow,
        resolve_workflow,
    )
    from studio.providers.settings import ProviderSettings

    try:
        workflow = load_workflow(resolve_workflow(file))
    except WorkflowError as exc:
        _bad(str(exc))
    settings = ProviderSettings()
    server = url or (settings.comfyui_endpoint if settings.comfyui_enabled else None)
    lora_name = None
    if lora:
        lora_name = lora_file_name(lora) if "/" in lora else lora
        if not workflow.binds_lora:
            _bad(f"workflow {workflow.name} has no node titled 'studio:lora' for --lora {lora}")
    values = BindValues(
        prompt="", negative=NEGATIVE_PROMPT, seed=0, lora_name=lora_name,
        checkpoint=checkpoint or settings.comfyui_checkpoint,
    )
    bound = ", ".join(workflow.bound)
    summary = (
        f"workflow {workflow.name}: {len(workflow.graph)} nodes, binds {bound}, "
        f"output node {workflow.outputs[0]}"
    )
    if server is None:
        console.print(
            f"{summary}; not checked against a server (pass --url, or set COMFYUI_ENABLED "
            f"and COMFYUI_ENDPOINT)", highlight=False, soft_wrap=True,
        )
        return

    async def ask() -> list[str]:
        async with httpx.AsyncClient(
            base_url=server, timeout=httpx.Timeout(30.0, connect=5.0)
        ) as client:
            return await check_against_server(workflow, values, client)

    try:
        missing = asyncio.run(ask())
    except (httpx.HTTPError, ValueError) as exc:
        environment_problem(
            f"ComfyUI at {server} did not answer GET /object_info ({type(exc).__name__})"
        )
    if missing:
        _bad(f"workflow {workflow.name} cannot run on {server}: " + "; ".join(missing))
    console.print(
        f"{summary}; every node type and model file is on {server}",
        highlight=False, soft_wrap=True,
    )

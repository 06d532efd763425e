"""How every `studio` command reports a refusal or a failed batch, so the exit codes
(2: bad input, nothing done; 1: a batch failed) mean the same in every command."""

from __future__ import annotations

import typer
from rich.console import Console

from studio.request import BatchRequestError

console = Console()
err = Console(stderr=True)


def refuse(exc: BatchRequestError) -> None:
    err.print(f"[red]error[/red] {exc.field}: {exc.message}")
    raise typer.Exit(code=2)


def batch_failed(exc: Exception) -> None:
    err.print(f"[red]batch failed[/red]: {type(exc).__name__}: {exc}")
    raise typer.Exit(code=1) from None

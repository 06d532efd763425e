"""How every `studio` command reports a refusal, an environment problem or a failed
batch, so the exit codes (2: bad input, nothing done; 1: the environment or a batch
failed) mean the same in every command, and every error is ONE line.

Why `soft_wrap`: rich wraps at the terminal's width (80 columns when output is piped),
which turns one message into several lines that a script reading stderr cannot tell
apart from several errors.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from studio.request import BatchRequestError

console = Console()
err = Console(stderr=True)


def one_line(text: str) -> str:
    """`text` on one line: an exception's message may span several."""
    return " ".join(str(text).split())


def refuse(exc: BatchRequestError) -> NoReturn:
    """Bad input: one line naming the field, exit 2."""
    err.print(
        f"[red]error[/red] {escape(exc.field)}: {escape(one_line(exc.message))}",
        soft_wrap=True,
        highlight=False,
    )
    raise typer.Exit(code=2)


def environment_problem(message: str) -> NoReturn:
    """The environment (database, server, credential) is not as the command needs: exit 1."""
    err.print(f"[red]error[/red] {escape(one_line(message))}", soft_wrap=True, highlight=False)
    raise typer.Exit(code=1)


def batch_failed(exc: Exception) -> NoReturn:
    err.print(
        f"[red]batch failed[/red]: {type(exc).__name__}: {escape(one_line(str(exc)))}",
        soft_wrap=True,
        highlight=False,
    )
    raise typer.Exit(code=1) from None


def unexpected_error(exc: BaseException) -> int:
    """An error no command turned into a message: one line, exit 1 (an environment or
    program problem, never the input: input is checked first). STUDIO_DEBUG=1 prints
    the traceback as well, for a bug report."""
    import os
    import traceback

    if os.environ.get("STUDIO_DEBUG", "").lower() in ("1", "true", "yes"):
        traceback.print_exception(exc)
    err.print(
        f"[red]error[/red] {type(exc).__name__}: {escape(one_line(str(exc))[:500])}"
        " (STUDIO_DEBUG=1 shows the traceback)",
        soft_wrap=True,
        highlight=False,
    )
    return 1


def print_json(data: Any) -> None:
    """`--json` output: plain JSON on stdout, no colours, one document (for scripts)."""
    typer.echo(json.dumps(data, default=str, indent=2))

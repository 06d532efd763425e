"""The CLI's database commands refuse an uninitialised database in one line (exit 1).

WHY (issue 16): any command run before `studio init` printed a traceback (`no such
table`) and left an empty SQLite file in the current folder. `schema_guard` is the
`studio` app's callback: before a command that reads or writes the studio database it
asks studio/db/schema_check.py and, if the database is not ready, prints that one line
(naming DATABASE_URL and `studio init`) and exits 1, an environment problem; `health`
too (its report would otherwise create the file it reports missing). Commands that
create the schema (`init`, `demo`, `seed-history` migrates itself) or do not use it
(`server`, `limits`, `automations`, `local-server`) are not guarded; `--help` never is.
"""

from __future__ import annotations

import sys

import typer

from cli.output import err

#: top-level commands (and command groups) that need the schema to exist
NEEDS_SCHEMA = frozenset({
    "avatar", "batch", "stats", "pieces", "storage-sync", "storage-privatize", "health",
})


def exit_unless_schema() -> None:
    """Print the one line and exit 1 when the database is not at the schema's head."""
    from studio.db.schema_check import schema_problem

    problem = schema_problem()
    if problem is not None:
        err.print(problem, highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(code=1)


def schema_guard(ctx: typer.Context) -> None:
    """The app callback: guard the commands in NEEDS_SCHEMA (not their --help)."""
    if ctx.invoked_subcommand not in NEEDS_SCHEMA:
        return
    if {"--help", "-h"} & set(sys.argv[1:]) or ctx.resilient_parsing:
        return
    exit_unless_schema()

"""`studio templates`: list the template library, import a studio's own templates.

`studio templates import FILE.yaml` validates the whole file first (unknown keys, a bad
tier, an unknown platform, a placeholder without values, a duplicated id, a bundled
template's id): one problem and nothing is written, exit 2, the line naming the file,
the template id and the field. Then every template is added or updated in one
transaction, in the `template` table batches read; running workers see them within a
minute (studio/catalog.py REFRESH_SECONDS). The file's format is docs/templates.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cli.output import console, print_json, refuse
from studio.request import BatchRequestError

templates_app = typer.Typer(
    help="The template library: list it, import a studio's own templates.",
    no_args_is_help=True,
)


@templates_app.command("import")
def import_file(
    file: Annotated[Path, typer.Argument(help="a YAML file of templates (docs/templates.md)")],
) -> None:
    """Add or update a studio's own templates from a YAML file, all or none: any bad
    entry exits 2 naming the template and field, and nothing is written."""
    from cli.schema import exit_unless_schema
    from studio.catalog import import_templates, reset_template_library
    from studio.db.engine import session_scope
    from studio.templates import TemplateFileError

    templates = _read_templates(file)
    exit_unless_schema()  # the file is fine; the database must be ready (exit 1)
    try:
        with session_scope() as session:
            summary = import_templates(session, templates, file.name)
    except TemplateFileError as exc:
        refuse(BatchRequestError(file.name, str(exc)))
    reset_template_library()
    console.print(
        f"imported {len(templates)} templates from {file.name}: {len(summary.added)} added,"
        f" {len(summary.updated)} updated, {len(summary.unchanged)} unchanged",
        highlight=False,
        soft_wrap=True,
    )


def _read_templates(file: Path) -> list[Any]:
    """The file's templates, validated whole; refuses (exit 2) naming what is wrong."""
    import yaml

    from studio.templates import TemplateFileError, bundled_vocabulary, parse_templates

    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        refuse(BatchRequestError(str(file), "no such file"))
    except (OSError, UnicodeDecodeError) as exc:
        refuse(BatchRequestError(str(file), f"cannot be read as UTF-8 text ({exc})"))
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "malformed"
        refuse(BatchRequestError(file.name, f"not valid YAML{where}: {problem}"))
    try:
        templates, _ = parse_templates(data, file.name, fallback=bundled_vocabulary())
    except TemplateFileError as exc:
        refuse(BatchRequestError(file.name, str(exc)))
    return templates


@templates_app.command("list")
def list_templates(
    niche: Annotated[str | None, typer.Option("--niche", help="only this niche")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="plain JSON, no colours")] = False,
) -> None:
    """The templates batches choose from: niche, tier, platforms, how many distinct
    prompts each yields, and whether it is bundled or the studio's own."""
    from cli.schema import exit_unless_schema
    from studio.catalog import stored_templates
    from studio.db.engine import session_scope
    from studio.templates import load_bundled_templates

    exit_unless_schema()
    with session_scope() as session:
        templates = stored_templates(session)
    if niche is not None:
        key = niche.strip().lower()
        templates = [t for t in templates if t.niche == key]
    bundled = {t.id for t in load_bundled_templates()}
    if as_json:
        print_json([_as_dict(t, t.id in bundled) for t in templates])
        return
    table = Table()
    # Whole ids, whatever the width (an id cut to "acme-yoga-0…" is no use); the rest wraps.
    table.add_column("id", no_wrap=True, min_width=max((len(t.id) for t in templates), default=2))
    for column in ("niche", "tier", "category", "platforms", "prompts", "source"):
        table.add_column(column)
    for t in templates:
        table.add_row(
            t.id,
            t.niche,
            t.tier,
            t.category,
            ", ".join(p.value for p in t.platforms),
            str(t.combinations),
            "bundled" if t.id in bundled else "studio",
        )
    console.print(table)
    if not templates:
        console.print(f"no templates{f' of niche {niche!r}' if niche else ''}", highlight=False)


def _as_dict(template: Any, bundled: bool) -> dict[str, Any]:
    data = json.loads(template.model_dump_json())
    return data | {"combinations": template.combinations, "bundled": bundled}

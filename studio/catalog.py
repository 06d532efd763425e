"""The template library as the pipeline uses it: templates stored in the database.

`studio init` upserts the bundled templates into the `template` table and `studio
templates import` adds a studio's own; batches read them back through one process-wide
cached `TemplateLibrary`, whose hit/miss figures the health check reports. That library
looks at the table again at most every `REFRESH_SECONDS` and serves new templates only
when they differ, so a worker sees an import within a minute, without a restart and
without its cache statistics restarting.

A template's variables (the values of its `{placeholders}`) live in the `template`
table's `variables` column (migration 0008) beside its prompt; the two functions below
are the only ones that know the row's layout.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from studio.db.engine import session_scope
from studio.db.models import Template as TemplateRow
from studio.settings import Settings
from studio.templates import (
    Problem,
    Template,
    TemplateFileError,
    TemplateLibrary,
    load_bundled_templates,
)

#: how often the process-wide library looks for changed templates in the database
REFRESH_SECONDS = 60.0

def row_values(template: Template) -> dict[str, Any]:
    """The `template` row's columns (but the id) for a template."""
    return {
        "niche": template.niche,
        "category": template.category,
        "tier": template.tier,
        "platforms": [p.value for p in template.platforms],
        "prompt": template.prompt,
        "hook_pattern": template.hook_pattern,
        "description": template.description,
        "variables": {name: list(values) for name, values in template.variables.items()},
    }


def template_from_row(row: TemplateRow) -> Template:
    """The template a `template` row holds (validated, as every loaded template is)."""
    return Template(
        id=row.id,
        niche=row.niche,
        category=row.category,
        tier=row.tier,  # type: ignore[arg-type]
        platforms=tuple(row.platforms),
        prompt=row.prompt,
        hook_pattern=row.hook_pattern,
        description=row.description,
        variables=row.variables or {},
    )


def install_bundled_templates(session: Session) -> int:
    """Upsert the bundled library; returns how many templates it holds."""
    templates = load_bundled_templates()
    _upsert(session, templates)
    return len(templates)


@dataclass(frozen=True)
class ImportSummary:
    added: tuple[str, ...]
    updated: tuple[str, ...]
    unchanged: tuple[str, ...]


def import_templates(session: Session, templates: Iterable[Template], source: str) -> ImportSummary:
    """Add or update a studio's own templates, all or none (the caller's transaction).

    A bundled template's id is refused: `studio init` would put the bundled version
    back over the studio's, silently. Raises TemplateFileError naming each such id.
    """
    templates = list(templates)
    bundled = {t.id for t in load_bundled_templates()}
    clashes = [
        Problem(t.id, "id", "is a bundled template's id; give your template its own id")
        for t in templates
        if t.id in bundled
    ]
    if clashes:
        raise TemplateFileError(source, clashes)
    return _upsert(session, templates)


def _upsert(session: Session, templates: list[Template]) -> ImportSummary:
    existing = {row.id: row for row in session.scalars(select(TemplateRow))}
    added: list[str] = []
    updated: list[str] = []
    unchanged: list[str] = []
    for template in templates:
        values = row_values(template)
        row = existing.get(template.id)
        if row is None:
            session.add(TemplateRow(id=template.id, **values))
            added.append(template.id)
        elif any(getattr(row, key) != value for key, value in values.items()):
            for key, value in values.items():
                setattr(row, key, value)
            updated.append(template.id)
        else:
            unchanged.append(template.id)
    return ImportSummary(tuple(added), tuple(updated), tuple(unchanged))


def stored_templates(session: Session) -> list[Template]:
    """Every template in the database, by id."""
    rows = session.scalars(select(TemplateRow).order_by(TemplateRow.id)).all()
    return [template_from_row(r) for r in rows]


def database_loader(settings: Settings | None = None):  # type: ignore[no-untyped-def]
    def load() -> list[Template]:
        with session_scope(settings) as session:
            return stored_templates(session)

    return load


_LIBRARY: TemplateLibrary | None = None


def template_library() -> TemplateLibrary:
    """The process-wide library (cache survives across batches, as the spec intends)."""
    global _LIBRARY
    if _LIBRARY is None:
        _LIBRARY = TemplateLibrary(database_loader(), max_age_seconds=REFRESH_SECONDS)
    return _LIBRARY


def reset_template_library() -> None:
    global _LIBRARY
    _LIBRARY = None

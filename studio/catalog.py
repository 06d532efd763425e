"""The template library as the pipeline uses it: bundled JSON loaded into the database.

`studio init` upserts the bundled templates into the `template` table; batches read
them back through one process-wide cached `TemplateLibrary`, whose hit/miss figures
the health check reports.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from studio.db.engine import session_scope
from studio.db.models import Template as TemplateRow
from studio.settings import Settings
from studio.templates import Template, TemplateLibrary, load_bundled_templates


def install_bundled_templates(session: Session) -> int:
    """Upsert the bundled library; returns how many templates it holds."""
    existing = {row.id: row for row in session.scalars(select(TemplateRow))}
    templates = load_bundled_templates()
    for template in templates:
        values = {
            "niche": template.niche,
            "category": template.category,
            "tier": template.tier,
            "platforms": [p.value for p in template.platforms],
            "prompt": template.prompt,
            "hook_pattern": template.hook_pattern,
            "description": template.description,
        }
        row = existing.get(template.id)
        if row is None:
            session.add(TemplateRow(id=template.id, **values))
        else:
            for key, value in values.items():
                setattr(row, key, value)
    return len(templates)


def database_loader(settings: Settings | None = None):  # type: ignore[no-untyped-def]
    def load() -> list[Template]:
        with session_scope(settings) as session:
            rows = session.scalars(select(TemplateRow).order_by(TemplateRow.id)).all()
            return [
                Template(
                    id=r.id,
                    niche=r.niche,
                    category=r.category,
                    tier=r.tier,  # type: ignore[arg-type]
                    platforms=tuple(r.platforms),
                    prompt=r.prompt,
                    hook_pattern=r.hook_pattern,
                    description=r.description,
                )
                for r in rows
            ]

    return load


_LIBRARY: TemplateLibrary | None = None


def template_library() -> TemplateLibrary:
    """The process-wide library (cache survives across batches, as the spec intends)."""
    global _LIBRARY
    if _LIBRARY is None:
        _LIBRARY = TemplateLibrary(database_loader())
    return _LIBRARY


def reset_template_library() -> None:
    global _LIBRARY
    _LIBRARY = None

"""Template library and template selection (step 1 of a batch); pure domain, no Prefect."""

from studio.templates.library import (
    CACHE_SIZES,
    TemplateLibrary,
    TemplateLoader,
    load_bundled_templates,
)
from studio.templates.models import HOOK_PLACEHOLDERS, Template
from studio.templates.selection import (
    normalise_distribution,
    piece_id_for,
    select_templates,
    tier_counts,
)

__all__ = [
    "CACHE_SIZES",
    "HOOK_PLACEHOLDERS",
    "Template",
    "TemplateLibrary",
    "TemplateLoader",
    "load_bundled_templates",
    "normalise_distribution",
    "piece_id_for",
    "select_templates",
    "tier_counts",
]

"""Template library and template selection (step 1 of a batch); pure domain, no Prefect."""

from studio.templates.documents import Problem, TemplateFileError, Vocabulary, parse_templates
from studio.templates.library import (
    CACHE_SIZES,
    TemplateLibrary,
    TemplateLoader,
    bundled_vocabulary,
    load_bundled_templates,
)
from studio.templates.models import HOOK_PLACEHOLDERS, Template, placeholders_of
from studio.templates.selection import (
    NicheWithoutTemplates,
    check_niche,
    normalise_distribution,
    piece_id_for,
    select_templates,
    tier_counts,
)

__all__ = [
    "CACHE_SIZES",
    "HOOK_PLACEHOLDERS",
    "NicheWithoutTemplates",
    "Problem",
    "Template",
    "TemplateFileError",
    "TemplateLibrary",
    "TemplateLoader",
    "Vocabulary",
    "bundled_vocabulary",
    "check_niche",
    "load_bundled_templates",
    "normalise_distribution",
    "parse_templates",
    "piece_id_for",
    "placeholders_of",
    "select_templates",
    "tier_counts",
]

"""Template documents: the bundled `library.json` and a studio's `templates.yaml`.

Both have one shape, so a studio writes its templates exactly as the bundled ones are
written:

    version: 2                      # optional
    variables:                      # optional: values any template may use
      shot: [wide shot, medium shot]
    niche_variables:                # optional: values the templates of one niche use
      fitness:
        outfit: [running gear, a matching training set]
    templates:
      - id: studio-fitness-001
        niche: fitness
        ...
        prompt: "the avatar ... wearing {outfit}, {shot}"
        variables:                  # optional: this template's own values
          pose: [mid-stride, tying a shoe]

A placeholder's values come from the template's own `variables`, else its niche's, else
the document's `variables`, else (for an imported file) the bundled library's niche and
shared values. The values are resolved here, once, and stored with each template, so a
stored template does not change when a list elsewhere changes.

The whole document is validated before anything is returned: one bad entry and the
caller writes nothing. Each problem names the template id and the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from studio.templates.models import VARIABLE_NAME, Template, clean_values, placeholders_of

DOCUMENT_KEYS = ("version", "variables", "niche_variables", "templates")
TEMPLATE_KEYS = tuple(Template.model_fields)
SUPPORTED_VERSIONS = (1, 2)

Values = dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class Problem:
    """One reason a document is refused: which template, which field, why."""

    template: str | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"template {self.template!r}, " if self.template else ""
        return f"{where}field {self.field!r}: {self.message}"


class TemplateFileError(ValueError):
    """A document that cannot be loaded; `problems` lists every reason found."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        more = len(problems) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more > 0 else ""
        super().__init__(f"{problems[0]}{suffix}")


@dataclass(frozen=True)
class Vocabulary:
    """Value lists shared by templates: per niche, then for every niche."""

    shared: Values = field(default_factory=dict)
    niches: dict[str, Values] = field(default_factory=dict)

    def lookup(self, niche: str, name: str) -> tuple[str, ...] | None:
        own = self.niches.get(niche, {})
        if name in own:
            return own[name]
        return self.shared.get(name)

    def names(self, niche: str) -> list[str]:
        """The variable names a template of `niche` can use without listing values."""
        return sorted(set(self.shared) | set(self.niches.get(niche, {})))


def parse_templates(
    data: object, source: str, *, fallback: Vocabulary | None = None
) -> tuple[list[Template], Vocabulary]:
    """Validate a whole document; returns its templates and its own vocabulary.

    Raises TemplateFileError listing every problem (unknown keys, a bad tier or
    platform, a placeholder without values, a duplicated id, ...).
    """
    problems: list[Problem] = []
    if not isinstance(data, Mapping):
        raise TemplateFileError(
            source, [Problem(None, "templates", "the file must be a mapping with `templates:`")]
        )
    for key in data:
        if key not in DOCUMENT_KEYS:
            problems.append(
                Problem(None, str(key), f"unknown key; allowed: {', '.join(DOCUMENT_KEYS)}")
            )
    version = data.get("version", 2)
    if version not in SUPPORTED_VERSIONS:
        problems.append(Problem(None, "version", f"unsupported version {version!r}; use 2"))
    vocabulary = Vocabulary(
        shared=_values_mapping(data.get("variables"), "variables", problems),
        niches=_niche_values(data.get("niche_variables"), problems),
    )
    entries = data.get("templates")
    if not isinstance(entries, list) or not entries:
        problems.append(Problem(None, "templates", "give a non-empty list of templates"))
        entries = []

    templates: list[Template] = []
    seen: dict[str, int] = {}
    for position, entry in enumerate(entries):
        label = _label(entry, position)
        if isinstance(entry, Mapping) and isinstance(entry.get("id"), str):
            if entry["id"] in seen:
                problems.append(
                    Problem(label, "id", f"duplicated (also entry {seen[entry['id']] + 1})")
                )
                continue
            seen[entry["id"]] = position
        template = _template(entry, label, vocabulary, fallback, problems)
        if template is not None:
            templates.append(template)
    if problems:
        raise TemplateFileError(source, problems)
    return templates, vocabulary


def _label(entry: object, position: int) -> str:
    if isinstance(entry, Mapping) and isinstance(entry.get("id"), str) and entry["id"]:
        return entry["id"]
    return f"#{position + 1}"


def _template(
    entry: object,
    label: str,
    vocabulary: Vocabulary,
    fallback: Vocabulary | None,
    problems: list[Problem],
) -> Template | None:
    if not isinstance(entry, Mapping):
        problems.append(Problem(label, "templates", "each template must be a mapping"))
        return None
    unknown = [key for key in entry if key not in TEMPLATE_KEYS]
    if unknown:
        problems.append(
            Problem(label, str(unknown[0]), f"unknown key; allowed: {', '.join(TEMPLATE_KEYS)}")
        )
        return None
    data = dict(entry)
    data["variables"] = _resolved_variables(data, vocabulary, fallback)
    try:
        return Template.model_validate(data)
    except ValidationError as exc:
        problems.append(_problem_from(label, exc))
        return None


def _resolved_variables(
    data: dict[str, Any], vocabulary: Vocabulary, fallback: Vocabulary | None
) -> object:
    """The template's own values plus, for each other placeholder, the shared ones."""
    own = data.get("variables")
    if own is not None and not isinstance(own, Mapping):
        return own  # the model refuses it, naming the field
    resolved: dict[str, object] = dict(own or {})
    prompt, niche = data.get("prompt"), data.get("niche")
    if not isinstance(prompt, str) or not isinstance(niche, str):
        return resolved
    try:
        names = placeholders_of(prompt)
    except ValueError:
        return resolved  # the model refuses the prompt, naming the problem
    key = niche.strip().lower()
    for name in names:
        if name in resolved:
            continue
        for source in (vocabulary, fallback):
            values = source.lookup(key, name) if source else None
            if values is not None:
                resolved[name] = values
                break
    return resolved


def _problem_from(label: str, exc: ValidationError) -> Problem:
    error = exc.errors(include_url=False)[0]
    location = [str(part) for part in error["loc"]]
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return Problem(label, location[0], f"unknown key; allowed: {', '.join(TEMPLATE_KEYS)}")
    if error["type"] == "missing":
        return Problem(label, location[0], "missing (required)")
    if not location:  # a whole-template check: its message starts with the field
        name, _, rest = message.partition(": ")
        return Problem(label, name, rest or message)
    name = location[0]
    if name == "platforms" and len(location) > 1:
        name = f"platforms[{location[1]}]"
    if error["type"] in ("literal_error", "enum"):  # say what was given, not only what fits
        message = f"{message}, got {error['input']!r}"
    return Problem(label, name, message)


def _values_mapping(raw: object, where: str, problems: list[Problem]) -> Values:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.append(Problem(None, where, "give a mapping of name to a list of values"))
        return {}
    values: Values = {}
    for name, items in raw.items():
        if not isinstance(name, str) or not VARIABLE_NAME.match(name):
            problems.append(
                Problem(None, f"{where}.{name}", "not a variable name (lowercase, digits, _)")
            )
            continue
        try:
            values[name] = clean_values(name, items)
        except ValueError as exc:
            problems.append(Problem(None, f"{where}.{name}", str(exc).partition(": ")[2]))
    return values


def _niche_values(raw: object, problems: list[Problem]) -> dict[str, Values]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.append(
            Problem(None, "niche_variables", "give a mapping of niche to its variables")
        )
        return {}
    return {
        str(niche).strip().lower(): _values_mapping(items, f"niche_variables.{niche}", problems)
        for niche, items in raw.items()
    }

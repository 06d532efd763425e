"""The `Template` value: one reusable, safe-for-work recipe for a piece.

A template is data, not code, so the same model validates the bundled JSON, a studio's
imported YAML and the rows a database loader returns; validation happens once, at load
time, so selection and hook writing can trust every field.

A prompt may hold placeholders such as `{outfit}` or `{time_of_day}`: each names one of
the template's `variables`, a list of values. Planning fills every placeholder with one
value (see `selection.py`), so one template yields as many distinct prompts as the
product of its value lists, and a batch can stay inside its niche without repeating a
prompt.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Iterator, Mapping
from functools import cached_property

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from studio.types import Platform, Tier

#: The placeholders a hook pattern may use; hook writers fill exactly these.
HOOK_PLACEHOLDERS: frozenset[str] = frozenset({"avatar_name", "niche", "platform_tag"})

#: How a variable is named: it is a `{placeholder}` in a prompt.
VARIABLE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
#: Bounds that keep a template readable and its prompt within a provider's limits.
MAX_VALUES_PER_VARIABLE = 100
MAX_VALUE_LENGTH = 200


class FrozenValues(dict):  # type: ignore[type-arg]
    """A read-only dict: a cached template's variables cannot be changed by a caller.

    A dict subclass (not a MappingProxyType) so the model still pickles, deep-copies and
    serialises like any dict.
    """

    def _read_only(self, *args: object, **kwargs: object) -> None:
        raise TypeError("template variables are read-only")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _read_only
    __ior__ = _read_only  # type: ignore[assignment]

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (FrozenValues, (dict(self),))

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))


def placeholders_of(text: str) -> tuple[str, ...]:
    """The `{name}` placeholders of `text`, in order of first use.

    Raises ValueError for what `.format` would treat differently from a plain name:
    positional `{}`, attribute or index access, a conversion or a format spec, and
    literal braces (`{{`), so a filled prompt never carries a stray brace.
    """
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(f"unbalanced braces ({exc})") from None
    for literal, name, spec, conversion in parsed:
        if "{" in literal or "}" in literal:
            raise ValueError("literal braces are not allowed; a placeholder is {name}")
        if name is None:
            continue
        if spec or conversion or not VARIABLE_NAME.match(name):
            raise ValueError(
                f"placeholder {{{name}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}} is not a plain name; use e.g. {{outfit}}"
            )
        if name not in names:
            names.append(name)
    return tuple(names)


def clean_values(name: str, values: object) -> tuple[str, ...]:
    """A variable's value list, checked: non-empty, distinct, one-line text, no braces."""
    if isinstance(values, str) or not isinstance(values, list | tuple):
        raise ValueError(f"{name}: give a list of values, e.g. [\"soft daylight\", ...]")
    if not values:
        raise ValueError(f"{name}: the list of values is empty")
    if len(values) > MAX_VALUES_PER_VARIABLE:
        raise ValueError(f"{name}: at most {MAX_VALUES_PER_VARIABLE} values, got {len(values)}")
    cleaned: list[str] = []
    for position, value in enumerate(values):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name}[{position}]: a value must be non-empty text")
        text = value.strip()
        if "{" in text or "}" in text or "\n" in text:
            raise ValueError(f"{name}[{position}]: a value must be one line without braces")
        if len(text) > MAX_VALUE_LENGTH:
            raise ValueError(f"{name}[{position}]: at most {MAX_VALUE_LENGTH} characters")
        if text in cleaned:
            raise ValueError(f"{name}[{position}]: {text!r} is listed twice")
        cleaned.append(text)
    return tuple(cleaned)


class Template(BaseModel):
    """A prompt (with optional placeholders) plus the caption pattern and access tier.

    Frozen (tuple fields, read-only variables) so instances are hashable and can be
    shared by the library's caches without any caller being able to change a cached
    value.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9]+(?:[-_][a-z0-9]+)*$", max_length=64)
    # 50: the database columns' width
    niche: str = Field(min_length=1, max_length=50)
    category: str = Field(min_length=1, max_length=50)
    tier: Tier
    platforms: tuple[Platform, ...] = Field(min_length=1)
    prompt: str = Field(min_length=1)
    hook_pattern: str = Field(min_length=1)
    description: str = Field(min_length=1)
    #: placeholder name -> the values planning may put in its place
    variables: dict[str, tuple[str, ...]] = Field(default_factory=FrozenValues)

    @field_validator("niche", "category")
    @classmethod
    def _normalise_label(cls, value: str) -> str:
        # Lookups are keyed by these labels; one spelling avoids silent cache misses.
        value = value.strip().lower()
        if not value:
            raise ValueError("must not be blank")
        return value

    @field_validator("prompt", "description")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()

    @field_validator("platforms")
    @classmethod
    def _unique_platforms(cls, value: tuple[Platform, ...]) -> tuple[Platform, ...]:
        return tuple(dict.fromkeys(value))

    @field_validator("hook_pattern")
    @classmethod
    def _known_placeholders(cls, value: str) -> str:
        # A typo such as {avatar} would only fail later, inside a hook writer's .format().
        used = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        unknown = used - HOOK_PLACEHOLDERS
        if unknown:
            raise ValueError(
                f"hook_pattern uses unknown placeholders {sorted(unknown)}; "
                f"allowed: {sorted(HOOK_PLACEHOLDERS)}"
            )
        return value

    @field_validator("variables", mode="before")
    @classmethod
    def _clean_variables(cls, value: object) -> FrozenValues:
        if value is None:
            return FrozenValues()
        if not isinstance(value, Mapping):
            raise ValueError("give a mapping of placeholder name to a list of values")
        cleaned: dict[str, tuple[str, ...]] = {}
        for name, values in value.items():
            if not isinstance(name, str) or not VARIABLE_NAME.match(name):
                raise ValueError(
                    f"{name!r} is not a variable name (lowercase letters, digits, _)"
                )
            cleaned[name] = clean_values(name, values)
        return FrozenValues(cleaned)

    @field_validator("variables", mode="after")
    @classmethod
    def _freeze(cls, value: dict[str, tuple[str, ...]]) -> FrozenValues:
        return value if isinstance(value, FrozenValues) else FrozenValues(value)

    @model_validator(mode="after")
    def _every_placeholder_has_values(self) -> Template:
        try:
            used = placeholders_of(self.prompt)
        except ValueError as exc:
            raise ValueError(f"prompt: {exc}") from None
        missing = [name for name in used if name not in self.variables]
        if missing:
            raise ValueError(
                f"prompt: placeholder {{{missing[0]}}} has no values; add "
                f"variables.{missing[0]} (to the template or its niche)"
            )
        unused = sorted(set(self.variables) - set(used))
        if unused:
            raise ValueError(
                f"variables: {unused[0]!r} is not a placeholder of the prompt "
                "(a misspelt name?)"
            )
        return self

    def __hash__(self) -> int:
        # The id is unique in a library; equality still compares every field.
        return hash((self.id, self.prompt))

    @cached_property
    def placeholders(self) -> tuple[str, ...]:
        """The prompt's placeholder names, in order of first use."""
        return placeholders_of(self.prompt)

    @cached_property
    def combinations(self) -> int:
        """How many distinct prompts the template yields (1 without placeholders)."""
        return math.prod(len(self.variables[name]) for name in self.placeholders)

    def choice(self, number: int) -> dict[str, str]:
        """The `number`-th combination of values (mixed radix, last placeholder fastest)."""
        chosen: dict[str, str] = {}
        for name in reversed(self.placeholders):
            values = self.variables[name]
            number, digit = divmod(number, len(values))
            chosen[name] = values[digit]
        return chosen

    def render(self, values: Mapping[str, str] | None = None) -> str:
        """The prompt with every placeholder filled from `values`."""
        values = values or {}
        missing = [name for name in self.placeholders if name not in values]
        if missing:
            raise KeyError(f"template {self.id}: no value for {{{missing[0]}}}")
        return self.prompt.format_map(values)

    def example_prompts(self, limit: int = 3) -> Iterator[str]:
        """A few filled prompts, for listings and documentation."""
        step = max(1, self.combinations // max(limit, 1))
        for i in range(min(limit, self.combinations)):
            yield self.render(self.choice(i * step))

    def supports(self, platform: Platform | str) -> bool:
        """Whether the template is meant to be published on `platform`."""
        return Platform(platform) in self.platforms

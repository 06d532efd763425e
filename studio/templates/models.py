"""The `Template` value: one reusable, safe-for-work recipe for a piece.

A template is data, not code, so the same model validates the bundled JSON and the rows
a database loader returns; validation happens once, at load time, so selection and hook
writing can trust every field.
"""

from __future__ import annotations

import string

from pydantic import BaseModel, ConfigDict, Field, field_validator

from studio.types import Platform, Tier

#: The placeholders a hook pattern may use; hook writers fill exactly these.
HOOK_PLACEHOLDERS: frozenset[str] = frozenset({"avatar_name", "niche", "platform_tag"})


class Template(BaseModel):
    """A prompt plus the caption pattern and access tier it is meant for.

    Frozen (and with tuple fields) so instances are hashable and can be shared by the
    library's caches without any caller being able to change a cached value.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9]+(?:[-_][a-z0-9]+)*$", max_length=64)
    niche: str = Field(min_length=1, max_length=64)
    category: str = Field(min_length=1, max_length=64)
    tier: Tier
    platforms: tuple[Platform, ...] = Field(min_length=1)
    prompt: str = Field(min_length=1)
    hook_pattern: str = Field(min_length=1)
    description: str = Field(min_length=1)

    @field_validator("niche", "category")
    @classmethod
    def _normalise_label(cls, value: str) -> str:
        # Lookups are keyed by these labels; one spelling avoids silent cache misses.
        return value.strip().lower()

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

    def supports(self, platform: Platform | str) -> bool:
        """Whether the template is meant to be published on `platform`."""
        return Platform(platform) in self.platforms

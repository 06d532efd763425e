"""The batch request as an operator states it, and its validation.

Validation runs before any step so that nothing is spent, written or uploaded for a
request that cannot succeed; every refusal names the field and how to fix it.
"""

from __future__ import annotations

import math
import unicodedata
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from studio.hooks.modes import HOOK_MODES
from studio.types import TIERS, Platform, Tier

MAX_PIECES = 500
#: a custom prompt longer than this is a pasted document, not a picture's description
MAX_PROMPT_CHARS = 1000
#: the database's column widths (avatar.name, avatar.niche): longer would be a DataError
MAX_NAME_CHARS = 100
MAX_NICHE_CHARS = 50

#: Unicode categories no free text may hold: control characters (NUL, newline, ESC...),
#: lone surrogates (PostgreSQL cannot store them) and the line/paragraph separators
#: (they break a line in a log viewer as a newline does)
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
#: the same as a JSON Schema `pattern`, so a deployment refuses such text at
#: create_flow_run (409); `\x85` (NEL) is a control character too
NO_CONTROL_PATTERN = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]*$"
#: a batch id is a canonical (lower-case) UUID: never a path, never another's name
BATCH_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


class BatchRequestError(ValueError):
    """A request that cannot run; `field` names what to fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def __reduce__(self) -> tuple[type[BatchRequestError], tuple[str, str]]:
        # a refused run's state carries this error; Prefect may pickle it to persist it
        return (type(self), (self.field, self.message))


def control_character(value: str) -> str | None:
    """The first character of `value` no free text may hold, escaped (e.g. `\\x00`)."""
    for char in value:
        if unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            return char.encode("unicode_escape").decode("ascii")
    return None


def check_free_text(field: str, value: str, what: str = "") -> None:
    """Refuse text holding a control character, naming the field (a NUL byte would reach
    PostgreSQL as a DataError; a newline could forge a log line)."""
    bad = control_character(value)
    if bad is not None:
        where = f"{what} " if what else ""
        raise BatchRequestError(
            field, f"{where}contains the control character {bad}; use printable text only"
        )


def check_name(field: str, value: str, max_chars: int) -> str:
    """A name shown in logs, artifacts and file names: printable, trimmed, 1..max_chars."""
    if not isinstance(value, str) or not value.strip():
        raise BatchRequestError(field, "is empty; give a name")
    check_free_text(field, value)
    if not value.isprintable():  # format characters (bidi overrides, zero-width) too
        odd = next(c for c in value if not c.isprintable())
        raise BatchRequestError(
            field,
            f"contains the invisible character {odd.encode('unicode_escape').decode('ascii')};"
            " use printable text only",
        )
    if value != value.strip():
        raise BatchRequestError(field, f"{value!r} starts or ends with a space")
    if len(value) > max_chars:
        raise BatchRequestError(field, f"has {len(value)} characters; at most {max_chars}")
    return value


def parse_batch_id(field: str, value: str | uuid.UUID | None) -> str | None:
    """A batch id as the pipeline stores it (a canonical lower-case UUID), or None.

    Why: the id names directories and object keys and joins a batch's rows; anything
    but a UUID ("../../tmp/x", another run's name) is refused, naming the field.
    """
    if value is None or value == "":
        return None
    text = str(value)
    bad = control_character(text)
    shown = repr(text[:60]) if bad is None else f"a value with the control character {bad}"
    try:
        parsed = uuid.UUID(text)
    except (ValueError, AttributeError, TypeError):
        raise BatchRequestError(
            field, f"{shown} is not a batch id; a batch id is a UUID (see `studio pieces`)"
        ) from None
    if text.strip().lower() not in (str(parsed), parsed.hex):
        raise BatchRequestError(field, f"{shown} is not a batch id in UUID form")
    return str(parsed)


class TierDistribution(BaseModel):
    capa1_ratio: float = 0.6
    capa2_ratio: float = 0.3
    capa3_ratio: float = 0.1

    def as_dict(self) -> dict[str, float]:
        return {"capa1": self.capa1_ratio, "capa2": self.capa2_ratio, "capa3": self.capa3_ratio}


class BatchRequest(BaseModel):
    """Mirrors the spec's BatchProcessorConfig plus the avatar and custom prompts."""

    avatar_id: str
    num_pieces: int = 50
    tier_distribution: TierDistribution = Field(default_factory=TierDistribution)
    platform: str = Platform.INSTAGRAM.value
    include_hooks: bool = True
    safety_check: bool = True
    upload_to_storage: bool = True
    custom_prompts: list[str] | None = None
    custom_tiers: list[str] | None = None
    seed: int | None = None
    hook_mode: str = "direct"


# --- the flows' parameters, typed so Prefect's parameter schema (and so the deployment's
# run form and `create_flow_run`'s schema enforcement) says what JSON Schema can say.
# What it cannot say (ratios summing to 1, one prompt per piece, the avatar) is checked
# by `validate_request` and the validate task.


def described(
    *args: Any, description: str, schema: dict[str, Any] | None = None, **constraints: Any
) -> Any:
    """A pydantic Field whose description reaches Prefect's parameter schema too.

    Prefect builds a flow's schema with its own Field per parameter (description from
    the docstring), which replaces the description of a Field inside `Annotated`; a
    `json_schema_extra` description is merged instead, so the run form shows it.
    `schema` adds JSON Schema keywords the deployment enforces at create_flow_run (409)
    but a direct call does not (there the validate step refuses, and the run ends
    "Refused" naming the field instead of failing on a parameter type error).
    """
    return Field(
        *args,
        description=description,
        json_schema_extra={"description": description, **(schema or {})},
        **constraints,
    )


PlatformName = Literal["instagram", "tiktok", "twitter", "patreon", "onlyfans"]
HookMode = Literal["direct", "message-batches", "auto"]

PiecesParam = Annotated[
    int,
    described(
        ge=1,
        le=MAX_PIECES,
        description=(
            f"How many pieces to make (1..{MAX_PIECES}). The spec's sizes: 10 on demand, "
            "50 daily (the flow's default), 20 weekly, 100 monthly."
        ),
    ),
]
PlatformParam = Annotated[
    PlatformName, described(description="Where the pieces will be posted; sets the hooks' style.")
]
HookModeParam = Annotated[
    HookMode,
    described(
        description=(
            "How hooks reach Claude: `direct` (fast, on-demand), `message-batches` (one "
            "half-price Message Batch within the batch's time budget) or `auto` "
            "(message batches when a schedule started the run)."
        )
    ),
]
PromptsParam = Annotated[
    list[
        Annotated[
            str,
            # the pattern is for the schema only (409 at create_flow_run): a direct call's
            # prompt is refused by `validate_request`, so the run ends "Refused"
            Field(
                min_length=1,
                max_length=MAX_PROMPT_CHARS,
                json_schema_extra={"pattern": NO_CONTROL_PATTERN},
            ),
        ]
    ]
    | None,
    described(
        min_length=1,
        max_length=MAX_PIECES,
        description=(
            "Your own image prompts instead of the template library: exactly one per piece "
            f"(so as many as num_pieces), each 1..{MAX_PROMPT_CHARS} characters of "
            "printable text (no control characters). Leave empty to use templates."
        ),
    ),
]
TiersParam = Annotated[
    list[Tier] | None,
    described(
        min_length=1,
        max_length=MAX_PIECES,
        description=(
            "The access tier of each custom prompt, in order (needs custom_prompts, one per "
            "prompt). Leave empty and every custom prompt is capa1 (the spec's default); "
            "tier_distribution spreads template pieces only."
        ),
    ),
]


class TierShares(BaseModel):
    """The operator's form of the tier distribution: three named shares summing to 1."""

    model_config = ConfigDict(extra="forbid")  # the schema says: no other keys

    capa1: float = Field(
        0.6, ge=0, le=1, description="Share of capa1 pieces (safe for social media), 0..1."
    )
    capa2: float = Field(
        0.3,
        ge=0,
        le=1,
        description="Share of capa2 pieces (suggestive, premium subscribers), 0..1.",
    )
    capa3: float = Field(
        0.1, ge=0, le=1, description="Share of capa3 pieces (explicit, high tier only), 0..1."
    )

    @model_validator(mode="before")
    @classmethod
    def _other_forms(cls, value: Any) -> Any:
        """Python callers may still pass the spec's `capa1_ratio` keys, a 3-list or
        "0.6,0.3,0.1"; the schema shows only the named form."""
        if isinstance(value, TierDistribution | str | list | tuple) or (
            isinstance(value, dict) and any(str(k).endswith("_ratio") for k in value)
        ):
            return parse_tier_distribution(value).as_dict()
        return value

    def to_distribution(self) -> TierDistribution:
        return TierDistribution(
            capa1_ratio=self.capa1, capa2_ratio=self.capa2, capa3_ratio=self.capa3
        )


TierSharesParam = Annotated[
    TierShares,
    described(
        description=(
            "Shares of the three access tiers, each 0..1, summing to 1 (default 0.6 / 0.3 / 0.1)."
        )
    ),
]


def parse_tier_distribution(value: Any) -> TierDistribution:
    """Accept the spec's dict form, a {capa1: x} form, a 3-list or "0.6,0.3,0.1"."""
    if isinstance(value, TierDistribution):
        return value
    if isinstance(value, TierShares):
        return value.to_distribution()
    if value is None:
        return TierDistribution()
    if isinstance(value, str):
        try:
            value = [float(part) for part in value.split(",")]
        except ValueError as exc:
            raise BatchRequestError(
                "tier_distribution", f"{value!r} is not three numbers like 0.6,0.3,0.1"
            ) from exc
    if isinstance(value, list | tuple):
        if len(value) != 3:
            raise BatchRequestError(
                "tier_distribution", f"needs three ratios (capa1,capa2,capa3), got {len(value)}"
            )
        value = dict(zip(("capa1_ratio", "capa2_ratio", "capa3_ratio"), value, strict=True))
    if isinstance(value, dict):
        normalized = {}
        for key, ratio in value.items():
            name = key if str(key).endswith("_ratio") else f"{key}_ratio"
            if name not in TierDistribution.model_fields:
                raise BatchRequestError(
                    "tier_distribution", f"unknown tier {key!r}; use capa1, capa2 and capa3"
                )
            normalized[name] = ratio
        try:
            return TierDistribution(**normalized)
        except ValueError as exc:
            raise BatchRequestError("tier_distribution", "ratios must be numbers") from exc
    raise BatchRequestError("tier_distribution", f"cannot read {value!r}")


def validate_request(request: BatchRequest) -> BatchRequest:
    """Check everything that does not need the database; raise BatchRequestError."""
    check_free_text("avatar_id", request.avatar_id)
    if not request.avatar_id.strip() or len(request.avatar_id) > MAX_NAME_CHARS:
        raise BatchRequestError(
            "avatar_id", f"give an avatar's id or name (1..{MAX_NAME_CHARS} characters)"
        )
    if not 1 <= request.num_pieces <= MAX_PIECES:
        raise BatchRequestError(
            "num_pieces", f"{request.num_pieces} is outside 1..{MAX_PIECES}; pick a size in range"
        )
    ratios = request.tier_distribution.as_dict()
    for tier, ratio in ratios.items():
        if not math.isfinite(ratio) or ratio < 0:
            raise BatchRequestError(
                "tier_distribution", f"{tier} ratio {ratio} must be a number >= 0"
            )
    total = sum(ratios.values())
    if abs(total - 1.0) > 1e-6:
        raise BatchRequestError(
            "tier_distribution",
            f"ratios sum to {total:g}; they must sum to 1 (e.g. 0.6,0.3,0.1)",
        )
    if request.platform not in {p.value for p in Platform}:
        raise BatchRequestError(
            "platform",
            f"unknown platform {request.platform!r}; use one of "
            + ", ".join(p.value for p in Platform),
        )
    if request.hook_mode not in HOOK_MODES:
        raise BatchRequestError(
            "hook_mode",
            f"unknown hook mode {request.hook_mode!r}; use one of " + ", ".join(HOOK_MODES),
        )
    if request.custom_prompts is not None:
        if len(request.custom_prompts) != request.num_pieces:
            raise BatchRequestError(
                "custom_prompts",
                f"{len(request.custom_prompts)} prompts for {request.num_pieces} pieces; give one "
                "prompt per piece or set num_pieces to the number of prompts",
            )
        for i, prompt in enumerate(request.custom_prompts):
            if not prompt or not prompt.strip():
                raise BatchRequestError("custom_prompts", f"prompt {i + 1} is empty")
            check_free_text("custom_prompts", prompt, f"prompt {i + 1}")
            if len(prompt) > MAX_PROMPT_CHARS:
                raise BatchRequestError(
                    "custom_prompts",
                    f"prompt {i + 1} has {len(prompt)} characters; at most {MAX_PROMPT_CHARS}",
                )
    if request.custom_tiers is not None:
        if len(request.custom_tiers) != request.num_pieces:
            raise BatchRequestError(
                "custom_tiers",
                f"{len(request.custom_tiers)} tiers for {request.num_pieces} pieces; give one "
                "tier per piece",
            )
        for i, tier in enumerate(request.custom_tiers):
            check_free_text("custom_tiers", tier, f"tier {i + 1}")
            if tier not in TIERS:
                raise BatchRequestError(
                    "custom_tiers", f"unknown tier {tier!r}; use capa1, capa2 or capa3"
                )
        if request.custom_prompts is None:
            raise BatchRequestError(
                "custom_tiers", "custom tiers apply to custom prompts; pass custom_prompts too"
            )
    return request

"""The batch request as an operator states it, and its validation.

Validation runs before any step so that nothing is spent, written or uploaded for a
request that cannot succeed; every refusal names the field and how to fix it.
"""

from __future__ import annotations

import unicodedata
import uuid
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from studio.types import TIERS, AvatarRef, Tier

MAX_PIECES = 500
#: what a request that leaves a field empty gets when the avatar's profile says nothing
#: either (the spec's daily size, its lifestyle mix, the first platform it names)
DEFAULT_PIECES = 50
DEFAULT_TIER_SHARES = {"capa1": 0.6, "capa2": 0.3, "capa3": 0.1}
DEFAULT_PLATFORM = "instagram"
#: the schema's idea of an aspect ratio ("9:16"); studio.formats.parse_aspect_ratio is
#: the real check (a direct call's bad format ends the run "Refused" naming the field)
ASPECT_RATIO_PATTERN = r"^ *[0-9]{1,4}(\.[0-9]{1,3})? *[:xX/] *[0-9]{1,4}(\.[0-9]{1,3})? *$"
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
    int | None,
    described(
        ge=1,
        le=MAX_PIECES,
        description=(
            f"How many pieces to make (1..{MAX_PIECES}). Leave empty for the avatar's "
            f"pieces per run (its profile), else {DEFAULT_PIECES}. The spec's sizes: 10 on "
            "demand, 50 daily, 20 weekly, 100 monthly."
        ),
    ),
]
PlatformParam = Annotated[
    PlatformName | None,
    described(
        description=(
            "Where the pieces will be posted; sets the hooks' style and the images' format. "
            f"Leave empty for the avatar's first platform (its profile), else {DEFAULT_PLATFORM}."
        )
    ),
]
FormatParam = Annotated[
    str | None,
    described(
        description=(
            "The images' aspect ratio, e.g. 9:16 or 4:5. Leave empty for the avatar's format "
            "(its profile), else the platform's own (TikTok 9:16, Instagram 4:5...)."
        ),
        schema={"pattern": ASPECT_RATIO_PATTERN, "maxLength": 16},
    ),
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
        """Read every form callers use into the named one the schema shows: the spec's
        `capa1_ratio` keys, three numbers as a list or as the CLI's "0.6,0.3,0.1", and
        None for the default."""
        if value is None:
            return {}
        if isinstance(value, str):
            try:
                value = [float(part) for part in value.split(",")]
            except ValueError:
                raise ValueError(f"{value!r} is not three numbers like 0.6,0.3,0.1") from None
        if isinstance(value, list | tuple):
            if len(value) != 3:
                raise ValueError(f"needs three ratios (capa1,capa2,capa3), got {len(value)}")
            return dict(zip(TIERS, value, strict=True))
        if isinstance(value, dict):
            return {str(key).removesuffix("_ratio"): ratio for key, ratio in value.items()}
        return value

    def as_dict(self) -> dict[str, float]:
        return self.model_dump()


TierSharesParam = Annotated[
    TierShares | None,
    described(
        description=(
            "Shares of the three access tiers, each 0..1, summing to 1. Leave empty for the "
            "avatar's tier mix (its profile), else 0.6 / 0.3 / 0.1."
        )
    ),
]
#: the scheduled fan-out's own forms of the same parameters: per due avatar
FanOutPiecesParam = Annotated[
    int,
    described(
        ge=1,
        le=MAX_PIECES,
        description=(
            f"Pieces per due avatar (1..{MAX_PIECES}) whose profile sets no pieces per run; "
            "an avatar's pieces per run wins. The spec's sizes: 50 daily, 20 weekly, 100 "
            "monthly."
        ),
    ),
]
FanOutPlatformParam = Annotated[
    PlatformName | None,
    described(
        description=(
            "Leave empty: each avatar's pieces are split over its platforms (its profile), "
            f"one batch per platform, else all for {DEFAULT_PLATFORM}. Given: every avatar's "
            "batch is for this platform."
        )
    ),
]
# the operator-facing parameters besides those above; the last three are set by the
# pipeline itself (retries, resumes, tests) and say so
AvatarParam = Annotated[
    str,
    described(
        min_length=1,
        description="The avatar's id or name (`studio avatar list`); it must have LoRA weights.",
        schema={"maxLength": MAX_NAME_CHARS, "pattern": NO_CONTROL_PATTERN},
    ),
]
HooksParam = Annotated[bool, described(description="Write a caption (hook) for every piece.")]
SafetyParam = Annotated[bool, described(description="Moderate every piece before it is published.")]
UploadParam = Annotated[
    bool, described(description="Upload to the object store (off: keep files in the local store).")
]
SeedParam = Annotated[
    int | None,
    described(
        description=(
            "Internal, leave empty: seeds template selection so a test or a re-run picks "
            "the same templates."
        )
    ),
]
#: a batch id names directories, object keys and rows: a UUID and nothing else (the
#: deployment refuses anything else at create_flow_run; the flow body refuses it too)
UUID_SCHEMA = {"format": "uuid", "pattern": BATCH_ID_PATTERN}
BatchIdParam = Annotated[
    str | None,
    described(
        description=(
            "Internal, leave empty: the batch's id, a UUID (defaults to this run's id, so a "
            "retry of the run continues the same batch)."
        ),
        schema=UUID_SCHEMA,
    ),
]
ResumeParam = Annotated[
    str | None,
    described(
        description=(
            "Only to finish a crashed batch: its batch id (a UUID). Its stored request and "
            "plan are used and only unfinished pieces are made; the other parameters are "
            "ignored."
        ),
        schema=UUID_SCHEMA,
    ),
]


class BatchRequest(BaseModel):
    """What to make: the spec's BatchProcessorConfig plus the avatar and custom prompts.

    The one definition of a batch's parameters: the `content-batch` flow's signature
    (and so the deployment's parameter schema), the CLI options of `batch run` and
    `batch submit` (cli/batch_options.py), the scheduled fan-out and resumes all read
    their names, types, limits, defaults and descriptions from these fields.

    `num_pieces`, `tier_distribution`, `platform` and `format` left empty (None) mean
    "the avatar's profile, else the studio default": `resolve_request` fills them once
    the avatar is known, so a batch's stored request (what a resume uses) is complete.
    """

    avatar_id: AvatarParam
    num_pieces: PiecesParam = None
    tier_distribution: TierSharesParam = None
    platform: PlatformParam = None
    format: FormatParam = None
    include_hooks: HooksParam = True
    safety_check: SafetyParam = True
    upload_to_storage: UploadParam = True
    custom_prompts: PromptsParam = None
    custom_tiers: TiersParam = None
    hook_mode: HookModeParam = "direct"
    seed: SeedParam = None

    def run_parameters(self) -> dict[str, Any]:
        """The request as a `content-batch` run's parameters (JSON): what was given and
        is not None; the rest is left to the deployment's or the flow's defaults."""
        return self.model_dump(mode="json", exclude_unset=True, exclude_none=True)


class BatchParameters(BatchRequest):
    """The `content-batch` flow's parameters: the request, and which batch it continues."""

    batch_id: BatchIdParam = None
    resume_batch_id: ResumeParam = None

    def request(self) -> BatchRequest:
        return BatchRequest.model_validate(self.model_dump(exclude={"batch_id", "resume_batch_id"}))


def resume_parameters(batch_id: str, stored: dict[str, Any]) -> dict[str, Any]:
    """A resume run's parameters: the batch's stored request is used, so only what names
    the run (`content-batch-{avatar_id}-{num_pieces}`) goes with the batch id."""
    parameters = {
        "avatar_id": stored["avatar_id"],
        "num_pieces": stored.get("num_pieces"),
        "resume_batch_id": batch_id,
    }
    return {name: value for name, value in parameters.items() if value is not None}


def make_request(**values: Any) -> BatchRequest:
    """The request `values` describe; BatchRequestError naming the first field that its
    type or limits refuse (an unknown platform, 0 pieces, a ratio above 1...)."""
    try:
        return BatchRequest(**values)
    except ValidationError as exc:
        raise _request_error(exc) from None


_LABELS = {
    "custom_tiers": "tier",
    "custom_prompts": "prompt",
    "hook_mode": "hook mode",
    "platform": "platform",
    "format": "format",
}


def choices(annotation: Any) -> tuple[str, ...]:
    """The values a Literal (or a list or optional of one) allows, else ()."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    for arg in get_args(annotation):
        if allowed := choices(arg):
            return allowed
    return ()


def _request_error(exc: ValidationError) -> BatchRequestError:
    """Pydantic's first complaint about a request, said as a refusal: the field, the
    value and how to fix it."""
    error = exc.errors()[0]
    loc = error["loc"]
    field, where = str(loc[0]), loc[1:]
    value = error.get("input")
    kind = error["type"]
    if field == "avatar_id":
        return BatchRequestError(
            field, f"give an avatar's id or name (1..{MAX_NAME_CHARS} characters)"
        )
    bad = control_character(value) if isinstance(value, str) else None
    if bad is not None:  # said as such, escaped: never echoed into a log line or terminal
        what = f"{_LABELS.get(field, field)} {int(where[0]) + 1} " if where else ""
        return BatchRequestError(
            field, f"{what}contains the control character {bad}; use printable text only"
        )
    if field == "num_pieces" and kind in ("greater_than_equal", "less_than_equal"):
        return BatchRequestError(field, f"{value} is outside 1..{MAX_PIECES}; pick a size in range")
    if kind == "literal_error":
        allowed = ", ".join(choices(BatchRequest.model_fields[field].annotation))
        return BatchRequestError(field, f"unknown {_LABELS[field]} {value!r}; use one of {allowed}")
    if field == "custom_prompts" and where and kind == "string_too_long":
        return BatchRequestError(
            field,
            f"prompt {int(where[0]) + 1} has {len(value)} characters; at most {MAX_PROMPT_CHARS}",
        )
    if field == "custom_prompts" and where and kind == "string_too_short":
        return BatchRequestError(field, f"prompt {int(where[0]) + 1} is empty")
    if field == "tier_distribution" and kind == "extra_forbidden":
        return BatchRequestError(field, f"unknown tier {where[-1]!r}; use capa1, capa2 and capa3")
    if field == "tier_distribution" and kind in ("float_parsing", "float_type"):
        return BatchRequestError(field, "ratios must be numbers")
    message = error["msg"].removeprefix("Value error, ")
    place = ".".join(str(part) for part in where)
    return BatchRequestError(field, f"{place}: {message}" if place else message)


def validate_request(request: BatchRequest) -> BatchRequest:
    """Check what the request's types and limits cannot say, without the database;
    raise BatchRequestError naming the field."""
    check_free_text("avatar_id", request.avatar_id)
    if not request.avatar_id.strip() or len(request.avatar_id) > MAX_NAME_CHARS:
        raise BatchRequestError(
            "avatar_id", f"give an avatar's id or name (1..{MAX_NAME_CHARS} characters)"
        )
    if request.tier_distribution is not None:
        total = sum(request.tier_distribution.as_dict().values())
        if abs(total - 1.0) > 1e-6:
            raise BatchRequestError(
                "tier_distribution",
                f"ratios sum to {total:g}; they must sum to 1 (e.g. 0.6,0.3,0.1)",
            )
    if request.format is not None:
        request.format = check_format(request.format)
    if request.custom_prompts is not None:
        if request.num_pieces is not None and len(request.custom_prompts) != request.num_pieces:
            raise BatchRequestError(
                "custom_prompts",
                f"{len(request.custom_prompts)} prompts for {request.num_pieces} pieces; give one "
                "prompt per piece or set num_pieces to the number of prompts",
            )
        for i, prompt in enumerate(request.custom_prompts):
            if not prompt.strip():
                raise BatchRequestError("custom_prompts", f"prompt {i + 1} is empty")
            check_free_text("custom_prompts", prompt, f"prompt {i + 1}")
    if request.custom_tiers is not None:
        wanted = request.num_pieces
        if wanted is None and request.custom_prompts is not None:
            wanted = len(request.custom_prompts)
        if wanted is not None and len(request.custom_tiers) != wanted:
            raise BatchRequestError(
                "custom_tiers",
                f"{len(request.custom_tiers)} tiers for {wanted} pieces; give one "
                "tier per piece",
            )
        if request.custom_prompts is None:
            raise BatchRequestError(
                "custom_tiers", "custom tiers apply to custom prompts; pass custom_prompts too"
            )
    return request


def check_format(value: str, field: str = "format", whose: str = "") -> str:
    """The aspect ratio `value` names, in its one spelling ("9:16"); BatchRequestError
    naming `field` when it is none (studio.formats says what it accepts)."""
    from studio.formats import FormatError, parse_aspect_ratio  # studio.formats may use us

    try:
        return parse_aspect_ratio(value)
    except FormatError as exc:
        raise BatchRequestError(field, f"{whose}{exc}") from None


def resolve_request(request: BatchRequest, avatar: AvatarRef) -> BatchRequest:
    """The request with what it left empty taken from the avatar's profile, else the
    studio defaults: pieces per run (or one piece per custom prompt) else 50, its tier mix
    else 0.6/0.3/0.1, its first platform else instagram, its format else none (the
    platform's own). What the request gives always wins.

    Why resolved once, here: the resolved request is what the batch stores, so a resume
    makes the same batch even if the profile changed since; and `batch submit` and the
    fan-out send it whole, so a run's name and parameters say what it makes. A profile
    value the request cannot hold is refused naming the field and the avatar.
    """
    whose = f"the profile of avatar {avatar.name!r}: "
    values: dict[str, Any] = {}
    if request.num_pieces is None:
        if request.custom_prompts is not None:
            values["num_pieces"] = len(request.custom_prompts)
        else:
            pieces = avatar.pieces_per_run or DEFAULT_PIECES
            if not 1 <= pieces <= MAX_PIECES:
                raise BatchRequestError(
                    "num_pieces", f"{whose}pieces per run {pieces} is outside 1..{MAX_PIECES}"
                )
            values["num_pieces"] = pieces
    if request.tier_distribution is None:
        try:
            shares = TierShares.model_validate(avatar.tier_mix or DEFAULT_TIER_SHARES)
        except ValidationError as exc:
            error = exc.errors()[0]
            message = error["msg"].removeprefix("Value error, ")
            place = ".".join(str(part) for part in error["loc"])
            message = f"{place}: {message}" if place else message
            raise BatchRequestError("tier_distribution", f"{whose}tier mix {message}") from None
        total = sum(shares.as_dict().values())
        if abs(total - 1.0) > 1e-6:
            raise BatchRequestError(
                "tier_distribution", f"{whose}tier mix sums to {total:g}; it must sum to 1"
            )
        values["tier_distribution"] = shares
    if request.platform is None:
        platform = avatar.platforms[0] if avatar.platforms else DEFAULT_PLATFORM
        allowed = choices(PlatformName)
        if platform not in allowed:
            raise BatchRequestError(
                "platform", f"{whose}unknown platform {platform!r}; use one of {', '.join(allowed)}"
            )
        values["platform"] = platform
    if request.format is None and avatar.format:
        values["format"] = check_format(avatar.format, "format", whose)
    resolved = request.model_copy(update=values)
    return validate_request(resolved)

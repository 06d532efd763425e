"""The batch request as an operator states it, and its validation.

Validation runs before any step so that nothing is spent, written or uploaded for a
request that cannot succeed; every refusal names the field and how to fix it.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from studio.hooks.modes import HOOK_MODES
from studio.types import TIERS, Platform, Tier

MAX_PIECES = 500
#: a custom prompt longer than this is a pasted document, not a picture's description
MAX_PROMPT_CHARS = 1000


class BatchRequestError(ValueError):
    """A request that cannot run; `field` names what to fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def __reduce__(self) -> tuple[type[BatchRequestError], tuple[str, str]]:
        # a refused run's state carries this error; Prefect may pickle it to persist it
        return (type(self), (self.field, self.message))


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


def described(*args: Any, description: str, **constraints: Any) -> Any:
    """A pydantic Field whose description reaches Prefect's parameter schema too.

    Prefect builds a flow's schema with its own Field per parameter (description from
    the docstring), which replaces the description of a Field inside `Annotated`; a
    `json_schema_extra` description is merged instead, so the run form shows it.
    """
    return Field(
        *args,
        description=description,
        json_schema_extra={"description": description},
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
    list[Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]] | None,
    described(
        min_length=1,
        max_length=MAX_PIECES,
        description=(
            "Your own image prompts instead of the template library: exactly one per piece "
            f"(so as many as num_pieces), each 1..{MAX_PROMPT_CHARS} characters. "
            "Leave empty to use templates."
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
            "prompt). Leave empty to spread custom prompts by tier_distribution."
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
        for tier in request.custom_tiers:
            if tier not in TIERS:
                raise BatchRequestError(
                    "custom_tiers", f"unknown tier {tier!r}; use capa1, capa2 or capa3"
                )
        if request.custom_prompts is None:
            raise BatchRequestError(
                "custom_tiers", "custom tiers apply to custom prompts; pass custom_prompts too"
            )
    return request

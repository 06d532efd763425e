"""The batch request as an operator states it, and its validation.

Validation runs before any step so that nothing is spent, written or uploaded for a
request that cannot succeed; every refusal names the field and how to fix it.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, Field

from studio.hooks.modes import HOOK_MODES
from studio.types import TIERS, Platform

MAX_PIECES = 500


class BatchRequestError(ValueError):
    """A request that cannot run; `field` names what to fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


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


def parse_tier_distribution(value: Any) -> TierDistribution:
    """Accept the spec's dict form, a {capa1: x} form, a 3-list or "0.6,0.3,0.1"."""
    if isinstance(value, TierDistribution):
        return value
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

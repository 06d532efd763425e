"""The scheduled fan-out's plan: which content-batch runs a schedule slot makes.

Why apart from the flow (flows/scheduled.py): what each avatar's profile makes of the
slot is a pure function of the avatars and the fan-out's parameters, so it is read and
tested without a Prefect API. Per due avatar: its pieces per run (else the flow's
`num_pieces`) split over its platforms by the largest remainder, one batch per platform
made for that platform, with its tier mix; an avatar without a profile gets one batch of
the flow's size, platform and mix, named and keyed as before profiles (issue 18).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from studio.request import DEFAULT_PLATFORM, DEFAULT_TIER_SHARES, BatchRequest
from studio.types import AvatarRef

log = logging.getLogger("studio.batch")


def batch_run_name(avatar_name: str, num_pieces: int, platform: str | None = None) -> str:
    """`content-batch-<name>-<pieces>`, and `-<platform>` for a batch of a profile's
    platforms (one run per platform: the names stay apart)."""
    name = f"content-batch-{avatar_name}-{num_pieces}"
    return f"{name}-{platform}" if platform else name


def batch_idempotency_key(
    cadence: str, slot: str, avatar_id: str, platform: str | None = None
) -> str:
    """One key per schedule slot and avatar (and platform, for a profile's platforms): a
    retried or re-delivered fan-out of the same slot gets the run it created the first
    time back from the server instead of a new one."""
    key = f"scheduled-batches:{cadence}:{slot}:{avatar_id}"
    return f"{key}:{platform}" if platform else key


def split_pieces(total: int, platforms: list[str]) -> dict[str, int]:
    """`total` pieces in equal shares over `platforms` by the largest remainder (the
    earlier platform takes a leftover piece first); platforms left with none are dropped.
    50 over instagram, tiktok: 25 + 25; 50 over three: 17 + 17 + 16."""
    wanted = list(dict.fromkeys(platforms))
    if not wanted:
        return {}
    base, left = divmod(total, len(wanted))
    shares = {platform: base + (1 if i < left else 0) for i, platform in enumerate(wanted)}
    return {platform: count for platform, count in shares.items() if count > 0}


@dataclass(frozen=True)
class PlannedBatch:
    """One content-batch run of the fan-out: whose, for which platform, its parameters."""

    avatar: AvatarRef
    #: the profile's platform this batch is for; None: the flow's (as before profiles)
    platform: str | None
    parameters: dict[str, Any]

    @property
    def run_name(self) -> str:
        return batch_run_name(self.avatar.name, self.parameters["num_pieces"], self.platform)

    @property
    def label(self) -> str:
        """Its key in the fan-out's summary: the avatar's name (and platform)."""
        return f"{self.avatar.name}/{self.platform}" if self.platform else self.avatar.name

    def idempotency_key(self, cadence: str, slot: str) -> str:
        return batch_idempotency_key(cadence, slot, self.avatar.id, self.platform)


def plan_batches(avatars: list[AvatarRef], shared: dict[str, Any]) -> list[PlannedBatch]:
    """The batches of the due avatars: each avatar's pieces per run (else the flow's
    `num_pieces`) over its platforms (else the flow's `platform`, else instagram), with
    its tier mix (else the flow's `tier_distribution`, else 0.6/0.3/0.1). A `platform` or
    `tier_distribution` given to the flow wins over the profiles. An avatar whose profile
    the request cannot hold (an unknown platform or tier) is logged and left out, so it
    does not keep the other avatars' batches."""
    planned = []
    for avatar in avatars:
        try:
            planned.extend(_avatar_batches(avatar, shared))
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"])
            log.error(
                "Batch not planned | Avatar: %s | Reason: profile %s: %s",
                avatar.name, where, error["msg"],
            )
    return planned


def _avatar_batches(avatar: AvatarRef, shared: dict[str, Any]) -> list[PlannedBatch]:
    """One avatar's batches (see `plan_batches`)."""
    pieces = avatar.pieces_per_run or shared["num_pieces"]
    values = {
        key: value
        for key, value in shared.items()
        if key not in ("num_pieces", "platform", "tier_distribution")
    }
    values["tier_distribution"] = (
        shared.get("tier_distribution") or avatar.tier_mix or DEFAULT_TIER_SHARES
    )
    if shared.get("platform") or not avatar.platforms:  # as before profiles: one batch
        platform = shared.get("platform") or DEFAULT_PLATFORM
        request = {**values, "num_pieces": pieces, "platform": platform}
        return [PlannedBatch(avatar, None, _batch_parameters(avatar.name, request))]
    return [
        PlannedBatch(
            avatar,
            platform,
            _batch_parameters(avatar.name, {**values, "num_pieces": count, "platform": platform}),
        )
        for platform, count in split_pieces(pieces, avatar.platforms).items()
    ]


def _batch_parameters(avatar_name: str, request: dict[str, Any]) -> dict[str, Any]:
    """One batch's parameters as JSON, checked against the batch request's own
    definition; the avatar by name, so the worker names the run from it
    (content-batch-<name>-<pieces>)."""
    return BatchRequest(avatar_id=avatar_name, **request).run_parameters()

"""The options `studio batch run` and `studio batch submit` share, and the request they make.

Why one module: both commands must accept the same options and refuse the same bad
input (exit 2, nothing spent or sent); declared twice, they drift apart.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Annotated

import typer

from studio.request import BatchRequest, BatchRequestError, parse_tier_distribution

AvatarOption = Annotated[str, typer.Option("--avatar", help="avatar id or name")]
PiecesOption = Annotated[int, typer.Option("--pieces")]
PlatformOption = Annotated[str, typer.Option("--platform")]
#: whether this command's `--tiers` was typed (its default is no request to refuse)
_TIERS_TYPED: ContextVar[bool] = ContextVar("tiers_typed", default=False)


def _note_tiers_source(ctx: typer.Context, value: str) -> str:
    """Typer calls this for `--tiers` typed or not; it notes which, for batch_request."""
    source = ctx.get_parameter_source("tiers")
    _TIERS_TYPED.set(getattr(source, "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP"))
    return value


TiersOption = Annotated[
    str,
    typer.Option(
        "--tiers",
        help="capa1,capa2,capa3 ratios of template pieces (not with --prompt: give --tier)",
        callback=_note_tiers_source,
    ),
]
HooksOption = Annotated[bool, typer.Option("--hooks/--no-hooks")]
SafetyOption = Annotated[bool, typer.Option("--safety/--no-safety")]
UploadOption = Annotated[bool, typer.Option("--upload/--no-upload")]
PromptOption = Annotated[list[str] | None, typer.Option("--prompt", help="custom prompt")]
TierOption = Annotated[list[str] | None, typer.Option("--tier", help="tier per custom prompt")]
SeedOption = Annotated[int | None, typer.Option("--seed")]
HookModeOption = Annotated[
    str, typer.Option("--hook-mode", help="direct, message-batches (half price) or auto")
]
#: `batch run` and `demo` only: a submitted batch's console is its worker's (STUDIO_VERBOSE)
VerboseOption = Annotated[
    bool,
    typer.Option(
        "--verbose", help="console shows all detail (provider attempts, task runs), as app.log"
    ),
]


def batch_request(
    *,
    avatar: str,
    pieces: int,
    platform: str,
    tiers: str,
    hooks: bool,
    safety: bool,
    upload: bool,
    prompt: list[str] | None,
    tier: list[str] | None,
    seed: int | None,
    hook_mode: str,
) -> BatchRequest:
    """The request the options describe; raises BatchRequestError naming a bad field.

    `--tiers` with `--prompt` is refused rather than ignored: custom prompts take their
    tier from `--tier` (capa1 when not given, the spec's default), never from the ratios.
    """
    if prompt and _TIERS_TYPED.get():
        raise BatchRequestError(
            "tiers",
            "--tiers spreads template pieces only; with --prompt give each prompt's tier "
            "with --tier (capa1 when not given)",
        )
    return BatchRequest(
        avatar_id=avatar,
        num_pieces=pieces,
        tier_distribution=parse_tier_distribution(tiers),
        platform=platform,
        include_hooks=hooks,
        safety_check=safety,
        upload_to_storage=upload,
        custom_prompts=prompt or None,
        custom_tiers=tier or None,
        seed=seed,
        hook_mode=hook_mode,
    )


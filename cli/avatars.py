"""`studio avatar ...`: add, update, show, import, remove and list avatars.

An avatar is its identity (name, niche, LoRA weights, cadence) and its profile (trigger
words, LoRA strength, tier mix, platforms, pieces per run, daily budget, workflow,
checkpoint, format: studio/avatar_profiles.py). Bad input exits 2 with one line naming
the avatar and the field, and nothing is written.

Numbers are read as text and checked by the profile's own checks, so `--lora-strength
abc` is refused in one line naming the field like any other bad value (typer's own
refusal is a multi-line box).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from cli.output import console, print_json, refuse
from studio.avatar_profiles import (
    MAX_LORA_STRENGTH,
    PLATFORMS,
    PROFILE_FIELDS,
    shown_url,
    stored_profile,
)
from studio.avatars import CADENCES
from studio.request import MAX_PIECES, BatchRequestError

avatar_app = typer.Typer(help="Manage avatars.", no_args_is_help=True)

LoraOption = Annotated[
    str | None,
    typer.Option("--lora", help="https:// URL of the trained LoRA weights (LORA_URL_SCHEMES)"),
]
TriggerOption = Annotated[
    list[str] | None,
    typer.Option(
        "--trigger-word",
        help="The LoRA's trained token, put in every prompt; repeat for several (replaces "
        "the avatar's list).",
    ),
]
StrengthOption = Annotated[
    str | None,
    typer.Option(
        "--lora-strength",
        help=f"The LoRA's weight, 0..{MAX_LORA_STRENGTH:g} (1 = as trained; default 1).",
    ),
]
TierMixOption = Annotated[
    str | None,
    typer.Option(
        "--tier-mix",
        help="This avatar's default tier shares, summing to 1: 0.6,0.3,0.1 or "
        "capa1=0.6,capa2=0.3,capa3=0.1.",
    ),
]
PlatformOption = Annotated[
    list[str] | None,
    typer.Option(
        "--platform",
        help=f"A platform it posts to ({', '.join(PLATFORMS)}); repeat for several "
        "(replaces the avatar's list). The scheduled fan-out makes each one's share.",
    ),
]
PiecesOption = Annotated[
    str | None,
    typer.Option("--pieces-per-run", help=f"Pieces per scheduled run, 1..{MAX_PIECES}."),
]
BudgetOption = Annotated[
    str | None,
    typer.Option(
        "--daily-budget",
        help="USD all its batches may spend in a UTC day (over AVATAR_DAILY_BUDGET_USD).",
    ),
]
WorkflowOption = Annotated[
    str | None,
    typer.Option(
        "--workflow", help="Path of an API-format ComfyUI workflow JSON (over COMFYUI_WORKFLOW)."
    ),
]
CheckpointOption = Annotated[
    str | None,
    typer.Option("--checkpoint", help="Checkpoint file name (over COMFYUI_CHECKPOINT)."),
]
FormatOption = Annotated[
    str | None,
    typer.Option("--format", help="Aspect ratio W:H such as 9:16 (over the platform's format)."),
]


def _profile(
    trigger_words: list[str] | None,
    lora_strength: str | None,
    tier_mix: str | None,
    platforms: list[str] | None,
    pieces_per_run: str | None,
    daily_budget: str | None,
    workflow: str | None,
    checkpoint: str | None,
    format_: str | None,
) -> dict[str, Any]:
    """The profile options that were given (checked by add_avatar/update_avatar)."""
    given = {
        "trigger_words": trigger_words or None,
        "lora_strength": lora_strength,
        "tier_mix": tier_mix,
        "platforms": platforms or None,
        "pieces_per_run": pieces_per_run,
        "daily_budget_usd": daily_budget,
        "workflow": workflow,
        "checkpoint": checkpoint,
        "format": format_,
    }
    return {key: value for key, value in given.items() if value is not None}


@avatar_app.command("add")
def avatar_add(
    name: str,
    niche: Annotated[str, typer.Option(help="fitness, lifestyle, fashion, travel, food, ...")],
    cadence: Annotated[str, typer.Option(help=f"one of {', '.join(CADENCES)}")] = "daily",
    lora: LoraOption = None,
    inactive: Annotated[bool, typer.Option("--inactive")] = False,
    trigger_word: TriggerOption = None,
    lora_strength: StrengthOption = None,
    tier_mix: TierMixOption = None,
    platform: PlatformOption = None,
    pieces_per_run: PiecesOption = None,
    daily_budget: BudgetOption = None,
    workflow: WorkflowOption = None,
    checkpoint: CheckpointOption = None,
    format_: FormatOption = None,
) -> None:
    """Register an avatar: a printable name (1..100 characters) and niche (1..50), an
    https:// LoRA URL and its profile; anything else exits 2 naming the field."""
    from studio.avatars import add_avatar
    from studio.db.engine import session_scope

    profile = _profile(trigger_word, lora_strength, tier_mix, platform, pieces_per_run,
                       daily_budget, workflow, checkpoint, format_)
    try:
        with session_scope() as session:
            avatar = add_avatar(
                session, name, niche.lower(), lora, cadence, not inactive, profile=profile
            )
            console.print(
                f"added avatar {escape(avatar.name)} ({avatar.id})", highlight=False,
                soft_wrap=True,
            )
    except BatchRequestError as exc:
        refuse(exc)


def _clear_fields(names: list[str] | None) -> list[str]:
    fields = []
    for name in names or []:
        field = name.strip().lower().replace("-", "_")
        field = {"daily_budget": "daily_budget_usd", "trigger_word": "trigger_words",
                 "platform": "platforms"}.get(field, field)
        if field not in PROFILE_FIELDS:
            raise BatchRequestError(
                "clear", f"{name!r} is not a profile field; use {', '.join(PROFILE_FIELDS)}"
            )
        fields.append(field)
    return fields


@avatar_app.command("update")
def avatar_update(
    avatar: Annotated[str, typer.Argument(help="avatar id or name")],
    name: Annotated[str | None, typer.Option("--name", help="a new name")] = None,
    niche: Annotated[str | None, typer.Option("--niche")] = None,
    lora: LoraOption = None,
    cadence: Annotated[str | None, typer.Option(help=f"one of {', '.join(CADENCES)}")] = None,
    active: Annotated[
        bool | None, typer.Option("--active/--inactive", help="in the scheduled runs or not")
    ] = None,
    trigger_word: TriggerOption = None,
    lora_strength: StrengthOption = None,
    tier_mix: TierMixOption = None,
    platform: PlatformOption = None,
    pieces_per_run: PiecesOption = None,
    daily_budget: BudgetOption = None,
    workflow: WorkflowOption = None,
    checkpoint: CheckpointOption = None,
    format_: FormatOption = None,
    clear: Annotated[
        list[str] | None,
        typer.Option(
            "--clear",
            help="Reset a profile field to the studio default (e.g. --clear tier_mix); "
            "repeatable.",
        ),
    ] = None,
) -> None:
    """Change an avatar's name, niche, LoRA URL, cadence, active flag or profile (checked
    as at `avatar add`; bad input exits 2 naming the field). Its id and history stay."""
    from studio.avatars import about_avatar, update_avatar
    from studio.db.engine import session_scope

    profile = _profile(trigger_word, lora_strength, tier_mix, platform, pieces_per_run,
                       daily_budget, workflow, checkpoint, format_)
    try:
        with about_avatar(avatar):
            for field in _clear_fields(clear):
                if field in profile:
                    raise BatchRequestError(field, "is both set and cleared; give one of them")
                profile[field] = None
        with session_scope() as session:
            found, changed = update_avatar(
                session, avatar, name=name, niche=niche.lower() if niche else niche,
                lora_weights_url=lora, cadence=cadence, active=active, profile=profile,
            )
            what = ", ".join(changed) if changed else "nothing (same values)"
            console.print(
                f"updated avatar {escape(found.name)} ({found.id}): {what}",
                highlight=False, soft_wrap=True,
            )
    except BatchRequestError as exc:
        refuse(exc)


def avatar_document(avatar: Any) -> dict[str, Any]:
    """The whole avatar as `avatar show --json` prints it (unset profile fields: their
    defaults, an empty list or null)."""
    return {
        "id": avatar.id,
        "name": avatar.name,
        "niche": avatar.niche,
        "cadence": avatar.cadence,
        "active": bool(avatar.active),
        "lora_weights_url": shown_url(avatar.lora_weights_url),
        "created_at": avatar.created_at.isoformat() if avatar.created_at else None,
        **stored_profile(avatar),
    }


def _shown_value(field: str, value: Any) -> str:
    if value is None or value == []:
        return "[dim](studio default)[/dim]"
    if field == "tier_mix":
        return ", ".join(f"{tier} {share:g}" for tier, share in value.items())
    if isinstance(value, list):
        return escape(", ".join(str(item) for item in value))
    if field == "daily_budget_usd":
        return f"${value:,.2f}"
    return escape(str(value))


@avatar_app.command("show")
def avatar_show(
    avatar: Annotated[str, typer.Argument(help="avatar id or name")],
    as_json: Annotated[bool, typer.Option("--json", help="plain JSON, no colours")] = False,
) -> None:
    """Print an avatar's whole profile (unset fields use the studio-wide default)."""
    from studio.avatars import get_avatar
    from studio.db.engine import session_scope

    try:
        with session_scope() as session:
            document = avatar_document(get_avatar(session, avatar))
    except BatchRequestError as exc:
        refuse(exc)
    if as_json:
        print_json(document)
        return
    table = Table("field", "value", title=f"avatar {escape(document['name'])}")
    for field, value in document.items():
        shown = _shown_value(field, value) if field in PROFILE_FIELDS else escape(str(value))
        table.add_row(field, shown)
    console.print(table)


@avatar_app.command("import")
def avatar_import(
    file: Annotated[Path, typer.Argument(help="YAML file: a list of avatars (see README)")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print what would change; write nothing")
    ] = False,
) -> None:
    """Create or update many avatars from one YAML file (by name). The whole file is
    checked first: one bad entry writes nothing (exit 2 naming the avatar and field)."""
    from studio.avatar_import import import_avatars
    from studio.db.engine import session_scope

    try:
        with session_scope() as session:
            plan = import_avatars(session, file, dry_run=dry_run)
    except BatchRequestError as exc:
        refuse(exc)
    for change in plan:
        console.print(escape(change.describe()), highlight=False, soft_wrap=True)
    counts = {action: sum(c.action == action for c in plan)
              for action in ("create", "update", "unchanged")}
    summary = (f"{counts['create']} to create, {counts['update']} to update, "
               f"{counts['unchanged']} unchanged")
    if dry_run:
        console.print(f"dry run: {summary}; nothing written", highlight=False, soft_wrap=True)
    else:
        console.print(
            f"imported {len(plan)} avatars from {escape(file.name)}: "
            f"{counts['create']} created, {counts['update']} updated, "
            f"{counts['unchanged']} unchanged",
            highlight=False, soft_wrap=True,
        )


@avatar_app.command("remove")
def avatar_remove(avatar: Annotated[str, typer.Argument(help="avatar id or name")]) -> None:
    """Deactivate an avatar: no scheduled batch runs it any more; its batches, pieces and
    costs are kept (`avatar update --active` brings it back)."""
    from studio.avatars import deactivate_avatar
    from studio.db.engine import session_scope

    try:
        with session_scope() as session:
            found, was_active = deactivate_avatar(session, avatar)
            state = "deactivated" if was_active else "was already inactive"
            console.print(
                f"avatar {found.name} ({found.id}) {state}: schedules skip it; its batches,"
                " pieces and costs are kept (`studio avatar update "
                f"{found.name} --active` brings it back)",
                highlight=False, soft_wrap=True, markup=False,
            )
    except BatchRequestError as exc:
        refuse(exc)


@avatar_app.command("list")
def avatar_list() -> None:
    """List avatars."""
    from studio.avatars import list_avatars
    from studio.db.engine import session_scope

    table = Table("id", "name", "niche", "cadence", "active", "lora")
    with session_scope() as session:
        for a in list_avatars(session):
            table.add_row(
                a.id,
                escape(a.name),
                escape(a.niche),
                a.cadence,
                str(a.active),
                "yes" if a.lora_weights_url else "no",
            )
    console.print(table)

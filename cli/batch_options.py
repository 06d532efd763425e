"""The options `studio batch run` and `studio batch submit` share, and the request they make.

Why derived: both commands must accept what the flow's parameters accept and refuse the
same bad input (exit 2, nothing spent or sent). Each option's type, default and help
come from its `BatchRequest` field (studio/request.py, the one definition of a batch's
parameters); only the command line's own spelling is written here.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from contextvars import ContextVar
from types import NoneType, UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import typer
from pydantic.fields import FieldInfo

from cli.output import refuse
from studio.request import (
    BatchRequest,
    BatchRequestError,
    TierShares,
    check_format,
    choices,
    make_request,
)

#: each request field's option on the command line: `--<name>` (`--<name>/--no-<name>`
#: for a switch), and what the command line adds to the field's description
OPTIONS: dict[str, tuple[str, str]] = {
    "avatar_id": ("avatar", ""),
    "num_pieces": ("pieces", ""),
    "platform": ("platform", ""),
    "format": ("format", "Over the avatar's format and the platform's (--format 9:16)."),
    "tier_distribution": ("tiers", "As capa1,capa2,capa3; not with --prompt (give --tier)."),
    "include_hooks": ("hooks", ""),
    "safety_check": ("safety", ""),
    "upload_to_storage": ("upload", ""),
    "custom_prompts": ("prompt", "Once per prompt."),
    "custom_tiers": ("tier", "Once per --prompt."),
    "seed": ("seed", ""),
    "hook_mode": ("hook_mode", ""),
}
#: whether this command's `--tiers` was typed (its default is no request to refuse)
_TIERS_TYPED: ContextVar[bool] = ContextVar("tiers_typed", default=False)


def _note_tiers_source(ctx: typer.Context, value: str) -> str:
    """Typer calls this for `--tiers` typed or not; it notes which, for batch_request."""
    source = ctx.get_parameter_source("tiers")
    _TIERS_TYPED.set(getattr(source, "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP"))
    return value


def _command_line_type(annotation: Any) -> Any:
    """What the command line reads for a field: numbers and switches as they are, a list
    as a repeated option, anything else (a choice, the tier shares) as text the request
    then checks, so a bad value is refused naming the field like any other."""
    if annotation in (bool, int, str):
        return annotation
    if get_origin(annotation) in (Union, UnionType) and NoneType in get_args(annotation):
        inner = next(arg for arg in get_args(annotation) if arg is not NoneType)
        return list[str] | None if get_origin(inner) is list else _command_line_type(inner) | None
    return str


def _command_line_default(field: FieldInfo) -> Any:
    default = field.get_default(call_default_factory=True)
    if isinstance(default, TierShares):
        return ",".join(f"{share:g}" for share in default.as_dict().values())
    return default


def _option(name: str, field: FieldInfo, more_help: str) -> inspect.Parameter:
    flag = "--" + name.replace("_", "-")
    if field.annotation is bool:
        flag = f"{flag}/--no-{name.replace('_', '-')}"
    allowed = choices(field.annotation)
    listed = f"One of: {', '.join(allowed)}." if allowed else ""
    option = typer.Option(
        flag,
        help=" ".join(part for part in (field.description, listed, more_help) if part),
        callback=_note_tiers_source if name == "tiers" else None,
    )
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=inspect.Parameter.empty if field.is_required() else _command_line_default(field),
        annotation=Annotated[_command_line_type(field.annotation), option],
    )


def _request_options() -> list[inspect.Parameter]:
    fields = BatchRequest.model_fields
    return [_option(name, fields[field], more) for field, (name, more) in OPTIONS.items()]


def batch_options(command: Callable[..., None]) -> Callable[..., None]:
    """`command(request, **its_own_options)` as a typer command that takes the request's
    options before its own; a request its fields refuse exits 2 before `command` runs."""
    own = inspect.signature(command, eval_str=True)
    rest = [
        parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        for parameter in own.parameters.values()
        if parameter.name != "request"
    ]

    signature = own.replace(parameters=[*_request_options(), *rest])

    @functools.wraps(command)
    def run(**values: Any) -> None:
        bound = signature.bind(**values)  # a Python caller (`demo`) may leave defaults out
        bound.apply_defaults()
        values = dict(bound.arguments)
        given = {name: values.pop(name) for name, _ in OPTIONS.values()}
        try:
            request = batch_request(**given)
        except BatchRequestError as exc:
            refuse(exc)
        command(request, **values)

    run.__signature__ = signature  # type: ignore[attr-defined]
    return run


def batch_request(**options: Any) -> BatchRequest:
    """The request the options (by their command-line names) describe; raises
    BatchRequestError naming a bad field.

    `--tiers` with `--prompt` is refused rather than ignored: custom prompts take their
    tier from `--tier` (capa1 when not given, the spec's default), never from the ratios.
    """
    if options.get("prompt") and _TIERS_TYPED.get():
        raise BatchRequestError(
            "tiers",
            "--tiers spreads template pieces only; with --prompt give each prompt's tier "
            "with --tier (capa1 when not given)",
        )
    values = {field: options[name] for field, (name, _) in OPTIONS.items()}
    values["custom_prompts"] = values["custom_prompts"] or None  # typer gives [] for none
    values["custom_tiers"] = values["custom_tiers"] or None
    request = make_request(**values)
    if request.format is not None:  # `--format portrait`: exit 2 before anything starts
        request.format = check_format(request.format)
    return request


#: `batch run` and `demo` only: a submitted batch's console is its worker's (STUDIO_VERBOSE)
VerboseOption = Annotated[
    bool,
    typer.Option(
        "--verbose", help="console shows all detail (provider attempts, task runs), as app.log"
    ),
]

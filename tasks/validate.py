"""Step 0: refuse a request that cannot succeed before anything is spent."""

from __future__ import annotations

from prefect import task
from pydantic import BaseModel, ValidationError

from studio.avatars import resolve_avatar
from studio.db.engine import session_scope
from studio.db.piece_progress import batch_owners
from studio.db.schema_check import SchemaNotReady, require_schema
from studio.ledger.validation import validate_cost_settings
from studio.request import BatchRequest, BatchRequestError, resolve_request, validate_request
from studio.storage.registry import validate_storage_settings
from studio.types import AvatarRef


class ValidatedBatch(BaseModel):
    #: the request with what it left empty filled from the avatar's profile (resolved)
    request: BatchRequest
    avatar: AvatarRef


class BatchRefusal(BaseModel):
    """Why a request was refused: the field to fix and how."""

    field: str
    message: str

    def error(self) -> BatchRequestError:
        return BatchRequestError(self.field, self.message)


def validate_batch_request(
    request: BatchRequest, batch_id: str | None = None, *, planned: bool = False
) -> ValidatedBatch:
    """Plain function too, so the CLI can refuse bad input (exit 2) without a flow run.

    `batch_id` (the run's, when known): refused when it belongs to another avatar, so a
    run never continues, moves or publishes another avatar's batch.

    The request comes back resolved against the avatar's profile (studio.request.
    resolve_request), and its image format is checked against every configured image
    provider, so a format one of them cannot serve is refused here, naming it. A batch
    not `planned` yet (not a resume) whose niche has no templates is refused too.
    """
    require_schema()  # no schema (e.g. no shared DATABASE_URL): SchemaNotReady, one line
    validate_cost_settings()  # budgets and prices: refused before anything is spent
    validate_storage_settings()  # premium content never behind a public URL (issue 15)
    validate_request(request)
    with session_scope() as session:
        avatar = resolve_avatar(session, request.avatar_id)
        if batch_id is not None:
            others = batch_owners(session, batch_id) - {avatar.id}
            if others:
                raise BatchRequestError(
                    "batch_id",
                    f"batch {batch_id!r} belongs to another avatar, not {request.avatar_id!r};"
                    " leave batch_id empty to start a new batch",
                )
    resolved = resolve_request(request, avatar)
    check_provider_format(resolved)
    if resolved.custom_prompts is None and not planned:  # a resume has its stored plan
        check_templates(avatar)
    return ValidatedBatch(request=resolved, avatar=avatar)


def check_templates(avatar: AvatarRef) -> None:
    """Refuse (field `niche`) a template batch for a niche the library has no templates
    of, unless TEMPLATES_ALLOW_OTHER_NICHES lets it borrow: said here, before the run
    starts, rather than by the planning step after its retries."""
    from studio.catalog import template_library
    from studio.templates.selection import NicheWithoutTemplates, check_niche

    try:
        check_niche(template_library(), avatar.niche)
    except NicheWithoutTemplates as exc:
        raise BatchRequestError("niche", str(exc).removeprefix("avatar_niche: ")) from None


def check_provider_format(request: BatchRequest) -> None:
    """Refuse (field `format`) a format a configured image provider cannot be sent: the
    request's (or the avatar's) override, else its platform's default. Why before any
    spend: Replicate's FLUX answers an aspect ratio off its enum with a 422 per piece, and
    an SDXL size far off its buckets makes distorted images that are still billed."""
    from studio.formats import FormatError, format_refusal, image_format
    from studio.providers.build import provider_order
    from studio.providers.settings import ProviderSettings

    try:
        aspect = image_format(request.platform, request.format).aspect_ratio
    except FormatError as exc:
        raise BatchRequestError("format", str(exc)) from None
    try:
        providers = provider_order(ProviderSettings())
    except ValidationError as exc:  # said by field and reason only: never a value (a key)
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise BatchRequestError("providers", f"{where}: {error['msg']}") from None
    if refusal := format_refusal(aspect, providers):
        raise BatchRequestError("format", refusal)


@task(name="validate", retries=0, timeout_seconds=30)
def validate_batch(
    request: BatchRequest, batch_id: str | None = None, planned: bool = False
) -> ValidatedBatch | BatchRefusal:
    """A refusal is this task's answer, not its failure: returned rather than raised, so
    Prefect logs no traceback for it and the flow ends in its "Refused" state."""
    try:
        return validate_batch_request(request, batch_id, planned=planned)
    except BatchRequestError as exc:
        return BatchRefusal(field=exc.field, message=exc.message)
    except SchemaNotReady as exc:  # names DATABASE_URL and `studio init`
        return BatchRefusal(field="DATABASE_URL", message=str(exc))

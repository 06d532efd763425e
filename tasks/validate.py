"""Step 0: refuse a request that cannot succeed before anything is spent."""

from __future__ import annotations

from prefect import task
from pydantic import BaseModel

from studio.avatars import resolve_avatar
from studio.db.engine import session_scope
from studio.db.piece_progress import batch_owners
from studio.db.schema_check import SchemaNotReady, require_schema
from studio.ledger.validation import validate_cost_settings
from studio.request import BatchRequest, BatchRequestError, validate_request
from studio.storage.registry import validate_storage_settings
from studio.types import AvatarRef


class ValidatedBatch(BaseModel):
    request: BatchRequest
    avatar: AvatarRef


class BatchRefusal(BaseModel):
    """Why a request was refused: the field to fix and how."""

    field: str
    message: str

    def error(self) -> BatchRequestError:
        return BatchRequestError(self.field, self.message)


def validate_batch_request(request: BatchRequest, batch_id: str | None = None) -> ValidatedBatch:
    """Plain function too, so the CLI can refuse bad input (exit 2) without a flow run.

    `batch_id` (the run's, when known): refused when it belongs to another avatar, so a
    run never continues, moves or publishes another avatar's batch.
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
    return ValidatedBatch(request=request, avatar=avatar)


@task(name="validate", retries=0, timeout_seconds=30)
def validate_batch(
    request: BatchRequest, batch_id: str | None = None
) -> ValidatedBatch | BatchRefusal:
    """A refusal is this task's answer, not its failure: returned rather than raised, so
    Prefect logs no traceback for it and the flow ends in its "Refused" state."""
    try:
        return validate_batch_request(request, batch_id)
    except BatchRequestError as exc:
        return BatchRefusal(field=exc.field, message=exc.message)
    except SchemaNotReady as exc:  # names DATABASE_URL and `studio init`
        return BatchRefusal(field="DATABASE_URL", message=str(exc))

"""Move premium pieces stored by earlier versions out of the public content bucket.

Earlier versions put capa2/capa3 objects beside capa1 in the content bucket, whose
public URL serves every key, at keys made of ids anyone could derive (issue 15). New
pieces go to the private bucket under secret-keyed names; this moves the old ones:
each object is uploaded to the private bucket under its new name (HEAD-by-checksum,
so a rerun uploads nothing twice), its row is committed with the new key, and only
then is the public copy deleted. Run it once after upgrading: `studio storage-privatize`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from studio.db.models import ContentPiece
from studio.storage.base import object_key
from studio.storage.errors import StorageError
from studio.storage.r2 import R2ContentStore, _translate

log = logging.getLogger("studio.storage")

PREMIUM = ("capa2", "capa3")


@dataclass
class PrivatizeReport:
    """What a run moved; `missing`: rows whose object is in neither bucket."""

    moved: int = 0
    already_private: int = 0
    missing: int = 0
    errors: list[str] = field(default_factory=list)


def _get(store: R2ContentStore, bucket: str, key: str) -> bytes | None:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return bytes(store.client.get_object(Bucket=bucket, Key=key)["Body"].read())
    except ClientError as error:
        if str(error.response.get("Error", {}).get("Code", "")) in {"404", "NoSuchKey"}:
            return None
        raise _translate(error, "R2 GET") from None
    except BotoCoreError as error:
        raise _translate(error, "R2 GET") from None


def _delete(store: R2ContentStore, bucket: str, key: str) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        store.client.delete_object(Bucket=bucket, Key=key)
    except (ClientError, BotoCoreError) as error:
        raise _translate(error, "R2 DELETE") from None


def privatize_premium(
    session_factory: Callable[[], contextlib.AbstractContextManager[Session]],
    store: R2ContentStore,
    content_bucket: str,
    secret: bytes,
    dry_run: bool = False,
) -> PrivatizeReport:
    """Move every premium row's object from `content_bucket` to the private bucket."""
    report = PrivatizeReport()
    if any(store.bucket_for(tier) == content_bucket for tier in PREMIUM):
        return report  # one bucket, no public URL: nothing is public to move
    with session_factory() as session:
        rows: list[Any] = list(
            session.execute(
                select(
                    ContentPiece.id,
                    ContentPiece.avatar_id,
                    ContentPiece.batch_id,
                    ContentPiece.access_tier,
                    ContentPiece.storage_key,
                    ContentPiece.content_type,
                ).where(
                    ContentPiece.storage_backend == "r2",
                    ContentPiece.access_tier.in_(PREMIUM),
                    ContentPiece.storage_key.is_not(None),
                )
            )
        )
    for row in rows:
        extension = PurePosixPath(row.storage_key).suffix.lstrip(".") or "png"
        target = object_key(row.avatar_id, row.batch_id, row.id, extension, secret=secret)
        try:
            data = _get(store, content_bucket, row.storage_key)
            if data is None:
                if store.stored_checksum(target, row.access_tier) is not None:
                    report.already_private += 1
                else:
                    report.missing += 1
                continue
            if dry_run:
                report.moved += 1
                continue
            store.put(row.id, target, data, row.content_type or "image/png", row.access_tier)
            with session_factory() as session:
                piece = session.get(ContentPiece, row.id)
                if piece is not None:
                    piece.storage_key, piece.url = target, None
            _delete(store, content_bucket, row.storage_key)
            report.moved += 1
        except StorageError as error:
            report.errors.append(f"piece {row.id}: {error}")
    log.info(
        "Premium privatized | Moved: %d | Already private: %d | Missing: %d | Errors: %d",
        report.moved,
        report.already_private,
        report.missing,
        len(report.errors),
    )
    return report

"""`studio pieces`: an avatar's pieces, newest first, one keyset page at a time.

Why its own module: the listing is what an operator reads every day (captions, links,
`--json` for scripts); persistence commands (cli/storage.py) change for other
reasons.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer

from cli.output import console, print_json, refuse
from studio.request import BatchRequestError

JsonOption = Annotated[bool, typer.Option("--json", help="print JSON (for scripts)")]


def parse_cursor(after: str | None):  # type: ignore[no-untyped-def]
    """The `--after` cursor a previous page printed; anything else exits 2 naming it."""
    from studio.db.queries import PageCursor

    if after is None:
        return None
    stamp, bar, piece_id = after.partition("|")
    try:
        if not bar or not piece_id:
            raise ValueError
        datetime.fromisoformat(stamp)
    except ValueError:
        refuse(
            BatchRequestError(
                "after", f"{after[:60]!r} is not a cursor; pass the --after value a page printed"
            )
        )
    return PageCursor.decode(after)


def pieces(
    avatar: Annotated[str, typer.Option("--avatar", help="avatar id or name")],
    after: Annotated[str | None, typer.Option("--after", help="cursor from the last page")] = None,
    page_size: Annotated[int, typer.Option("--page-size", min=1, max=200)] = 20,
    links: Annotated[
        bool,
        typer.Option(
            "--links",
            help="mint short-lived links (PRESIGNED_URL_TTL_SECONDS) for premium pieces",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """List an avatar's pieces with their captions, newest first, one keyset page at a time.

    Rows keep object keys, not links: capa1 shows its public URL; premium pieces show
    their key, and with --links a link minted now that expires after
    PRESIGNED_URL_TTL_SECONDS (the listing says until when).
    """

    from studio.avatars import find_avatar
    from studio.db.engine import session_scope
    from studio.db.queries import list_pieces
    from studio.settings import get_settings
    from studio.storage.links import LinkMinter

    cursor = parse_cursor(after)
    minter = LinkMinter(get_settings()) if links else None
    rows: list[dict[str, Any]] = []
    with session_scope() as session:
        found = find_avatar(session, avatar)
        if found is None:
            refuse(BatchRequestError("avatar", f"no avatar with id or name {avatar!r}"))
        page = list_pieces(session, found.id, after=cursor, page_size=page_size)
        for row in page.items:
            lasting = row.url if row.url and "X-Amz-Signature" not in row.url else ""
            link = (
                minter.link(row.storage_key, row.access_tier, row.storage_backend, lasting)
                if minter is not None
                else lasting or row.storage_key or ""
            )
            rows.append(
                {
                    "id": row.id,
                    "batch_id": row.batch_id,
                    "created_at": row.created_at,
                    "tier": row.access_tier,
                    "status": row.status,
                    "caption": row.hook_text,
                    "link" if minter is not None else "url_or_key": link,
                }
            )
    next_cursor = page.next_cursor.encode() if page.next_cursor is not None else None
    if as_json:
        print_json({"avatar": found.name, "pieces": rows, "next_cursor": next_cursor})
        return
    _print_page(rows, minter, next_cursor)


def _print_page(rows: list[dict[str, Any]], minter: Any, next_cursor: str | None) -> None:
    from rich.table import Table
    from rich.text import Text

    if minter is None:
        table = Table("created", "piece", "tier", "status", "caption", "url / key")
        for r in rows:
            cells = (
                r["created_at"].strftime("%Y-%m-%d %H:%M"),
                r["id"],
                r["tier"],
                r["status"],
                r["caption"] or "",
                r["url_or_key"],
            )
            table.add_row(*(Text(cell) for cell in cells))  # a caption is text, not markup
        console.print(table)
    else:  # one line per piece: a link must not wrap
        for r in rows:
            created = r["created_at"].strftime("%Y-%m-%d %H:%M")
            console.print(
                f"{created}  {r['id']}  {r['tier']}  {r['status']}  {r['link']}"
                f"  {r['caption'] or ''}",
                soft_wrap=True,
                markup=False,
                highlight=False,
            )
        if minter.minted:
            note = minter.expiry_note()
            console.print(note[0].upper() + note[1:], soft_wrap=True, markup=False)
    if next_cursor is not None:
        console.print(f"next page: --after '{next_cursor}'", soft_wrap=True, markup=False)

"""A batch's gallery as markdown: a small thumbnail, tier and status per piece.

The Prefect UI renders a markdown artifact's images as `<img src=...>` straight from
the parsed markdown (prefect-ui-library's markdown renderer, checked in the bundled
UI), so data-URI thumbnails show without any file server; a capa1 thumbnail links to
the piece's public URL when the store gives it one (http/https). A piece on the local
store has only a `file://` path, which a browser does not open from a web page, so its
thumbnail links nowhere and the text says so (the table artifact lists the path).
Only pieces that passed safety are shown: a rejected or held
piece is named, never pictured, and premium (capa2, capa3) thumbnails are blurred and
link nowhere: the gallery is a lasting artifact, and a premium link is short-lived
(the batch's links artifact, `studio pieces --links`). Thumbnails are small JPEGs
(~2-4 KB) and capped in number, so the artifact stays a few hundred KB at most.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from pathlib import Path

from PIL import Image, ImageFilter

from studio.types import BatchResult, PieceOutcome, PieceStatus

THUMBNAIL_PIXELS = 96
JPEG_QUALITY = 60
COLUMNS = 5
#: beyond this many pictured pieces the gallery lists the rest by caption only
MAX_THUMBNAILS = 120
BLURRED_TIERS = {"capa2", "capa3"}


def thumbnail_data_uri(path: str | Path, tier: str) -> str | None:
    """A data: URI of a small JPEG of the image at `path`, or None if it cannot be read."""
    try:
        with Image.open(path) as image:
            image.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
            small = image.convert("RGB")
    except (OSError, ValueError):
        return None
    if tier in BLURRED_TIERS:
        small = small.filter(ImageFilter.GaussianBlur(radius=6))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _caption(piece: PieceOutcome) -> str:
    caption = f"#{piece.index} {piece.tier} {piece.status.value}"
    if piece.degraded:
        caption += " (degraded)"
    return caption


def _cell(piece: PieceOutcome, image_paths: Mapping[str, str], budget: list[int]) -> str:
    if piece.status != PieceStatus.PUBLISHED or budget[0] <= 0:
        return "—"
    path = image_paths.get(piece.piece_id)
    uri = thumbnail_data_uri(path, piece.tier) if path else None
    if uri is None:
        return "—"
    budget[0] -= 1
    picture = f"![{_caption(piece)}]({uri})"
    public = piece.tier == "capa1" and piece.url and piece.url.startswith(("http://", "https://"))
    return f"[{picture}]({piece.url})" if public else picture


def gallery_markdown(result: BatchResult, image_paths: Mapping[str, str]) -> str:
    """Rows of `COLUMNS` thumbnails, each row followed by its captions."""
    pieces = sorted(result.pieces, key=lambda p: p.index)
    lines = [
        f"# Gallery: {result.avatar_name}, batch {result.batch_id}",
        "",
        f"{result.published} published, {result.rejected} rejected, "
        f"{result.pending_review} pending review, {result.failed} failed. Only published "
        "pieces are pictured; capa2/capa3 thumbnails are blurred; a capa1 thumbnail opens "
        "its public link when the store has one (pieces on the local store link nowhere: "
        "their file:// path is in the batch's table artifact).",
        "",
        "|" + " |" * COLUMNS,
        "|" + " --- |" * COLUMNS,
    ]
    budget = [MAX_THUMBNAILS]
    for start in range(0, len(pieces), COLUMNS):
        row = pieces[start : start + COLUMNS]
        pad = [""] * (COLUMNS - len(row))
        cells = [_cell(p, image_paths, budget) for p in row] + pad
        captions = [_caption(p) for p in row] + pad
        lines.append("| " + " | ".join(cells) + " |")
        lines.append("| " + " | ".join(captions) + " |")
    return "\n".join(lines)

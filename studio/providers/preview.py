"""The offline preview renderer: a real 1024x1024 PNG per piece, made locally for free.

It stands in when no image provider is configured so that a fresh clone runs a whole
batch. Every image it makes says PREVIEW on its face, and the piece's provider is
`preview`, so nobody mistakes it for a generated image.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import textwrap

from PIL import Image, ImageDraw, ImageFont

from studio.providers.base import BilledJob, ProviderImage
from studio.types import AvatarRef, PieceSpec

SIZE = 1024


class PreviewRenderer:
    name = "preview"
    stand_in = True

    def __init__(self) -> None:
        #: how many images this renderer drew; tests read it to prove nothing is drawn twice
        self.rendered = 0

    async def generate(
        self, spec: PieceSpec, avatar: AvatarRef, job: BilledJob | None = None
    ) -> ProviderImage:
        """A local drawing: nothing is billed, so `job` is never told of one."""
        data = await asyncio.to_thread(render_preview, spec, avatar)
        self.rendered += 1
        return ProviderImage(data=data, content_type="image/png", cost_usd=0.0)


def _palette(seed_text: str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    digest = hashlib.sha256(seed_text.encode()).digest()
    top = (digest[0] // 2 + 64, digest[1] // 2 + 64, digest[2] // 2 + 64)
    bottom = (digest[3] // 3, digest[4] // 3, digest[5] // 3)
    return top, bottom


def render_preview(spec: PieceSpec, avatar: AvatarRef) -> bytes:
    top, bottom = _palette(f"{avatar.id}:{spec.template_id or spec.prompt}")
    gradient = Image.linear_gradient("L").resize((SIZE, SIZE))
    image = Image.composite(
        Image.new("RGB", (SIZE, SIZE), bottom), Image.new("RGB", (SIZE, SIZE), top), gradient
    )
    draw = ImageDraw.Draw(image)
    title = ImageFont.load_default(size=64)
    body = ImageFont.load_default(size=34)
    small = ImageFont.load_default(size=28)
    draw.rectangle((0, 0, SIZE, 110), fill=(0, 0, 0))
    draw.text((40, 22), "PREVIEW - not a generated image", font=title, fill=(255, 210, 0))
    draw.text((40, 170), f"{avatar.name}  ({avatar.niche})", font=title, fill=(255, 255, 255))
    draw.text(
        (40, 260),
        f"{spec.tier}  |  {spec.template_id or 'custom prompt'}",
        font=body,
        fill=(235, 235, 235),
    )
    y = 340
    for line in textwrap.wrap(spec.prompt, width=52)[:14]:
        draw.text((40, y), line, font=body, fill=(250, 250, 250))
        y += 46
    draw.text((40, SIZE - 60), f"piece {spec.piece_id}", font=small, fill=(220, 220, 220))
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()

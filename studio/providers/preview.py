"""The offline preview renderer: a real 1024x1024 PNG per piece, made locally for free.

It stands in when no image provider is configured so that a fresh clone runs a whole
batch. Every image it makes says PREVIEW on its face, and the piece's provider is
`preview`, so nobody mistakes it for a generated image.
"""

from __future__ import annotations

import asyncio
import functools
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


#: palette indices: the background gradient uses 0..GRADIENT_STEPS-1, text the rest
GRADIENT_STEPS = 240
YELLOW, WHITE, BODY, PROMPT, SMALL, BLACK = range(GRADIENT_STEPS, GRADIENT_STEPS + 6)
TEXT_COLOURS = {
    YELLOW: (255, 210, 0),
    WHITE: (255, 255, 255),
    BODY: (235, 235, 235),
    PROMPT: (250, 250, 250),
    SMALL: (220, 220, 220),
    BLACK: (0, 0, 0),
}


def _palette(seed_text: str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    digest = hashlib.sha256(seed_text.encode()).digest()
    top = (digest[0] // 2 + 64, digest[1] // 2 + 64, digest[2] // 2 + 64)
    bottom = (digest[3] // 3, digest[4] // 3, digest[5] // 3)
    return top, bottom


def _colour_table(top: tuple[int, int, int], bottom: tuple[int, int, int]) -> list[int]:
    """A top-to-bottom gradient in GRADIENT_STEPS entries, then the text colours."""
    table: list[int] = []
    for step in range(GRADIENT_STEPS):
        share = step / (GRADIENT_STEPS - 1)
        table += [round(t * (1 - share) + b * share) for t, b in zip(top, bottom, strict=True)]
    for index in sorted(TEXT_COLOURS):
        table += TEXT_COLOURS[index]
    return table


@functools.cache
def _gradient_rows() -> Image.Image:
    """Palette indices rising from top to bottom, shared by every preview (read only).

    A palette image drawn with indices and saved as an 8-bit PNG costs a few ms; the
    RGB composite and 24-bit PNG it replaces cost ~45 ms of CPU per piece, most of a
    demo batch's per-piece cost."""
    column = Image.linear_gradient("L").resize((1, SIZE))
    column = column.point(lambda v: v * (GRADIENT_STEPS - 1) // 255)
    return column.resize((SIZE, SIZE), Image.Resampling.NEAREST)


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


@functools.lru_cache(maxsize=32)
def _face(
    avatar_id: str, avatar_name: str, niche: str, tier: str, template: str, prompt: str
) -> Image.Image:
    """Everything but the piece id, drawn once per template (read only).

    Drawing the text is most of a preview's cost and, within a batch, pieces of one
    template share all of it but their id line."""
    top, bottom = _palette(f"{avatar_id}:{template or prompt}")
    image = _gradient_rows().copy()
    image.putpalette(_colour_table(top, bottom))
    draw = ImageDraw.Draw(image)
    title, body = _font(64), _font(34)
    draw.rectangle((0, 0, SIZE, 110), fill=BLACK)
    draw.text((40, 22), "PREVIEW - not a generated image", font=title, fill=YELLOW)
    draw.text((40, 170), f"{avatar_name}  ({niche})", font=title, fill=WHITE)
    draw.text((40, 260), f"{tier}  |  {template or 'custom prompt'}", font=body, fill=BODY)
    y = 340
    for line in textwrap.wrap(prompt, width=52)[:14]:
        draw.text((40, y), line, font=body, fill=PROMPT)
        y += 46
    return image


def render_preview(spec: PieceSpec, avatar: AvatarRef) -> bytes:
    image = _face(
        avatar.id, avatar.name, avatar.niche, spec.tier, spec.template_id or "", spec.prompt
    ).copy()
    ImageDraw.Draw(image).text(
        (40, SIZE - 60), f"piece {spec.piece_id}", font=_font(28), fill=SMALL
    )
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()

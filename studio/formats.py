"""Image formats: each platform's aspect ratio, and how each provider is sent it.

A TikTok piece is portrait 9:16, an Instagram feed post 4:5: making every image square
wastes the frame a platform shows (docs/formats.md has the table and its sources).
The providers take a format in two ways:

- ComfyUI and Modal run SDXL and are sent a width and a height. SDXL was trained on
  ~1 megapixel buckets whose sides are multiples of 64; a size off those buckets gives
  doubled bodies and stretched faces, so a ratio is sent as its nearest bucket
  (`SDXL_BUCKETS`), and refused when even the nearest is more than `SDXL_TOLERANCE` away.
- Replicate's FLUX models take an `aspect_ratio` input restricted to an enum
  (`REPLICATE_ASPECT_RATIOS`); anything else is answered 422 before a prediction
  exists, so such a format is refused here first, naming the provider.

The precedence is: an override (per batch `--format`, or the avatar's `format`) over
the platform's default over square 1:1.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

from studio.types import Platform

__all__ = [
    "DEFAULT_ASPECT",
    "MAX_RATIO",
    "PLATFORM_ASPECT",
    "REPLICATE_ASPECT_RATIOS",
    "SDXL_BUCKETS",
    "SDXL_TOLERANCE",
    "FormatError",
    "ImageFormat",
    "format_refusal",
    "image_format",
    "parse_aspect_ratio",
    "replicate_aspect_ratio",
    "sdxl_size",
]


class FormatError(ValueError):
    """A format (aspect ratio or platform) that cannot be used; the message is one line."""


DEFAULT_ASPECT = "1:1"

#: each platform's default aspect ratio (sources in docs/formats.md)
PLATFORM_ASPECT: dict[str, str] = {
    Platform.INSTAGRAM.value: "4:5",  # feed portrait, the tallest a feed post shows whole
    Platform.TIKTOK.value: "9:16",  # full-screen vertical
    Platform.TWITTER.value: "16:9",  # in-timeline single image shown uncropped
    Platform.PATREON.value: "4:5",  # one of the ratios Patreon recommends for post images
    Platform.ONLYFANS.value: "4:5",  # no published guidance: the mobile portrait feed ratio
}

#: SDXL's ~1 MP training buckets (width, height), sides multiples of 64 (SDXL report,
#: Podell et al. 2023, appendix; the sizes SDXL front-ends offer)
SDXL_BUCKETS: tuple[tuple[int, int], ...] = (
    (1024, 1024),
    (1152, 896),
    (896, 1152),
    (1216, 832),
    (832, 1216),
    (1344, 768),
    (768, 1344),
    (1536, 640),
    (640, 1536),
)

#: how far (relative) the nearest bucket's ratio may be from the one asked for
SDXL_TOLERANCE = 0.10

#: the `aspect_ratio` enum of black-forest-labs/flux-dev, flux-schnell and flux-dev-lora
REPLICATE_ASPECT_RATIOS: tuple[str, ...] = (
    "1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21",
)

#: the widest (and, inverted, the tallest) ratio accepted at all
MAX_RATIO = 4

#: providers sent width and height (SDXL); every other name is treated the same way,
#: except those sent Replicate's aspect_ratio enum
ENUM_PROVIDERS = frozenset({"replicate"})

_NUMBER = r"(\d{1,4}(?:\.\d{1,3})?)"
#: "9:16", "9x16", "9/16", spaces allowed; ASCII digits only
_PATTERN = re.compile(rf"^\s*{_NUMBER}\s*[:xX/]\s*{_NUMBER}\s*$", re.ASCII)
_ACCEPTED = "expected W:H with positive numbers such as 9:16 or 4:5, between 1:4 and 4:1"


def _number(text: str) -> str:
    """A part of a ratio as written, without leading zeros or trailing decimal zeros."""
    value = Fraction(text)
    if value.denominator == 1:
        return str(value.numerator)
    return format(float(value), "g")


def parse_aspect_ratio(text: str) -> str:
    """"9:16", " 9 x 16 ", "9X16" -> "9:16"; raises FormatError on anything else.

    Not reduced ("18:32" stays): the providers compare by value, and Replicate's enum
    spells "21:9" unreduced.
    """
    match = _PATTERN.match(text) if isinstance(text, str) else None
    if match is None:
        raise FormatError(f"format {text!r} is not an aspect ratio: {_ACCEPTED}")
    width, height = (Fraction(part) for part in match.groups())
    if width <= 0 or height <= 0:
        raise FormatError(f"format {text!r} has a zero side: {_ACCEPTED}")
    if width / height > MAX_RATIO or height / width > MAX_RATIO:
        raise FormatError(f"format {text!r} is too narrow or too wide: {_ACCEPTED}")
    return f"{_number(match.group(1))}:{_number(match.group(2))}"


def _ratio(aspect_ratio: str) -> Fraction:
    width, height = parse_aspect_ratio(aspect_ratio).split(":")
    return Fraction(width) / Fraction(height)


def _distance(bucket: tuple[int, int], ratio: Fraction) -> float:
    """Relative distance of a bucket's ratio from `ratio`, symmetric in width/height."""
    return abs(math.log((bucket[0] / bucket[1]) / float(ratio)))


def sdxl_size(aspect_ratio: str) -> tuple[int, int]:
    """The SDXL bucket (width, height) nearest to `aspect_ratio`."""
    ratio = _ratio(aspect_ratio)
    return min(SDXL_BUCKETS, key=lambda bucket: _distance(bucket, ratio))


def _sdxl_serves(aspect_ratio: str) -> bool:
    ratio = _ratio(aspect_ratio)
    return _distance(sdxl_size(aspect_ratio), ratio) <= math.log(1 + SDXL_TOLERANCE)


def replicate_aspect_ratio(aspect_ratio: str | None) -> str | None:
    """The enum value of Replicate's FLUX equal in value to `aspect_ratio` (None: 1:1).

    "18:32" -> "9:16", "7:3" -> "21:9"; None when the enum has no such ratio.
    """
    if aspect_ratio is None:
        return DEFAULT_ASPECT
    ratio = _ratio(aspect_ratio)
    for value in REPLICATE_ASPECT_RATIOS:
        if _ratio(value) == ratio:
            return value
    return None


@dataclass(frozen=True)
class ImageFormat:
    """An aspect ratio and the SDXL-native size sent for it."""

    aspect_ratio: str
    width: int
    height: int


def image_format(platform: str | None, override: str | None = None) -> ImageFormat:
    """The format of a piece: `override` (batch or avatar) > the platform's > 1:1."""
    if override is not None and str(override).strip():
        aspect = parse_aspect_ratio(override)
    elif platform:
        key = str(platform).strip().lower()
        if key not in PLATFORM_ASPECT:
            accepted = ", ".join(PLATFORM_ASPECT)
            raise FormatError(f"platform {platform!r} has no format: expected one of {accepted}")
        aspect = PLATFORM_ASPECT[key]
    else:
        aspect = DEFAULT_ASPECT
    width, height = sdxl_size(aspect)
    return ImageFormat(aspect, width, height)


def format_refusal(aspect_ratio: str, providers: Iterable[str]) -> str | None:
    """None when every named provider can serve `aspect_ratio`; else why, naming each."""
    aspect = parse_aspect_ratio(aspect_ratio)
    refusals = []
    for provider in dict.fromkeys(providers):
        if provider in ENUM_PROVIDERS:
            if replicate_aspect_ratio(aspect) is None:
                refusals.append(
                    f"{provider} (FLUX aspect_ratio accepts only "
                    f"{', '.join(REPLICATE_ASPECT_RATIOS)})"
                )
        elif not _sdxl_serves(aspect):
            width, height = sdxl_size(aspect)
            refusals.append(
                f"{provider} (nearest SDXL size {width}x{height} is more than "
                f"{SDXL_TOLERANCE:.0%} off)"
            )
    if not refusals:
        return None
    return f"format {aspect} cannot be served by " + "; ".join(refusals)

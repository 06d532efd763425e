"""Answers of a shape a provider's documentation does not list.

Why a module of its own: all three image clients meet the same two questions, "is this
an image?" and "what do we say when the answer is of no known shape?", and a retry must
tell such an answer from a transient failure: re-fetching a job whose output has an
unknown shape gives the same output again, so a resumed job that answers one is dropped
and a new job is made.
"""

from __future__ import annotations

from studio.providers.base import ProviderError

IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
)


class UnexpectedShape(ProviderError):
    """`<provider>: unexpected output shape: <shape>`; retryable (a new job may be fine)."""

    def __init__(self, provider: str, shape: str) -> None:
        super().__init__(provider, f"unexpected output shape: {shape}", retryable=True)
        self.shape = shape


def sniff_image(data: bytes) -> str | None:
    """The image type from the file's first bytes; None when it is not an image."""
    for magic, content_type in IMAGE_MAGIC:
        if data.startswith(magic):
            return content_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None

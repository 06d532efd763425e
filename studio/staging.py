"""Generated images staged on local disk, keyed by batch and piece id.

An image is paid for once: before a provider is called, the image task looks here,
so a retried task, a retried flow run or a resumed batch reuses what was made.
The metadata file is written after the image, atomically, so a crash mid-write
leaves no half-staged piece behind.
"""

from __future__ import annotations

import os
from pathlib import Path

from studio.types import GeneratedImage


class ImageStaging:
    def __init__(self, root: Path, batch_id: str) -> None:
        self.dir = Path(root) / batch_id
        self.dir.mkdir(parents=True, exist_ok=True)

    def _meta(self, piece_id: str) -> Path:
        return self.dir / f"{piece_id}.json"

    def image_path(self, piece_id: str, content_type: str = "image/png") -> Path:
        extension = {"image/jpeg": "jpg", "image/webp": "webp"}.get(content_type, "png")
        return self.dir / f"{piece_id}.{extension}"

    def existing(self, piece_id: str) -> GeneratedImage | None:
        meta = self._meta(piece_id)
        if not meta.exists():
            return None
        image = GeneratedImage.model_validate_json(meta.read_text())
        return image if Path(image.path).exists() else None

    def save(self, image: GeneratedImage, data: bytes) -> GeneratedImage:
        path = self.image_path(image.piece_id, image.content_type)
        _atomic_write(path, data)
        staged = image.model_copy(update={"path": str(path)})
        _atomic_write(self._meta(image.piece_id), staged.model_dump_json().encode())
        return staged


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)

"""Cached assets for graceful degradation (spec: tier 3, "Cached assets").

Every real image made for a templated piece is kept as the avatar's latest asset for
that template. When every provider fails for a piece, the image step reuses that asset
instead of failing the piece; it costs nothing and says so (provider `cache`).
Previews are never cached: they are stand-ins, not assets.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class AssetCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, avatar_id: str, template_id: str) -> Path:
        return self.root / _SAFE.sub("_", avatar_id) / f"{_SAFE.sub('_', template_id)}.img"

    def remember(self, avatar_id: str, template_id: str | None, image_path: Path) -> None:
        """Keep a copy of a freshly made image as the asset for (avatar, template)."""
        if not template_id:
            return
        target = self._path(avatar_id, template_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        shutil.copyfile(image_path, tmp)
        os.replace(tmp, target)

    def lookup(self, avatar_id: str, template_id: str | None) -> bytes | None:
        if not template_id:
            return None
        path = self._path(avatar_id, template_id)
        return path.read_bytes() if path.exists() else None

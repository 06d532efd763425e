"""Old import path of `build_image_chain`, `provider_availability` and the preview.

They live in `studio/providers/build.py`. This module re-exports them until the last
importers (tasks/generate_images.py and the tests that count `registry._PREVIEW`) use
`studio.providers.build`; then it is deleted.
"""

from studio.providers.build import PREVIEW as _PREVIEW
from studio.providers.build import build_image_chain, provider_availability

__all__ = ["_PREVIEW", "build_image_chain", "provider_availability"]

"""Flow tests run on a real, temporary Prefect API."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _prefect(prefect_api) -> None:
    return None


@pytest.fixture
def demo_avatar(studio_env) -> str:
    from studio.bootstrap import ensure_demo_avatar

    return ensure_demo_avatar()

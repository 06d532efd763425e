"""Fixtures: a fresh OpenAI moderation emulator per test, settings, staged images."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from studio.moderation.base import ModerationItem
from studio.moderation.settings import ModerationSettings
from tests.emulators.base import Behaviour
from tests.emulators.openai_api import OpenAIModerationEmulator

API_KEY = "sk-openai-test-SECRET-abcdef"


@pytest.fixture
def openai_emu() -> Iterator[OpenAIModerationEmulator]:
    with OpenAIModerationEmulator(Behaviour(retry_after=0), api_key=API_KEY) as emulator:
        yield emulator


@pytest.fixture
def moderation_settings(openai_emu: OpenAIModerationEmulator) -> ModerationSettings:
    return ModerationSettings(
        OPENAI_API_KEY=API_KEY,
        OPENAI_BASE_URL=f"{openai_emu.url}/v1",
        MODERATION_BACKOFF_BASE_SECONDS=0.01,
        MODERATION_BACKOFF_MAX_SECONDS=0.05,
        MODERATION_MAX_RETRIES=2,
        MODERATION_TIMEOUT_SECONDS=5,
    )


@pytest.fixture
def stage_image(tmp_path: Path) -> Callable[[str, str], str]:
    """Write a small real PNG; `marker` goes into a text chunk the emulator can match."""

    def write(piece_id: str, marker: str = "plain") -> str:
        info = PngInfo()
        info.add_text("Comment", marker)
        path = tmp_path / f"{piece_id}.png"
        Image.new("RGB", (8, 8), (200, 180, 160)).save(path, pnginfo=info)
        return str(path)

    return write


@pytest.fixture
def make_items(stage_image) -> Callable[..., list[ModerationItem]]:
    def build(
        n: int,
        *,
        tier: str = "capa1",
        custom: bool = False,
        category: str = "fitness",
        prefix: str = "p",
        text: str = "Fresh look, new energy",
        images: bool = True,
    ) -> list[ModerationItem]:
        return [
            ModerationItem(
                piece_id=f"{prefix}{i:03d}",
                tier=tier,  # type: ignore[arg-type]
                custom=custom,
                text=f"{text} {i}",
                image_path=stage_image(f"{prefix}{i:03d}") if images else None,
                category=category,
            )
            for i in range(n)
        ]

    return build

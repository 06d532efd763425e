"""Emulators and domain values shared by the provider tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from studio.types import AvatarRef, PieceSpec
from tests.emulators.base import Behaviour
from tests.emulators.comfyui import ComfyUIEmulator
from tests.emulators.modal_endpoint import ModalEndpointEmulator
from tests.emulators.replicate_api import ReplicateEmulator

MODAL_KEY = "wk-test-key-0001"
MODAL_SECRET = "ws-test-secret-0001"
REPLICATE_TOKEN = "r8_test_token_0001"


@pytest.fixture
def avatar() -> AvatarRef:
    return AvatarRef(
        id="av-1", name="Nova", niche="fitness",
        lora_weights_url="https://weights.example/loras/nova_v2.safetensors",
    )


def make_spec(index: int = 0, batch_id: str = "b-1") -> PieceSpec:
    return PieceSpec(
        piece_id=f"{batch_id}-p{index:03d}", batch_id=batch_id, index=index,
        prompt="a portrait in a sunny park, neutral placeholder scene", tier="capa1",
        template_id="t-1",
    )


@pytest.fixture
def spec() -> PieceSpec:
    return make_spec()


@pytest.fixture
def comfyui() -> Iterator[ComfyUIEmulator]:
    with ComfyUIEmulator(Behaviour(seed=1)) as emulator:
        yield emulator  # type: ignore[misc]


@pytest.fixture
def modal() -> Iterator[ModalEndpointEmulator]:
    emulator = ModalEndpointEmulator(
        Behaviour(seed=2), token_id=MODAL_KEY, token_secret=MODAL_SECRET
    )
    with emulator:
        yield emulator  # type: ignore[misc]


@pytest.fixture
def replicate_api() -> Iterator[ReplicateEmulator]:
    with ReplicateEmulator(Behaviour(seed=3), token=REPLICATE_TOKEN) as emulator:
        yield emulator  # type: ignore[misc]

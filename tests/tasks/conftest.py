"""Image-task tests: a real Prefect API, the provider emulators, env pointing at them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.emulators.base import Behaviour
from tests.emulators.comfyui import ComfyUIEmulator
from tests.emulators.modal_endpoint import ModalEndpointEmulator
from tests.emulators.replicate_api import ReplicateEmulator

MODAL_KEY = "wk-task-key-0001"
MODAL_SECRET = "ws-task-secret-0001"
REPLICATE_TOKEN = "r8_task_token_0001"
PROVIDER_ENV = (
    "COMFYUI_ENABLED", "COMFYUI_ENDPOINT", "MODAL_SDXL_ENDPOINT", "MODAL_TOKEN_ID",
    "MODAL_TOKEN_SECRET", "REPLICATE_API_TOKEN", "REPLICATE_BASE_URL",
    "LORA_INFERENCE_PROVIDER_ORDER", "PROVIDER_STRATEGY",
)


@pytest.fixture(autouse=True)
def _prefect(prefect_api) -> None:
    return None


@pytest.fixture
def emulators() -> Iterator[tuple[ComfyUIEmulator, ModalEndpointEmulator, ReplicateEmulator]]:
    comfyui = ComfyUIEmulator(Behaviour(seed=11))
    modal = ModalEndpointEmulator(Behaviour(seed=12), token_id=MODAL_KEY, token_secret=MODAL_SECRET)
    replicate = ReplicateEmulator(Behaviour(seed=13), token=REPLICATE_TOKEN)
    with comfyui, modal, replicate:
        yield comfyui, modal, replicate  # type: ignore[misc]


@pytest.fixture
def provider_env(monkeypatch, emulators):
    """Every provider configured against the emulators; fast polling and backoff."""
    comfyui, modal, replicate = emulators
    for key in PROVIDER_ENV:
        monkeypatch.delenv(key, raising=False)
    env = {
        "COMFYUI_ENABLED": "true",
        "COMFYUI_ENDPOINT": comfyui.url,
        "COMFYUI_POLL_INTERVAL": "0.02",
        "MODAL_SDXL_ENDPOINT": modal.url,
        "MODAL_TOKEN_ID": MODAL_KEY,
        "MODAL_TOKEN_SECRET": MODAL_SECRET,
        "REPLICATE_API_TOKEN": REPLICATE_TOKEN,
        "REPLICATE_BASE_URL": replicate.url,
        "REPLICATE_POLL_INTERVAL": "0.02",
        "PROVIDER_BACKOFF_UNIT": "0.01",
        "PROVIDER_SLOT_POLL_SECONDS": "0.05",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    import tasks.generate_images as generate_images

    generate_images._chain = None
    yield env
    generate_images._chain = None

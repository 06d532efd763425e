"""Blocks saved on the Prefect server configure a batch like environment variables do,
without overriding the environment and without leaking secrets to the log."""

from __future__ import annotations

import logging

import pytest

from blocks import ContentStorage, ProviderCredentials, apply_registered_blocks


async def test_blocks_become_environment(monkeypatch, caplog) -> None:
    for variable in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "R2_BUCKET_NAME", "R2_PUBLIC_URL"):
        # set-then-delete registers "absent" as the state to restore after the test, so
        # what apply_registered_blocks exports cannot leak into later tests
        monkeypatch.setenv(variable, "")
        monkeypatch.delenv(variable)
    monkeypatch.setenv("R2_PUBLIC_URL", "https://cdn.from-env.example")
    await ProviderCredentials(anthropic_api_key="sk-ant-block-secret-123").asave(
        "unit", overwrite=True
    )
    await ContentStorage(
        r2_bucket_name="studio-bucket", r2_public_url="https://cdn.from-block.example"
    ).asave("unit", overwrite=True)

    with caplog.at_level(logging.DEBUG, logger="studio"):
        applied = await apply_registered_blocks("unit")

    import os

    assert os.environ["ANTHROPIC_API_KEY"] == "sk-ant-block-secret-123"
    assert os.environ["R2_BUCKET_NAME"] == "studio-bucket"
    assert os.environ["R2_PUBLIC_URL"] == "https://cdn.from-env.example"  # env wins
    assert "R2_PUBLIC_URL" not in applied
    assert "sk-ant-block-secret-123" not in caplog.text


@pytest.fixture(autouse=True)
def _fresh_settings_after():
    yield
    from studio.settings import reload_settings

    reload_settings()


async def test_no_blocks_is_fine() -> None:
    assert await apply_registered_blocks("nothing-saved-under-this-name") == []

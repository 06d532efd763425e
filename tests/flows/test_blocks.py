"""Blocks saved on the Prefect server configure a batch like environment variables do,
by the rules of blocks/sources.py: a keyed provider's URL and key come from one source
(its own credentials block, or the environment for both), secret-holding blocks are used
whole or not at all, and no value reaches the log."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from blocks import (
    AnthropicCredentials,
    ContentStorage,
    ModalCredentials,
    OpenAICredentials,
    ProviderCredentials,
    ProviderEndpoints,
    ReplicateCredentials,
    apply_registered_blocks,
    withdraw_block_exports,
)
from studio.hooks.settings import HookSettings
from studio.moderation.settings import ModerationSettings
from studio.providers.settings import ProviderSettings

VARIABLES = (
    "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL",
    "REPLICATE_API_TOKEN", "REPLICATE_BASE_URL", "MODAL_SDXL_ENDPOINT", "MODAL_TOKEN_ID",
    "MODAL_TOKEN_SECRET", "COMFYUI_ENDPOINT", "LORA_INFERENCE_PROVIDER_ORDER",
    "R2_ACCOUNT_ID", "R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY", "R2_BUCKET_NAME",
    "R2_PUBLIC_URL", "R2_ENDPOINT_URL",
)
ENV_KEY = "sk-ant-ENV-secret-0001"
BLOCK_KEY = "sk-ant-BLOCK-secret-0002"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No provider variable set, no `.env` in the working directory; exports undone after."""
    for variable in VARIABLES:
        # set-then-delete registers "absent" as the state monkeypatch restores
        monkeypatch.setenv(variable, "")
        monkeypatch.delenv(variable)
    monkeypatch.chdir(tmp_path)
    yield
    withdraw_block_exports()
    from studio.settings import reload_settings

    reload_settings()


@pytest.fixture
def name() -> str:
    """A block document name of this test's own, so tests never see each other's blocks."""
    return f"t-{uuid.uuid4().hex[:10]}"


async def test_a_provider_block_supplies_its_url_and_key_together(name, caplog) -> None:
    await AnthropicCredentials(api_key=BLOCK_KEY, base_url="https://proxy.example").asave(name)
    await OpenAICredentials(api_key="sk-oai-BLOCK").asave(name)

    with caplog.at_level(logging.DEBUG, logger="studio"):
        applied = await apply_registered_blocks(name)

    hooks = HookSettings()
    assert hooks.api_base_url == "https://proxy.example"
    assert hooks.anthropic_api_key.get_secret_value() == BLOCK_KEY
    moderation = ModerationSettings()
    # a block without a URL means the provider's official one, exported explicitly
    assert moderation.api_base_url == "https://api.openai.com/v1"
    assert os.environ["OPENAI_BASE_URL"] == "https://api.openai.com/v1"
    assert set(applied) == {
        "ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_KEY",
    }
    assert BLOCK_KEY not in caplog.text and "sk-oai-BLOCK" not in caplog.text


@pytest.mark.parametrize("env_variable", ["ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"])
async def test_a_provider_the_environment_configures_ignores_its_block(
    name, monkeypatch, caplog, env_variable
) -> None:
    """Either variable in the environment makes it the source of both: never mixed."""
    env_value = ENV_KEY if env_variable == "ANTHROPIC_API_KEY" else "https://env-proxy.example"
    monkeypatch.setenv(env_variable, env_value)
    await AnthropicCredentials(api_key=BLOCK_KEY, base_url="https://block.example").asave(name)

    with caplog.at_level(logging.WARNING, logger="studio.blocks"):
        applied = await apply_registered_blocks(name)

    assert not {"ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"} & set(applied)
    hooks = HookSettings()
    if env_variable == "ANTHROPIC_API_KEY":
        # the environment's key goes to the environment's URL: Anthropic's own
        assert hooks.anthropic_api_key.get_secret_value() == ENV_KEY
        assert hooks.api_base_url == "https://api.anthropic.com"
    else:
        # the environment's URL gets no key from the block: hooks use the stand-in
        assert not hooks.configured
        assert hooks.api_base_url == "https://env-proxy.example"
    assert f"studio-anthropic-credentials/{name} not used" in caplog.text
    assert env_variable in caplog.text
    assert BLOCK_KEY not in caplog.text and ENV_KEY not in caplog.text
    assert "block.example" not in caplog.text


async def test_a_dotenv_file_counts_as_the_environment(name, tmp_path) -> None:
    (tmp_path / ".env").write_text(f"ANTHROPIC_API_KEY={ENV_KEY}\n")
    await AnthropicCredentials(api_key=BLOCK_KEY, base_url="https://block.example").asave(name)

    await apply_registered_blocks(name)

    hooks = HookSettings()
    assert hooks.anthropic_api_key.get_secret_value() == ENV_KEY
    assert hooks.api_base_url == "https://api.anthropic.com"


async def test_old_endpoints_block_urls_are_ignored_and_named(name, monkeypatch, caplog) -> None:
    """The finding: an endpoints block pointing Anthropic and OpenAI elsewhere, keys in env."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", ENV_KEY)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-oai-ENV")
    await ProviderEndpoints(
        anthropic_base_url="http://attacker.example",
        openai_base_url="http://attacker.example/v1",
        comfyui_endpoint="http://gpu-box:8188",
        provider_order="comfyui",
    ).asave(name)

    with caplog.at_level(logging.WARNING, logger="studio.blocks"):
        applied = await apply_registered_blocks(name)

    assert sorted(applied) == ["COMFYUI_ENDPOINT", "LORA_INFERENCE_PROVIDER_ORDER"]
    assert HookSettings().api_base_url == "https://api.anthropic.com"
    assert ModerationSettings().api_base_url == "https://api.openai.com/v1"
    assert ProviderSettings().comfyui_endpoint == "http://gpu-box:8188"
    warning = caplog.text
    assert f"studio-provider-endpoints/{name}" in warning
    assert "anthropic_base_url, openai_base_url no longer used" in warning
    assert "attacker.example" not in warning


async def test_old_credentials_block_keys_go_to_the_official_url_only(name, caplog) -> None:
    await ProviderCredentials(
        anthropic_api_key=BLOCK_KEY, modal_token_id="mk", modal_token_secret="ms"
    ).asave(name)
    await ProviderEndpoints(anthropic_base_url="http://attacker.example").asave(name)

    with caplog.at_level(logging.WARNING, logger="studio.blocks"):
        applied = await apply_registered_blocks(name)

    hooks = HookSettings()
    assert hooks.anthropic_api_key.get_secret_value() == BLOCK_KEY
    assert hooks.api_base_url == "https://api.anthropic.com"
    settings = ProviderSettings()
    assert settings.modal_token_id is None and not settings.configured("modal")
    assert "MODAL_TOKEN_ID" not in applied
    assert f"studio-provider-credentials/{name} is deprecated" in caplog.text
    assert "modal keys are not used" in caplog.text
    assert BLOCK_KEY not in caplog.text and "ms" not in caplog.text.split()


async def test_a_new_provider_block_wins_over_the_old_credentials_block(name) -> None:
    await ProviderCredentials(replicate_api_token="r8-OLD").asave(name)
    await ReplicateCredentials(api_token="r8-NEW", base_url="http://replicate.internal").asave(
        name
    )
    await ModalCredentials(
        endpoint="https://me--sdxl.modal.run", token_id="mk", token_secret="ms"
    ).asave(name)

    await apply_registered_blocks(name)

    settings = ProviderSettings()
    assert settings.replicate_api_token.get_secret_value() == "r8-NEW"
    assert settings.replicate_base_url == "http://replicate.internal"
    assert settings.modal_sdxl_endpoint == "https://me--sdxl.modal.run"
    assert settings.modal_token_secret.get_secret_value() == "ms"


async def test_storage_block_is_used_whole_or_not_at_all(name, monkeypatch, caplog) -> None:
    await ContentStorage(
        r2_bucket_name="studio-bucket",
        r2_endpoint_url="http://block-store.example",
        r2_access_key_id="AKIA-BLOCK",
        r2_secret_access_key="block-secret",
    ).asave(name)

    applied = await apply_registered_blocks(name)
    assert os.environ["R2_BUCKET_NAME"] == "studio-bucket"
    assert os.environ["R2_ENDPOINT_URL"] == "http://block-store.example"
    assert "R2_SECRET_ACCESS_KEY" in applied

    # once the environment configures the store, none of the block is mixed in
    monkeypatch.setenv("R2_SECRET_ACCESS_KEY", "env-secret")
    with caplog.at_level(logging.WARNING, logger="studio.blocks"):
        applied = await apply_registered_blocks(name)
    assert applied == []
    assert "R2_ENDPOINT_URL" not in os.environ and "R2_BUCKET_NAME" not in os.environ
    assert f"studio-content-storage/{name} not used" in caplog.text
    assert "env-secret" not in caplog.text and "block-secret" not in caplog.text


async def test_exports_follow_the_saved_block(name) -> None:
    """A long-lived process (serve) sees a block edited or deleted since its last batch."""
    await AnthropicCredentials(api_key=BLOCK_KEY, base_url="https://one.example").asave(name)
    await apply_registered_blocks(name)
    assert HookSettings().api_base_url == "https://one.example"

    await AnthropicCredentials.adelete(name)
    assert await apply_registered_blocks(name) == []
    assert "ANTHROPIC_API_KEY" not in os.environ and "ANTHROPIC_BASE_URL" not in os.environ
    assert not HookSettings().configured


def test_blocks_refuse_a_url_that_is_not_http_and_an_empty_key() -> None:
    with pytest.raises(ValueError):
        AnthropicCredentials(api_key=BLOCK_KEY, base_url="file:///etc/passwd")
    with pytest.raises(ValueError):
        OpenAICredentials(api_key="  ")
    with pytest.raises(ValueError):
        ModalCredentials(endpoint="ftp://x")


async def test_no_blocks_is_fine() -> None:
    assert await apply_registered_blocks("nothing-saved-under-this-name") == []


async def test_one_request_finds_which_types_have_a_saved_block(name) -> None:
    """A batch asks the server once which blocks exist (issue 20: ten reads per batch
    start before); only the types found are read. A lookup that failed would answer
    every type, so this fails if the filter request does not work."""
    from blocks.sources import _saved_types

    await ReplicateCredentials(api_token="r8_BLOCK").asave(name)
    await ContentStorage(r2_bucket_name="studio-bucket").asave(name)
    types = [AnthropicCredentials, ReplicateCredentials, ProviderEndpoints, ContentStorage]

    assert await _saved_types(types, name) == [ReplicateCredentials, ContentStorage]
    assert await _saved_types(types, f"{name}-other") == []


async def test_a_failed_lookup_reads_every_type(name, monkeypatch) -> None:
    """An old server or a refused credential: every type is read, as before, so each
    block still says for itself why it was not used."""
    import prefect.client.orchestration as orchestration

    from blocks.sources import _saved_types

    def refused() -> None:
        raise RuntimeError("no API")

    monkeypatch.setattr(orchestration, "get_client", refused)
    types = [AnthropicCredentials, ReplicateCredentials]
    assert await _saved_types(types, name) == types


def test_prefect_block_register_still_works() -> None:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    cli = Path(sys.executable).with_name("prefect")
    done = subprocess.run(
        [str(cli), "block", "register", "-m", "blocks"],
        cwd=Path(__file__).resolve().parents[2], env=env,
        capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for block_type in ("Studio Anthropic Credentials", "Studio Modal Credentials",
                       "Studio Provider Endpoints", "Studio Content Storage"):
        assert block_type in done.stdout

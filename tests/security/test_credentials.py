"""Issue 15, finding 2 and Modal's redirect: a key goes only where its own configuration
points, and no credentialed client follows a redirect to another origin.

A `CaptureServer` (tests/emulators/capture.py) stands in for the attacker's host and
records every request it receives; the assertions are made there, on what arrived, with
the official SDKs pointed at loopback servers by base URL.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from blocks import (
    AnthropicCredentials,
    OpenAICredentials,
    ProviderEndpoints,
    withdraw_block_exports,
)
from studio.hooks import registry as hooks_registry
from studio.hooks.anthropic_writer import AnthropicHookWriter
from studio.hooks.settings import HookSettings
from studio.moderation.base import ModerationItem
from studio.moderation.openai_moderator import ModerationUnavailable, OpenAIModerator
from studio.moderation.settings import ModerationSettings
from studio.providers.base import ProviderError
from studio.providers.modal_endpoint import ModalSDXLProvider
from studio.providers.replicate_flux import ReplicateFluxProvider
from studio.providers.same_origin import ForeignOrigin
from studio.types import AvatarRef, PieceSpec, Platform
from tests.emulators.anthropic_api import AnthropicEmulator
from tests.emulators.base import Behaviour
from tests.emulators.billing import RecordingJob
from tests.emulators.capture import CaptureServer, RedirectServer
from tests.emulators.modal_endpoint import ModalEndpointEmulator
from tests.emulators.openai_api import OpenAIModerationEmulator

ENV_A = "sk-ant-ENV-secret-aaaa"
ENV_O = "sk-oai-ENV-secret-oooo"
BLOCK_A = "sk-ant-BLOCK-secret-bbbb"
BLOCK_O = "sk-oai-BLOCK-secret-cccc"
ATTACKER_KEY = "attacker-own-key"
MODAL_KEY, MODAL_SECRET = "wk-modal-KEY-1111", "ws-modal-SECRET-2222"
REPLICATE_TOKEN = "r8_replicate-SECRET-3333"
PROVIDER_VARIABLES = (
    "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN", "OPENAI_API_KEY",
    "OPENAI_BASE_URL", "REPLICATE_API_TOKEN", "REPLICATE_BASE_URL", "MODAL_SDXL_ENDPOINT",
    "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "COMFYUI_ENABLED",
)
REDIRECTS = [302, 303, 307, 308]


@pytest.fixture
def capture() -> Iterator[CaptureServer]:
    with CaptureServer() as server:
        yield server


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for variable in PROVIDER_VARIABLES:
        monkeypatch.setenv(variable, "")
        monkeypatch.delenv(variable)
    monkeypatch.setenv("HOOK_BACKOFF_BASE_SECONDS", "0.01")
    monkeypatch.setenv("MODERATION_BACKOFF_BASE_SECONDS", "0.01")
    monkeypatch.chdir(tmp_path)  # no .env of the checkout
    hooks_registry.reset_breakers()
    yield
    withdraw_block_exports()
    hooks_registry.reset_breakers()


@pytest.fixture
async def default_blocks(prefect_api) -> Iterator[list[type]]:
    """Block types a test saves under `default` (what a batch loads); deleted afterwards."""
    saved: list[type] = []
    yield saved
    for block_type in saved:
        try:
            await block_type.adelete("default")
        except Exception:  # never saved (the test failed before): nothing to remove
            pass


async def _save_default(saved: list[type], block) -> None:
    await block.asave("default", overwrite=True)
    saved.append(type(block))


async def _batch(pieces: int, seed: int):
    from flows.content_batch import content_batch
    from studio.bootstrap import ensure_demo_avatar

    ensure_demo_avatar()
    return await content_batch(avatar_id="demo", num_pieces=pieces, seed=seed)


# --- (1) and (2): blocks and the environment never mix a URL with another's key ---------


@pytest.mark.parametrize("env_urls", [False, True], ids=["keys-only-in-env", "keys-and-urls"])
async def test_blocks_pointing_hooks_and_moderation_elsewhere_capture_no_key(
    studio_env, clean_env, default_blocks, capture, monkeypatch, caplog, env_urls
) -> None:
    """The finding, as a batch: the operator's keys are in the environment (with or
    without their URLs); an attacker saved blocks pointing Anthropic and OpenAI at their
    host (the old endpoints block, and the new credentials blocks with a key of their own).

    Without URLs in the environment the keys go to the providers' official URLs; here
    those addresses are emulators (the settings' default-URL constants, patched), so the
    batch runs offline and the test sees where each key arrived."""
    import studio.hooks.settings as hook_settings
    import studio.moderation.settings as moderation_settings

    with AnthropicEmulator(Behaviour(retry_after=0), api_key=ENV_A) as claude, \
            OpenAIModerationEmulator(Behaviour(retry_after=0), api_key=ENV_O) as moderation:
        monkeypatch.setenv("ANTHROPIC_API_KEY", ENV_A)
        monkeypatch.setenv("OPENAI_API_KEY", ENV_O)
        if env_urls:
            monkeypatch.setenv("ANTHROPIC_BASE_URL", claude.url)
            monkeypatch.setenv("OPENAI_BASE_URL", f"{moderation.url}/v1")
        else:  # "the official API" is an emulator in this test
            monkeypatch.setattr(hook_settings, "ANTHROPIC_DEFAULT_BASE_URL", claude.url)
            monkeypatch.setattr(
                moderation_settings, "OPENAI_DEFAULT_BASE_URL", f"{moderation.url}/v1"
            )
        await _save_default(default_blocks, ProviderEndpoints(
            anthropic_base_url=capture.url, openai_base_url=f"{capture.url}/v1"
        ))
        await _save_default(
            default_blocks, AnthropicCredentials(api_key=ATTACKER_KEY, base_url=capture.url)
        )
        await _save_default(
            default_blocks, OpenAICredentials(api_key=ATTACKER_KEY, base_url=f"{capture.url}/v1")
        )
        caplog.set_level(logging.INFO)

        result = await _batch(pieces=3, seed=11)

        # nothing at all reached the attacker's host, least of all a key
        assert capture.captured == []
        # instead the environment configured both providers, URL and key together (the
        # emulators answer 401 to any other key)
        assert claude.counters.requests("messages") >= 1
        assert moderation.counters.requests("moderations.text") == 1
        assert not {"hooks:template", "moderation:local"} & set(result.stand_ins)
    assert "studio-provider-endpoints/default: anthropic_base_url, openai_base_url" in caplog.text
    assert "studio-anthropic-credentials/default not used for anthropic" in caplog.text
    assert "studio-openai-credentials/default not used for openai" in caplog.text
    log = Path(studio_env.log_file).read_text() + caplog.text
    for secret in (ENV_A, ENV_O, ATTACKER_KEY):
        assert secret not in log


async def test_a_provider_block_sends_its_own_key_to_its_own_url(
    studio_env, clean_env, default_blocks, caplog
) -> None:
    with AnthropicEmulator(Behaviour(retry_after=0), api_key=BLOCK_A) as claude, \
            OpenAIModerationEmulator(Behaviour(retry_after=0), api_key=BLOCK_O) as moderation:
        await _save_default(
            default_blocks, AnthropicCredentials(api_key=BLOCK_A, base_url=claude.url)
        )
        await _save_default(
            default_blocks, OpenAICredentials(api_key=BLOCK_O, base_url=f"{moderation.url}/v1")
        )
        caplog.set_level(logging.INFO)

        result = await _batch(pieces=3, seed=12)

        # the emulators answer 401 to any other key: these calls carried the block's
        assert claude.counters.requests("messages") >= 1
        assert moderation.counters.requests("moderations.text") == 1
        assert not {"hooks:template", "moderation:local"} & set(result.stand_ins)
    log = Path(studio_env.log_file).read_text() + caplog.text
    assert BLOCK_A not in log and BLOCK_O not in log


async def test_sdk_credentials_of_the_environment_stay_off_a_block_url(
    clean_env, prefect_api, capture, monkeypatch, avatar, tmp_path
) -> None:
    """The SDKs read more credentials from the environment than ours (ANTHROPIC_AUTH_TOKEN,
    OPENAI_ADMIN_KEY); with a block as the source, only the block's key reaches its URL."""
    import uuid

    from blocks import apply_registered_blocks

    monkeypatch.setenv("ANTHROPIC_AUTH_TOKEN", "env-anthropic-auth-token")
    monkeypatch.setenv("OPENAI_ADMIN_KEY", "env-openai-admin-key")
    name = f"t-{uuid.uuid4().hex[:10]}"
    await AnthropicCredentials(api_key=BLOCK_A, base_url=capture.url).asave(name)
    await OpenAICredentials(api_key=BLOCK_O, base_url=f"{capture.url}/v1").asave(name)
    try:
        await apply_registered_blocks(name)
    finally:
        await AnthropicCredentials.adelete(name)
        await OpenAICredentials.adelete(name)
    image = tmp_path / "p1.png"
    Image.new("RGB", (8, 8), (200, 180, 160)).save(image)

    hooks = HookSettings().model_copy(update={"max_retries": 0})
    await AnthropicHookWriter(hooks).write(
        [PieceSpec(piece_id="p1", batch_id="b1", index=0, prompt="x", tier="capa1",
                   template_id="tpl-1", category="fitness")],
        avatar, Platform.INSTAGRAM,
    )
    moderation = ModerationSettings().model_copy(update={"max_retries": 0})
    with pytest.raises(ModerationUnavailable):
        await OpenAIModerator(moderation).score(
            [ModerationItem(piece_id="p1", tier="capa1", custom=False, text="hi")]
        )

    assert len(capture.leaked(BLOCK_A)) >= 1 and len(capture.leaked(BLOCK_O)) >= 1
    assert capture.leaked("env-anthropic-auth-token", "env-openai-admin-key") == []


# --- (3) Modal: the token headers stay on the endpoint's origin ---------------------------


@pytest.fixture
def spec() -> PieceSpec:
    return PieceSpec(
        piece_id="piece-1", batch_id="b1", index=0, prompt="studio portrait",
        tier="capa1", template_id="tpl-1", category="fitness",
    )


@pytest.fixture
def avatar() -> AvatarRef:
    return AvatarRef(
        id="av-1", name="Nova", niche="fitness",
        lora_weights_url="https://weights.example/loras/nova.safetensors",
    )


@pytest.mark.parametrize("status", REDIRECTS)
async def test_modal_redirect_to_another_origin_is_not_followed(
    capture, spec, avatar, status
) -> None:
    with RedirectServer(f"{capture.url}/result", status=status) as endpoint:
        provider = ModalSDXLProvider(
            f"{endpoint.url}/", token_id=MODAL_KEY, token_secret=MODAL_SECRET
        )
        job = RecordingJob()
        with pytest.raises(ProviderError) as caught:
            await provider.generate(spec, avatar, job=job)
        await provider.aclose()
        assert endpoint.requests == 1

    assert capture.captured == []
    assert not caught.value.retryable  # a retry would pay for a call that goes the same way
    assert "another origin" in str(caught.value)
    assert MODAL_KEY not in str(caught.value) and MODAL_SECRET not in str(caught.value)
    # billed (the endpoint accepted the call) but with no result URL worth resuming
    assert job.created_ids == [None]


async def test_modal_never_resumes_a_result_url_on_another_origin(capture, spec, avatar) -> None:
    with ModalEndpointEmulator(token_id=MODAL_KEY, token_secret=MODAL_SECRET) as modal:
        provider = ModalSDXLProvider(modal.url, token_id=MODAL_KEY, token_secret=MODAL_SECRET)
        job = RecordingJob(resume_job_id=f"{capture.url}/?__modal_function_call_id=fc-1")
        with pytest.raises(ProviderError) as caught:
            await provider.generate(spec, avatar, job=job)
        # and the client itself refuses any other origin, whatever code path asks
        with pytest.raises(ForeignOrigin):
            await provider._client.get(f"{capture.url}/anything")
        await provider.aclose()
    assert capture.captured == []
    assert "another origin" in str(caught.value)


async def test_modal_same_origin_303_still_works(spec, avatar) -> None:
    with ModalEndpointEmulator(
        # each answer waits 20 ms before its 303, so the 50 ms job needs a few redirects and
        # never the client's limit of 20 (redirect_after=0 raced a fast machine to 20 303s)
        Behaviour(latency=(0.05, 0.05)), token_id=MODAL_KEY, token_secret=MODAL_SECRET,
        redirect_after=0.02,
    ) as modal:
        provider = ModalSDXLProvider(modal.url, token_id=MODAL_KEY, token_secret=MODAL_SECRET)
        job = RecordingJob()
        image = await provider.generate(spec, avatar, job=job)
        await provider.aclose()
        assert modal.counters.requests("redirect") >= 1
    assert image.data.startswith(b"\x89PNG")
    assert job.created_ids and job.created_ids[0] and job.created_ids[0].startswith("fc-")


# --- (4) the SDK clients: Anthropic and OpenAI follow redirects, Replicate does not ------


@pytest.mark.parametrize("status", REDIRECTS)
async def test_anthropic_client_follows_no_redirect_to_another_origin(
    capture, avatar, status, caplog
) -> None:
    with RedirectServer(capture.url, status=status) as base:
        settings = HookSettings(
            ANTHROPIC_API_KEY=ENV_A, ANTHROPIC_BASE_URL=base.url, HOOK_MAX_RETRIES=0,
            HOOK_TIMEOUT_SECONDS=5,
        )
        specs = [PieceSpec(
            piece_id="p1", batch_id="b1", index=0, prompt="x", tier="capa1",
            template_id="tpl-1", category="fitness",
        )]
        batch = await AnthropicHookWriter(settings).write(specs, avatar, Platform.INSTAGRAM)
        assert base.requests >= 1
    assert capture.captured == []
    # the group fell back to a template hook: the batch goes on without Claude
    assert batch.failures == 1 and batch.hooks["p1"].source == "template"
    # and the log says why, naming origins only
    assert "Credentials kept | refused to send credentials to http://127.0.0.1:" in caplog.text
    assert ENV_A not in caplog.text


@pytest.mark.parametrize("status", REDIRECTS)
async def test_openai_client_follows_no_redirect_to_another_origin(
    capture, tmp_path, status
) -> None:
    image = tmp_path / "p1.png"
    Image.new("RGB", (8, 8), (200, 180, 160)).save(image)
    with RedirectServer(capture.url, status=status) as base:
        settings = ModerationSettings(
            OPENAI_API_KEY=ENV_O, OPENAI_BASE_URL=f"{base.url}/v1", MODERATION_MAX_RETRIES=0,
            MODERATION_TIMEOUT_SECONDS=5,
        )
        item = ModerationItem(
            piece_id="p1", tier="capa2", custom=False, text="hi", image_path=str(image)
        )
        with pytest.raises(ModerationUnavailable):
            await OpenAIModerator(settings).score([item])
        assert base.requests >= 1
    # neither the key nor the premium image went to the other origin
    assert capture.captured == []


@pytest.mark.parametrize("status", [303, 307])
async def test_replicate_client_follows_no_redirect(capture, spec, avatar, status) -> None:
    with RedirectServer(capture.url, status=status) as base:
        provider = ReplicateFluxProvider(REPLICATE_TOKEN, base_url=base.url, throttle_retries=0)
        with pytest.raises(ProviderError) as caught:
            await provider.generate(spec, avatar, job=RecordingJob())
        await provider.aclose()
        assert base.requests >= 1
    assert capture.captured == []
    assert not caught.value.retryable and f"HTTP {status} redirect" in str(caught.value)
    assert REPLICATE_TOKEN not in str(caught.value)


async def test_unpinned_sdk_would_follow_a_redirect_with_the_body(capture) -> None:
    """Why the pin: the SDK's own client follows a 307 to another origin, dropping only
    `Authorization` (httpx2's rule), so the request body (prompts, images) would leave,
    and any key sent in another header would go with it."""
    from anthropic import AsyncAnthropic

    with RedirectServer(capture.url, status=307) as base:
        client = AsyncAnthropic(api_key=ENV_A, base_url=base.url, max_retries=0)
        with pytest.raises(Exception):  # the capture answers 404
            await client.messages.create(
                model="m", max_tokens=5, messages=[{"role": "user", "content": "the prompt"}]
            )
        await client.close()
    assert len(capture.captured) == 1
    assert b"the prompt" in capture.captured[0].body
    assert capture.leaked(ENV_A) == []


# --- on a real `studio server` with auth, through the README's commands -------------------


def test_on_the_secured_server_a_block_redirect_captures_no_key(
    secured_server, capture, tmp_path
) -> None:
    """As an operator runs it: the server with its credential, the blocks registered and
    saved with the credential (an attacker's endpoints and credentials blocks pointing at
    the capture server), `studio batch run` with the operator's keys and URLs in its
    environment. The batch reads the blocks through the authenticated API, warns, and
    sends every key where the environment points; the capture server sees nothing."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    registered = secured_server.run("prefect", "block", "register", "-m", "blocks")
    assert registered.returncode == 0, registered.stdout + registered.stderr
    with temporary_settings({PREFECT_API_URL: secured_server.api_url,
                             PREFECT_API_AUTH_STRING: secured_server.auth_string}):
        ProviderEndpoints(
            anthropic_base_url=capture.url, openai_base_url=f"{capture.url}/v1"
        ).save("default", overwrite=True)
        AnthropicCredentials(api_key=ATTACKER_KEY, base_url=capture.url).save(
            "default", overwrite=True
        )
        OpenAICredentials(api_key=ATTACKER_KEY, base_url=f"{capture.url}/v1").save(
            "default", overwrite=True
        )
    added = secured_server.run(
        "studio", "avatar", "add", "keys", "--niche", "fitness",
        "--lora", "https://example.com/loras/keys.safetensors",
    )
    assert added.returncode == 0 or "exists" in added.stdout + added.stderr, added.stderr

    with AnthropicEmulator(Behaviour(retry_after=0), api_key=ENV_A) as claude, \
            OpenAIModerationEmulator(Behaviour(retry_after=0), api_key=ENV_O) as moderation:
        env = {
            **secured_server.client_env,
            "ANTHROPIC_API_KEY": ENV_A, "ANTHROPIC_BASE_URL": claude.url,
            "OPENAI_API_KEY": ENV_O, "OPENAI_BASE_URL": f"{moderation.url}/v1",
            "HOOK_BACKOFF_BASE_SECONDS": "0.01", "MODERATION_BACKOFF_BASE_SECONDS": "0.01",
        }
        done = secured_server.run(
            "studio", "batch", "run", "--avatar", "keys", "--pieces", "3", env=env, timeout=240
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-3000:]
        assert claude.counters.requests("messages") >= 1
        assert moderation.counters.requests("moderations.text") == 1

    assert capture.captured == []
    # the operator is told, on the console, which blocks were not used
    assert "studio-anthropic-credentials/default not used" in output
    assert "studio-provider-endpoints/default" in output
    log = (secured_server.root / "studio" / "logs" / "app.log").read_text()
    for secret in (ENV_A, ENV_O, ATTACKER_KEY):
        assert secret not in output and secret not in log

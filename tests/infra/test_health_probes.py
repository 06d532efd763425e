"""Health that probes (issue 16, "Why" 5): each configured provider and store is asked,
under HEALTH_PROBE_TIMEOUT_SECONDS, and the report says healthy/degraded/unhealthy per
component with the reason.

Real parts: the provider emulators (ComfyUI, Modal, Replicate, Anthropic, OpenAI) up, down
(a dead port) or silent (a socket that accepts and never answers), SeaweedFS as the
object store, the test session's Prefect server, and `studio health` itself.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from studio.health import health_report as domain_health_report
from tests.emulators.anthropic_api import AnthropicEmulator
from tests.emulators.base import Behaviour
from tests.emulators.comfyui import ComfyUIEmulator
from tests.emulators.modal_endpoint import ModalEndpointEmulator
from tests.emulators.openai_api import OpenAIModerationEmulator
from tests.emulators.replicate_api import ReplicateEmulator
from tests.storage.conftest import r2_env

MODAL_KEY, MODAL_SECRET = "wk-health-key-0001", "ws-health-SECRET-0001"
REPLICATE_TOKEN = "r8_health_SECRET_0001"
ANTHROPIC_KEY = "sk-ant-health-SECRET-0001"
OPENAI_KEY = "sk-openai-health-SECRET-0001"
SECRETS = (MODAL_SECRET, REPLICATE_TOKEN, ANTHROPIC_KEY, OPENAI_KEY)
CONFIG = (
    "COMFYUI_ENABLED", "COMFYUI_ENDPOINT", "MODAL_SDXL_ENDPOINT", "MODAL_TOKEN_ID",
    "MODAL_TOKEN_SECRET", "REPLICATE_API_TOKEN", "REPLICATE_BASE_URL", "ANTHROPIC_API_KEY",
    "ANTHROPIC_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL", "LORA_INFERENCE_PROVIDER_ORDER",
    "R2_ENDPOINT_URL", "R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY", "R2_BUCKET_NAME",
    "R2_PUBLIC_URL", "R2_PRIVATE_BUCKET_NAME", "R2_ACCOUNT_ID", "HEALTH_PROBE_TIMEOUT_SECONDS",
)



def health_report() -> dict:
    """The report as `studio health` and the health flow ask for it: with Prefect's API
    URL read by the caller (the domain imports no Prefect)."""
    from prefect.settings import PREFECT_API_URL

    return domain_health_report(prefect_api_url=PREFECT_API_URL.value())

@pytest.fixture(autouse=True)
def _clean(prefect_api, studio_env, monkeypatch) -> None:
    for key in CONFIG:
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def dead_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung service)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


@pytest.fixture
def providers(monkeypatch):
    """Every provider emulated and configured: ComfyUI first, then Modal, then Replicate."""
    comfyui = ComfyUIEmulator(Behaviour(seed=31))
    modal = ModalEndpointEmulator(Behaviour(seed=32), token_id=MODAL_KEY, token_secret=MODAL_SECRET)
    replicate = ReplicateEmulator(Behaviour(seed=33), token=REPLICATE_TOKEN)
    anthropic = AnthropicEmulator(api_key=ANTHROPIC_KEY)
    openai = OpenAIModerationEmulator(api_key=OPENAI_KEY)
    with comfyui, modal, replicate, anthropic, openai:
        env = {
            "COMFYUI_ENABLED": "true",
            "COMFYUI_ENDPOINT": comfyui.url,
            "MODAL_SDXL_ENDPOINT": modal.url,
            "MODAL_TOKEN_ID": MODAL_KEY,
            "MODAL_TOKEN_SECRET": MODAL_SECRET,
            "REPLICATE_API_TOKEN": REPLICATE_TOKEN,
            "REPLICATE_BASE_URL": replicate.url,
            "LORA_INFERENCE_PROVIDER_ORDER": "comfyui,modal,replicate",
            "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
            "ANTHROPIC_BASE_URL": anthropic.url,
            "OPENAI_API_KEY": OPENAI_KEY,
            "OPENAI_BASE_URL": f"{openai.url}/v1",
        }
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        yield {"comfyui": comfyui, "modal": modal, "replicate": replicate,
               "anthropic": anthropic, "openai": openai}


@pytest.fixture
def store(s3_server, monkeypatch) -> dict[str, str]:
    s3_server.start()
    public = s3_server.new_bucket("content", public=True)
    private = s3_server.new_bucket("private")
    env = r2_env(s3_server, public, private)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def _status(report: dict, name: str) -> str:
    return report["components"][name]["status"]


def test_everything_up_is_healthy_and_nothing_is_bought(providers, store) -> None:
    report = health_report()
    assert report["status"] == "healthy", report["components"]
    for name in ("database", "images", "comfyui", "modal", "replicate", "hooks",
                 "moderation", "storage", "prefect_api"):
        assert _status(report, name) == "healthy", name
    assert report["checks"]["providers"]["comfyui"]["available"] is True
    assert report["checks"]["r2_storage"]["probe"]["status"] == "healthy"
    # the spec's shape is kept
    assert {"database", "template_library", "providers", "r2_storage"} <= set(report["checks"])
    assert report["template_library"]["cache_performance"]
    # each probe was a read: no job made or billed, no moderation or message call
    assert providers["comfyui"].counters.requests("prompt") == 0
    assert providers["modal"].counters.requests("post") == 0
    assert all(providers[n].billed_jobs == 0 for n in ("comfyui", "modal", "replicate"))
    assert providers["replicate"].counters.requests("account") == 1
    assert providers["anthropic"].counters.requests("models") == 1
    assert providers["anthropic"].counters.requests("messages") == 0
    assert providers["openai"].counters.requests("models") == 1
    text = json.dumps(report)
    assert not [secret for secret in SECRETS if secret in text]


def test_dead_comfyui_makes_studio_health_unhealthy(dead_port, monkeypatch) -> None:
    """The issue's case: ComfyUI the only image provider, on a dead port: exit 1."""
    monkeypatch.setenv("COMFYUI_ENABLED", "true")
    monkeypatch.setenv("COMFYUI_ENDPOINT", f"http://127.0.0.1:{dead_port}")
    from cli.app import app

    result = CliRunner().invoke(app, ["health"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["status"] == "unhealthy"
    assert _status(report, "images") == "unhealthy"
    assert "comfyui" in report["components"]["images"]["reason"]
    comfyui = report["checks"]["providers"]["comfyui"]
    assert comfyui["available"] is False and comfyui["in_order"] is True
    assert "unreachable" in comfyui["reason"]


def test_a_comfyui_endpoint_set_but_not_enabled_is_still_probed(dead_port, monkeypatch) -> None:
    monkeypatch.setenv("COMFYUI_ENDPOINT", f"http://127.0.0.1:{dead_port}")
    report = health_report()
    assert report["status"] == "unhealthy"
    assert "COMFYUI_ENDPOINT does not answer" in report["components"]["images"]["reason"]


def test_the_embedded_demo_is_degraded_and_exits_0() -> None:
    from cli.app import app

    result = CliRunner().invoke(app, ["health"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["status"] == "degraded"
    for name in ("images", "hooks", "moderation", "storage"):
        assert _status(report, name) == "degraded"
        assert "stand-in" in report["components"][name]["reason"]
    assert report["checks"]["providers"]["preview"]["available"] is True


def test_primary_down_with_a_working_fallback_is_degraded(
    providers, dead_port, monkeypatch
) -> None:
    monkeypatch.setenv("COMFYUI_ENDPOINT", f"http://127.0.0.1:{dead_port}")
    report = health_report()
    assert report["status"] == "degraded"
    images = report["components"]["images"]
    assert images["status"] == "degraded"
    assert "fallback in use: comfyui" in images["reason"] and "modal" in images["reason"]
    assert _status(report, "comfyui") == "unhealthy" and _status(report, "modal") == "healthy"


def test_refused_keys_are_named(providers, monkeypatch) -> None:
    """A wrong Replicate token: that provider is down (ComfyUI serves: degraded); a wrong
    OpenAI key: moderation is down, nothing would be published: unhealthy."""
    monkeypatch.setenv("REPLICATE_API_TOKEN", "r8_wrong")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    report = health_report()
    assert report["components"]["replicate"]["reason"] == "credentials refused (HTTP 401)"
    assert _status(report, "images") == "degraded"
    assert _status(report, "moderation") == "unhealthy"
    assert "held for review" in report["components"]["moderation"]["reason"]
    assert report["status"] == "unhealthy"


def test_anthropic_down_falls_back_to_template_hooks(providers, dead_port, monkeypatch) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://127.0.0.1:{dead_port}")
    report = health_report()
    assert _status(report, "hooks") == "degraded"
    assert "template hooks stand in" in report["components"]["hooks"]["reason"]
    assert report["status"] == "degraded"


def test_a_silent_provider_times_out(providers, silent_port, monkeypatch) -> None:
    monkeypatch.setenv("MODAL_SDXL_ENDPOINT", f"http://127.0.0.1:{silent_port}")
    # long enough for the answering probes on a loaded 2-core machine (0.5 s was not)
    monkeypatch.setenv("HEALTH_PROBE_TIMEOUT_SECONDS", "2")
    report = health_report()
    assert report["probe_timeout_seconds"] == 2
    assert report["components"]["modal"] == {
        "status": "unhealthy",
        "reason": "no answer within 2s (HEALTH_PROBE_TIMEOUT_SECONDS)",
    }
    assert _status(report, "images") == "degraded"  # ComfyUI and Replicate answer


def test_a_bad_timeout_is_named(monkeypatch) -> None:
    monkeypatch.setenv("HEALTH_PROBE_TIMEOUT_SECONDS", "soon")
    report = health_report()
    assert report["status"] == "unhealthy"
    assert "HEALTH_PROBE_TIMEOUT_SECONDS" in report["components"]["health_probes"]["reason"]


def test_object_store_missing_bucket_or_down(store, s3_server, dead_port, monkeypatch) -> None:
    monkeypatch.setenv("R2_PRIVATE_BUCKET_NAME", "no-such-bucket-h3")
    report = health_report()
    assert _status(report, "storage") == "unhealthy"
    assert "no-such-bucket-h3: no such bucket" in report["components"]["storage"]["reason"]
    assert s3_server.secret_key not in json.dumps(report)

    monkeypatch.setenv("R2_PRIVATE_BUCKET_NAME", store["R2_PRIVATE_BUCKET_NAME"])
    monkeypatch.setenv("R2_ENDPOINT_URL", f"http://127.0.0.1:{dead_port}")
    report = health_report()
    storage = report["components"]["storage"]
    assert storage["status"] == "degraded" and "kept locally" in storage["reason"]


def test_prefect_api_down_is_unhealthy(dead_port) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{dead_port}/api"}):
        report = health_report()
    assert _status(report, "prefect_api") == "unhealthy"
    assert report["status"] == "unhealthy"


def test_database_without_schema_is_unhealthy_and_not_created(tmp_path, monkeypatch) -> None:
    from studio.db.engine import dispose_engines
    from studio.db.schema_check import forget_checks
    from studio.settings import reload_settings

    missing = tmp_path / "elsewhere" / "studio.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{missing}")
    dispose_engines()
    forget_checks()
    reload_settings()
    report = health_report()
    assert _status(report, "database") == "unhealthy"
    assert "studio init" in report["components"]["database"]["reason"]
    assert not missing.exists()


async def test_health_deployment_fails_only_when_unhealthy(dead_port, monkeypatch) -> None:
    from flows.health_check import health_check

    state = await health_check(return_state=True)  # the embedded demo: degraded
    assert state.is_completed()
    assert state.message.startswith("degraded: ") and "stand-in" in state.message

    monkeypatch.setenv("COMFYUI_ENABLED", "true")
    monkeypatch.setenv("COMFYUI_ENDPOINT", f"http://127.0.0.1:{dead_port}")
    state = await health_check(return_state=True)
    assert state.is_failed()
    assert "images unhealthy" in state.message


def test_an_unreachable_postgresql_is_unhealthy_without_its_password(
    dead_port, monkeypatch
) -> None:
    from studio.db.engine import dispose_engines
    from studio.db.schema_check import forget_checks
    from studio.settings import reload_settings

    monkeypatch.setenv(
        "DATABASE_URL", f"postgresql://studio:pw-SECRET-h3@127.0.0.1:{dead_port}/studio"
    )
    dispose_engines()
    forget_checks()
    reload_settings()
    report = health_report()
    assert report["status"] == "unhealthy"
    assert _status(report, "database") == "unhealthy"
    assert "DATABASE_URL" in report["components"]["database"]["reason"]
    assert "pw-SECRET-h3" not in json.dumps(report)

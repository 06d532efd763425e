"""Fixtures for the review queue: a studio on SQLite and PostgreSQL (the root
`any_database`), content stored in the real S3 server (SeaweedFS) shaped like production
R2 (a public capa1 bucket, a private one), and a batch whose pieces are held because
moderation (the OpenAI emulator) was down, made by the real flow on the real Prefect API.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from studio.types import BatchResult
from tests.emulators.base import Behaviour
from tests.emulators.openai_api import OpenAIModerationEmulator
from tests.infra.seaweedfs import S3Server
from tests.storage.conftest import r2_env
from tests.storage.recording_proxy import RecordingProxy

API_KEY = "sk-openai-review-SECRET-7"


@pytest.fixture(autouse=True)
def _prefect(prefect_api) -> None:
    return None


@dataclass
class Store:
    server: S3Server
    public: str
    private: str
    #: every request the studio sent to the S3 server (the store's endpoint is the proxy)
    wire: RecordingProxy

    def puts(self, bucket: str) -> int:
        """Object uploads (PUTs) the studio sent into `bucket` so far."""
        return sum(
            1 for r in self.wire.requests if r.method == "PUT" and r.path.startswith(f"/{bucket}/")
        )

    def public_link(self, key: str) -> str:
        return f"{self.server.public_url(self.public)}/{key}"

    def keys(self, bucket: str, prefix: str = "avatars/") -> list[str]:
        answer = self.server.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
        return [str(obj["Key"]) for obj in answer.get("Contents", []) or []]


@pytest.fixture
def store(
    any_database, s3_server: S3Server, s3_bucket: str, s3_private_bucket: str, monkeypatch
) -> Iterator[Store]:
    """The studio's content store is the S3 server (capa1 public, premium and staging
    private), reached through a recording proxy so a test can count uploads."""
    from studio.settings import reload_settings

    wire = RecordingProxy(upstream=s3_server.endpoint_url).start()
    for name, value in r2_env(s3_server, s3_bucket, s3_private_bucket).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("R2_ENDPOINT_URL", wire.url)
    reload_settings()
    yield Store(s3_server, s3_bucket, s3_private_bucket, wire)
    wire.stop()


@pytest.fixture
def moderation_down(monkeypatch) -> Iterator[OpenAIModerationEmulator]:
    """OpenAI moderation configured, every call answered 503: checked pieces are held."""
    with OpenAIModerationEmulator(Behaviour(retry_after=0), api_key=API_KEY) as emulator:
        emulator.fail_always = 503
        monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", f"{emulator.url}/v1")
        monkeypatch.setenv("MODERATION_MAX_RETRIES", "0")
        monkeypatch.setenv("MODERATION_BACKOFF_BASE_SECONDS", "0.01")
        monkeypatch.setenv("HOOK_MAX_RETRIES", "0")
        monkeypatch.setenv("HOOK_BACKOFF_BASE_SECONDS", "0.01")
        monkeypatch.setenv("SAFETY_CHECK_SAMPLE_RATE", "1")
        yield emulator


async def make_held_batch(seed: int = 19) -> BatchResult:
    """A real batch of the demo avatar, capa1 and capa3 pieces held for review (call with
    moderation down); the result lists the held pieces only."""
    from flows.content_batch import content_batch
    from studio.bootstrap import ensure_demo_avatar

    ensure_demo_avatar()
    result = await content_batch(
        avatar_id="demo",
        num_pieces=6,
        seed=seed,
        tier_distribution={"capa1": 0.5, "capa2": 0.0, "capa3": 0.5},
    )
    # a template's prompt may be hard-blocked by the screen before generation (rejected,
    # never held): the tests work on the held pieces
    held = [p for p in result.pieces if p.status.value == "pending_review"]
    assert len(held) >= 4, [p.reason for p in result.pieces]
    assert {"capa1", "capa3"} <= {p.tier for p in held}, [(p.tier, p.reason) for p in held]
    assert all(p.reason == "moderation unavailable" for p in held)
    return result.model_copy(update={"pieces": held})


@pytest.fixture
async def held_batch(store: Store, moderation_down) -> BatchResult:
    """Four held pieces whose staged images are in the S3 server's private bucket."""
    return await make_held_batch()

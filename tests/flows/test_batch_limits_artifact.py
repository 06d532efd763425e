"""The batch's "Provider limits" section (issue 20): each change of a provider's
fleet-wide limit between the batch's start and end, or one line saying the limits did
not change, at the end of its gallery artifact, summed up in its table's description.

The changes are made by the fleet's own code on a real Prefect limit: a whole batch
whose Replicate (the emulator) answers 429 with Retry-After, and, for the window's
edges, the DB layer's `adjust` (what each batch process runs) before, during and after a
batch row's life.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.exceptions import ObjectNotFound
from sqlalchemy import text

from deployments.concurrency_limits import apply_provider_limits
from flows.batch_artifact import LIMITS_UNCHANGED, limit_history
from flows.content_batch import content_batch
from studio.db.engine import session_scope
from studio.db.models import Batch
from studio.db.provider_pace import adjust
from studio.providers.aimd import Knobs, Throttled
from studio.providers.settings import ProviderSettings
from tests.emulators.base import Behaviour
from tests.emulators.replicate_api import ReplicateEmulator
from tests.tasks.conftest import PROVIDER_ENV, REPLICATE_TOKEN


class PrefectLimit:
    def __init__(self, client: SyncPrefectClient, provider: str) -> None:
        self.client, self.name = client, f"provider:{provider}"

    def read(self) -> int | None:
        try:
            return self.client.read_global_concurrency_limit_by_name(self.name).limit
        except ObjectNotFound:
            return None

    def write(self, limit: int) -> None:
        self.client.update_global_concurrency_limit(
            self.name, GlobalConcurrencyLimitUpdate(limit=limit)
        )

    def in_flight(self) -> int | None:
        return None  # not known: decreases start from the limit (5 -> 3)


@pytest.fixture
async def limits_at_ceiling(studio_env, monkeypatch):
    monkeypatch.setenv("REPLICATE_MAX_CONCURRENT", "5")
    await apply_provider_limits(ProviderSettings(_env_file=None))


@pytest.fixture
def prefect() -> Iterator[SyncPrefectClient]:
    with get_client(sync_client=True) as client:
        yield client


def throttle(prefect: SyncPrefectClient, status: int, retry_after: float | None) -> None:
    adjust("replicate", 5, Throttled(status, retry_after),
           Knobs(cooldown_seconds=0.0), PrefectLimit(prefect, "replicate"),
           sessions=session_scope)
    time.sleep(0.01)  # distinct timestamps


def register(avatar_id: str, batch_id: str) -> None:
    """The batch row as the flow's register step writes it (started_at: now)."""
    with session_scope() as session:
        session.add(Batch(id=batch_id, avatar_id=avatar_id, config={}, requested=1))
    time.sleep(0.01)


def finish(batch_id: str) -> None:
    time.sleep(0.01)
    with session_scope() as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None
        batch.status, batch.finished_at = "completed", datetime.now(UTC)
    time.sleep(0.01)


def test_only_the_batch_windows_changes_are_listed(limits_at_ceiling, prefect, demo_avatar):
    throttle(prefect, 429, None)  # before the batch: 5 -> 3
    register(demo_avatar, "batch-window")
    throttle(prefect, 529, None)  # 3 -> 2
    throttle(prefect, 429, 10.0)  # 2 -> 1 (a Retry-After holds further decreases)
    finish("batch-window")
    PrefectLimit(prefect, "replicate").write(5)  # after: an operator's cap, seen next time
    throttle(prefect, 429, None)

    history = limit_history("batch-window")
    assert [(c.from_limit, c.to_limit) for c in history.changes] == [(3, 2), (2, 1)]
    assert history.summary() == "replicate 3 -> 2 -> 1"
    markdown = history.markdown()
    assert markdown.startswith("## Provider limits\n")
    rows = [line for line in markdown.splitlines() if line.startswith("| +")]
    assert len(rows) == 2
    assert rows[0].endswith("| replicate | 3 -> 2 | throttled | 529 | - |"), rows
    assert rows[1].endswith("| replicate | 2 -> 1 | throttled | 429 | 10s |"), rows
    assert LIMITS_UNCHANGED not in markdown


def test_a_quiet_batch_says_so_in_one_line(limits_at_ceiling, prefect, demo_avatar):
    throttle(prefect, 429, None)  # before it
    register(demo_avatar, "batch-quiet")
    finish("batch-quiet")
    history = limit_history("batch-quiet")
    assert history.changes == [] and history.summary() == "unchanged"
    assert history.markdown() == f"## Provider limits\n\n{LIMITS_UNCHANGED}"


def test_an_unreadable_history_says_why_and_fails_nothing(studio_env, demo_avatar, caplog):
    register(demo_avatar, "batch-no-table")
    with session_scope() as session:  # a database whose history table is gone
        session.execute(text("DROP TABLE provider_limit_change"))
    history = limit_history("batch-no-table")
    assert history.summary() == "not read"
    assert history.markdown().startswith("## Provider limits\n\nNot read: OperationalError")
    assert "provider_limit_change" in history.markdown()
    assert any("Provider limits not read" in r.getMessage() for r in caplog.records)
    missing = limit_history("no-such-batch")
    assert missing.markdown().endswith("Not read: no batch row no-such-batch.")


async def _artifacts(flow_run_id) -> dict[str, list]:
    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    by_type: dict[str, list] = {}
    for artifact in found:
        by_type.setdefault(artifact.type, []).append(artifact)
    return by_type


@pytest.fixture
def throttling_replicate(limits_at_ceiling, monkeypatch) -> Iterator[ReplicateEmulator]:
    """Replicate alone in the chain, at its emulator: its first create answers 429 with
    `Retry-After: 1`."""
    import tasks.generate_images as generate_images

    with ReplicateEmulator(Behaviour(seed=41, throttle_next=1, retry_after=1.0),
                           token=REPLICATE_TOKEN) as replicate:
        for key in PROVIDER_ENV:
            monkeypatch.delenv(key, raising=False)
        for key, value in {
            "REPLICATE_API_TOKEN": REPLICATE_TOKEN,
            "REPLICATE_BASE_URL": replicate.url,
            "REPLICATE_POLL_INTERVAL": "0.02",
            "PROVIDER_BACKOFF_UNIT": "0.01",
            "LORA_INFERENCE_PROVIDER_ORDER": "replicate",
        }.items():
            monkeypatch.setenv(key, value)
        generate_images._chain = None
        yield replicate
        generate_images._chain = None


async def test_a_throttled_batch_lists_its_limit_change(throttling_replicate, demo_avatar):
    state = await content_batch(
        avatar_id="demo", num_pieces=3, seed=7, include_hooks=False, return_state=True
    )
    assert state.is_completed(), state
    assert throttling_replicate.behaviour.throttle_next == 0  # the 429 was answered
    artifacts = await _artifacts(state.state_details.flow_run_id)
    gallery = next(a for a in artifacts["markdown"] if a.key.startswith("gallery-"))
    section = gallery.data.split("## Provider limits", 1)[1]
    # the decrease starts from the slots the batch held when the 429 came (1-3 of its 3
    # pieces, however far its other images had got): floor(min(5, in use) x 0.75), >= 1
    change = re.search(r"\| replicate \| 5 -> (\d) \| throttled \| 429 \| 1s \|", section)
    assert change is not None and 1 <= int(change[1]) <= 3, section
    (table,) = artifacts["table"]
    assert f"Provider limits: replicate 5 -> {change[1]}" in table.description, table.description


async def test_a_batch_without_throttling_says_the_limits_did_not_change(
    studio_env, demo_avatar
):
    state = await content_batch(
        avatar_id="demo", num_pieces=2, seed=3, include_hooks=False, return_state=True
    )
    artifacts = await _artifacts(state.state_details.flow_run_id)
    gallery = next(a for a in artifacts["markdown"] if a.key.startswith("gallery-"))
    assert gallery.data.endswith(f"## Provider limits\n\n{LIMITS_UNCHANGED}")
    (table,) = artifacts["table"]
    assert "Provider limits: unchanged (see gallery-" in table.description

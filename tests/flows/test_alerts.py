"""The spec's alert thresholds and their automations on a real Prefect server."""

from __future__ import annotations

from prefect.client.orchestration import get_client

from deployments.automations import ALERTS, create_automations
from deployments.serve import build_deployments
from studio.alerts import evaluate
from studio.types import BatchResult


def result(**overrides) -> BatchResult:
    values = dict(
        batch_id="b",
        avatar_id="a",
        avatar_name="n",
        status="completed",
        requested=50,
        published=48,
        rejected=2,
        failed=0,
        pending_review=0,
        cost_usd=0.7,
        total_seconds=300.0,
        step_seconds={"database_save": 0.2},
        cost_breakdown={},
        stand_ins=[],
        pieces=[],
    )
    values.update(overrides)
    return BatchResult(**values)


def test_healthy_batch_raises_no_alert() -> None:
    assert evaluate(result(), hook_failures=2, cache_hit_percent=96.0) == []


def test_each_threshold() -> None:
    names = {
        a.name
        for a in evaluate(
            result(
                total_seconds=601,
                failed=11,
                rejected=10,
                published=29,
                step_seconds={"database_save": 5.5},
            ),
            hook_failures=5,
            cache_hit_percent=40.0,
        )
    }
    assert names == set(ALERTS)


async def test_automations_created_on_server() -> None:
    ids = await create_automations()
    assert len(ids) == len(ALERTS) + 1
    async with get_client() as client:
        names = {a.name for a in await client.read_automations()}
    assert "studio: content batch failed" in names


def test_serve_builds_every_deployment() -> None:
    names = {d.name for d in build_deployments()}
    assert names == {"on-demand", "health", "daily", "weekly", "monthly", "storage-sync"}

"""Provider tags go on the tasks that call a real provider, never on stand-ins."""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows.content_batch import content_batch
from tasks.provider_tags import hook_tags, moderation_tags, storage_tags


def test_tags_follow_configuration(monkeypatch) -> None:
    for name in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "R2_ACCOUNT_ID", "R2_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    assert hook_tags() == moderation_tags() == storage_tags() == []
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert hook_tags() == ["provider:anthropic"]
    assert moderation_tags() == ["provider:openai"]


async def test_stand_in_batch_has_untagged_steps(studio_env, demo_avatar) -> None:
    result = await content_batch(avatar_id="demo", num_pieces=3)
    async with get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[result.batch_id]))
        )
    steps = {r.task_key.split("-")[0]: r.tags for r in runs}
    assert steps and all(tags == [] for tags in steps.values()), steps

"""Batches as Prefect users run them: `prefect server start`, a process worker, the
deployments of prefect.yaml, runs created through the REST API (issue 9).

Each test reads what a user would see through the API: the run's state, its subflows,
its logs; tests/prefect_server/test_ui.py looks at the same in the UI.
"""

from __future__ import annotations

import re
import uuid

import pytest

from studio.avatars import add_avatar
from studio.db.engine import session_scope

STEP_LINES = [
    "[BATCH START]",
    *(f"[STEP {n}/7]" for n in range(1, 8)),
    "[BATCH COMPLETE]",
]


def new_avatar(cadence: str = "on-demand", prefix: str = "ava") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    with session_scope() as session:
        add_avatar(session, name, "travel", f"https://w.example/{name}.safetensors", cadence)
    return name


def has_all(markers: list[str]) -> callable:
    return lambda messages: all(any(m in msg for msg in messages) for m in markers)


def test_rest_triggered_batch_shows_every_step_line_in_its_logs(prefect_stack, stack_db):
    avatar = new_avatar()
    created = prefect_stack.create_run(
        "content-batch/on-demand", {"avatar_id": avatar, "num_pieces": 2}
    )
    assert created.status_code in (200, 201), created.text  # 200: Prefect's created-at race
    run = prefect_stack.wait_final(created.json()["id"])
    assert run["state_type"] == "COMPLETED", run["state"]
    assert run["name"] == f"content-batch-{avatar}-2"
    messages = prefect_stack.wait_logs([run["id"]], has_all(STEP_LINES))
    found = [m for m in messages if m.startswith("[")]
    for marker in STEP_LINES:
        assert any(m.startswith(marker) for m in found), (marker, found)
    starts = [next(i for i, m in enumerate(found) if m.startswith(k)) for k in STEP_LINES]
    assert starts == sorted(starts), found  # in the spec's order
    assert not any(m.startswith("[BATCH FAILED]") for m in messages)


@pytest.mark.parametrize(
    "parameters",
    [
        {"num_pieces": 0},
        {"num_pieces": 501},
        {"platform": "myspace"},
        {"hook_mode": "fast"},
        {"tier_distribution": {"capa1": 1.3, "capa2": 0.0, "capa3": 0.0}},
    ],
    ids=["pieces-0", "pieces-501", "platform-myspace", "hook-mode-fast", "tier-ratio-1.3"],
)
def test_bad_parameters_are_refused_when_the_run_is_created(prefect_stack, parameters):
    deployment = prefect_stack.deployment_id("content-batch/on-demand")
    before = prefect_stack.runs({"deployment_id": {"any_": [deployment]}})
    created = prefect_stack.create_run(
        "content-batch/on-demand", {"avatar_id": "demo", **parameters}
    )
    assert 400 <= created.status_code < 500, (created.status_code, created.text)
    after = prefect_stack.runs({"deployment_id": {"any_": [deployment]}})
    assert len(after) == len(before)  # no run, so no worker submission and no alert


def test_failing_image_step_shows_a_failed_chunk_and_batch_failed(prefect_stack, failed_batch):
    run = failed_batch.run
    assert run["state_type"] == "FAILED", run["state"]
    assert failed_batch.prompts >= 2  # the worker's run called the failing ComfyUI
    chunks = [c for c in prefect_stack.children(run["id"]) if c["name"].startswith("image-chunk")]
    assert chunks, "no image-chunk subflow under the failed batch"
    assert all(c["state_type"] != "COMPLETED" for c in chunks), [
        (c["name"], c["state_type"]) for c in chunks
    ]
    messages = prefect_stack.wait_logs([run["id"]], has_all(["[BATCH FAILED]"]))
    failed = [m for m in messages if m.startswith("[BATCH FAILED]")]
    assert failed, messages
    assert re.search(r"Pieces: 0 \| Cost: \$0\.00 \| Reason: .+", failed[0]), failed[0]
    assert not any(m.startswith("[BATCH COMPLETE]") for m in messages)


def test_weekly_fan_out_makes_deployment_runs_named_after_avatars(prefect_stack, stack_db):
    names = sorted(new_avatar("weekly", prefix="weekly") for _ in range(2))
    on_demand = prefect_stack.deployment_id("content-batch/on-demand")
    created = prefect_stack.create_run("scheduled-batches/weekly", {"num_pieces": 2})
    assert created.status_code in (200, 201), created.text  # 200: Prefect's created-at race
    parent = prefect_stack.wait_final(created.json()["id"])
    assert parent["state_type"] == "COMPLETED", parent["state"]

    children = prefect_stack.children(parent["id"])
    assert sorted(c["name"] for c in children) == [f"content-batch-{n}-2" for n in names]
    for child in children:
        assert child["deployment_id"] == on_demand  # a run of the deployment, not a subflow
        assert child["work_pool_name"] == "studio-pool"  # so any worker of the pool takes it
    finished = [prefect_stack.wait_final(c["id"]) for c in children]
    assert [c["state_type"] for c in finished] == ["COMPLETED", "COMPLETED"]
    pids = {parent["infrastructure_pid"], *(c["infrastructure_pid"] for c in finished)}
    assert len(pids) == 3 and None not in pids  # each batch ran in its own process

    # the UI's "Retry" on the fan-out: same schedule slot, so no batch starts twice
    with prefect_stack.client() as api:
        retried = api.post(
            f"/flow_runs/{parent['id']}/set_state",
            json={"state": {"type": "SCHEDULED", "name": "AwaitingRetry"}, "force": True},
        )
    assert retried.status_code in (200, 201), retried.text
    again = prefect_stack.wait_final(parent["id"])
    assert again["state_type"] == "COMPLETED" and again["run_count"] == 2
    assert sorted(c["id"] for c in prefect_stack.children(parent["id"])) == sorted(
        c["id"] for c in children
    )


def test_automations_apply_twice_leaves_no_duplicate(prefect_stack):
    from deployments.automations import DEFINITIONS

    for _ in range(2):
        applied = prefect_stack.studio("automations", "apply")
        assert applied.returncode == 0, applied.stdout + applied.stderr
    assert applied.stdout.count(": unchanged") == len(DEFINITIONS)
    with prefect_stack.client() as api:
        found = api.post("/automations/filter", json={}).json()
    names = [a["name"] for a in found if a["name"].startswith("studio: ")]
    assert sorted(names) == sorted(d.name for d in DEFINITIONS)

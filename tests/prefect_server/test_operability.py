"""Issue 16 on a real `studio server` and process worker, through REST as a user does:
after `studio automations apply` a misspelled parameter is refused when the run is
created (409, no run); a run that gets through anyway crashes in Prefect's engine, and
the crash itself starts crash recovery (the automation, not a schedule: the server's
scheduler is off here), which ends the run Refused naming the parameter."""

from __future__ import annotations

import time
import uuid

from deployments.automations import RECOVERY_DEPLOYMENT


def _apply(prefect_stack) -> str:
    applied = prefect_stack.studio("automations", "apply")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    return applied.stdout + applied.stderr


def test_unknown_parameter_is_refused_at_creation_with_no_run(prefect_stack):
    output = _apply(prefect_stack)
    assert "content-batch/on-demand: unknown parameters refused" in output
    assert "studio: crashed batches resumed: " in output
    assert "the automations notify nobody" in output  # the harness saves no block
    deployment = prefect_stack.deployment_id("content-batch/on-demand")
    with prefect_stack.client() as api:
        found = api.get(f"/deployments/{deployment}").json()
    assert "avatar_id" not in found["parameters"]  # the form asks; no "demo" pre-filled
    before = prefect_stack.runs({"deployment_id": {"any_": [deployment]}})
    created = prefect_stack.create_run(
        "content-batch/on-demand", {"avatar_id": "demo", "pieces": 5}
    )
    assert created.status_code == 409, created.text
    assert "pieces" in created.text
    after = prefect_stack.runs({"deployment_id": {"any_": [deployment]}})
    assert len(after) == len(before)


def test_missing_notify_block_is_refused_in_one_line(prefect_stack):
    missing = str(uuid.uuid4())
    refused = prefect_stack.studio("automations", "apply", "--notify-block", missing)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and missing in lines[0] and "Traceback" not in refused.stderr


def _wait_state_name(prefect_stack, run_id: str, name: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = prefect_stack.read_run(run_id)
        if run["state_name"] == name or time.monotonic() > deadline:
            return run
        time.sleep(1)


def test_a_crash_starts_crash_recovery_which_refuses_unknown_parameters(prefect_stack):
    _apply(prefect_stack)
    recovery = prefect_stack.deployment_id(RECOVERY_DEPLOYMENT)
    before = {r["id"] for r in prefect_stack.runs({"deployment_id": {"any_": [recovery]}})}
    created = prefect_stack.create_run(
        "content-batch/on-demand",
        {"avatar_id": "demo", "pieces": 5},
        enforce_parameter_schema=False,  # past the strict schema, as an old deploy would be
    )
    assert created.status_code in (200, 201), created.text  # 200: Prefect's created-at race
    run = _wait_state_name(prefect_stack, created.json()["id"], "Refused")
    assert run["state_name"] == "Refused", (run["state"], prefect_stack.tail("worker"))
    assert "unknown parameter(s) 'pieces'" in run["state"]["message"]
    started = [
        r for r in prefect_stack.runs({"deployment_id": {"any_": [recovery]}})
        if r["id"] not in before
    ]
    assert started, "no crash-recovery run"
    assert all((r.get("created_by") or {}).get("type") == "AUTOMATION" for r in started), started

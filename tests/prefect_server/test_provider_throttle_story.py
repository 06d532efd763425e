"""Issue 20's "Visible", on a real `studio server` and process worker: one batch whose
Replicate (the emulator) answers its first create with 429 and `Retry-After: 1` tells
the story everywhere an operator looks. The run's logs have the `Provider throttled`
line, Prefect has the `studio.provider.throttled` event and the "studio: provider
throttled" automation (from `studio automations apply`) fires on it, `studio limits
show` has the ceiling, the lowered limit and the last change, and the batch's gallery
artifact lists the change under "Provider limits". `studio limits apply` then puts the
ceiling back.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable
from typing import Any

from studio.avatars import add_avatar
from studio.db.engine import session_scope
from tests.emulators.base import Behaviour
from tests.emulators.replicate_api import ReplicateEmulator
from tests.prefect_server.conftest import BIN, ROOT

TOKEN = "r8_story_token_0001"
# a 2-piece batch throttled with 1-2 calls in flight: the limit goes to floor(2 x 0.75) = 1
THROTTLED_LINE = "Provider throttled | Provider: replicate | Limit: 5 -> 1 | Retry-After: 1s"


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(1)


def replicate_env(url: str) -> dict[str, str]:
    """Job variables of a run whose only image provider is the throttling emulator."""
    return {
        "REPLICATE_API_TOKEN": TOKEN,
        "REPLICATE_BASE_URL": url,
        "REPLICATE_POLL_INTERVAL": "0.05",
        "REPLICATE_MAX_CONCURRENT": "5",
        "PROVIDER_BACKOFF_UNIT": "0.01",
        "LORA_INFERENCE_PROVIDER_ORDER": "replicate",
    }


def events(stack, names: list[str], since: str) -> list[dict[str, Any]]:
    with stack.client() as api:
        found = api.post("/events/filter", json={
            "filter": {"event": {"name": names}, "occurred": {"since": since}},
            "limit": 50,
        })
        found.raise_for_status()
        return found.json().get("events", [])


def test_a_throttled_batch_tells_its_story(prefect_stack, stack_db):
    stack = prefect_stack
    limits_env = {**stack.env, "REPLICATE_MAX_CONCURRENT": "5"}

    def studio(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "studio"), *args], cwd=ROOT, env=limits_env,
                              capture_output=True, text=True, timeout=120, check=False)

    for command in (("limits", "apply"), ("automations", "apply")):
        done = studio(*command)
        assert done.returncode == 0, done.stdout + done.stderr
    assert "studio: provider throttled: " in done.stdout
    with stack.client() as api:
        automations = api.post("/automations/filter", json={}).json()
    (automation,) = [a for a in automations if a["name"] == "studio: provider throttled"]

    avatar = f"paced-{uuid.uuid4().hex[:6]}"
    with session_scope() as session:
        add_avatar(session, avatar, "travel", f"https://w.example/{avatar}.safetensors",
                   "on-demand")
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 5))
    with ReplicateEmulator(Behaviour(seed=51, throttle_next=1, retry_after=1.0),
                           token=TOKEN) as replicate:
        created = stack.create_run(
            "content-batch/on-demand",
            {"avatar_id": avatar, "num_pieces": 2, "include_hooks": False},
            job_variables={"env": replicate_env(replicate.url)},
        )
        assert created.status_code in (200, 201), created.text
        run = stack.wait_final(created.json()["id"])
        assert run["state_type"] == "COMPLETED", run["state"]
        assert replicate.behaviour.throttle_next == 0  # the 429 was answered

    # the run's logs
    messages = stack.wait_logs([run["id"]], lambda m: any(THROTTLED_LINE in x for x in m))
    assert any(THROTTLED_LINE in m for m in messages), [
        m for m in messages if "Provider" in m
    ]
    # the event, and the automation that fired on it
    (throttled,) = wait_for("the throttled event", lambda: events(
        stack, ["studio.provider.throttled"], since))
    assert throttled["resource"]["prefect.resource.id"] == "studio.provider.replicate"
    assert (throttled["payload"]["from_limit"], throttled["payload"]["to_limit"]) == (5, 1)
    assert throttled["payload"]["ceiling"] == 5 and throttled["payload"]["status"] == 429

    def fired() -> list[dict[str, Any]]:
        return [
            e for e in events(stack, ["prefect.automation.triggered",
                                      "prefect.automation.action.executed"], since)
            if e["resource"]["prefect.resource.id"] == f"prefect.automation.{automation['id']}"
        ]

    assert wait_for("the automation firing", fired)

    # `studio limits show`
    shown = studio("limits", "show", "--json")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    replicate_row = next(
        r for r in json.loads(shown.stdout)["limits"] if r["name"] == "provider:replicate"
    )
    assert replicate_row["ceiling"] == 5 and replicate_row["manual_cap"] is None
    assert 1 <= replicate_row["limit"] <= 5  # it may have recovered since
    change = replicate_row["last_change"]
    assert change["reason"] in ("throttled", "recovered"), change

    # the batch's artifact
    with stack.client() as api:
        artifacts = api.post("/artifacts/filter", json={
            "artifacts": {"flow_run_id": {"any_": [run["id"]]}}}).json()
    gallery = next(a for a in artifacts if (a["key"] or "").startswith("gallery-"))
    section = gallery["data"].split("## Provider limits", 1)[1]
    assert "| replicate | 5 -> 1 | throttled | 429 | 1s |" in section, section

    # the ceiling back for the session's other tests
    back = studio("limits", "apply")
    assert back.returncode == 0, back.stdout + back.stderr
    assert "provider:replicate: " in back.stdout

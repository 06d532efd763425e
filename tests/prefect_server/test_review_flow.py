"""The review queue on a real Prefect server with a process worker (issue 19).

A batch whose moderation is down (the OpenAI emulator answers 503) ends with held
pieces; the "studio: held pieces reviewed" automation starts a review run of its avatar;
the run publishes its artifact and suspends on its form: state Paused/Suspended with
its pause key, its process gone (no worker slot held), while a second batch of the
same avatar runs to its end and its own review run steps back (one open form per
avatar). The form is answered through the REST API (`/flow_runs/{id}/resume` with
`run_input`, what `resume_flow_run(run_input=...)` sends; the UI path is
test_review_ui.py) and the decisions land in the rows. Pieces still held then (the
second batch's) are asked in a follow-up review run.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from studio.avatars import add_avatar
from studio.db.engine import session_scope
from studio.db.models import ContentPiece
from tests.emulators.base import Behaviour
from tests.emulators.openai_api import OpenAIModerationEmulator

API_KEY = "sk-openai-review-flow-SECRET-3"
REVIEWER = "Rita Reviewer"


def moderation_down_env(url: str) -> dict[str, str]:
    """Job variables of a run whose moderation is configured but down: pieces are held."""
    return {
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_BASE_URL": f"{url}/v1",
        "MODERATION_MAX_RETRIES": "0",
        "MODERATION_BACKOFF_BASE_SECONDS": "0.01",
        "SAFETY_CHECK_SAMPLE_RATE": "1",
    }


def wait_for(
    what: str, probe: Callable[[], Any], timeout: float = 180,
    explain: Callable[[], str] = lambda: "",
) -> Any:
    """Poll until `probe` returns something truthy (no fixed sleeps: a loaded CI host)."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s\n{explain()}")
        time.sleep(1)


def explain_reviews(stack, avatar: str) -> Callable[[], str]:
    """What the server saw: the review-requested events, the automation, the runs."""

    def explain() -> str:
        with stack.client() as api:
            events = api.post("/events/filter", json={
                "filter": {"event": {"prefix": ["studio.batch."]}}, "limit": 50,
            }).json().get("events", [])
            automations = api.post("/automations/filter", json={}).json()
        seen = [(e["event"], e["resource"].get("studio.avatar.id")) for e in events]
        mine = [a for a in automations if a["name"] == "studio: held pieces reviewed"]
        runs = [(r["name"], r["state_type"], r["state"]["message"])
                for r in stack.runs({"name": {"like_": "review-"}})]
        return (f"events: {seen}\nautomation: {mine}\nreview runs: {runs}\n"
                f"worker:\n{stack.tail('worker')}\nserver:\n{stack.tail('server')}")

    return explain


def review_runs(stack, avatar: str) -> list[dict[str, Any]]:
    return stack.runs({"name": {"any_": [f"review-{avatar}"]}})


def process_gone(infrastructure_pid: str | None) -> bool:
    """The run's process exited (gone, or a zombie not yet reaped)."""
    if not infrastructure_pid:
        return True
    pid = int(str(infrastructure_pid).rsplit(":", 1)[-1])
    try:
        with open(f"/proc/{pid}/status") as status:
            return any(line.startswith("State:") and "Z" in line for line in status)
    except FileNotFoundError:
        return True


def run_input(stack, run_id: str, key: str) -> Any:
    with stack.client() as api:
        found = api.get(f"/flow_runs/{run_id}/input/{key}")
        found.raise_for_status()
        return found.json()


def held_batch(stack, avatar: str, emulator_url: str) -> dict[str, Any]:
    created = stack.create_run(
        "content-batch/on-demand",
        {"avatar_id": avatar, "num_pieces": 2, "include_hooks": False,
         "tier_distribution": {"capa1": 0.5, "capa2": 0.0, "capa3": 0.5}},
        job_variables={"env": moderation_down_env(emulator_url)},
    )
    assert created.status_code in (200, 201), created.text  # 200: Prefect's created-at race
    return created.json()


def rows(piece_ids: list[str]) -> dict[str, ContentPiece]:
    with session_scope() as session:
        found = session.scalars(select(ContentPiece).where(ContentPiece.id.in_(piece_ids)))
        return {row.id: row for row in found}


@pytest.fixture
def automations(prefect_stack):
    applied = prefect_stack.studio("automations", "apply")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "studio: held pieces reviewed" in applied.stdout, applied.stdout
    assert "skipped" not in applied.stdout.split("held pieces reviewed", 1)[1].splitlines()[0]


def test_held_batch_starts_a_review_run_that_suspends_then_applies_the_form(
    prefect_stack, stack_db, automations
):
    stack = prefect_stack
    avatar = f"review-{uuid.uuid4().hex[:6]}"
    with session_scope() as session:
        add_avatar(session, avatar, "travel", f"https://w.example/{avatar}.safetensors",
                   "on-demand")

    with OpenAIModerationEmulator(Behaviour(retry_after=0), api_key=API_KEY) as moderation:
        moderation.fail_always = 503
        batch = stack.wait_final(held_batch(stack, avatar, moderation.url)["id"])
        assert batch["state_type"] == "COMPLETED", batch["state"]
        # the batch's own state says a review run was requested
        assert "held for review: a review run" in (batch["state"]["message"] or ""), batch["state"]

        # the automation starts a review run of the avatar, which suspends on its form
        def suspended() -> dict[str, Any] | None:
            found = [r for r in review_runs(stack, avatar) if r["state_type"] == "PAUSED"]
            return found[0] if found else None

        review = wait_for("a suspended review run", suspended,
                          explain=explain_reviews(stack, avatar))
        assert review["parameters"]["avatar"] == avatar
        assert review["state"]["name"] == "Suspended", review["state"]
        assert review["state"]["state_details"]["pause_key"] == "review-form"
        # suspend, not pause: the run's process exited, no worker slot is held
        wait_for("the suspended run's process to exit",
                 lambda: process_gone(review["infrastructure_pid"]), timeout=60)

        # the worker is free: a second batch (pieces held again) runs to its end meanwhile,
        # and the review run it asks for steps back: one open form per avatar
        second = stack.wait_final(held_batch(stack, avatar, moderation.url)["id"])
        assert second["state_type"] == "COMPLETED", second["state"]
    assert stack.read_run(review["id"])["state_type"] == "PAUSED"

    def stepped_back() -> list[dict[str, Any]]:
        return [r for r in review_runs(stack, avatar)
                if r["id"] != review["id"] and r["state_type"] == "COMPLETED"]

    other = wait_for("the second review run stepping back", stepped_back)[0]
    assert other["state"]["name"] == "Skipped", other["state"]
    assert review["name"] in other["state"]["message"], other["state"]

    # the form and the artifact the reviewer sees
    pieces = run_input(stack, review["id"], "review-pieces")
    assert len(pieces) == 2, pieces
    keyset = review["state"]["state_details"]["run_input_keyset"]
    assert keyset["schema"] == "suspended-review-form-schema", keyset
    schema = run_input(stack, review["id"], keyset["schema"])
    properties = schema["properties"]
    assert properties["reviewer"]["title"] == "Reviewer"
    assert properties["piece_1"]["title"].startswith(f"Piece 1: {avatar} · ")
    assert properties["piece_2_reason"]["title"] == "Piece 2: reason"
    with stack.client() as api:
        artifacts = api.post(
            "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [review["id"]]}}}
        ).json()
    markdown = next(a["data"] for a in artifacts if a["type"] == "markdown")
    assert "## Piece 1:" in markdown and "## Piece 2:" in markdown
    assert "**Why held:** " in markdown and "moderation" in markdown.lower()
    assert "![piece 1](" in markdown  # the image, large enough to judge
    first_batch_ids = [p["piece_id"] for p in pieces]
    assert all(r.status == "pending_review" for r in rows(first_batch_ids).values())

    # the reviewer answers: piece 1 approved as capa3, piece 2 rejected with a reason
    with stack.client() as api:
        resumed = api.post(
            f"/flow_runs/{review['id']}/resume",
            json={"run_input": {
                "reviewer": REVIEWER,
                "piece_1": "capa3", "piece_1_reason": "fine as premium",
                "piece_2": "reject", "piece_2_reason": "blurry hands",
            }},
        )
    assert resumed.status_code in (200, 201), resumed.text
    assert resumed.json()["status"] == "ACCEPT", resumed.json()
    done = stack.wait_final(review["id"])
    assert done["state_type"] == "COMPLETED", done["state"]
    assert f"by {REVIEWER}: 2 applied" in done["state"]["message"], done["state"]

    decided = rows(first_batch_ids)
    approved, rejected = decided[first_batch_ids[0]], decided[first_batch_ids[1]]
    assert approved.status == "published" and approved.access_tier == "capa3"
    assert approved.review_decision == "approve" and approved.reviewed_by == REVIEWER
    assert approved.reviewed_at is not None and approved.storage_key
    assert rejected.status == "rejected" and rejected.review_decision == "reject"
    assert rejected.review_reason == "blurry hands" and rejected.reviewed_by == REVIEWER

    def piece_events() -> dict[str, str]:
        with stack.client() as api:
            found = api.post("/events/filter", json={
                "filter": {"event": {"prefix": ["studio.piece."]},
                           "resource": {"id": [f"studio.piece.{i}" for i in first_batch_ids]}},
                "limit": 50,
            }).json().get("events", [])
        events = {e["resource"]["prefect.resource.id"]: e["event"] for e in found}
        return events if len(events) == 2 else {}

    events = wait_for("the decisions' events", piece_events, timeout=60)
    assert events == {f"studio.piece.{approved.id}": "studio.piece.published",
                      f"studio.piece.{rejected.id}": "studio.piece.rejected"}, events
    messages = stack.wait_logs(
        [review["id"]], lambda m: sum("Review decision" in x for x in m) >= 2
    )
    assert sum("Review decision" in m for m in messages) == 2, messages

    # the second batch's pieces are still held: a follow-up review run asks for them
    def follow_up() -> dict[str, Any] | None:
        found = [r for r in review_runs(stack, avatar)
                 if f"follows:{review['id']}" in r["tags"] and r["state_type"] == "PAUSED"]
        return found[0] if found else None

    follow = wait_for("a follow-up review run", follow_up)
    later = run_input(stack, follow["id"], "review-pieces")
    assert {p["piece_id"] for p in later}.isdisjoint(first_batch_ids) and len(later) == 2
    with stack.client() as api:  # leave nothing waiting for the other tests
        api.post(f"/flow_runs/{follow['id']}/set_state",
                 json={"state": {"type": "CANCELLED"}, "force": True})


def test_review_with_nothing_held_completes_at_once(prefect_stack, stack_db):
    avatar = f"calm-{uuid.uuid4().hex[:6]}"
    created = prefect_stack.create_run("review/review", {"avatar": avatar})
    assert created.status_code in (200, 201), created.text
    run = prefect_stack.wait_final(created.json()["id"])
    assert run["state_type"] == "COMPLETED", run["state"]
    assert run["state"]["message"] == f"No held pieces for avatar {avatar}: nothing to review."

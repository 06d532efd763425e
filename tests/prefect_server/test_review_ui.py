"""The review form (issue 19) filled and submitted in a real headless Chromium.

A reviewer who only uses the Prefect UI opens a Suspended run's page, presses
**Resume**, and answers the typed form Prefect renders from the run's
`wait_for_input` model: an enum field is a select (a button that opens a listbox of
options), a string field a textarea, each under its schema title ("(Optional)" added
when it has a default) with its description below. Fields are found by those labels,
options by their role and name; nothing is posted to the API on the reviewer's behalf.

- `test_suspended_run_resumes_with_what_the_ui_form_says`: a tiny flow of this module
  (deployed to the test server, run by the process worker) suspends on a RunInput with
  an enum and two strings; the form's answers come back into the resumed run.
- `test_reviewer_approves_and_rejects_held_pieces_in_the_ui`: a real batch whose pieces
  are held (moderation down), the `review` deployment run until Suspended (its process
  gone: no worker slot held), its artifact and form opened in Chromium, one piece
  approved and one rejected with a reason; rows, store and events agree.

Screenshots in /tmp (STUDIO_UI_SCREENSHOTS): review-probe-form.png, review-form.png,
review-artifact.png, review-artifact-details.png, review-result.png.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import pytest
from prefect import flow, get_run_logger
from prefect.flow_runs import suspend_flow_run
from prefect.input import RunInput
from pydantic import Field

SCREENSHOTS = Path(os.environ.get("STUDIO_UI_SCREENSHOTS", "/tmp"))
WAIT_MS = 60_000


# --- the probe flow (deployed from this file; the worker imports it) ---------------


class ProbeVerdict(StrEnum):
    approve = "approve"
    reject = "reject"
    capa1 = "capa1"


class ProbeForm(RunInput):
    verdict: ProbeVerdict = Field(
        default=ProbeVerdict.approve, title="Verdict", description="What to do with the piece"
    )
    reason: str = Field(default="", title="Reason", description="Why")
    reviewer: str = Field(title="Reviewer", description="Your name")


@flow(name="review-probe")
def review_probe() -> dict[str, Any]:
    """Suspends (its process exits) until the form is answered, then logs the answers."""
    answers = suspend_flow_run(wait_for_input=ProbeForm, timeout=600, key="probe-form")
    decided = answers.model_dump(mode="json")
    get_run_logger().info("probe answers: %s", json.dumps(decided, sort_keys=True))
    return decided


# --- waiting, the browser, the form ------------------------------------------------


def wait_until(check: Callable[[], Any], what: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout}s for {what}")
        time.sleep(0.5)


def wait_suspended(stack, run_id: str, timeout: float = 150) -> dict[str, Any]:
    def suspended() -> dict[str, Any] | None:
        run = stack.read_run(run_id)
        if run["state_type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
            raise AssertionError(f"run ended {run['state']} instead of suspending:\n"
                                 f"{stack.log_messages([run_id])}\n{stack.tail('worker')}")
        return run if run["state_name"] == "Suspended" else None

    return wait_until(suspended, f"run {run_id} Suspended", timeout)


def run_input(stack, run_id: str, key: str) -> Any:
    """A value the run keeps in its input store (what the UI's form is built from)."""
    with stack.client() as api:
        found = api.get(f"/flow_runs/{run_id}/input/{key}")
        found.raise_for_status()
        value = found.json()  # a JSON document, or (older servers) its text
        return json.loads(value) if isinstance(value, str) else value


def form_schema(stack, run: dict[str, Any]) -> dict[str, Any]:
    keyset = run["state"]["state_details"]["run_input_keyset"]
    return run_input(stack, run["id"], keyset["schema"])


@pytest.fixture
def page(browser, prefect_stack, request):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    opened = context.new_page()
    opened.set_default_timeout(WAIT_MS)
    prefect_stack.log_in(opened)  # the server asks for its auth string (README "On Prefect")
    yield opened
    if request.session.testsfailed:  # what the page showed when a check failed
        opened.screenshot(path=str(SCREENSHOTS / f"{request.node.name}-failed.png"))
    context.close()


class ResumeForm:
    """The "Resume Flow Run" dialog of a Suspended run's page, driven as a person does."""

    def __init__(self, page: Any, ui_url: str, run_id: str) -> None:
        self.page = page
        page.goto(f"{ui_url}/runs/flow-run/{run_id}", wait_until="networkidle")
        page.get_by_text("Suspended", exact=True).first.wait_for()
        page.get_by_role("button", name="Resume").first.click()
        self.dialog = page.locator(".p-modal__card").filter(has_text="Resume Flow Run")
        self.dialog.wait_for()

    def field(self, title: str) -> Any:
        """The form property whose label is `title` (the UI adds " (Optional)")."""
        label = re.compile(rf"^\s*{re.escape(title)}( \(Optional\))?\s*$")
        found = self.dialog.locator(".schema-form-property").filter(
            has=self.page.locator(".schema-form-property__label", has_text=label)
        )
        found.first.wait_for()
        assert found.count() == 1, f"{found.count()} fields labelled {title!r}"
        return found

    def choose(self, title: str, option: str) -> None:
        """An enum field: its select opens with the keyboard (a headless click on the
        control does not open it), then the option is clicked by its name."""
        control = self.field(title).locator(".p-select-button__control")
        control.scroll_into_view_if_needed()
        control.focus()
        self.page.keyboard.press("ArrowDown")
        self.page.get_by_role("listbox").get_by_role("option", name=option, exact=True).click()
        self.page.get_by_role("listbox").wait_for(state="hidden")
        assert control.inner_text().strip() == option, control.inner_text()

    def type(self, title: str, text: str) -> None:
        box = self.field(title).locator("textarea")
        box.scroll_into_view_if_needed()
        box.fill(text)

    def options(self, title: str) -> list[str]:
        control = self.field(title).locator(".p-select-button__control")
        control.focus()
        self.page.keyboard.press("ArrowDown")
        listbox = self.page.get_by_role("listbox")
        listbox.get_by_role("option").first.wait_for()
        names = [o.inner_text().strip() for o in listbox.get_by_role("option").all()]
        self.page.keyboard.press("Escape")
        listbox.wait_for(state="hidden")
        return names

    def submit(self, attempts: int = 3) -> None:
        """Submit, and submit again (as a reviewer would) when the UI says the request
        failed: the test server keeps Prefect's SQLite database, whose resume can fail
        with "database is locked" while other writes hold it on a loaded machine
        (PrefectHQ/prefect#17473; the UI shows "Oops. Something went wrong." and keeps
        the form). Any other outcome, or a third failure, fails the test."""
        failed = self.page.get_by_text("Something went wrong")
        for attempt in range(1, attempts + 1):
            failures_before = failed.count()  # a toast stays a while: count new ones
            self.dialog.get_by_role("button", name="Submit").click()
            deadline = time.monotonic() + WAIT_MS / 1000
            while self.dialog.count() and failed.count() <= failures_before:
                assert time.monotonic() < deadline, "the Resume dialog stayed open, no error"
                self.page.wait_for_timeout(200)
            if not self.dialog.count():
                return
            assert attempt < attempts, f"the UI failed to resume the run {attempts} times"


# --- step 1: the form of a RunInput, as Prefect's UI renders it ---------------------


@pytest.fixture(scope="module")
def probe_deployment(prefect_stack) -> str:
    deployed = prefect_stack.prefect(
        "deploy", "tests/prefect_server/test_review_ui.py:review_probe",
        "--name", "probe", "--pool", "studio-pool",
    )
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    return "review-probe/probe"


def test_suspended_run_resumes_with_what_the_ui_form_says(
    prefect_stack, probe_deployment, page
) -> None:
    from tests.prefect_server.test_resume_job_variables import flow_run_pids

    created = prefect_stack.create_run(probe_deployment, {})
    assert created.status_code in (200, 201), created.text  # 200: Prefect's created-at race
    run_id = created.json()["id"]
    suspended = wait_suspended(prefect_stack, run_id)
    assert suspended["state_type"] == "PAUSED"  # Prefect's type of Suspended
    # suspended, not paused: the run's process exits, nothing waits for the form
    wait_until(lambda: not flow_run_pids(run_id), "the suspended run's process to exit", 60)
    schema = form_schema(prefect_stack, suspended)
    assert set(schema["properties"]) == {"verdict", "reason", "reviewer"}

    form = ResumeForm(page, prefect_stack.ui_url, run_id)
    assert form.options("Verdict") == ["approve", "reject", "capa1"]
    dialog_text = form.dialog.inner_text()
    for shown in ("Verdict (Optional)", "What to do with the piece", "Reason (Optional)",
                  "Reviewer", "Your name", "Submit"):
        assert shown in dialog_text, dialog_text
    form.choose("Verdict", "reject")
    form.type("Reason", "hands look wrong")
    form.type("Reviewer", "Ana Probe")
    page.screenshot(path=str(SCREENSHOTS / "review-probe-form.png"))
    form.submit()

    done = prefect_stack.wait_final(run_id, timeout=150)
    assert done["state_type"] == "COMPLETED", done["state"]
    expected = {"reason": "hands look wrong", "reviewer": "Ana Probe", "verdict": "reject"}
    line = f"probe answers: {json.dumps(expected, sort_keys=True)}"
    logs = prefect_stack.wait_logs([run_id], lambda ms: line in ms)
    assert line in logs, logs


# --- step 2: the review flow's form, and what its decisions do ----------------------


def held_batch_env(moderation_url: str, api_key: str) -> dict[str, str]:
    """Job variables of a batch whose moderation is down: every checked piece is held."""
    return {
        "OPENAI_API_KEY": api_key,
        "OPENAI_BASE_URL": f"{moderation_url}/v1",
        "MODERATION_MAX_RETRIES": "0",
        "MODERATION_BACKOFF_BASE_SECONDS": "0.01",
        "HOOK_MAX_RETRIES": "0",
        "HOOK_BACKOFF_BASE_SECONDS": "0.01",
        "SAFETY_CHECK_SAMPLE_RATE": "1",
    }


def review_runs_of(stack, avatar: str) -> list[dict[str, Any]]:
    runs = stack.runs({"tags": {"all_": ["review"]}})  # the deployment's tag
    return [r for r in runs if (r.get("parameters") or {}).get("avatar") == avatar]


def suspended_review_run(stack, mine: str, avatar: str) -> dict[str, Any]:
    """This test's review run once Suspended; or, when the batch's automation (on when
    `studio automations apply` ran) started one first and this one stepped back, that."""

    def waiting() -> dict[str, Any] | None:
        run = stack.read_run(mine)
        if run["state_name"] == "Suspended":
            return run
        if run["state_type"] in {"FAILED", "CRASHED", "CANCELLED"}:
            raise AssertionError(f"review run ended {run['state']}:\n{stack.tail('worker')}")
        if run["state_type"] == "COMPLETED":
            others = [r for r in review_runs_of(stack, avatar) if r["state_name"] == "Suspended"]
            assert run["state_name"] == "Skipped" and others, run["state"]
            return others[0]
        return None

    return wait_until(waiting, f"review run of {avatar} Suspended", 150)


def piece_events(stack, piece_ids: list[str], since: datetime) -> list[dict[str, Any]]:
    with stack.client() as api:
        found = api.post(
            "/events/filter",
            json={
                "filter": {
                    "occurred": {"since": since.isoformat(),
                                 "until": (datetime.now(UTC) + timedelta(minutes=5)).isoformat()},
                    "event": {"prefix": ["studio.piece."]},
                    "resource": {"id": [f"studio.piece.{p}" for p in piece_ids]},
                },
                "limit": 50,
            },
        )
        found.raise_for_status()
        return found.json()["events"]


def test_reviewer_approves_and_rejects_held_pieces_in_the_ui(
    prefect_stack, stack_db, page
) -> None:
    from sqlalchemy import select

    from studio.avatars import add_avatar
    from studio.db.engine import session_scope
    from studio.db.models import ContentPiece
    from tests.emulators.base import Behaviour
    from tests.emulators.openai_api import OpenAIModerationEmulator
    from tests.prefect_server.test_resume_job_variables import flow_run_pids

    started = datetime.now(UTC) - timedelta(seconds=5)
    avatar = f"held-{uuid.uuid4().hex[:6]}"
    with session_scope() as session:
        add_avatar(session, avatar, "travel", f"https://w.example/{avatar}.safetensors",
                   "on-demand")
    api_key = f"sk-review-ui-{uuid.uuid4().hex[:8]}"
    with OpenAIModerationEmulator(Behaviour(retry_after=0), api_key=api_key) as moderation:
        moderation.fail_always = 503
        created = prefect_stack.create_run(
            "content-batch/on-demand",
            {"avatar_id": avatar, "num_pieces": 2, "include_hooks": False, "seed": 19,
             "tier_distribution": {"capa1": 1.0, "capa2": 0.0, "capa3": 0.0}},
            job_variables={"env": held_batch_env(moderation.url, api_key)},
        )
        assert created.status_code in (200, 201), created.text
        batch = prefect_stack.wait_final(created.json()["id"], timeout=180)
    batch_id = batch["id"]
    with session_scope() as session:
        rows = list(session.scalars(select(ContentPiece).where(ContentPiece.batch_id == batch_id)))
        held = sorted(p.id for p in rows if p.status == "pending_review")
    assert len(held) == 2, [(p.status, p.verdict_info) for p in rows]

    review = prefect_stack.create_run("review/review", {"avatar": avatar})
    assert review.status_code in (200, 201), review.text
    run = suspended_review_run(prefect_stack, review.json()["id"], avatar)
    run_id = run["id"]
    # suspended, not paused: its process exits, no worker slot is held while it waits
    wait_until(lambda: not flow_run_pids(run_id), "the suspended run's process to exit", 60)
    snapshot = run_input(prefect_stack, run_id, "review-pieces")
    assert sorted(p["piece_id"] for p in snapshot) == held
    properties = form_schema(prefect_stack, run)["properties"]
    titles = {name: spec.get("title", name) for name, spec in properties.items()}
    position = {p["piece_id"]: n for n, p in enumerate(snapshot, start=1)}
    approved, rejected = held

    # the artifact a reviewer judges from
    page.goto(f"{prefect_stack.ui_url}/runs/flow-run/{run_id}", wait_until="networkidle")
    page.get_by_role("tab", name="Artifacts").or_(
        page.get_by_text("Artifacts", exact=True)).first.click()
    # the card (its key is the run's name too: the card is found by its description)
    card = page.get_by_text(f"Review: 2 held piece(s) of avatar {avatar}", exact=True).first
    card.wait_for()
    card.click()
    page.wait_for_url(re.compile(r"/artifacts/"))
    heading = page.get_by_text(re.compile(r"^Piece 1: ")).first
    heading.wait_for()
    image = page.locator("img[alt='piece 1']").first
    image.wait_for()
    # large enough to judge: the preview is 768 px, shown at the article's width
    wait_until(lambda: image.evaluate("i => i.complete && i.naturalWidth") >= 512,
               "piece 1's image to load", 60)
    assert image.bounding_box()["width"] >= 500
    page.screenshot(path=str(SCREENSHOTS / "review-artifact.png"))
    page.get_by_text("Why held", exact=False).first.scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / "review-artifact-details.png"))
    shown = page.inner_text("body")
    for words in ("held piece(s)", "Why held", "Moderation", "Tier", "Piece 2: ", approved):
        assert words in shown, words

    # the form: approve one, reject the other with a reason
    form = ResumeForm(page, prefect_stack.ui_url, run_id)
    choice = titles[f"piece_{position[approved]}"]
    assert form.options(choice) == ["hold", "approve", "reject", "capa1", "capa2", "capa3"]
    form.choose(choice, "approve")
    form.type(titles[f"piece_{position[approved]}_reason"], "on brand, sharp")
    form.choose(titles[f"piece_{position[rejected]}"], "reject")
    form.type(titles[f"piece_{position[rejected]}_reason"], "hands look wrong")
    form.type(titles["reviewer"], "Rita Reviewer")
    form.dialog.locator(".p-modal__body").evaluate("e => e.scrollTop = 0")
    page.screenshot(path=str(SCREENSHOTS / "review-form.png"))
    form.submit()

    done = prefect_stack.wait_final(run_id, timeout=150)
    assert done["state_type"] == "COMPLETED", (done["state"], prefect_stack.log_messages([run_id]))
    page.goto(f"{prefect_stack.ui_url}/runs/flow-run/{run_id}", wait_until="networkidle")
    page.get_by_text("Completed", exact=True).first.wait_for()
    decided = page.get_by_text(f"Review decision | Piece: {rejected}", exact=False).first
    decided.wait_for()  # the run's Logs tab says what came of each piece
    decided.scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / "review-result.png"))

    with session_scope() as session:
        by_id = {p.id: p for p in session.scalars(
            select(ContentPiece).where(ContentPiece.id.in_(held)))}
    good, bad = by_id[approved], by_id[rejected]
    assert (good.status, good.review_decision, good.reviewed_by) == (
        "published", "approve", "Rita Reviewer"), good.status
    assert good.review_reason == "on brand, sharp" and good.reviewed_at is not None
    assert good.access_tier == "capa1" and good.storage_key
    assert (bad.status, bad.review_decision, bad.reviewed_by, bad.review_reason) == (
        "rejected", "reject", "Rita Reviewer", "hands look wrong")
    assert bad.reviewed_at is not None and not bad.url

    # the store: the approved capa1 image is where its tier belongs (this stack's local
    # store: no object store is configured for its worker)
    assert good.storage_backend == "local", good.storage_backend
    stored = Path(good.url.removeprefix("file://"))
    assert stored.is_file() and stored.stat().st_size == good.size_bytes > 0
    assert good.storage_key in good.url

    events = wait_until(
        lambda: (found := piece_events(prefect_stack, held, started)) and len(found) >= 2
        and found,
        "studio.piece.* events of the decisions", 60,
    )
    names = {e["resource"]["prefect.resource.id"]: e["event"] for e in events}
    assert names == {f"studio.piece.{approved}": "studio.piece.published",
                     f"studio.piece.{rejected}": "studio.piece.rejected"}, names
    for event in events:
        assert event["payload"]["reviewer"] == "Rita Reviewer"
        assert event["resource"]["studio.batch.id"] == batch_id
    published = next(e for e in events if e["event"] == "studio.piece.published")
    assert published["payload"]["tier"] == "capa1"
    assert published["payload"]["storage_key"] == good.storage_key

"""The Prefect UI (served by `prefect server start` at /) in a real headless Chromium.

Debian's `chromium` driven by the `playwright` package through `executable_path`
(playwright's own browser download cannot work offline); the set-up installs chromium
with apt-get when it is missing and it may, and the tests are skipped, saying why, only
where neither chromium nor playwright can be had. Screenshots land in /tmp.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SCREENSHOTS = Path(os.environ.get("STUDIO_UI_SCREENSHOTS", "/tmp"))


@pytest.fixture
def page(browser, prefect_stack):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    opened = context.new_page()
    opened.set_default_timeout(30_000)
    prefect_stack.log_in(opened)  # the server asks for its auth string (README "On Prefect")
    yield opened
    context.close()


def test_failed_batch_page_shows_the_failed_chunk_and_its_reason(
    prefect_stack, failed_batch, page
) -> None:
    run = failed_batch.run
    chunk = next(c for c in prefect_stack.children(run["id"]) if c["name"] == "image-chunk-0")
    page.goto(f"{prefect_stack.ui_url}/runs/flow-run/{run['id']}", wait_until="networkidle")
    failed_line = page.get_by_text("[BATCH FAILED]", exact=False).first
    failed_line.wait_for()  # the Logs tab
    page.screenshot(path=str(SCREENSHOTS / "studio-ui-failed-batch.png"))
    failed_line.scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / "studio-ui-failed-batch-logs.png"))
    logs = page.inner_text("body")
    assert run["name"] in logs and "Failed" in logs
    assert "all image providers failed" in logs  # the reason, in the batch's own logs

    page.get_by_text("Subflow Runs", exact=True).first.click()
    row = page.get_by_text("image-chunk-0", exact=True).first
    row.wait_for()
    listing = page.inner_text("body")
    assert "image-chunk-0" in listing and "Failed" in listing
    assert "Completed" not in listing  # no green chunk above the failed batch

    row.click()
    page.wait_for_url(f"**/runs/flow-run/{chunk['id']}")
    reason = chunk["state"]["message"]
    page.get_by_text(reason[:40], exact=False).first.wait_for()
    page.screenshot(path=str(SCREENSHOTS / "studio-ui-failed-chunk.png"))
    chunk_page = page.inner_text("body")
    assert "Failed" in chunk_page and run["name"] in chunk_page  # parent run linked
    assert "images failed" in reason and reason[:40] in chunk_page


def test_on_demand_run_form_explains_its_parameters(prefect_stack, page) -> None:
    deployment = prefect_stack.deployment_id("content-batch/on-demand")
    page.goto(
        f"{prefect_stack.ui_url}/deployments/deployment/{deployment}/run",
        wait_until="networkidle",
    )
    page.get_by_text("num_pieces", exact=False).first.wait_for()
    page.screenshot(path=str(SCREENSHOTS / "studio-ui-run-form.png"))
    page.get_by_text("hook_mode", exact=False).first.scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / "studio-ui-run-form-more.png"))
    form = page.inner_text("body")
    for parameter in ("avatar_id", "num_pieces", "tier_distribution", "platform", "hook_mode"):
        assert parameter in form
    assert "1..500" in form  # num_pieces' range, from the schema's description
    # tier_distribution may stay empty (the avatar's tier mix applies): the form offers
    # TierShares or None, and the shares are three named fields, not a raw JSON dict
    tiers = page.locator(".schema-form-property").filter(
        has=page.locator(".schema-form-property__label", has_text="tier_distribution")
    ).first
    choices = tiers.locator(".p-button-group button")
    assert [c.inner_text().strip() for c in choices.all()] == ["TierShares", "None"]
    choices.filter(has_text="TierShares").click()  # None (the profile's mix) is chosen first
    tiers.get_by_text("Capa1", exact=False).first.wait_for()
    page.screenshot(path=str(SCREENSHOTS / "studio-ui-run-form-tiers.png"))
    form = page.inner_text("body")
    for tier in ("Capa1", "Capa2", "Capa3"):
        assert tier in form

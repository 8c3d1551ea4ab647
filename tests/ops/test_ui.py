"""The UI walk-through in a real browser: edit the retrain-manual form, submit, watch the run complete, read its artifacts.

Debian's chromium, driven by Playwright. Skips only where chromium is not installed; CI installs it (.ci/run).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_for
from tests.ops.helpers import RunningStack

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists() and shutil.which("chromium") is None, reason="chromium is not installed"),
]


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 1000})
        finally:
            browser.close()


def form_input(page: Any, label: str) -> Any:
    """The input of the innermost form property whose label starts with `label`."""
    prop = "contains(concat(' ', normalize-space(@class), ' '), ' schema-form-property ')"
    return page.locator(f"xpath=//span[starts-with(normalize-space(.), '{label}')]/ancestor::div[{prop}][1]//input")


def test_retrain_from_the_form_runs_to_completion_with_its_artifacts(running_stack: RunningStack, page: Any) -> None:
    from playwright.sync_api import expect
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.objects import FlowRun

    base = running_stack.stack.url
    with SyncPrefectClient(running_stack.stack.api_url) as client:
        deployment = client.read_deployment_by_name("retrain/retrain-manual")

    page.goto(f"{base}/deployments/deployment/{deployment.id}/run")
    expect(page.get_by_text("The training CSV and its columns.")).to_be_visible(timeout=30_000)  # the form, described
    form_input(page, "Epochs").fill("9")
    page.get_by_role("button", name="Submit").click()
    expect(page.get_by_text("scheduled to start").first).to_be_visible(timeout=30_000)  # the UI's toast

    with SyncPrefectClient(running_stack.stack.api_url) as client:

        def submitted() -> FlowRun | None:
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
            return next((r for r in runs if r.parameters.get("config", {}).get("train", {}).get("epochs") == 9), None)

        flow_run = wait_for("the run submitted from the form", submitted, 30)
    assert flow_run.parameters["config"]["rollout"]["target"] == "none"  # the deployment's value kept beside the edit
    page.goto(f"{base}/runs/flow-run/{flow_run.id}")

    # The page follows the run as the worker executes it.
    expect(page.locator(".state-badge", has_text="Completed").first).to_be_visible(timeout=180_000)
    expect(page.get_by_text("ingest-csv").first).to_be_visible(timeout=30_000)  # its task runs
    page.get_by_role("tab", name="Artifacts").or_(page.get_by_text("Artifacts", exact=True)).first.click()
    expect(page.get_by_text("circle-metrics").first).to_be_visible(timeout=30_000)
    expect(page.get_by_text("circle-verdict").first).to_be_visible(timeout=30_000)

"""The UI walk-through in a real browser: the forms, a run from the form, its state, its pictures.

Debian's chromium, driven by Playwright. Skips only where chromium is not installed; CI installs it (.ci/run).
Screenshots land in $AVIARY_SCREENSHOTS (or a temporary folder), to look at when a check fails.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
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


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = Path(os.environ.get("AVIARY_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    where.mkdir(parents=True, exist_ok=True)
    return where


def form_input(page: Any, label: str) -> Any:
    """The input of the innermost form property whose label starts with `label`."""
    prop = "contains(concat(' ', normalize-space(@class), ' '), ' schema-form-property ')"
    return page.locator(f"xpath=//span[starts-with(normalize-space(.), '{label}')]"
                        f"/ancestor::div[{prop}][1]//*[self::input or self::textarea]")


def submit(page: Any, shots: Path, field: Any, after: str, created: Callable[[], int]) -> None:
    """Click Submit as a user does and wait for the page a created run leads to; fail with what the form says.

    On a loaded machine a click can meet a layout that moved under it and reach nothing. Only when nothing at all
    came of it (no run, no message, still the form) is the form submitted once more, by Enter in `field`.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.get_by_role("button", name="Submit").click()
    for attempt, wait_s in enumerate((30, 120)):
        try:
            page.wait_for_url(re.compile(after), timeout=wait_s * 1000)
            return
        except PlaywrightTimeout:
            said = page.locator(".p-toast__message, .p-label__message--failed").all_inner_texts()
            if attempt or said or created():
                page.screenshot(path=shots / "submit-no-answer.png", full_page=True)
                pytest.fail(f"no answer after {wait_s} s at {page.url}: {created()} runs, the page says {said}")
            field.press("Enter")


def deployment_id(running: RunningStack, name: str) -> str:
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(running.stack.api_url) as client:
        return str(client.read_deployment_by_name(name).id)


def runs_of(running: RunningStack, deployment: str) -> list[Any]:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with SyncPrefectClient(running.stack.api_url) as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment])))


def test_each_form_shows_what_its_deployment_uses(running_stack: RunningStack, page: Any, shots: Path) -> None:
    from playwright.sync_api import expect

    base = running_stack.stack.url
    page.goto(f"{base}/deployments/deployment/{deployment_id(running_stack, 'retrain/retrain-manual')}/run")
    expect(page.get_by_text("The training CSV and its columns.")).to_be_visible(timeout=30_000)
    expect(page.get_by_text("Model store root; a version is the folder store/model/version.")).to_be_visible()
    # Its rollout settings are there on purpose: the export event carries them to canary-deploy.
    expect(page.get_by_text("Hand Off (Optional)")).to_be_visible()
    # Each feature carries its kind: no separate list of categorical columns that could name a non-feature.
    expect(form_input(page, "Features")).to_have_value(re.compile(r'^\{\s*"x": "auto",\s*"y": "auto"\s*\}$'))
    assert page.get_by_text("Categorical (Optional)", exact=True).count() == 0

    page.goto(f"{base}/deployments/deployment/{deployment_id(running_stack, 'rollout/canary-deploy')}/run")
    expect(page.get_by_text("Canary Weight (Optional)")).to_be_visible(timeout=30_000)
    text = page.locator("body").inner_text()
    assert "Epochs" not in text and "Precision Floor" not in text  # training settings: the retrain form's
    assert "Property is type" not in text
    # Optional values are plain, empty fields, not toggles between a type and None.
    for label in ("Canary Weight", "Kubeconfig", "Context", "Store Uri"):
        expect(form_input(page, label)).to_have_value("")
    page.get_by_text("Canary Weight (Optional)").scroll_into_view_if_needed()
    page.screenshot(path=shots / "form-canary-deploy.png")


def test_the_form_marks_every_bad_field_and_creates_no_run(running_stack: RunningStack, page: Any, shots: Path) -> None:
    from playwright.sync_api import expect

    deployment = deployment_id(running_stack, "retrain/retrain-manual")
    before = len(runs_of(running_stack, deployment))
    page.goto(f"{running_stack.stack.url}/deployments/deployment/{deployment}/run")
    expect(page.get_by_text("The training CSV and its columns.")).to_be_visible(timeout=30_000)
    form_input(page, "Epochs").fill("0")
    form_input(page, "Eval Fraction").fill("1.5")
    form_input(page, "Model Name").fill("Bad Name!")
    # A feature's kind is part of the feature: no categorical column can be missing from the features.
    form_input(page, "Features").fill('{"x": "auto", "y": "category"}')
    page.get_by_role("button", name="Submit").click()
    # Every bad field marked at once, by the form, before anything reaches the server.
    expect(page.get_by_text("0 is less than the minimum of 1")).to_be_visible(timeout=30_000)
    expect(page.get_by_text("1.5 is greater than or equal to the maximum of 1")).to_be_visible()
    expect(page.get_by_text("'Bad Name!' does not match")).to_be_visible()
    features = page.locator("xpath=//span[starts-with(normalize-space(.), 'Features')]/ancestor::div[contains(concat("
                            "' ', normalize-space(@class), ' '), ' schema-form-property ')][1]")
    expect(features.get_by_text("'category' is not one of ['auto', 'categorical']")).to_be_visible()
    page.screenshot(path=shots / "form-bad-values.png")
    features.scroll_into_view_if_needed()
    page.screenshot(path=shots / "form-bad-feature-kind.png")
    assert page.locator(".p-toast__message").all_inner_texts() == []  # refused by the form, not by the server
    assert len(runs_of(running_stack, deployment)) == before


def test_retrain_from_the_form_shows_its_state_and_pictures(running_stack: RunningStack, page: Any, shots: Path) -> None:
    from playwright.sync_api import expect

    base = running_stack.stack.url
    deployment = deployment_id(running_stack, "retrain/retrain-manual")
    page.goto(f"{base}/deployments/deployment/{deployment}/run")
    expect(page.get_by_text("The training CSV and its columns.")).to_be_visible(timeout=30_000)  # the form, described
    for label, value in (("Epochs", "9"), ("Max Regression", "1")):  # blessed whatever production is: Exported
        form_input(page, label).fill(value)
        expect(form_input(page, label)).to_have_value(value)
    before = {r.id for r in runs_of(running_stack, deployment)}

    def new_runs() -> list[Any]:
        return [r for r in runs_of(running_stack, deployment) if r.id not in before]

    submit(page, shots, form_input(page, "Max Regression"), rf"/deployments/deployment/{deployment}$",
           lambda: len(new_runs()))
    created = new_runs()  # the API, not the toast
    assert len(created) == 1, f"the form created {len(created)} runs"
    flow_run = created[0]
    assert flow_run.parameters["config"]["train"]["epochs"] == 9
    assert flow_run.parameters["config"]["export"]["golden_rows"] == 20  # the deployment's value kept beside the edit
    page.goto(f"{base}/runs/flow-run/{flow_run.id}")

    # The page follows the run as the worker executes it; it ends named for what became of the model.
    expect(page.locator(".state-badge", has_text="Exported").first).to_be_visible(timeout=240_000)
    expect(page.get_by_text("draw-pictures").first).to_be_visible(timeout=30_000)  # its task runs
    page.get_by_role("tab", name="Artifacts").or_(page.get_by_text("Artifacts", exact=True)).first.click()
    for key in ("circle-metrics", "circle-verdict", "circle-pictures"):
        expect(page.get_by_text(key).first).to_be_visible(timeout=30_000)
    page.screenshot(path=shots / "run-artifacts.png")

    page.get_by_text("circle-pictures").first.click()
    images = page.locator("img[src^='data:image/png']")
    expect(images).to_have_count(5, timeout=30_000)

    def widths() -> list[int] | None:
        sizes = images.evaluate_all("els => els.map(e => e.complete ? e.naturalWidth : 0)")
        return sizes if all(w > 0 for w in sizes) else None

    assert sorted(wait_for("the pictures to load", widths, 30)) == [400, 500, 500, 600, 600]
    assert images.evaluate_all("els => els.map(e => e.alt)") == [
        "Precision-recall", "ROC", "Confusion matrix", "Beside the baseline, same eval set", "All versions"]
    page.screenshot(path=shots / "run-pictures.png", full_page=True)

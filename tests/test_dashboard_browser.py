"""The dashboard in a real browser: headless Chromium driven by Playwright.

Everything is real: the API (``python -m api.serve``) and a ``celery -A workers worker``
run as processes on databases of this module's own, and the page is loaded
from the API like a person would. Screenshots land in ``test-artifacts/``.

Needs Debian's ``chromium`` package (``apt-get install -y chromium``); Playwright
drives that binary, it never downloads a browser of its own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.support.browser import CHROMIUM, chromium
from tests.support.databases import Databases, module_databases, use_databases
from tests.support.jobs import post_job
from tests.support.procs import Tracker, process_env, purge_run_queue, run_api, run_worker
from tests.support.waiting import wait_for_job
from windfarm import jobs
from windfarm.db import target_engine

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]'")

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
TOKEN = "dashboard-test-token"
TOKEN_KEY = "windfarm-etl.api-token"
PROCESSED = ("2025-12-01", "2025-12-02")
FAILED_HOUR = datetime(2025, 12, 4, 5)
FAILED_MESSAGE = "HTTP 404 from the API: no source rows for this hour"
JOB_TIMEOUT_S = 90

if not CHROMIUM.exists():
    # CI installs it; a developer without it is told how, instead of a red run.
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install -y chromium")
    pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium", allow_module_level=True)

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Stack:
    dbs: Databases
    url: str


def _store_failed_hour() -> None:
    # A failure a worker would record, written the way the worker writes it.
    with target_engine().begin() as conn:
        job_id = jobs.store_job(conn, origin="api", hours=[FAILED_HOUR])
        assert job_id is not None
        jobs.claim_slice(conn, job_id, FAILED_HOUR)
        jobs.fail_slice(conn, job_id, FAILED_HOUR, FAILED_MESSAGE)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """API (with a token) and one worker on this module's databases, two days processed."""
    with module_databases("ui") as dbs, Tracker() as procs:
        use_databases(dbs)
        # A message another test left on the run's queue must not reach this worker.
        purge_run_queue()
        procs.defer(purge_run_queue)
        api = procs.add(run_api(process_env(API_TOKEN=TOKEN), name="dashboard-api"))
        procs.add(run_worker(process_env(API_BASE_URL=api.url), name="dashboard-worker"))
        posted = post_job(
            api.url,
            {"start_date": PROCESSED[0], "end_date": PROCESSED[-1]},
            Authorization=f"Bearer {TOKEN}",
        )
        job = wait_for_job(
            posted["id"], api=api.url, timeout=JOB_TIMEOUT_S, interval=0.3, procs=procs
        )
        assert job["status"] == "succeeded"
        _store_failed_hour()
        yield Stack(dbs, api.url)


@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    with chromium(sync_api) as launched:
        yield launched


@pytest.fixture
def page(browser, stack: Stack, request: pytest.FixtureRequest) -> Iterator[sync_api.Page]:
    """The dashboard, loaded; a screenshot of it is saved whatever the outcome."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-GB")
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(f"{stack.url}/")
    page.wait_for_selector("#grid-body tr")
    yield page
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"dashboard-{request.node.name}.png", full_page=True)
    context.close()
    assert not problems, f"JavaScript errors on the page: {problems}"


def _row(page: sync_api.Page, day: str) -> sync_api.Locator:
    return page.locator(f'#grid-body tr[data-day="{day}"]')


def _states(page: sync_api.Page, day: str) -> list[str]:
    return _row(page, day).locator("button.cell").evaluate_all("bs => bs.map(b => b.dataset.state)")


def test_the_grid_shows_processed_days_succeeded_and_others_never_run(page):
    assert page.input_value("#range-start") == "2025-12-01"
    assert page.input_value("#range-end") == "2025-12-10"
    assert _row(page, "2025-12-10").count() == 1
    for day in PROCESSED:
        assert _states(page, day) == ["succeeded"] * 24
        assert _row(page, day).locator("td.summary").inner_text() == "24/24"
    assert _states(page, "2025-12-09") == ["never_run"] * 24
    # Not colour alone: every square says its state in words.
    label = _row(page, "2025-12-09").locator("button.cell").first.get_attribute("aria-label")
    assert label is not None and "never run" in label
    legend = page.locator(".legend").first.inner_text()
    for word in ("succeeded", "failed", "running", "queued", "never run"):
        assert word in legend


def test_a_failed_hour_shows_its_error(page):
    states = _states(page, "2025-12-04")
    assert states[FAILED_HOUR.hour] == "failed"
    assert states.count("never_run") == 23
    cell = _row(page, "2025-12-04").locator("button.cell").nth(FAILED_HOUR.hour)
    assert FAILED_MESSAGE in (cell.get_attribute("title") or "")
    cell.click()
    detail = page.locator("#cell-detail")
    assert detail.is_visible()
    assert FAILED_MESSAGE in detail.inner_text()
    assert "failed" in detail.inner_text()


def test_the_chart_draws_a_day_and_agrees_with_the_raw_values(page):
    _row(page, "2025-12-02").locator("button.day-button").click()
    check = page.locator("#chart-check")
    sync_api.expect(check).to_have_class("message good", timeout=10_000)
    assert "144 windows" in check.inner_text()
    for series in ("raw", "mean", "band"):
        path = page.locator(f'#chart path[data-series="{series}"]')
        assert path.count() == 1
        assert len(path.get_attribute("d") or "") > 1000, series
    # 1,440 one-minute points: one move, then a line to each next minute.
    raw = page.locator('#chart path[data-series="raw"]').get_attribute("d") or ""
    assert raw.count("L") + raw.count("M") == 1440
    # Pointing at the chart reads out the minute and its window.
    page.locator("#chart").hover(position={"x": 500, "y": 150})
    readout = page.locator("#chart-readout").inner_text()
    assert "UTC · 1-minute" in readout and "mean" in readout, readout
    page.select_option("#chart-variable", "power")
    sync_api.expect(page.locator("#chart-desc")).to_contain_text("power on 2025-12-02")
    sync_api.expect(check).to_have_class("message good", timeout=10_000)


def test_an_unprocessed_day_charts_raw_values_and_says_so(page):
    page.fill("#chart-day", "2025-12-08")
    page.click("#chart-form button")
    check = page.locator("#chart-check")
    sync_api.expect(check).to_contain_text("No 10-minute statistics for 2025-12-08", timeout=10_000)
    assert len(page.locator('#chart path[data-series="raw"]').get_attribute("d") or "") > 1000
    assert page.locator('#chart path[data-series="mean"]').get_attribute("d") == ""


def test_posting_a_job_from_the_page_turns_the_day_green(page, stack: Stack):
    day = "2025-12-03"
    assert set(_states(page, day)) == {"never_run"}
    assert page.locator("#token").is_visible()  # the API has a token
    page.fill("#token", "")
    _row(page, day).locator("button.day-button").click()
    assert page.input_value("#job-start") == day
    page.click("#job-submit")
    sync_api.expect(page.locator("#job-status")).to_contain_text("needs its token")

    page.fill("#token", TOKEN)
    page.click("#job-submit")
    status = page.locator("#job-status")
    sync_api.expect(status).to_have_attribute(
        "data-status", "succeeded", timeout=JOB_TIMEOUT_S * 1000
    )
    assert "24 of 24 slices succeeded" in status.inner_text()
    sync_api.expect(_row(page, day)).to_have_attribute("data-succeeded", "24", timeout=10_000)
    assert _states(page, day) == ["succeeded"] * 24
    # Kept for this tab only, once the API took it.
    assert page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") == TOKEN
    assert page.evaluate(f"localStorage.getItem('{TOKEN_KEY}')") is None
    # The chart of the day the job covered now has its statistics.
    sync_api.expect(page.locator("#chart-check")).to_have_class("message good", timeout=10_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "dashboard.png", full_page=True)


def test_the_token_lives_in_the_tab_and_a_refused_one_is_dropped(page, stack: Stack):
    # A token an earlier version left in localStorage is removed, not used.
    page.evaluate(f"localStorage.setItem('{TOKEN_KEY}', 'old-token')")
    page.evaluate(f"sessionStorage.setItem('{TOKEN_KEY}', 'wrong-token')")
    page.reload()
    page.wait_for_selector("#grid-body tr")
    assert page.evaluate(f"localStorage.getItem('{TOKEN_KEY}')") is None
    assert page.input_value("#token") == "wrong-token"  # this tab's, from its session

    page.fill("#job-start", "2025-12-09")
    page.click("#job-submit")
    sync_api.expect(page.locator("#job-status")).to_contain_text("refused this token")
    assert page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None
    assert page.input_value("#token") == ""
    assert page.evaluate(f"localStorage.getItem('{TOKEN_KEY}')") is None
    # The refused post created nothing.
    assert set(_states(page, "2025-12-09")) == {"never_run"}


def test_the_page_links_to_flower_and_the_api_docs(page, stack: Stack):
    assert page.locator("#flower-link").get_attribute("href") == "http://127.0.0.1:5555/"
    assert page.get_by_role("link", name="API docs").get_attribute("href") == "docs"
    assert page.locator("#health").inner_text() == "databases ok"


def test_static_files_are_served_from_the_package(stack: Stack):
    for path, media in (
        ("/", "text/html"),
        ("/dashboard", "text/html"),
        ("/static/app.js", "text/javascript"),
        ("/static/app.css", "text/css"),
    ):
        response = httpx.get(stack.url + path, timeout=5)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith(media)
        again = httpx.get(stack.url + path, headers={"If-None-Match": response.headers["etag"]})
        assert again.status_code == 304
    assert httpx.get(stack.url + "/static/nothing.js").status_code == 404
    assert httpx.get(stack.url + "/static/..%2Fmain.py").status_code == 404

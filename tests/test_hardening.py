"""Safe to expose: the browser-facing defaults of the API.

- Every answer (pages, static files, JSON, 304, 4xx and 5xx) carries a
  Content-Security-Policy of ``'self'`` only, ``X-Frame-Options: DENY``,
  ``X-Content-Type-Options: nosniff`` and a Referrer-Policy.
- ``/docs`` and ``/redoc`` come from packaged assets with no CDN, under a
  policy of their own that allows exactly their inline code by hash; in
  Chromium, with every request beyond this host blocked, Swagger UI shows every
  operation and the dashboard runs, and neither breaks its policy.
- ``ALLOWED_HOSTS`` refuses other ``Host`` headers with 400; unset, any host is
  served.

The dashboard's token handling (sessionStorage, dropped after a 401) is
checked in ``tests/test_dashboard_browser.py``, which has an API with a token.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.security import CONTENT_SECURITY_POLICY, DOCS_ASSETS_URL
from tests.support.browser import CHROMIUM, chromium
from tests.support.databases import Databases, in_process_client, use_databases
from tests.support.procs import Tracker, process_env, run_api

TOKEN = "hardening-t0ken"
STATIC = Path(__file__).resolve().parent.parent / "api" / "static"


def assert_hardened(response: httpx.Response, *, own_policy: bool = False) -> None:
    where = f"{response.request.method} {response.request.url} -> {response.status_code}"
    headers = response.headers
    assert headers.get("x-frame-options") == "DENY", where
    assert headers.get("x-content-type-options") == "nosniff", where
    assert headers.get("referrer-policy") == "no-referrer", where
    policy = headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in policy, where
    if own_policy:
        assert "default-src 'self'" in policy and "unsafe-inline" not in policy, where
        assert "http" not in policy and "unsafe-eval" not in policy, where
    else:
        assert policy == CONTENT_SECURITY_POLICY, where


@pytest.fixture
def hardened(dbs: Databases, settings_env) -> Iterator[TestClient]:
    """An in-process client on an app with a token, whose server errors are
    answered (500) rather than raised into the test."""
    settings_env(API_TOKEN=TOKEN)
    app = create_app()

    @app.get("/test-only/boom", include_in_schema=False)
    def boom() -> None:
        raise RuntimeError("a bug")

    with in_process_client(app=app, raise_server_exceptions=False) as test_client:
        yield test_client


def test_every_route_answers_with_the_security_headers(hardened: TestClient):
    schema = hardened.get("/openapi.json")
    assert_hardened(schema)
    # Every GET operation of the schema, with the parameters it needs.
    params = {
        "/data": {"start": "2025-12-05T00:00:00", "end": "2025-12-05T00:09:00"},
        "/series": {"signal": "wind_speed_mean_10m", "start": "2025-12-05T00:00:00"},
        "/partitions": {"start_date": "2025-12-05", "end_date": "2025-12-05"},
    }
    for path, operations in schema.json()["paths"].items():
        if "get" in operations:
            concrete = path.replace("{job_id}", "1")
            answer = hardened.get(concrete, params=params.get(path, {}))
            assert answer.status_code < 500, (path, answer.text)
            assert_hardened(answer)
    # The pages and files outside the schema.
    for path in (
        "/",
        "/dashboard",
        "/dashboard/config",
        "/static/app.js",
        "/static/app.css",
        "/static/favicon.svg",
        f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
        f"{DOCS_ASSETS_URL}/swagger-ui.css",
        f"{DOCS_ASSETS_URL}/redoc.standalone.js",
    ):
        answer = hardened.get(path)
        assert answer.status_code == 200, path
        assert_hardened(answer)
        if "etag" in answer.headers:  # and its 304
            again = hardened.get(path, headers={"If-None-Match": answer.headers["etag"]})
            assert again.status_code == 304, path
            assert_hardened(again)
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        answer = hardened.get(path)
        assert answer.status_code == 200, path
        assert_hardened(answer, own_policy=True)


def test_errors_answer_with_the_security_headers(hardened: TestClient, settings_env):
    errors = {
        400: hardened.post("/jobs", content=b"{}", headers={"Content-Length": "x"}),
        401: hardened.post("/jobs", json={"date": "2025-12-05"}),
        404: hardened.get("/static/nothing.js"),
        405: hardened.delete("/data"),
        413: hardened.post(
            "/jobs", content=b"x" * 10_000, headers={"Authorization": f"Bearer {TOKEN}"}
        ),
        414: hardened.get("/data?start=" + "9" * 5000),
        422: hardened.get("/data", params={"start": "yesterday"}),
        500: hardened.get("/test-only/boom"),
    }
    for status, answer in errors.items():
        assert answer.status_code == status, (status, answer.text)
        assert_hardened(answer)
    assert errors[404].headers["content-type"].startswith("application/json")
    assert hardened.get(f"{DOCS_ASSETS_URL}/nothing.js").status_code == 404

    from windfarm.db import dispose_engines

    settings_env(SOURCE_DATABASE_URL="postgresql+psycopg2://postgres@127.0.0.1:1/source_db")
    dispose_engines()
    unavailable = hardened.get("/health")
    assert unavailable.status_code == 503
    assert_hardened(unavailable)


def test_the_dashboard_has_no_inline_code_the_policy_would_block():
    page = (STATIC / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page), "an inline script"
    assert "<style" not in page and not re.search(r"\sstyle=", page), "an inline style"
    assert not re.search(r"\son[a-z]+=", page), "an inline event handler"
    assert "javascript:" not in page and "data:" not in page
    script = (STATIC / "app.js").read_text()
    for risky in (
        "eval(",
        "new Function",
        "innerHTML",
        'setAttribute("style"',
        "localStorage.setItem",
    ):
        assert risky not in script, risky


def test_the_docs_load_nothing_from_elsewhere_and_hash_their_inline_code(hardened: TestClient):
    import base64
    import hashlib

    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        page = hardened.get(path)
        html = page.text
        assert not re.search(r"(src|href)=[\"']?(https?:)?//", html), (path, "a remote asset")
        policy = page.headers["content-security-policy"]
        for kind, body in re.findall(r"<(script|style)>(.*?)</\1>", html, re.DOTALL):
            digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
            directive = "script-src" if kind == "script" else "style-src"
            allowed = next(d for d in policy.split("; ") if d.startswith(directive))
            assert f"'sha256-{digest}'" in allowed, (path, kind)
        for asset in re.findall(r"(?:src|href)=\"(/docs-assets/[^\"]+)\"", html):
            served = hardened.get(asset)
            assert served.status_code == 200, asset
    swagger = hardened.get("/docs").text
    assert f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js" in swagger
    assert hardened.get(f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js").headers["content-type"].split(
        ";"
    )[0] in ("text/javascript", "application/javascript")


# --- ALLOWED_HOSTS ------------------------------------------------------------------


def test_allowed_hosts_refuse_another_host(dbs: Databases, settings_env):
    settings_env(ALLOWED_HOSTS="api.example, localhost")
    with in_process_client(base_url="http://api.example") as allowed:
        assert allowed.get("/health").status_code == 200
        assert allowed.get("/health", headers={"Host": "localhost:8000"}).status_code == 200
        refused = allowed.get("/health", headers={"Host": "evil.example"})
        assert refused.status_code == 400
        assert_hardened(refused)
        assert (
            allowed.get(
                "/data",
                params={"start": "2025-12-05T00:00:00"},
                headers={"Host": "api.example.evil.example"},
            ).status_code
            == 400
        )


def test_without_allowed_hosts_any_host_is_served(dbs: Databases, settings_env):
    settings_env(ALLOWED_HOSTS="")
    with in_process_client(base_url="http://anything.example") as client:
        assert client.get("/health").status_code == 200
        assert client.get("/health", headers={"Host": "evil.example"}).status_code == 200


# --- in Chromium, offline ---------------------------------------------------------------


@pytest.fixture(scope="module")
def real_api(shared_dbs: Databases) -> Iterator[str]:
    use_databases(shared_dbs)
    with Tracker() as procs:
        yield procs.add(run_api(process_env(API_TOKEN=TOKEN), name="hardening-api")).url


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]'")
    if not CHROMIUM.exists():
        # CI installs it; a developer without it is told how, instead of a red run.
        if os.environ.get("CI"):
            raise RuntimeError(f"{CHROMIUM} is missing: apt-get install -y chromium")
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    with chromium(sync_api) as launched:
        yield launched


class Visit:
    """A page opened with every request beyond the API's host blocked; what the
    browser reported about it."""

    def __init__(self, browser, base: str, path: str) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.outside: list[str] = []
        self.violations: list[str] = []
        self.errors: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.route("**/*", self._route(base))
        self.response = self.page.goto(base + path)

    def _route(self, base: str):
        def route(route) -> None:
            if route.request.url.startswith(base):
                route.continue_()
            else:
                self.outside.append(route.request.url)
                route.abort()

        return route

    def _console(self, message) -> None:
        if "Content Security Policy" in message.text:
            self.violations.append(message.text)

    def close(self) -> None:
        self.context.close()


@pytest.mark.slow
def test_swagger_ui_works_offline_under_its_policy(browser, real_api: str):
    visit = Visit(browser, real_api, "/docs")
    try:
        operations = sum(
            len(ops) for ops in httpx.get(f"{real_api}/openapi.json").json()["paths"].values()
        )
        blocks = visit.page.locator(".opblock")
        blocks.nth(operations - 1).wait_for(timeout=15_000)
        assert blocks.count() == operations
        # Trying an operation out is a request to this origin, which the policy allows.
        visit.page.locator(".opblock-summary-path", has_text="/health").first.click()
        visit.page.get_by_role("button", name="Try it out").click()
        visit.page.get_by_role("button", name="Execute").click()
        status = visit.page.locator(".live-responses-table tr.response .response-col_status")
        status.first.wait_for()
        assert "200" in status.first.inner_text()
        assert visit.outside == [] and visit.violations == [] and visit.errors == []
    finally:
        visit.close()


@pytest.mark.slow
def test_redoc_works_offline_under_its_policy(browser, real_api: str):
    visit = Visit(browser, real_api, "/redoc")
    try:
        visit.page.locator("[data-section-id^='tag/data']").first.wait_for(timeout=15_000)
        visit.page.wait_for_timeout(500)
        assert visit.errors == []
        # Redoc's logo links to its CDN: the policy blocks it, and so does this test's
        # router. Nothing else is refused.
        assert all("cdn.redoc.ly" in url for url in visit.outside), visit.outside
        assert all("cdn.redoc.ly" in text for text in visit.violations), visit.violations
    finally:
        visit.close()


@pytest.mark.slow
def test_the_dashboard_runs_under_the_policy(browser, real_api: str):
    visit = Visit(browser, real_api, "/")
    try:
        assert visit.response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        visit.page.wait_for_selector("#grid-body tr")
        visit.page.locator("#chart-check.message").wait_for()
        # A function, not an expression: Playwright polls an expression with eval(),
        # which the policy forbids (a flaky EvalError whenever the first check fails).
        visit.page.wait_for_function(
            "() => document.querySelector('#chart path[data-series=raw]')"
            "?.getAttribute('d')?.length"
        )
        assert visit.outside == [] and visit.violations == [] and visit.errors == []
        # An inline script someone adds would not run.
        ran = visit.page.evaluate("""() => {
            window.__inline = false;
            const s = document.createElement('script');
            s.textContent = 'window.__inline = true';
            document.body.append(s);
            return window.__inline;
        }""")
        assert ran is False
    finally:
        visit.close()


def test_api_answers_framed_pages_nowhere(real_api: str):
    # The dashboard and the docs refuse to be framed, by either header.
    for path in ("/", "/docs", "/redoc"):
        answer = httpx.get(real_api + path)
        assert answer.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]

"""/docs and /redoc in a real headless browser with the network cut off, served by a real
``recsys serve`` process (which is also what prints the start-up warning of a server without
API keys). Chromium is Debian's (/usr/bin/chromium), driven by Playwright — never
``playwright install``. Every request that is not to the server on 127.0.0.1 is aborted, so a
page that needs a CDN renders nothing and the test fails."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from servers import serve_process

CHROMIUM = Path(os.environ.get("RECSYS_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``recsys serve`` on an empty data folder (no model, no key): the docs need neither."""
    data_dir = tmp_path_factory.mktemp("docs-data")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env |= {"RECSYS_DATA_DIR": str(data_dir), "RECSYS_RELOAD_POLL_SECONDS": "0"}
    with serve_process(env, log_path=data_dir / "serve.log", ready_path="/health") as proc:
        yield proc


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing (.ci/run installs Debian's chromium)")
        pytest.skip(f"{CHROMIUM} is missing")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Offline:
    """A browser tab whose every request off the server's host is aborted (and recorded)."""

    def __init__(self, browser, base: str) -> None:
        self.context = browser.new_context(viewport={"width": 1300, "height": 900})
        self.page = self.context.new_page()
        self.blocked: list[str] = []
        self.errors: list[str] = []
        host = urlsplit(base).hostname

        def route(r):
            if urlsplit(r.request.url).hostname in (host, "localhost"):
                r.continue_()
            else:
                self.blocked.append(r.request.url)
                r.abort()

        self.context.route("**/*", route)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def close(self) -> None:
        self.context.close()


def _operations(base: str) -> list[tuple[str, str]]:
    spec = httpx.get(f"{base}/openapi.json", timeout=30).json()
    return [(method.upper(), path) for path, ops in spec["paths"].items() for method in ops]


def test_swagger_ui_renders_every_endpoint_offline(server, browser, tmp_path):
    tab = Offline(browser, server.url)
    try:
        page = tab.page
        assert page.goto(f"{server.url}/docs").status == 200
        page.wait_for_selector(".opblock", timeout=30_000)
        shown = page.locator(".opblock").evaluate_all(
            "els => els.map(e => [e.querySelector('.opblock-summary-method').innerText,"
            " e.querySelector('.opblock-summary-path').getAttribute('data-path')])"
        )
        assert sorted(map(tuple, shown)) == sorted(_operations(server.url))
        assert page.locator(".info .title").inner_text().startswith("recsys")
        # the error body is documented where a user reads it: the Error schema
        assert page.locator("section.models").get_by_text("Error", exact=True).count() >= 1
        page.screenshot(path=str(tmp_path / "docs.png"))
        assert not tab.blocked, tab.blocked
        assert not tab.errors, tab.errors
    finally:
        tab.close()


def test_redoc_renders_every_endpoint_offline(server, browser, tmp_path):
    tab = Offline(browser, server.url)
    try:
        page = tab.page
        assert page.goto(f"{server.url}/redoc").status == 200
        page.wait_for_selector("[data-section-id^='operation/']", timeout=60_000)
        sections = page.locator("[data-section-id^='operation/']").count()
        assert sections == len(_operations(server.url))
        assert "Every error answer" in page.locator(".api-content").first.inner_text()
        page.screenshot(path=str(tmp_path / "redoc.png"))
        assert not tab.blocked, tab.blocked
        assert not tab.errors, tab.errors
    finally:
        tab.close()


def test_docs_pages_load_nothing_from_elsewhere(server):
    for path in ("/docs", "/redoc"):
        html = httpx.get(f"{server.url}{path}", timeout=30).text
        assert "cdn." not in html and "https://" not in html.replace("https://github.com", ""), html
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css") if path == "/docs" else ("redoc.standalone.js",):
            assert f"/static-offline-docs/{asset}" in html
            assert httpx.get(f"{server.url}/static-offline-docs/{asset}", timeout=30).status_code == 200


def test_a_server_without_keys_says_so_at_start(server):
    log = server.log_tail(200)
    assert "no API key configured: every write" in log and "RECSYS_API_KEYS" in log, log
    r = httpx.post(f"{server.url}/events", json={"user_id": "u1", "item_id": "i1"}, timeout=30)
    assert r.status_code == 401 and "no API key configured" in r.json()["detail"]["message"]

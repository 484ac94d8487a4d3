"""The catalogue web page in a real browser (issue #14): Debian's Chromium, headless, driven by
Playwright for Python, against a real mirror served on a loopback port. Never a browser
download: without /usr/bin/chromium or Playwright the tests skip, except in CI, where they fail.

Screenshots go to `test-artifacts/page/` (gitignored) for a person to look at."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from sync.app import create_app
from tests.helpers import DEPRECATED, mirror_config

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "page"
# Root needs --no-sandbox; the rest keep Chromium from calling home (no request may leave).
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.async_api  # noqa: F401, PLC0415
    except ImportError:
        return "Playwright for Python is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="module")
def browser_ready() -> None:
    reason = _missing()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI runs the browser tests: {reason}")
        pytest.skip(reason)


@pytest.fixture
async def origin(browser_ready: None, tmp_path: Path, mirror_db: Path) -> AsyncIterator[str]:
    path = tmp_path / "mirror.db"
    shutil.copy(mirror_db, path)
    server = TestServer(create_app(mirror_config(path), sync=False), host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


class Browser:
    """One headless page whose every request, console error and uncaught exception is kept."""

    def __init__(self, origin: str, shots: Path) -> None:
        self.origin, self.shots = origin, shots
        self.errors: list[str] = []
        self.requests: list[str] = []

    async def __aenter__(self) -> Any:
        from playwright.async_api import async_playwright  # noqa: PLC0415

        self._pw = await async_playwright().start()
        self._browser = await self._pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=ARGS
        )
        self.context = await self._browser.new_context(
            viewport={"width": 1000, "height": 720}, service_workers="block"
        )

        async def guard(route: Any) -> None:
            if route.request.url.startswith(self.origin + "/"):
                await route.continue_()
            else:
                await route.abort()

        await self.context.route("**/*", guard)
        page = await self.context.new_page()
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("request", lambda r: self.requests.append(r.url))
        self.page = page
        return self

    async def shot(self, name: str, *, full_page: bool = False) -> None:
        self.shots.mkdir(parents=True, exist_ok=True)
        await self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=full_page)

    async def __aexit__(self, *_: object) -> None:
        await self._browser.close()
        await self._pw.stop()

    def assert_clean(self) -> None:
        foreign = [u for u in self.requests if not u.startswith(self.origin + "/")]
        assert not foreign, foreign
        assert not self.errors, self.errors


async def follow(page: Any, locator: Any) -> None:
    """Click a link or button and wait for the page it leads to."""
    async with page.expect_navigation(wait_until="networkidle"):
        await locator.click()


async def names_on(page: Any) -> list[str]:
    names: list[str] = await page.locator("ol.servers li.server p.name code").all_inner_texts()
    return names


async def test_search_page_forward_and_back_and_open_a_server(origin: str) -> None:
    async with Browser(origin, ARTIFACTS) as b:
        page = b.page
        response = await page.goto(origin + "/", wait_until="networkidle")
        assert response is not None and response.status == 200
        assert await page.title() == "Catalogue · MCP registry mirror"
        first = await names_on(page)
        assert len(first) == 20
        await b.shot("catalogue")

        # Page forward twice, then back once: the second page again, in the same order.
        await follow(page, page.get_by_role("link", name="Next →"))
        second = await names_on(page)
        await follow(page, page.get_by_role("link", name="Next →"))
        third = await names_on(page)
        assert len({*first, *second, *third}) == 60 and first[-1] < second[0] < third[0]
        await follow(page, page.get_by_role("link", name="← Previous"))
        assert await names_on(page) == second
        await follow(page, page.get_by_role("link", name="← Previous"))
        assert await names_on(page) == first

        # Search with the keyboard only: the labelled box, typed into, Enter submits.
        await page.get_by_label("Search servers").fill("exa")
        async with page.expect_navigation(wait_until="networkidle"):
            await page.keyboard.press("Enter")
        found = await names_on(page)
        assert DEPRECATED[0] in found
        assert await page.get_by_role("heading", level=1).inner_text() == "Servers matching “exa”"
        await b.shot("search")

        # A filter: only servers with a PyPI package, every one badged so.
        await page.goto(origin + "/", wait_until="networkidle")
        await page.get_by_label("Package registry").select_option("pypi")
        await follow(page, page.get_by_role("button", name="Search"))
        cards = page.locator("ol.servers li.server")
        assert await cards.count() == 20
        for i in range(await cards.count()):
            assert "pypi" in await cards.nth(i).locator(".badge").all_inner_texts()

        # Open a server: its versions, install hints, provenance.
        await page.goto(origin + "/?q=exa", wait_until="networkidle")
        await follow(page, page.locator("ol.servers h3 a").filter(has_text="exa").first)
        assert "/ui/servers/" in page.url
        headings = await page.get_by_role("heading", level=2).all_inner_texts()
        assert any(h.startswith("Every version") for h in headings)
        assert "Provenance" in headings
        await b.shot("server", full_page=True)

        # The status page, from the navigation.
        await follow(
            page, page.get_by_role("navigation", name="Site").get_by_role("link", name="Status")
        )
        assert await page.get_by_role("heading", name="Upstream official").count() == 1
        await b.shot("status", full_page=True)
        b.assert_clean()


async def test_keyboard_and_phone_width(origin: str) -> None:
    async with Browser(origin, ARTIFACTS) as b:
        page = b.page
        await page.set_viewport_size({"width": 375, "height": 740})
        await page.goto(origin + "/", wait_until="networkidle")
        # The first Tab reaches the skip link, which is visible while focused and moves focus
        # to the main landmark.
        await page.keyboard.press("Tab")
        focused = await page.evaluate("document.activeElement.textContent")
        assert focused == "Skip to content"
        await page.keyboard.press("Enter")
        assert await page.evaluate("document.activeElement.id") == "main"
        # Nothing wider than the phone: no sideways scrolling.
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375
        await b.shot("phone", full_page=False)
        # A server page at phone width, too.
        await follow(page, page.locator("ol.servers h3 a").first)
        assert await page.evaluate("document.documentElement.scrollWidth") <= 375
        b.assert_clean()

"""Page tests in headless Chromium, driven by Playwright (async API) on Debian's own Chromium.

Playwright's browser download is never used: ``chromium.launch(executable_path=/usr/bin/chromium)``
(``scripts/install-chromium.sh`` installs it). The async API on purpose: the app under test is served
on the test's own event loop, so a blocking call would stop the server the browser waits for.

A pytest plugin (``tests/conftest.py`` lists it): the ``chromium`` fixture is one browser for the whole
run; the ``pages`` fixture opens pages for one test, each in its own context (no cookies shared), with
every request to an origin other than the allowed ones aborted and recorded, and keeps screenshots
under ``.run/screenshots/<test>/`` (``TRIALROUTE_SCREENSHOTS`` moves them)::

    async def test_page(pages: Pages) -> None:
        async with pages.open(f"{url}/sites/finder", phone=True) as tab:
            await tab.page.get_by_label("ZIP / postal code").fill("10021")
            await tab.page.keyboard.press("Enter")
            await expect(tab.page.locator("#site-list li")).to_have_count(4)
            await tab.screenshot("results")
            assert tab.blocked == []
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, Route, ViewportSize, async_playwright

CHROMIUM = Path("/usr/bin/chromium")
_REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = Path(os.environ.get("TRIALROUTE_SCREENSHOTS") or _REPO / ".run" / "screenshots")
DESKTOP = ViewportSize(width=1200, height=1000)
PHONE = ViewportSize(width=390, height=844)
"""A current phone's CSS viewport (iPhone 12 to 15)."""

_ARGS = [
    "--no-sandbox",  # the tests run as root on CI
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def available() -> bool:
    return CHROMIUM.exists()


def _file_name(text: str) -> str:
    return re.sub(r"[^\w.-]+", "-", text).strip("-")


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass
class Tab:
    """One page, what it was refused (requests to other origins) and what it reported on its console."""

    page: Page
    shots: Path
    blocked: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    async def screenshot(self, name: str, *, full_page: bool = True) -> Path:
        """Keep the page as it is now: ``<screenshots>/<test>/<name>.png`` (the path is printed)."""
        path = self.shots / f"{_file_name(name)}.png"
        await self.page.screenshot(path=path, full_page=full_page)
        print(f"screenshot: {path}")
        return path


@dataclass
class Pages:
    """Opens pages for one test; see the module's docstring."""

    browser: Browser
    shots: Path

    def open(
        self,
        url: str | None = None,
        *,
        allow: Iterable[str] = (),
        phone: bool = False,
        csp: str | None = None,
    ) -> AbstractAsyncContextManager[Tab]:
        """A page in a fresh context, at ``url`` if given. Requests may go only to ``url``'s origin and
        the origins in ``allow``; any other is aborted and listed in ``Tab.blocked``. ``csp`` replaces
        every response's Content-Security-Policy (to check that a page works under that policy)."""
        allowed = {*(origin_of(o) for o in allow), *([origin_of(url)] if url else [])}
        return self._open(url, allowed=allowed, phone=phone, csp=csp)

    @asynccontextmanager
    async def _open(
        self, url: str | None, *, allowed: set[str], phone: bool, csp: str | None
    ) -> AsyncIterator[Tab]:
        context = await self.browser.new_context(
            viewport=PHONE if phone else DESKTOP,
            is_mobile=phone,
            has_touch=phone,
            device_scale_factor=2 if phone else 1,
            service_workers="block",  # a service worker's fetches would bypass the routing below
        )
        try:
            page = await context.new_page()
            tab = Tab(page, self.shots)

            async def only_allowed(route: Route) -> None:
                if origin_of(route.request.url) not in allowed:
                    tab.blocked.append(route.request.url)
                    await route.abort("blockedbyclient")
                elif csp is None:
                    await route.continue_()
                else:
                    response = await route.fetch()
                    headers = {**response.headers, "content-security-policy": csp}
                    await route.fulfill(response=response, headers=headers)

            def on_console(message: ConsoleMessage) -> None:
                if message.type == "error":
                    tab.console_errors.append(message.text)

            await context.route("**/*", only_allowed)
            page.on("console", on_console)
            if url is not None:
                await page.goto(url)
            yield tab
        finally:
            await context.close()


@pytest.fixture(scope="session")
async def chromium() -> AsyncIterator[Browser]:
    """One headless Debian Chromium for the whole run (each test's pages get their own context)."""
    if not available():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install-chromium.sh (scripts/test.sh does)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
def pages(chromium: Browser, request: pytest.FixtureRequest) -> Pages:
    """Pages for this test; its screenshots go to ``<screenshots>/<test module>/<test name>/``."""
    module = request.node.module.__name__.rsplit(".", 1)[-1]
    shots = SCREENSHOTS / module / _file_name(request.node.name)
    shutil.rmtree(shots, ignore_errors=True)  # only this run's pictures
    shots.mkdir(parents=True)
    return Pages(chromium, shots)

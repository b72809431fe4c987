"""Headless Chromium for page tests, driven over the W3C WebDriver protocol with httpx.

Debian's ``chromium`` and ``chromium-driver`` (``scripts/install-chromium.sh``); nothing is downloaded.
The client is async on purpose: the app under test is served on the test's own event loop, so a blocking
call to chromedriver (say, a navigation waiting for the page) would stop the server it waits for.

    async with open_browser() as browser:
        await browser.get(f"{base_url}/sites/finder")
        await browser.type("#postal-code", "10021")
        await browser.click("#find")
        items = await browser.wait_for(lambda: browser.texts("#site-list li"))
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.support.waiting import eventually

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference
CHROME_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1200,1000",
]  # fmt: skip

T = TypeVar("T")


def available() -> bool:
    return Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()


class WebDriverError(RuntimeError):
    pass


class Browser:
    """One WebDriver session: navigate, find by CSS, type, click, read text, wait, screenshot."""

    def __init__(self, http: httpx.AsyncClient, session_id: str) -> None:
        self.http, self.session = http, session_id

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        url = f"/session/{self.session}{path}"
        response = await self.http.request(method, url, json=body if method == "POST" else None)
        value = response.json().get("value")
        if response.status_code != 200:
            raise WebDriverError(f"{method} {path}: {value.get('error')}: {value.get('message')}")
        return value

    async def get(self, url: str) -> None:
        await self._call("POST", "/url", {"url": url})

    async def title(self) -> str:
        return await self._call("GET", "/title")

    async def find(self, css: str) -> str:
        return (await self._call("POST", "/element", {"using": "css selector", "value": css}))[ELEMENT]

    async def find_all(self, css: str) -> list[str]:
        found = await self._call("POST", "/elements", {"using": "css selector", "value": css})
        return [e[ELEMENT] for e in found]

    async def text(self, css: str) -> str:
        return await self._call("GET", f"/element/{await self.find(css)}/text")

    async def texts(self, css: str) -> list[str]:
        return [await self._call("GET", f"/element/{e}/text") for e in await self.find_all(css)]

    async def attribute(self, css: str, name: str) -> str | None:
        return await self._call("GET", f"/element/{await self.find(css)}/attribute/{name}")

    async def type(self, css: str, text: str) -> None:
        element = await self.find(css)
        await self._call("POST", f"/element/{element}/clear", {})
        await self._call("POST", f"/element/{element}/value", {"text": text})

    async def click(self, css: str) -> None:
        await self._call("POST", f"/element/{await self.find(css)}/click", {})

    async def script(self, source: str, *args: Any) -> Any:
        return await self._call("POST", "/execute/sync", {"script": source, "args": list(args)})

    async def screenshot(self, path: Path) -> None:
        png = base64.b64decode(await self._call("GET", "/screenshot"))
        await asyncio.to_thread(path.write_bytes, png)

    async def wait_for(self, probe: Callable[[], Awaitable[T]], timeout_s: float = 10.0) -> T:
        """Poll until ``probe`` returns something truthy; its last value in the error otherwise."""
        return await eventually(probe, within=timeout_s, interval=0.05, what="the page")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.asynccontextmanager
async def open_browser(startup_timeout_s: float = 20.0) -> AsyncIterator[Browser]:
    """Start chromedriver on a free loopback port and one headless Chromium session; stop both after."""
    profile = tempfile.mkdtemp(prefix="trialroute-chromium-")
    port = _free_port()
    driver = await asyncio.create_subprocess_exec(
        CHROMEDRIVER, f"--port={port}", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    # trust_env=False: a proxy from the environment must never see loopback WebDriver traffic.
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60, trust_env=False)
    try:

        async def ready() -> bool:
            if driver.returncode is not None:
                raise WebDriverError(f"chromedriver did not start (exit code {driver.returncode})")
            with contextlib.suppress(httpx.TransportError):
                return bool((await http.get("/status")).json()["value"]["ready"])
            return False

        await eventually(ready, within=startup_timeout_s, interval=0.05, what="chromedriver to start")
        options = {"binary": CHROMIUM, "args": [*CHROME_ARGS, f"--user-data-dir={profile}"]}
        capabilities = {"browserName": "chrome", "goog:chromeOptions": options}
        created = await http.post("/session", json={"capabilities": {"alwaysMatch": capabilities}})
        if created.status_code != 200:
            raise WebDriverError(f"no browser session: {created.text}")
        browser = Browser(http, created.json()["value"]["sessionId"])
        try:
            yield browser
        finally:
            with contextlib.suppress(httpx.HTTPError):
                await http.delete(f"/session/{browser.session}")
    finally:
        await http.aclose()
        if driver.returncode is None:
            driver.terminate()
            try:
                await asyncio.wait_for(driver.wait(), timeout=10)
            except TimeoutError:
                driver.kill()
                await driver.wait()
        shutil.rmtree(profile, ignore_errors=True)

"""The public site finder page in headless Chromium, against the real site router over loopback HTTP.

The router is the service's own app (``bootstrap.create_app``, API role only) on a real PostgreSQL
database holding the trial's sites (imported from the shipped seed, geocoded by the real geocoder), with
the finder page's router (included here while the service's bootstrap does not include it yet). From
10021 (Upper East Side) the sites are WCM (New York, under a km), DFCI (Boston, ~300 km), MCC (Tampa),
MDACC (Houston).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import NoMatchFound

from services.site_router import finder_page, sites
from services.site_router.bootstrap import create_app
from services.site_router.config import SiteRouterSettings
from services.site_router.domain import KM_PER_MILE
from services.site_router.geo import Geocoder
from services.site_router.schemas import SiteCreate
from shared.db import Database
from tests.support import browser as chromium
from tests.support.browser import Browser
from tests.support.servers import serve_app
from tests.support.stores import migrated

pytestmark = pytest.mark.e2e

SCREENSHOT = Path("/tmp/finder.png")
COUNTRIES = ["US", "CA", "GB", "DE", "ES", "IT", "NL", "BE", "CH", "AT", "AU"]

ServeFinder = Callable[..., AbstractAsyncContextManager[str]]


@pytest.fixture(scope="module")
def geocoder(tmp_path_factory: pytest.TempPathFactory) -> Geocoder:
    coder = Geocoder(index_dir=tmp_path_factory.mktemp("geonames-index"))
    coder.warm(["US"])
    return coder


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not chromium.available():
        pytest.fail("headless Chromium is missing: run scripts/install-chromium.sh (scripts/test.sh does)")
    async with chromium.open_browser() as session:
        yield session


@pytest.fixture
def serve_finder(database_url: str, geocoder: Geocoder) -> ServeFinder:
    """The site router (API role) with the trial's sites, plus ``extra_sites``, and the finder page."""

    @asynccontextmanager
    async def start(extra_sites: Sequence[SiteCreate] = (), **overrides: Any) -> AsyncIterator[str]:
        db = Database(database_url)
        try:
            await migrated(database_url, "site_router")
            await sites.import_sites(db, sites.SEED_FILE, geocoder)
            async with db.session() as session:
                for site in extra_sites:
                    await sites.create_site(session, site, geocoder)
        finally:
            await db.dispose()
        settings = SiteRouterSettings(environment="test", database_url=database_url, **overrides)
        app = create_app(settings, frozenset({"api"}), geocoder=geocoder)
        try:
            app.url_path_for("finder_page")
        except NoMatchFound:  # until the service's bootstrap includes the page's router
            app.include_router(finder_page.router)
        async with serve_app(app) as url:
            yield url

    return start


async def search(browser: Browser, postal_code: str, country: str = "US") -> None:
    await browser.click(f"#country option[value={country}]")
    await browser.type("#postal-code", postal_code)
    await browser.click("#find")


async def message_with(browser: Browser, wanted: str) -> str:
    """Wait until the results region's message says ``wanted``; return the whole message."""

    async def probe() -> str:
        text = await browser.text("#message")
        return text if wanted in text else ""

    return await browser.wait_for(probe)


def km_of(text: str, unit: str) -> float:
    found = re.search(rf"([\d,]+(?:\.\d)?) {unit}", text)
    assert found, f"no distance in {unit} in {text!r}"
    return float(found.group(1).replace(",", ""))


async def test_finder_lists_the_nearest_sites_and_explains_an_unknown_code(
    serve_finder: ServeFinder, browser: Browser
) -> None:
    async with serve_finder() as url:
        await browser.get(f"{url}/sites/finder")
        for shown in (await browser.title(), await browser.text("h1")):
            assert "UCART123" in shown and "AMELI-01" in shown
        assert await browser.text("label[for=country]") == "Country"
        assert await browser.text("label[for=postal-code]") == "ZIP / postal code"
        assert await browser.attribute("#results", "aria-live") == "polite"
        options = "return [...document.querySelectorAll('#country option')].map(o => o.value)"
        assert await browser.script(options) == COUNTRIES
        assert await browser.text("#find") == "Find study sites"

        await browser.click("#find")  # nothing typed: said at once, nothing asked of the server
        await message_with(browser, "Enter your ZIP or postal code.")

        await search(browser, "10021")
        names = await browser.wait_for(lambda: browser.texts("#site-list .site-name"))
        assert names == [
            "Weill Cornell Medicine / NewYork-Presbyterian Hospital",
            "Dana-Farber Cancer Institute",
            "H. Lee Moffitt Cancer Center",
            "The University of Texas MD Anderson Cancer Center",
        ]
        assert await browser.text("#results-heading") == "Study sites nearest 10021 (New York)"
        assert await browser.text("#message") == "4 study sites, nearest first."
        places = await browser.texts("#site-list .site-place")
        assert places[:2] == ["New York, NY, United States", "Boston, MA, United States"]

        distances = await browser.texts("#site-list .site-distance")
        wcm, dfci = (km_of(d, "km") for d in distances[:2])
        assert 0 < wcm < 10 and 280 < dfci < 310
        for text in distances:
            assert km_of(text, "km") == pytest.approx(km_of(text, "miles") * KM_PER_MILE, rel=0.02, abs=0.2)
        assert [km_of(d, "km") for d in distances] == sorted(km_of(d, "km") for d in distances)

        contacts = await browser.texts("#site-list .site-contact")
        assert contacts[0] == "Contact the study centre: ucart123.wcm@sites.example.org"
        assert await browser.attribute("#site-list li:first-child a.email", "href") == (
            "mailto:ucart123.wcm@sites.example.org"
        )
        await browser.screenshot(SCREENSHOT)

        await search(browser, "00000")
        said = await message_with(browser, "unknown postal code '00000' for US")
        assert said.startswith("We could not look up that code.")
        assert await browser.find_all("#site-list li") == []
        assert await browser.attribute("#postal-code", "aria-invalid") == "true"

        await search(browser, "02215")  # a known code again: the error is gone, the results are back
        names = await browser.wait_for(lambda: browser.texts("#site-list .site-name"))
        assert names[0] == "Dana-Farber Cancer Institute"
        assert await browser.attribute("#postal-code", "aria-invalid") is None


async def test_finder_says_when_the_client_is_rate_limited(
    serve_finder: ServeFinder, browser: Browser
) -> None:
    async with serve_finder(finder_rate_per_minute=1) as url:
        await browser.get(f"{url}/sites/finder")
        await search(browser, "10021")
        await browser.wait_for(lambda: browser.texts("#site-list .site-name"))
        await search(browser, "10021")
        said = await message_with(browser, "Too many searches from your connection just now.")
        assert re.search(r"Please try again in \d+ seconds\.", said), said
        assert await browser.find_all("#site-list li") == []


async def test_finder_shows_site_data_as_text_never_as_markup(
    serve_finder: ServeFinder, browser: Browser
) -> None:
    name = "<img src=x onerror=\"document.title='pwned'\">Clinic & <b>Co</b>"
    odd = SiteCreate(
        code="ODD",
        name=name,
        city="<i>New York</i>",
        region="NY",
        postal_code="10022",
        country="US",
        coordinator_email="odd@sites.example.org",
        phone="+1 (212) 555-0100",
        capacity=1,
    )
    async with serve_finder(extra_sites=[odd]) as url:
        await browser.get(f"{url}/sites/finder")
        await search(browser, "10021")
        names = await browser.wait_for(lambda: browser.texts("#site-list .site-name"))
        assert name in names
        assert "<i>New York</i>, NY, United States" in await browser.texts("#site-list .site-place")
        assert await browser.find_all("#results img, #results b, #results i") == []
        assert "pwned" not in await browser.title()
        assert await browser.attribute("#site-list li[data-code=ODD] a.phone", "href") == "tel:+12125550100"


async def test_finder_page_is_self_contained_and_locked_down(serve_finder: ServeFinder) -> None:
    async with serve_finder() as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        files = {
            "/sites/finder": "text/html",
            "/sites/finder/static/finder.js": "text/javascript",
            "/sites/finder/static/finder.css": "text/css",
        }
        for path, media_type in files.items():
            response = await http.get(path)  # no token
            assert response.status_code == 200, response.text
            assert response.headers["content-type"].startswith(media_type)
            assert "script-src 'self'" in response.headers["content-security-policy"]
            assert response.headers["x-content-type-options"] == "nosniff"
            assert not re.search(r"https?://|=\"//", response.text, re.I), f"{path} names another origin"
            again = await http.get(path, headers={"If-None-Match": response.headers["etag"]})
            assert again.status_code == 304

"""The public site finder page in headless Chromium (Playwright), against the real site router over loopback.

The router is the service's own app (``bootstrap.create_app``, API role only, which serves the page) on a
real PostgreSQL database holding the trial's sites (imported from the shipped seed, geocoded by the real
geocoder). From 10021 (Upper East Side) the sites are WCM (New York, under a km), DFCI (Boston, ~300 km),
MCC (Tampa), MDACC (Houston). Every page may reach only the router's origin; screenshots of each page
are kept under ``.run/screenshots/test_site_finder/``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest
from playwright.async_api import Page, expect

from services.site_router import sites
from services.site_router.bootstrap import create_app
from services.site_router.config import SiteRouterSettings
from services.site_router.domain import KM_PER_MILE
from services.site_router.geo import Geocoder
from services.site_router.schemas import SiteCreate
from shared.db import Database
from tests.support.browser import PHONE, Pages
from tests.support.servers import serve_app
from tests.support.stores import migrated

pytestmark = pytest.mark.e2e

COUNTRIES = ["US", "CA", "GB", "DE", "ES", "IT", "NL", "BE", "CH", "AT", "AU"]
NEAREST_10021 = [
    "Weill Cornell Medicine / NewYork-Presbyterian Hospital",
    "Dana-Farber Cancer Institute",
    "H. Lee Moffitt Cancer Center",
    "The University of Texas MD Anderson Cancer Center",
]

ServeFinder = Callable[..., AbstractAsyncContextManager[str]]


@pytest.fixture(scope="module")
def geocoder(tmp_path_factory: pytest.TempPathFactory) -> Geocoder:
    coder = Geocoder(index_dir=tmp_path_factory.mktemp("geonames-index"))
    coder.warm(["US"])
    return coder


@pytest.fixture
def serve_finder(database_url: str, geocoder: Geocoder) -> ServeFinder:
    """The site router (API role) with the trial's sites, plus ``extra_sites``; it serves the page."""

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
        async with serve_app(create_app(settings, frozenset({"api"}), geocoder=geocoder)) as url:
            yield url

    return start


async def search(page: Page, postal_code: str, country: str = "US") -> None:
    await page.select_option("#country", country)
    await page.fill("#postal-code", postal_code)
    await page.click("#find")


async def message_with(page: Page, wanted: str) -> str:
    """Wait until the results region's message says ``wanted``; return the whole message."""
    await expect(page.locator("#message")).to_contain_text(wanted)
    return await page.locator("#message").inner_text()


def km_of(text: str, unit: str) -> float:
    found = re.search(rf"([\d,]+(?:\.\d)?) {unit}", text)
    assert found, f"no distance in {unit} in {text!r}"
    return float(found.group(1).replace(",", ""))


async def test_finder_lists_the_nearest_sites_and_explains_an_unknown_code(
    serve_finder: ServeFinder, pages: Pages
) -> None:
    async with serve_finder() as url, pages.open(f"{url}/sites/finder") as tab:
        page = tab.page
        for shown in (await page.title(), await page.locator("h1").inner_text()):
            assert "UCART123" in shown and "AMELI-01" in shown
        assert await page.locator("label[for=country]").inner_text() == "Country"
        assert await page.locator("label[for=postal-code]").inner_text() == "ZIP / postal code"
        assert await page.get_attribute("#results", "aria-live") == "polite"
        options = "() => [...document.querySelectorAll('#country option')].map(o => o.value)"
        assert await page.evaluate(options) == COUNTRIES
        assert await page.locator("#find").inner_text() == "Find study sites"
        await tab.screenshot("1-empty")

        await page.click("#find")  # nothing typed: said at once, nothing asked of the server
        await message_with(page, "Enter your ZIP or postal code.")

        await search(page, "10021")
        await expect(page.locator("#site-list .site-name")).to_have_text(NEAREST_10021)
        assert await page.locator("#results-heading").inner_text() == "Study sites nearest 10021 (New York)"
        assert await page.locator("#message").inner_text() == "4 study sites, nearest first."
        places = await page.locator("#site-list .site-place").all_inner_texts()
        assert places[:2] == ["New York, NY, United States", "Boston, MA, United States"]

        distances = await page.locator("#site-list .site-distance").all_inner_texts()
        wcm, dfci = (km_of(d, "km") for d in distances[:2])
        assert 0 < wcm < 10 and 280 < dfci < 310
        for text in distances:
            assert km_of(text, "km") == pytest.approx(km_of(text, "miles") * KM_PER_MILE, rel=0.02, abs=0.2)
        assert [km_of(d, "km") for d in distances] == sorted(km_of(d, "km") for d in distances)

        contacts = await page.locator("#site-list .site-contact").all_inner_texts()
        assert contacts[0] == "Contact the study centre: ucart123.wcm@sites.example.org"
        assert await page.get_attribute("#site-list li:first-child a.email", "href") == (
            "mailto:ucart123.wcm@sites.example.org"
        )
        await tab.screenshot("2-results")

        await search(page, "00000")
        said = await message_with(page, "unknown postal code '00000' for US")
        assert said.startswith("We could not look up that code.")
        assert await page.locator("#site-list li").count() == 0
        assert await page.get_attribute("#postal-code", "aria-invalid") == "true"
        await tab.screenshot("3-unknown-code")

        await search(page, "02215")  # a known code again: the error is gone, the results are back
        await expect(page.locator("#site-list .site-name").first).to_have_text("Dana-Farber Cancer Institute")
        assert await page.get_attribute("#postal-code", "aria-invalid") is None
        assert tab.blocked == []  # the page asked for nothing beyond its own origin


async def test_finder_works_from_the_keyboard_on_a_phone(serve_finder: ServeFinder, pages: Pages) -> None:
    async with serve_finder() as url, pages.open(f"{url}/sites/finder", phone=True) as tab:
        page = tab.page
        focused = "() => document.activeElement && document.activeElement.id"
        await page.keyboard.press("Tab")
        assert await page.evaluate(focused) == "country"
        await page.keyboard.press("Tab")
        assert await page.evaluate(focused) == "postal-code"
        await page.keyboard.type("10021")
        await page.keyboard.press("Enter")  # submits the form
        await expect(page.locator("#site-list .site-name")).to_have_text(NEAREST_10021)

        # Nothing wider than the phone: no sideways scrolling, the button and each result fully on screen.
        width = await page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"the page is {width}px wide on a {PHONE['width']}px phone"
        for selector in ("#find", "#postal-code", "#site-list li:first-child"):
            box = await page.locator(selector).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], selector
        await tab.screenshot("phone-results")
        assert tab.blocked == []


async def test_finder_says_when_the_client_is_rate_limited(serve_finder: ServeFinder, pages: Pages) -> None:
    async with serve_finder(finder_rate_per_minute=1) as url, pages.open(f"{url}/sites/finder") as tab:
        page = tab.page
        await search(page, "10021")
        await expect(page.locator("#site-list .site-name")).to_have_count(len(NEAREST_10021))
        await search(page, "10021")
        said = await message_with(page, "Too many searches from your connection just now.")
        assert re.search(r"Please try again in \d+ seconds\.", said), said
        assert await page.locator("#site-list li").count() == 0
        await tab.screenshot("rate-limited")


async def test_finder_shows_site_data_as_text_never_as_markup(
    serve_finder: ServeFinder, pages: Pages
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
    async with serve_finder(extra_sites=[odd]) as url, pages.open(f"{url}/sites/finder") as tab:
        page = tab.page
        await search(page, "10021")
        await expect(page.locator("#site-list .site-name")).to_contain_text([name])
        assert name in await page.locator("#site-list .site-name").all_inner_texts()
        places = await page.locator("#site-list .site-place").all_inner_texts()
        assert "<i>New York</i>, NY, United States" in places
        assert await page.locator("#results img, #results b, #results i").count() == 0
        assert "pwned" not in await page.title()
        assert await page.get_attribute("#site-list li[data-code=ODD] a.phone", "href") == "tel:+12125550100"
        await tab.screenshot("markup-as-text")


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

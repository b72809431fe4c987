"""The ops funnel page in headless Chromium (Playwright): signed in at the real auth service (code +
PKCE), the charts, the range form by keyboard, a bad range, a CSV download, and a 375 px phone.

Insights (API role, which serves the page) and auth run over loopback on PostgreSQL; the funnel's data
is folded into insights' store by its own command. Every page may reach only these two origins;
screenshots are kept under ``.run/screenshots/test_insights_page/``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from playwright.async_api import Page, expect

from tests.support.browser import Pages, Tab
from tests.support.insights import OpsSite, ops_site, sample_funnel
from tests.support.people import Person

pytestmark = pytest.mark.e2e


@pytest.fixture
async def site(make_database_url: Callable[[], Awaitable[str]]) -> AsyncIterator[OpsSite]:
    async with ops_site(make_database_url) as running:
        await running.fold(sample_funnel())
        yield running


async def sign_in(page: Page, person: Person) -> None:
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await page.get_by_label("Email address").fill(person.email)
    await page.get_by_label("Password").fill(person.password)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Recruitment funnel")).to_be_visible()


def clean(tab: Tab, *, refused: int = 0) -> None:
    """Nothing from another origin, and no console error but the ``refused`` 422 answers a test asked
    for (Chromium reports every 4xx page load)."""
    assert tab.blocked == [], "the page reached another origin"
    expected = ["Failed to load resource: the server responded with a status of 422 (Unprocessable Entity)"]
    assert tab.console_errors == expected * refused, tab.console_errors


async def test_ops_read_the_funnel_change_the_range_and_download_csv(site: OpsSite, pages: Pages) -> None:
    person = await site.person("olga@ops.example")
    async with pages.open(site.page, allow=[site.auth_url]) as tab:
        page = tab.page
        await sign_in(page, person)
        assert page.url == site.page
        await expect(page.locator("#path .bar")).to_have_count(8)
        submitted = page.locator("#path .bar").first
        await expect(submitted.locator(".bar-count")).to_have_text("7")
        await expect(page.locator("#path .bar").nth(1)).to_contain_text("100% of Submitted")
        await expect(page.locator("#criteria .bar").first).to_contain_text("Age 18 to 65 years. (age)")
        await expect(page.locator("#sites tbody tr")).to_have_count(3)
        await expect(page.get_by_role("row", name="WCM")).to_contain_text("50%")
        await tab.screenshot("funnel-desktop")

        # the range form by keyboard: labels, focus, Enter
        await page.get_by_label("From (submission day)").focus()
        await page.keyboard.type("01012020")  # Chromium's date field takes the digits in locale order
        await page.get_by_label("To (included)").fill("2020-01-31")
        await page.keyboard.press("Enter")
        await expect(page.locator(".lede")).to_contain_text("0 submitted")
        assert "to=2020-01-31" in page.url
        await page.get_by_label("From (submission day)").fill("2020-02-01")
        await page.get_by_role("button", name="Show").click()
        alert = page.get_by_role("alert")
        await expect(alert).to_contain_text("is after to")
        await expect(page.get_by_label("From (submission day)")).to_have_attribute("aria-invalid", "true")
        await tab.screenshot("bad-range")

        await page.goto(site.page)
        async with page.expect_download() as download_info:
            await page.get_by_role("link", name="funnel", exact=True).click()
        download = await download_info.value
        assert download.suggested_filename.startswith("funnel-") and download.suggested_filename.endswith(
            ".csv"
        )
        content = (await download.path()).read_text()
        assert content.startswith("section,name,label,count,conversion,share")
        clean(tab, refused=1)  # the bad range


async def test_the_page_fits_a_375_px_phone(site: OpsSite, pages: Pages) -> None:
    person = await site.person("olga@ops.example")
    async with pages.open(site.page, allow=[site.auth_url], phone=True) as tab:
        page = tab.page
        await page.set_viewport_size({"width": 375, "height": 812})
        await sign_in(page, person)
        await expect(page.locator("#exits .bar")).to_have_count(10)
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, f"the page scrolls sideways ({width} px)"
        label = await page.locator("#path .bar-label").first.bounding_box()
        track = await page.locator("#path .bar-track").first.bounding_box()
        assert label and track and track["y"] > label["y"]  # on a phone the bar goes under its label
        assert track["width"] > 250
        await tab.screenshot("funnel-phone")
        await page.get_by_role(
            "region", name="Per study site table, scrolls sideways"
        ).scroll_into_view_if_needed()
        await tab.screenshot("sites-phone", full_page=False)
        clean(tab)

"""The ops page over real HTTP: people sign in at the auth service (authorization code + PKCE) and come
back to ``/insights/``; only ops see it; its CSV links work with the session; bad dates are shown."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from tests.support.insights import OpsSite, ops_site, sample_funnel


@pytest.fixture
async def site(make_database_url: Callable[[], Awaitable[str]]) -> AsyncIterator[OpsSite]:
    async with ops_site(make_database_url) as running:
        await running.fold(sample_funnel())
        yield running


@pytest.fixture
async def browser() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=15) as client:
        yield client


async def test_ops_sign_in_and_read_the_funnel(site: OpsSite, browser: httpx.AsyncClient) -> None:
    signed_out = await browser.get(site.page)
    assert signed_out.status_code == 303
    assert signed_out.headers["location"].startswith("/insights/signin?")
    page = await site.sign_in(browser, await site.person("olga@ops.example"))
    assert page.status_code == 200, page.text[:500]
    assert str(page.url) == site.page
    assert page.headers["content-type"].startswith("text/html")
    assert "content-security-policy" in page.headers
    html = page.text
    assert "Recruitment funnel" in html and "Signed in as <strong>Olga Ops</strong>" in html
    assert "<strong>7</strong> submitted" in html
    assert 'class="bar-fill" x="0" y="0" height="8" width="100.0"' in html  # the submitted bar
    assert "Age 18 to 65 years. (age)" in html
    assert '<th scope="row">WCM</th>' in html and '<th scope="row">clinic-b</th>' in html
    assert "<script" not in html

    csv_link = html.split('href="/insights/funnel.csv?')[1].split('"')[0].replace("&amp;", "&")
    download = await browser.get(f"{site.insights_url}/insights/funnel.csv?{csv_link}")
    assert download.status_code == 200
    assert download.headers["content-type"].startswith("text/csv")
    assert download.headers["content-disposition"].startswith('attachment; filename="funnel-')
    assert "path,submitted,Submitted,7," in download.text
    sites = await browser.get(f"{site.insights_url}/insights/sites.csv?{csv_link}")
    assert sites.text.splitlines()[0].startswith("site_code,routed,accepted")


async def test_a_coordinator_is_refused(site: OpsSite, browser: httpx.AsyncClient) -> None:
    person = await site.person("dana@wcm.example", role="coordinator", name="Dana Coordinator")
    page = await site.sign_in(browser, person)
    # a coordinator's role gives none of the page client's scopes (ops): no token, no session
    assert page.status_code in (400, 403), page.text[-800:]
    assert "text/html" in page.headers["content-type"]
    assert "Recruitment funnel" not in page.text and "Submitted" not in page.text
    download = await browser.get(f"{site.insights_url}/insights/funnel.csv")
    assert download.status_code == 303  # no session: to sign in


async def test_bad_dates_are_shown_next_to_their_fields(site: OpsSite, browser: httpx.AsyncClient) -> None:
    await site.sign_in(browser, await site.person("olga@ops.example"))
    page = await browser.get(site.page, params={"from": "2026-02-30", "to": "2026-03-01"})
    assert page.status_code == 422
    assert 'role="alert"' in page.text
    assert "&#39;2026-02-30&#39; is not a day (YYYY-MM-DD)" in page.text
    assert 'id="from" name="from" type="date" value="2026-02-30"' in page.text
    assert 'aria-invalid="true" aria-describedby="from-error"' in page.text
    backwards = await browser.get(site.page, params={"from": "2026-03-02", "to": "2026-03-01"})
    assert backwards.status_code == 422 and "is after to" in backwards.text
    empty = await browser.get(site.page, params={"from": "2020-01-01", "to": "2020-01-31"})
    assert empty.status_code == 200 and "<strong>0</strong> submitted" in empty.text

"""People sign in, in headless Chromium (Playwright): a portal page built with ``shared.web`` sends the
browser to the auth service's sign-in page (password, then a TOTP code computed with pyotp), which
returns it to the page with a session. Real auth service on PostgreSQL, real portal, loopback HTTP;
screenshots under ``.run/screenshots/test_sign_in/``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from playwright.async_api import Page, expect
from pydantic import SecretStr
from sqlalchemy import update

from services.auth import store
from services.auth.bootstrap import create_app
from services.auth.config import AuthSettings
from shared.db import Database
from tests.support.browser import Pages
from tests.support.people import Person, enrol, make_person, portal_client, serve_portal
from tests.support.servers import loopback_socket, serve_app, url_of
from tests.support.stores import migrated

pytestmark = pytest.mark.e2e

KEK = "e2e-key-encryption-secret"


@dataclass
class Running:
    auth_url: str
    portal_url: str
    db: Database
    clock: list[float]

    @property
    def page(self) -> str:
        return f"{self.portal_url}/portal/page"


Start = Callable[..., AbstractAsyncContextManager[Running]]


@pytest.fixture
def start(database_url: str) -> Start:
    @asynccontextmanager
    async def run(*, idle_timeout_s: int = 1800) -> AsyncIterator[Running]:
        await migrated(database_url, "auth")
        auth_sock, portal_sock = loopback_socket(), loopback_socket()
        auth_url, portal_url = url_of(auth_sock), url_of(portal_sock)
        settings = AuthSettings(
            environment="test",
            database_url=database_url,
            issuer=auth_url,
            key_encryption_secret=SecretStr(KEK),
            key_publish_delay_s=0,
            web_clients=[portal_client(portal_url)],
        )
        clock = [time.time()]
        db = Database(database_url)
        try:
            async with (
                serve_app(create_app(settings), sock=auth_sock),
                serve_portal(portal_sock, auth_url, idle_timeout_s=idle_timeout_s, clock=lambda: clock[0]),
            ):
                yield Running(auth_url, portal_url, db, clock)
        finally:
            await db.dispose()

    return run


async def sign_in_with_password(page: Page, person: Person) -> None:
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await page.get_by_label("Email address").fill(person.email)
    await page.get_by_label("Password").fill(person.password)
    await page.get_by_role("button", name="Sign in").click()


async def test_sign_in_with_password_and_totp_on_a_phone(start: Start, pages: Pages) -> None:
    async with start() as s:
        person = await make_person(s.db, "phone@wcm.example")
        totp = await enrol(s.db, person, KEK)
        async with pages.open(s.page, allow=[s.auth_url], phone=True) as tab:
            page = tab.page
            assert page.url.startswith(f"{s.auth_url}/oauth/authorize?")
            # accessible layout: one main landmark, a skip link first, labelled fields
            assert await page.locator("main#main").count() == 1
            assert await page.locator("a.skip-link").get_attribute("href") == "#main"
            await page.keyboard.press("Tab")
            assert await page.evaluate("document.activeElement.className") == "skip-link"
            width = await page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, "no horizontal scrolling on a phone"
            await tab.screenshot("1-sign-in")

            await page.get_by_label("Email address").fill(person.email)
            await page.get_by_label("Password").fill("not the password")
            await page.get_by_role("button", name="Sign in").click()
            await expect(page.get_by_role("alert")).to_contain_text("not right")
            assert await page.get_by_label("Email address").get_attribute("aria-invalid") == "true"
            await tab.screenshot("2-wrong-password")

            await page.get_by_label("Password").fill(person.password)
            await page.get_by_role("button", name="Sign in").click()
            await expect(page.get_by_role("heading", name="Enter your code")).to_be_visible()
            await tab.screenshot("3-code")

            wrong = f"{(int(totp.now()) + 1) % 1_000_000:06d}"
            await page.get_by_label("Authentication code").fill(wrong)
            await page.get_by_role("button", name="Continue").click()
            await expect(page.get_by_role("alert")).to_contain_text("That code is not right")
            assert page.url.startswith(f"{s.auth_url}/signin/totp")
            await tab.screenshot("4-wrong-code")

            await page.get_by_label("Authentication code").fill(totp.now())
            await page.get_by_role("button", name="Continue").click()
            await expect(page.locator("#who")).to_contain_text("Signed in as Dana Coordinator")
            assert page.url == s.page
            await expect(page.locator("header")).to_contain_text("Signed in as Dana Coordinator")
            await tab.screenshot("5-signed-in")
            assert tab.blocked == []
            # the two refused attempts answered 401 (Chromium reports those); nothing else went wrong
            assert [e for e in tab.console_errors if "status of 401" not in e] == []
            assert len(tab.console_errors) == 2


async def test_forms_without_the_csrf_token_are_refused(start: Start, pages: Pages) -> None:
    async with start() as s:
        person = await make_person(s.db, "csrf@wcm.example")
        async with pages.open(s.page, allow=[s.auth_url]) as tab:
            page = tab.page
            await sign_in_with_password(page, person)
            await expect(page.locator("#who")).to_be_visible()

            await page.get_by_label("Note").fill("called the patient")
            await page.get_by_role("button", name="Save note").click()
            await expect(page.locator("#saved")).to_have_text("Saved: called the patient")

            # the same form with a token that is not the session's (as a forging site would send)
            await page.locator("#main input[name=csrf_token]").evaluate("(el) => { el.value = 'forged' }")
            await page.get_by_label("Note").fill("forged")
            await page.get_by_role("button", name="Save note").click()
            await expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
            await tab.screenshot("1-wrong-token")

            # and with none at all (the browser's cookies go along, the token does not)
            refused = await page.request.post(f"{s.portal_url}/portal/note", form={"note": "no token"})
            assert refused.status == 403
            assert "did not come from this site" in await refused.text()


async def test_an_idle_session_is_refused(start: Start, pages: Pages) -> None:
    async with start(idle_timeout_s=120) as s:
        person = await make_person(s.db, "idle@wcm.example")
        async with pages.open(s.page, allow=[s.auth_url]) as tab:
            page = tab.page
            await sign_in_with_password(page, person)
            await expect(page.locator("#who")).to_be_visible()
            s.clock[0] += 121  # two minutes without a page: the portal's session has ended
            async with s.db.session() as session:  # and the sign-in at auth is as idle
                await session.execute(
                    update(store.WebSessionRow).values(last_seen_at=datetime.now(UTC) - timedelta(hours=1))
                )
            await page.reload()
            await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
            assert page.url.startswith(f"{s.auth_url}/oauth/authorize?")
            await tab.screenshot("1-signed-out-when-idle")
            await sign_in_with_password(page, person)
            await expect(page.locator("#who")).to_be_visible()
            assert page.url == s.page  # back to the page that asked

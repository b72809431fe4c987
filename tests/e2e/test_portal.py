"""The site coordinators' portal in headless Chromium (Playwright), against the whole system as real
processes (auth with TOTP required, intake, eligibility, site_router, notifier, the mailbox).

A coordinator signs in as people do (password, then a code from their authenticator, computed here with
pyotp from the key the enrolment page shows), opens a referral from the link in the site's email, and
works it to enrolment; another declines one and the next site sees it; a site never sees another site's
referral (the 404 page) and a form without the session's CSRF token is refused. Every page is kept as a
screenshot at desktop and phone width under ``.run/screenshots/test_portal/``.

From 10021 (New York) the trial's sites are WCM (choice 1), then DFCI (Boston).
"""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest
from playwright.async_api import Page, expect

from services.devstack.stack import DEMO_PASSWORD, Stack
from tests.conftest import Servers
from tests.support.browser import PHONE, Pages, Tab
from tests.support.builders import sample_referral
from tests.support.system import Client, running_system
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

WCM = "coordinator.wcm@demo.trialroute.example"
DFCI = "coordinator.dfci@demo.trialroute.example"


@pytest.fixture(scope="module")
def portal_system(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The whole system with a second factor required of everyone who signs in."""
    run_dir: Path = tmp_path_factory.mktemp("portal-system")
    extra = {"auth": {"AUTH_TOTP_REQUIRED": "true"}}
    with running_system(servers.pg_admin_url, servers.kafka_bootstrap, run_dir, extra_env=extra) as stack:
        yield stack


@pytest.fixture(scope="module")
def clinic(portal_system: Stack) -> Client:
    return Client(portal_system, "demo-clinic")


@dataclass
class Authenticator:
    """A person's authenticator app: the key from enrolment, and the last 30 s step whose code was
    used (auth takes each step once, and the one either side of now)."""

    secret: str
    last_step: int = -1

    async def code(self) -> str:
        totp = pyotp.TOTP(self.secret)

        async def usable_step() -> int | None:
            now = int(totp.timecode(datetime.now(UTC)))
            wanted = max(now - 1, self.last_step + 1)
            return wanted if wanted <= now + 1 else None

        step = await eventually(usable_step, within=40, interval=0.5, what="a TOTP step not used yet")
        self.last_step = step
        return str(totp.generate_otp(step))


@dataclass
class People:
    authenticators: dict[str, Authenticator] = field(default_factory=dict)

    async def sign_in(self, page: Page, email: str) -> None:
        """On auth's sign-in page (where the portal sent the browser): password, then the code (the
        first time: enrol the authenticator from the key shown)."""
        await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        await page.get_by_label("Email address").fill(email)
        await page.get_by_label("Password").fill(DEMO_PASSWORD)
        await page.get_by_role("button", name="Sign in").click()
        if email not in self.authenticators:
            await expect(page.get_by_role("heading", name="Set up your authenticator")).to_be_visible()
            secret = (await page.locator("#secret").inner_text()).strip().replace(" ", "")
            self.authenticators[email] = Authenticator(secret)
            await page.get_by_label("Code from the app").fill(await self.authenticators[email].code())
            await page.get_by_role("button", name="Confirm").click()
        else:
            await expect(page.get_by_role("heading", name="Enter your code")).to_be_visible()
            await page.get_by_label("Authentication code").fill(await self.authenticators[email].code())
            await page.get_by_role("button", name="Continue").click()


@pytest.fixture(scope="module")
def people() -> People:
    return People()


# --- the system's other sides: the clinic's API, the mailbox ----------------------------------------------


async def submit(web: httpx.AsyncClient, system: Stack, clinic: Client) -> tuple[str, dict[str, Any]]:
    body = sample_referral()
    response = await web.post(
        f"{system.config.url('intake')}/v1/referrals", json=body, headers=await clinic.headers(web, "intake")
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"]), body


async def clinic_view(web: httpx.AsyncClient, system: Stack, clinic: Client, rid: str) -> dict[str, Any]:
    response = await web.get(
        f"{system.config.url('intake')}/v1/referrals/{rid}", headers=await clinic.headers(web, "intake")
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


async def routed_to(web: httpx.AsyncClient, system: Stack, clinic: Client, rid: str, code: str) -> None:
    async def there() -> bool:
        view = await clinic_view(web, system, clinic, rid)
        return bool(view.get("site") and view["site"]["code"] == code)

    await eventually(there, within=60, what=f"{rid} routed to {code}")


async def site_email_link(web: httpx.AsyncClient, system: Stack, rid: str) -> str:
    """The portal link in the site's email about the referral (the mailbox's copy of it)."""
    mailbox = system.config.url("mail_http")

    async def email_key() -> str | None:
        messages = (await web.get(f"{mailbox}/api/messages")).json()
        found = [m for m in messages if rid in str(m["subject"]) and "New referral" in str(m["subject"])]
        return str(found[0]["id"]) if found else None

    key = await eventually(email_key, within=60, what="the site's email")
    text = html.unescape((await web.get(f"{mailbox}/messages/{key}")).text)
    assert "To confirm: To confirm" not in text
    match = re.search(r"(http://127\.0\.0\.1:\d+/portal/referrals/[0-9a-f-]{36})", text)
    assert match, "the site's email links to the referral's page in the portal"
    return match.group(1)


_TOO_WIDE = """() => document.documentElement.scrollWidth <= window.innerWidth ? [] :
  [...document.querySelectorAll("body *")]
    .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)
    .slice(0, 5).map(e => e.tagName + "." + e.className + ": " + (e.textContent || "").slice(0, 40))"""


async def both_widths(tab: Tab, name: str) -> None:
    """Screenshots of the page as it is, at desktop and at phone width (375 px and up)."""
    page = tab.page
    await tab.screenshot(f"{name}-desktop")
    desktop = page.viewport_size
    await page.set_viewport_size({"width": 375, "height": PHONE["height"]})
    too_wide = await page.evaluate(_TOO_WIDE)
    assert not too_wide, f"{name}: wider than a 375 px phone: {too_wide}"
    await tab.screenshot(f"{name}-phone")
    assert desktop is not None
    await page.set_viewport_size(desktop)


async def press_tab_until(page: Page, element_id: str, limit: int = 80) -> None:
    """Move the keyboard focus forward until the element has it (as a keyboard user would)."""
    for _ in range(limit):
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement && document.activeElement.id") == element_id:
            return
    raise AssertionError(f"#{element_id} never took the keyboard focus")


# --- the tests ------------------------------------------------------------------------------------------


async def test_a_coordinator_works_a_referral_from_the_email_to_enrolment_with_the_keyboard(
    portal_system: Stack, clinic: Client, people: People, pages: Pages, web: httpx.AsyncClient
) -> None:
    system = portal_system
    rid, body = await submit(web, system, clinic)
    await routed_to(web, system, clinic, rid, "WCM")
    link = await site_email_link(web, system, rid)
    patient = body["patient"]

    async with pages.open(link, allow=[system.config.url("auth")]) as tab:
        page = tab.page
        await people.sign_in(page, WCM)
        await expect(page).to_have_url(link)  # back at the email's referral after signing in
        await expect(page.get_by_role("heading", level=1)).to_have_text(f"Referral {rid[:8]}")
        content = await page.content()
        assert patient["given_name"] not in content and patient["family_name"] not in content
        await expect(page.get_by_text("once your site accepts the referral")).to_be_visible()
        await expect(page.locator("table.criteria tbody tr")).not_to_have_count(0)
        await expect(page.get_by_role("link", name=body["referrer"]["email"])).to_be_visible()
        await both_widths(tab, "1-referral-before-decision")

        await page.goto(f"{system.config.url('site_router')}/portal/?tab=awaiting")
        await expect(
            page.get_by_role("link", name=f"Referral {rid[:8]}")
        ).to_be_visible()  # opened: no longer new
        await both_widths(tab, "2-queue-awaiting")

        await page.get_by_role("link", name=f"Referral {rid[:8]}").click()
        await press_tab_until(page, "accept")  # the keyboard alone accepts it
        await page.keyboard.press("Enter")
        await expect(page.locator(".flash")).to_contain_text("Referral accepted")

        async def contact_shown() -> bool:
            # intake learns of the acceptance from its event, within moments: until then the page says so
            await expect(page.locator(".patient, #contact-pending").first).to_be_visible()
            if await page.locator(".patient").count():
                return True
            async with page.expect_navigation():
                await page.get_by_role("link", name="Reload the page").click()
            return False

        await eventually(contact_shown, within=30, what="the patient's contact on the page")
        await expect(page.locator(".patient")).to_contain_text(patient["given_name"])
        await expect(page.locator(".patient")).to_contain_text(patient["family_name"])
        await both_widths(tab, "3-referral-accepted")

        await page.get_by_role("button", name="Record: contacted").click()
        await expect(page.locator(".flash")).to_have_text("Step recorded.")
        await page.get_by_role("button", name="Record: screening scheduled").click()  # no date: told so
        await expect(page.locator("#screening_date-error")).to_have_text("Enter the screening date.")
        await page.get_by_label("Screening date").fill("2027-01-11")
        await page.get_by_role("button", name="Record: screening scheduled").click()
        await expect(page.locator(".flash")).to_have_text("Step recorded.")
        await page.get_by_role("button", name="Record: consented").click()
        await expect(page.locator(".flash")).to_have_text("Step recorded.")
        await both_widths(tab, "4-referral-consented")
        await page.get_by_label("Study subject or randomisation id").fill("UCART123-0042")
        await page.get_by_role("button", name="Record: enrolled").click()
        await expect(page.locator(".flash")).to_have_text("Step recorded.")
        timeline = page.locator("ol.timeline")
        for shown in (
            "Accepted",
            "Contacted",
            "Screening scheduled",
            "Consented",
            "Enrolled",
            "UCART123-0042",
        ):
            await expect(timeline).to_contain_text(shown)
        await both_widths(tab, "5-referral-enrolled")

        await page.goto(f"{system.config.url('site_router')}/portal/?tab=closed")
        row = page.locator("table.queue tr", has=page.get_by_role("link", name=f"Referral {rid[:8]}"))
        await expect(row).to_contain_text("enrolled")
        await both_widths(tab, "6-queue-closed")
        assert tab.blocked == []
        # the browser reports the one 422 (the screening date left out) as a failed load; nothing else
        assert [e for e in tab.console_errors if "422" not in e] == []

    async def clinic_sees_enrolled() -> bool:
        return (await clinic_view(web, system, clinic, rid))["status"] == "enrolled"

    await eventually(clinic_sees_enrolled, within=60, what="the clinic to see the enrolment")


async def test_a_declined_referral_reaches_the_next_sites_queue(
    portal_system: Stack, clinic: Client, people: People, pages: Pages, web: httpx.AsyncClient
) -> None:
    system = portal_system
    portal = f"{system.config.url('site_router')}/portal"
    rid, _ = await submit(web, system, clinic)
    await routed_to(web, system, clinic, rid, "WCM")

    async with pages.open(f"{portal}/", allow=[system.config.url("auth")]) as tab:
        page = tab.page
        await people.sign_in(page, WCM)
        await expect(page.get_by_role("heading", name="Referral queue")).to_be_visible()
        new_row = page.get_by_role("link", name=f"Referral {rid[:8]}")
        await expect(new_row).to_be_visible()
        await both_widths(tab, "1-queue-new")
        await new_row.click()
        await page.get_by_role("button", name="Decline referral").click()  # no reason: said next to it
        await expect(page.locator("#reason-error")).to_contain_text("Say why")
        await expect(page.get_by_label("Reason for declining")).to_have_attribute("aria-invalid", "true")
        await both_widths(tab, "2-decline-without-reason")
        await page.get_by_label("Reason for declining").fill("no CAR-T bed before the next assessment")
        await page.get_by_role("button", name="Decline referral").click()
        await expect(page.locator(".flash")).to_contain_text("Referral declined")
        await page.get_by_role("link", name=re.compile("Closed")).click()
        row = page.locator("table.queue tr", has=page.get_by_role("link", name=f"Referral {rid[:8]}"))
        await expect(row).to_contain_text("declined")

    await routed_to(web, system, clinic, rid, "DFCI")
    async with pages.open(f"{portal}/", allow=[system.config.url("auth")]) as tab:
        page = tab.page
        await people.sign_in(page, DFCI)
        await expect(page.get_by_role("link", name=f"Referral {rid[:8]}")).to_be_visible()
        await both_widths(tab, "3-next-site-queue")
        await page.get_by_role("link", name=f"Referral {rid[:8]}").click()
        await expect(page.locator("ol.timeline")).not_to_contain_text("Declined")  # WCM's, not DFCI's
        await expect(page.locator("ol.timeline")).to_contain_text("choice 2")


async def test_another_sites_referral_a_forged_form_and_bad_settings_are_refused(
    portal_system: Stack, clinic: Client, people: People, pages: Pages, web: httpx.AsyncClient
) -> None:
    system = portal_system
    portal = f"{system.config.url('site_router')}/portal"
    rid, _ = await submit(web, system, clinic)
    await routed_to(web, system, clinic, rid, "WCM")

    async with pages.open(f"{portal}/settings", allow=[system.config.url("auth")]) as tab:
        page = tab.page
        await people.sign_in(page, DFCI)
        await expect(page.get_by_role("heading", name="Site settings")).to_be_visible()
        await both_widths(tab, "1-settings")

        for wanted in (rid, str(uuid.uuid4()), "not-a-referral"):
            response = await page.goto(f"{portal}/referrals/{wanted}")
            assert response is not None and response.status == 404
            await expect(page.get_by_role("heading", level=1)).to_have_text("Referral not found")
        await both_widths(tab, "2-another-sites-referral")

        for form in ({}, {"csrf_token": "forged"}):
            refused = await page.request.post(f"{portal}/referrals/{rid}/accept", form=form, max_redirects=0)
            assert refused.status == 403, await refused.text()
        forged = await page.request.post(f"{portal}/settings/DFCI/pause", form={}, max_redirects=0)
        assert forged.status == 403

        await page.goto(f"{portal}/settings")
        capacity = page.get_by_label("Capacity (referrals held at once)")
        await capacity.fill("-3")
        await page.get_by_role("button", name="Save capacity").click()
        await expect(page.locator("#capacity-DFCI-error")).to_have_text(
            "Enter a whole number from 0 to 10000."
        )
        await both_widths(tab, "3-settings-bad-capacity")
        await page.get_by_label("Capacity (referrals held at once)").fill("5")
        await page.get_by_role("button", name="Save capacity").click()
        await expect(page.locator(".flash")).to_have_text("Capacity saved.")
        await expect(page.locator(".facts")).to_contain_text("of 5")
        await page.get_by_role("button", name="Pause intake").click()
        await expect(page.locator(".flash")).to_contain_text("Intake paused")
        await expect(page.locator(".facts")).to_contain_text("Paused")
        await both_widths(tab, "4-settings-paused")
        await page.get_by_role("button", name="Resume intake").click()
        await expect(page.locator(".flash")).to_have_text("Intake resumed.")

    async with pages.open(f"{portal}/", phone=True, allow=[system.config.url("auth")]) as tab:
        await expect(tab.page.get_by_role("heading", name="Sign in")).to_be_visible()  # no session
        await tab.screenshot("5-sign-in-phone")

"""The running system's demo people: every one signs in at the auth service with the demo password,
as ``trialroute run`` prints, and gets the account page for their role and sites."""

from __future__ import annotations

import httpx
import pytest

from services.devstack.stack import DEMO_PASSWORD, Stack, demo_people, site_codes
from tests.support.people import submit_signin

pytestmark = pytest.mark.e2e


async def test_demo_people_sign_in_with_the_demo_password(system: Stack) -> None:
    auth = system.config.url("auth")
    people = demo_people(site_codes())
    assert [p.email for p in system.people] == [p.email for p in people]
    assert {p.role for p in people} == {"coordinator", "ops"}
    for person in people:
        async with httpx.AsyncClient(timeout=15) as browser:
            page = await browser.get(f"{auth}/account")
            signed = await submit_signin(browser, auth, page, person.email, DEMO_PASSWORD)
            assert signed.status_code == 200 and "Signed in as" in signed.text, person.email
            assert person.display_name in signed.text
            for code in person.site_codes:
                assert code in signed.text
            wrong = await submit_signin(browser, auth, page, person.email, DEMO_PASSWORD + "x")
            assert wrong.status_code == 401

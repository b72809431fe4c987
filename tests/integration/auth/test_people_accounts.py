"""People's accounts: TOTP at sign-in and its enrolment, the sign-in throttle, set-password links, the
auth service's own session, and ops managing accounts (``/v1/users``, ``trialroute users``)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pyotp
import pytest
from sqlalchemy import update
from typer.testing import CliRunner, Result

from services.auth import store, users
from services.auth.cli import users_app
from shared.auth import Scope
from tests.integration.auth.helpers import KEK, RunningAuth, StartAuth
from tests.support.people import (
    Person,
    enrol,
    hidden,
    make_person,
    portal_client,
    serve_portal,
    submit_signin,
)
from tests.support.servers import loopback_socket, url_of

pytestmark = pytest.mark.integration


@dataclass
class Stack:
    auth: RunningAuth
    portal_url: str

    @property
    def page(self) -> str:
        return f"{self.portal_url}/portal/page"


@asynccontextmanager
async def stack(start_auth: StartAuth, **auth: Any) -> AsyncIterator[Stack]:
    sock = loopback_socket()
    portal_url = url_of(sock)
    async with start_auth(web_clients=[portal_client(portal_url)], **auth) as running:
        async with serve_portal(sock, running.url):
            yield Stack(running, portal_url)


async def enrolled(s: Stack, person: Person) -> pyotp.TOTP:
    totp = await enrol(s.auth.db, person, KEK)
    async with s.auth.db.session() as session:  # the key is not in the store as it is
        row = await session.get(store.UserRow, person.id)
        assert row is not None and row.totp_secret is not None and totp.secret not in row.totp_secret
    return totp


async def test_totp_second_step_wrong_code_refused_right_code_in(start_auth: StartAuth) -> None:
    async with stack(start_auth) as s, httpx.AsyncClient(timeout=15) as browser:
        person = await make_person(s.auth.db, "totp@wcm.example")
        totp = await enrolled(s, person)
        page = await browser.get(s.page, follow_redirects=True)
        step = await submit_signin(browser, s.auth.url, page, person.email, person.password)
        assert str(step.url).startswith(f"{s.auth.url}/signin/totp")
        assert "Enter your code" in step.text and "Protected page" not in step.text
        form = {"csrf_token": hidden(step.text, "csrf_token"), "authorize": hidden(step.text, "authorize")}

        wrong_code = f"{(int(totp.now()) + 1) % 1_000_000:06d}"
        wrong = await browser.post(f"{s.auth.url}/signin/totp", data={**form, "code": wrong_code})
        assert wrong.status_code == 401 and "not right" in wrong.text
        # not signed in yet: the portal still sends the browser to sign in
        assert (await browser.get(s.page)).status_code == 303

        code = totp.now()
        right = await browser.post(
            f"{s.auth.url}/signin/totp", data={**form, "code": code}, follow_redirects=True
        )
        assert str(right.url) == s.page and "Signed in as Dana Coordinator" in right.text

        # the same code, seen over a shoulder, does not sign in anyone else's browser
        async with httpx.AsyncClient(timeout=15) as other:
            page = await other.get(s.page, follow_redirects=True)
            step = await submit_signin(other, s.auth.url, page, person.email, person.password)
            form = {
                "csrf_token": hidden(step.text, "csrf_token"),
                "authorize": hidden(step.text, "authorize"),
            }
            replay = await other.post(f"{s.auth.url}/signin/totp", data={**form, "code": code})
            assert replay.status_code == 401


async def test_enrolment_required_shows_the_secret_and_confirms_with_a_code(start_auth: StartAuth) -> None:
    async with stack(start_auth, totp_required=True) as s, httpx.AsyncClient(timeout=15) as browser:
        person = await make_person(s.auth.db, "enrol@wcm.example")
        page = await browser.get(s.page, follow_redirects=True)
        enrol = await submit_signin(browser, s.auth.url, page, person.email, person.password)
        assert str(enrol.url).startswith(f"{s.auth.url}/account/totp")
        uri = re.search(r'<code id="otpauth-uri">([^<]+)</code>', enrol.text)
        assert uri, enrol.text[:500]
        assert "<svg" in enrol.text  # the QR code, inline (no image request, nothing the CSP refuses)
        totp = pyotp.parse_uri(uri.group(1).replace("&amp;", "&"))
        assert isinstance(totp, pyotp.TOTP)
        # enrolment pending: no code for the portal yet
        assert (await browser.get(s.page)).status_code == 303

        form = {"csrf_token": hidden(enrol.text, "csrf_token"), "authorize": hidden(enrol.text, "authorize")}
        bad = await browser.post(
            f"{s.auth.url}/account/totp",
            data={**form, "code": "000000" if totp.now() != "000000" else "111111"},
        )
        assert bad.status_code == 401
        done = await browser.post(
            f"{s.auth.url}/account/totp", data={**form, "code": totp.now()}, follow_redirects=True
        )
        assert str(done.url) == s.page and "Signed in as" in done.text
        listed = {u.email: u for u in await users.list_users(s.auth.db)}
        assert listed[person.email].totp_confirmed


async def test_a_flood_from_one_address_slows_it_not_the_person_elsewhere(start_auth: StartAuth) -> None:
    settings = {
        "trusted_proxies": ["127.0.0.1"],  # the test plays the proxy: X-Forwarded-For names the source
        "signin_account_failures": 2,
        "signin_address_failures": 3,
    }
    async with stack(start_auth, **settings) as s, httpx.AsyncClient(timeout=15) as attacker:
        person = await make_person(s.auth.db, "target@wcm.example")
        bad_net = {"X-Forwarded-For": "203.0.113.5"}
        page = await attacker.get(f"{s.auth.url}/account", headers=bad_net)
        for _ in range(2):
            tried = await submit_signin(
                attacker, s.auth.url, page, person.email, "wrong password!!", **bad_net
            )
            assert tried.status_code == 401
        # the account from that address: refused even with the right password
        slowed = await submit_signin(attacker, s.auth.url, page, person.email, person.password, **bad_net)
        assert slowed.status_code == 429 and int(slowed.headers["Retry-After"]) >= 1
        # the address is over its limit for any account after one more failure
        await submit_signin(attacker, s.auth.url, page, "other@wcm.example", "wrong password!!", **bad_net)
        other = await make_person(s.auth.db, "other2@wcm.example")
        assert (
            await submit_signin(attacker, s.auth.url, page, other.email, other.password, **bad_net)
        ).status_code == 429

        # the person, from their own network, signs in at once
        async with httpx.AsyncClient(timeout=15) as browser:
            own_net = {"X-Forwarded-For": "198.51.100.7"}
            page = await browser.get(f"{s.auth.url}/account", headers=own_net)
            ok = await submit_signin(browser, s.auth.url, page, person.email, person.password, **own_net)
            assert ok.status_code == 200 and "Signed in as" in ok.text


async def test_forged_forwarded_for_changes_nothing_without_a_trusted_proxy(start_auth: StartAuth) -> None:
    async with stack(start_auth, signin_address_failures=2) as s, httpx.AsyncClient(timeout=15) as attacker:
        person = await make_person(s.auth.db, "forged@wcm.example")
        page = await attacker.get(f"{s.auth.url}/account")
        for n in range(2):
            spoof = {"X-Forwarded-For": f"198.51.100.{n + 1}"}
            await submit_signin(attacker, s.auth.url, page, f"x{n}@wcm.example", "wrong password!!", **spoof)
        spoof = {"X-Forwarded-For": "198.51.100.99"}
        assert (
            await submit_signin(attacker, s.auth.url, page, person.email, person.password, **spoof)
        ).status_code == 429


async def test_auth_session_idle_expiry_asks_for_the_password_again(start_auth: StartAuth) -> None:
    async with stack(start_auth, session_idle_s=600) as s, httpx.AsyncClient(timeout=15) as browser:
        person = await make_person(s.auth.db, "idle@wcm.example")
        page = await browser.get(f"{s.auth.url}/account")
        assert (
            "Signed in as"
            in (await submit_signin(browser, s.auth.url, page, person.email, person.password)).text
        )
        assert "Signed in as" in (await browser.get(f"{s.auth.url}/account")).text
        async with s.auth.db.session() as session:
            await session.execute(
                update(store.WebSessionRow).values(last_seen_at=datetime.now(UTC) - timedelta(seconds=601))
            )
        again = await browser.get(f"{s.auth.url}/account")
        assert "Signed in as" not in again.text and 'action="/signin"' in again.text


async def ops_token(s: Stack, http: httpx.AsyncClient, scopes: list[Scope]) -> str:
    client_id = f"tool-{'-'.join(sc.value.replace(':', '') for sc in scopes)}"
    secret = await s.auth.register(client_id, scopes, audiences=("auth",))
    return await s.auth.token(http, client_id, secret, audience="auth")


async def test_ops_manage_accounts_and_links_work_once(start_auth: StartAuth) -> None:
    async with stack(start_auth) as s, httpx.AsyncClient(timeout=15) as http:
        api = f"{s.auth.url}/v1/users"
        body = {
            "email": "New.Person@WCM.example",
            "display_name": "New Person",
            "role": "coordinator",
            "site_codes": ["WCM"],
        }
        assert (await http.post(api, json=body)).status_code == 401
        other = await ops_token(s, http, [Scope.SITES_ADMIN])
        assert (
            await http.post(api, json=body, headers={"Authorization": f"Bearer {other}"})
        ).status_code == 403
        assert (await http.get(api, headers={"Authorization": f"Bearer {other}"})).status_code == 403
        ops = {"Authorization": f"Bearer {await ops_token(s, http, [Scope.OPS])}"}

        created = await http.post(api, json=body, headers=ops)
        assert created.status_code == 201, created.text
        account = created.json()["user"]
        assert account["email"] == "new.person@wcm.example" and not account["has_password"]
        link = created.json()["set_password_url"]
        assert link.startswith(f"{s.auth.url}/account/password?token=")
        assert (await http.post(api, json=body, headers=ops)).status_code == 409
        invalid = await http.post(api, json={**body, "email": "x@y.example", "site_codes": []}, headers=ops)
        assert invalid.status_code == 422 and invalid.json()["errors"][0]["field"] == "site_codes"
        bad_role = await http.post(api, json={**body, "role": "admin"}, headers=ops)
        assert bad_role.status_code == 422

        async with httpx.AsyncClient(timeout=15) as browser:
            form_page = await browser.get(link)
            assert form_page.status_code == 200 and "Choose your password" in form_page.text
            fields = {
                "csrf_token": hidden(form_page.text, "csrf_token"),
                "token": hidden(form_page.text, "token"),
            }
            short = await browser.post(
                f"{s.auth.url}/account/password", data={**fields, "password": "short", "confirm": "short"}
            )
            assert short.status_code == 422 and "at least 12" in short.text
            own_email = "new.person@wcm.example"
            same = await browser.post(
                f"{s.auth.url}/account/password", data={**fields, "password": own_email, "confirm": own_email}
            )
            assert same.status_code == 422
            chosen = "a long enough pass phrase"
            done = await browser.post(
                f"{s.auth.url}/account/password",
                data={**fields, "password": chosen, "confirm": chosen},
                follow_redirects=True,
            )
            assert done.status_code == 200 and "Signed in as" in done.text
            again = await browser.post(
                f"{s.auth.url}/account/password",
                data={**fields, "password": chosen + "!", "confirm": chosen + "!"},
            )
            assert again.status_code == 410
            assert (await browser.get(link)).status_code == 410

        assert await users.check_password(s.auth.db, own_email, chosen) is not None
        listed = (await http.get(api, headers=ops)).json()
        assert [u["email"] for u in listed] == [own_email] and listed[0]["has_password"]
        assert "password_hash" not in listed[0] and "totp_secret" not in listed[0]

        disabled = await http.post(f"{api}/{account['id']}/disable", headers=ops)
        assert disabled.status_code == 200 and disabled.json()["disabled"]
        assert await users.check_password(s.auth.db, own_email, chosen) is None
        assert (await http.post(f"{api}/{account['id']}/enable", headers=ops)).json()["disabled"] is False
        assert (await http.post(f"{api}/nobody/disable", headers=ops)).status_code == 404

        reset = await http.post(f"{api}/{account['id']}/reset", headers=ops)
        assert reset.status_code == 200 and reset.json()["set_password_url"] != link
        assert await users.check_password(s.auth.db, own_email, chosen) is None


async def test_expired_link_refused(start_auth: StartAuth) -> None:
    async with stack(start_auth) as s, httpx.AsyncClient(timeout=15) as browser:
        link = await users.create_user(
            s.auth.db, email="late@wcm.example", display_name="Late", role="ops", link_lifetime_s=3600
        )
        async with s.auth.db.session() as session:
            await session.execute(
                update(store.PasswordLinkRow).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )
        response = await browser.get(link.url(s.auth.url))
        assert response.status_code == 410 and "not valid" in response.text


async def run_users(auth: RunningAuth, *args: str) -> Result:
    env: dict[str, str | None] = {
        "AUTH_DATABASE_URL": auth.settings.database_url,
        "AUTH_ENVIRONMENT": "test",
        "AUTH_KEY_ENCRYPTION_SECRET": KEK,
        "AUTH_ISSUER": auth.url,
    }
    runner = CliRunner()
    return await asyncio.to_thread(lambda: runner.invoke(users_app, list(args), env=env))


async def test_users_cli(auth: RunningAuth) -> None:
    created = await run_users(
        auth,
        "create",
        "--email",
        "cli@dfci.example",
        "--name",
        "Cli Person",
        "--role",
        "coordinator",
        "--site",
        "DFCI",
        "--site",
        "MCC",
    )
    assert created.exit_code == 0, created.output
    assert f"{auth.url}/account/password?token=" in created.output
    token = created.output.split("token=")[1].split()[0]
    assert (await users.link_user(auth.db, token)).email == "cli@dfci.example"
    duplicate = await run_users(auth, "create", "--email", "cli@dfci.example", "--name", "X", "--role", "ops")
    assert duplicate.exit_code == 1 and "exists" in duplicate.output
    no_site = await run_users(
        auth, "create", "--email", "c2@dfci.example", "--name", "X", "--role", "coordinator"
    )
    assert no_site.exit_code == 1 and "site_codes" in no_site.output

    listed = await run_users(auth, "list")
    (line,) = [ln for ln in listed.output.splitlines() if ln.startswith("cli@dfci.example")]
    assert "coordinator" in line and "sites=DFCI,MCC" in line and "no-password" in line and "enabled" in line

    assert (await run_users(auth, "disable", "cli@dfci.example")).exit_code == 0
    assert "disabled" in (await run_users(auth, "list")).output
    assert (await run_users(auth, "enable", "cli@dfci.example")).exit_code == 0
    reset = await run_users(auth, "reset", "cli@dfci.example")
    assert reset.exit_code == 0 and "token=" in reset.output
    with pytest.raises(users.LinkInvalid):
        await users.link_user(auth.db, "not-a-token")
    missing = await run_users(auth, "disable", "nobody@dfci.example")
    assert missing.exit_code == 1

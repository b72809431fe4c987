"""People sign in to a portal: the portal's ``shared.web`` sign-in, the auth service's authorization
endpoint and sign-in page, the code, the token and the portal's session, all over real HTTP."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from services.auth.config import AuthSettings
from shared.db import Database
from tests.integration.auth.helpers import StartAuth
from tests.support.people import PORTAL_CLIENT, make_person, portal_client, serve_portal, submit_signin
from tests.support.servers import loopback_socket, url_of

pytestmark = pytest.mark.integration


@dataclass
class Stack:
    auth_url: str
    portal_url: str
    settings: AuthSettings
    db: Database

    @property
    def redirect_uri(self) -> str:
        return f"{self.portal_url}/portal/callback"


@asynccontextmanager
async def stack(
    start_auth: StartAuth, *, portal: dict[str, Any] | None = None, **auth: Any
) -> AsyncIterator[Stack]:
    sock = loopback_socket()
    portal_url = url_of(sock)
    async with start_auth(web_clients=[portal_client(portal_url)], **auth) as running:
        async with serve_portal(sock, running.url, **(portal or {})):
            yield Stack(running.url, portal_url, running.settings, running.db)


async def test_sign_in_to_a_portal_page_then_use_its_form(start_auth: StartAuth) -> None:
    async with stack(start_auth) as s, httpx.AsyncClient(timeout=15) as browser:
        person = await make_person(s.db, "dana@wcm.example")
        page = await browser.get(f"{s.portal_url}/portal/page", follow_redirects=True)
        assert str(page.url).startswith(f"{s.auth_url}/oauth/authorize?")
        assert "code_challenge_method=S256" in str(page.url)
        signed = await submit_signin(browser, s.auth_url, page, person.email, person.password)
        assert signed.status_code == 200, signed.text
        assert str(signed.url) == f"{s.portal_url}/portal/page"
        assert "Signed in as Dana Coordinator" in signed.text
        assert "Sites: DFCI, WCM" in signed.text
        cookie = next(c for c in browser.cookies.jar if c.name == "trialroute_session")
        assert cookie.has_nonstandard_attr("HttpOnly")

        csrf = signed.text.split('name="csrf_token" value="')[1].split('"')[0]
        saved = await browser.post(f"{s.portal_url}/portal/note", data={"note": "called", "csrf_token": csrf})
        assert saved.status_code == 200 and "Saved: called" in saved.text
        refused = await browser.post(f"{s.portal_url}/portal/note", data={"note": "x", "csrf_token": "wrong"})
        assert refused.status_code == 403 and "text/html" in refused.headers["content-type"]
        missing = await browser.post(f"{s.portal_url}/portal/note", data={"note": "x"})
        assert missing.status_code == 403

        # the ops page needs the ops scope: a coordinator gets the 403 page, not a redirect
        ops = await browser.get(f"{s.portal_url}/portal/ops")
        assert ops.status_code == 403 and "may not use this page" in ops.text

        # signed in at auth already: another visit from a fresh portal session needs no password
        browser.cookies.delete("trialroute_session")
        again = await browser.get(f"{s.portal_url}/portal/page", follow_redirects=True)
        assert str(again.url) == f"{s.portal_url}/portal/page" and "Signed in as" in again.text


async def test_no_session_or_a_tampered_one_redirects_to_sign_in(start_auth: StartAuth) -> None:
    async with stack(start_auth) as s, httpx.AsyncClient(timeout=15) as browser:
        first = await browser.get(f"{s.portal_url}/portal/page?tab=2")
        assert first.status_code == 303
        assert first.headers["location"] == "/portal/signin?" + urlencode({"next": "/portal/page?tab=2"})
        browser.cookies.set("trialroute_session", "e30.forged.signature", domain="127.0.0.1")
        forged = await browser.get(f"{s.portal_url}/portal/page")
        assert forged.status_code == 303 and forged.headers["location"].startswith("/portal/signin")
        # an open redirect is refused: next must be a path here
        out = await browser.get(f"{s.portal_url}/portal/signin", params={"next": "//evil.example/x"})
        assert out.status_code == 303
        assert "evil" not in out.headers["location"]


async def test_idle_portal_session_ends(start_auth: StartAuth) -> None:
    now = [1_900_000_000.0]
    async with stack(start_auth, portal={"idle_timeout_s": 60, "clock": lambda: now[0]}) as s:
        async with httpx.AsyncClient(timeout=15) as browser:
            person = await make_person(s.db, "idle@wcm.example")
            page = await browser.get(f"{s.portal_url}/portal/page", follow_redirects=True)
            await submit_signin(browser, s.auth_url, page, person.email, person.password)
            now[0] += 50
            assert (
                await browser.get(f"{s.portal_url}/portal/page")
            ).status_code == 200  # used: timer restarts
            now[0] += 50
            assert (await browser.get(f"{s.portal_url}/portal/page")).status_code == 200
            now[0] += 61
            idle = await browser.get(f"{s.portal_url}/portal/page")
            assert idle.status_code == 303 and idle.headers["location"].startswith("/portal/signin")


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


async def signed_in_at_auth(s: Stack, browser: httpx.AsyncClient, email: str) -> None:
    person = await make_person(s.db, email)
    page = await browser.get(f"{s.auth_url}/account")
    done = await submit_signin(browser, s.auth_url, page, person.email, person.password)
    assert "Signed in as" in done.text, done.text


async def authorize(s: Stack, browser: httpx.AsyncClient, **params: str) -> httpx.Response:
    query = {
        "response_type": "code",
        "client_id": PORTAL_CLIENT,
        "redirect_uri": s.redirect_uri,
        "state": "st",
    }
    return await browser.get(f"{s.auth_url}/oauth/authorize", params={**query, **params})


def code_of(response: httpx.Response) -> str:
    assert response.status_code == 302, response.text[:300]
    location = urlsplit(response.headers["location"])
    query = parse_qs(location.query)
    assert query["state"] == ["st"]
    return query["code"][0]


async def exchange(
    s: Stack, http: httpx.AsyncClient, code: str, verifier: str, **form: str
) -> httpx.Response:
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": s.redirect_uri,
        "client_id": PORTAL_CLIENT,
        "code_verifier": verifier,
        **form,
    }
    return await http.post(f"{s.auth_url}/oauth/token", data=data)


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


async def test_code_flow_requires_pkce_s256_exact_redirect_and_single_use(start_auth: StartAuth) -> None:
    async with stack(start_auth) as s, httpx.AsyncClient(timeout=15) as browser:
        await signed_in_at_auth(s, browser, "pkce@wcm.example")
        verifier, challenge = pkce()

        no_pkce = await authorize(s, browser)
        assert no_pkce.status_code == 302
        assert parse_qs(urlsplit(no_pkce.headers["location"]).query)["error"] == ["invalid_request"]
        plain = await authorize(s, browser, code_challenge=verifier, code_challenge_method="plain")
        assert parse_qs(urlsplit(plain.headers["location"]).query)["error"] == ["invalid_request"]
        default_plain = await authorize(s, browser, code_challenge=challenge)
        assert parse_qs(urlsplit(default_plain.headers["location"]).query)["error"] == ["invalid_request"]

        # a redirect URI not registered exactly: an error page here, never a redirect there
        for bad_uri in (
            s.redirect_uri + "/x",
            s.redirect_uri + "?a=1",
            s.redirect_uri.replace("127.0.0.1", "localhost"),
        ):
            refused = await authorize(
                s, browser, redirect_uri=bad_uri, code_challenge=challenge, code_challenge_method="S256"
            )
            assert refused.status_code == 400 and "location" not in refused.headers
            assert "text/html" in refused.headers["content-type"]
        unknown = await authorize(
            s, browser, client_id="nobody", code_challenge=challenge, code_challenge_method="S256"
        )
        assert unknown.status_code == 400 and "location" not in unknown.headers

        async with httpx.AsyncClient(timeout=15) as http:
            # a wrong verifier is refused, and the code is gone with it
            code = code_of(
                await authorize(s, browser, code_challenge=challenge, code_challenge_method="S256")
            )
            wrong = await exchange(s, http, code, pkce()[0])
            assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
            assert (await exchange(s, http, code, verifier)).status_code == 400
            # no verifier at all
            code = code_of(
                await authorize(s, browser, code_challenge=challenge, code_challenge_method="S256")
            )
            assert (await exchange(s, http, code, "")).status_code == 400

            code = code_of(
                await authorize(s, browser, code_challenge=challenge, code_challenge_method="S256")
            )
            other_redirect = await exchange(s, http, code, verifier, redirect_uri=s.redirect_uri + "/x")
            assert other_redirect.status_code == 400

            code = code_of(
                await authorize(s, browser, code_challenge=challenge, code_challenge_method="S256")
            )
            issued = await exchange(s, http, code, verifier)
            assert issued.status_code == 200, issued.text
            assert issued.json()["expires_in"] == s.settings.user_token_lifetime_s
            token = claims(issued.json()["access_token"])
            replay = await exchange(s, http, code, verifier)
            assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"

            # machines cannot use the portal's client for client credentials
            cc = await http.post(
                f"{s.auth_url}/oauth/token",
                data={"grant_type": "client_credentials", "client_id": PORTAL_CLIENT},
            )
            assert cc.status_code in (400, 401)

        assert token["client_id"] == PORTAL_CLIENT
        assert token["sub"] == token["user"]
        assert token["name"] == "Dana Coordinator"
        assert token["scope"] == "site:referrals"
        assert sorted(token["site_codes"]) == ["DFCI", "WCM"]
        assert token["aud"] == "portal-test"
        assert token["iss"] == s.auth_url
        assert token["exp"] - token["iat"] == s.settings.user_token_lifetime_s


async def test_metadata_advertises_the_code_flow(start_auth: StartAuth) -> None:
    async with start_auth() as running, httpx.AsyncClient() as http:
        meta = (await http.get(f"{running.url}/.well-known/oauth-authorization-server")).json()
    assert meta["authorization_endpoint"] == f"{running.url}/oauth/authorize"
    assert meta["response_types_supported"] == ["code"]
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert set(meta["grant_types_supported"]) == {"client_credentials", "authorization_code"}
    assert "none" in meta["token_endpoint_auth_methods_supported"]


async def test_sign_out_ends_the_portal_session_and_the_one_at_auth(start_auth: StartAuth) -> None:
    async with stack(start_auth) as s, httpx.AsyncClient(timeout=15) as browser:
        person = await make_person(s.db, "out@wcm.example")
        page = await browser.get(f"{s.portal_url}/portal/page", follow_redirects=True)
        signed = await submit_signin(browser, s.auth_url, page, person.email, person.password)
        csrf = signed.text.split('name="csrf_token" value="')[1].split('"')[0]
        forged = await browser.post(f"{s.portal_url}/portal/signout", data={"csrf_token": "forged"})
        assert forged.status_code == 403
        out = await browser.post(
            f"{s.portal_url}/portal/signout", data={"csrf_token": csrf}, follow_redirects=True
        )
        assert str(out.url) == f"{s.portal_url}/portal/signedout" and "You have signed out" in out.text
        again = await browser.get(f"{s.portal_url}/portal/page", follow_redirects=True)
        assert 'action="/signin"' in again.text  # the password again: auth's session ended too
        # a sign-out link cannot send the browser anywhere but the portal's own origin
        elsewhere = await browser.get(
            f"{s.auth_url}/oauth/signout",
            params={"client_id": PORTAL_CLIENT, "post_logout_redirect_uri": "https://evil.example/"},
        )
        assert elsewhere.status_code == 200 and "location" not in elsewhere.headers

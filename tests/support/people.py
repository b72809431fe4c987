"""People signing in, for tests: the auth service with a portal client registered, a tiny portal that
signs people in with ``shared.web`` (one protected page and one form), and accounts to sign in with.

The portal is a real service app (``shared.app``) with the real ``TokenValidator`` fetching the auth
service's JWKS over loopback; every hop (authorize, sign-in form, code, token, session) is real HTTP.
"""

from __future__ import annotations

import html as html_lib
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import httpx
import pyotp
from fastapi import APIRouter, Depends, FastAPI, Form, Request
from fastapi.responses import HTMLResponse
from pydantic import SecretStr

from services.auth import users
from services.auth.config import WebClient
from services.auth.credentials import secret_box
from shared.app import ServiceSpec
from shared.app import create_app as create_service_app
from shared.auth import Scope, TokenValidator
from shared.db import Database
from shared.deps import ServiceState
from shared.settings import OAuthSettings, ServiceSettings
from shared.web import WebSignIn, WebSignInSettings, WebUser, render, sign_in_router, signed_in
from tests.support.servers import serve_app

PORTAL_CLIENT = "test-portal"
PORTAL_AUDIENCE = "portal-test"
PASSWORD = "correct horse battery staple"

Coordinator = Annotated[WebUser, Depends(signed_in(Scope.SITE_REFERRALS))]
OpsUser = Annotated[WebUser, Depends(signed_in(Scope.OPS))]


class PortalState(ServiceState):
    """Defined here so that ``render`` finds the test pages in ``tests/support/templates``."""


def portal_client(portal_url: str, **overrides: Any) -> WebClient:
    values: dict[str, Any] = {
        "client_id": PORTAL_CLIENT,
        "redirect_uris": [f"{portal_url}/portal/callback"],
        "audiences": [PORTAL_AUDIENCE],
        "scopes": [Scope.SITE_REFERRALS.value, Scope.OPS.value],
        **overrides,
    }
    return WebClient(**values)


def portal_app(
    portal_url: str, issuer: str, *, idle_timeout_s: int = 1800, clock: Callable[[], float] = time.time
) -> FastAPI:
    """A portal with ``/portal/page`` (coordinators), ``/portal/ops`` (ops) and ``POST /portal/note``."""
    settings = ServiceSettings(environment="test", public_url=portal_url, oauth=OAuthSettings(issuer=issuer))
    web = WebSignIn(
        settings,
        WebSignInSettings(
            client_id=PORTAL_CLIENT,
            session_secret=SecretStr("test-portal-session-secret"),
            idle_timeout_s=idle_timeout_s,
        ),
        prefix="/portal",
        service_name="test portal",
        home="/portal/page",
        clock=clock,
    )
    http = httpx.AsyncClient(timeout=10)
    validator = TokenValidator(settings.oauth, PORTAL_AUDIENCE, http)
    router = APIRouter()

    @router.get("/portal/page")
    async def page(request: Request, user: Coordinator) -> HTMLResponse:
        return render(request, "test_page.html", saved=None)

    @router.post("/portal/note")
    async def note(
        request: Request, user: Coordinator, note: Annotated[str, Form(max_length=200)] = ""
    ) -> HTMLResponse:
        return render(request, "test_page.html", saved=note)

    @router.get("/portal/ops")
    async def ops(request: Request, user: OpsUser) -> HTMLResponse:
        return render(request, "test_page.html", saved=None)

    state = PortalState(db=Database("sqlite+aiosqlite://"), settings=settings, token_validator=validator)
    spec = ServiceSpec(
        name="portal-test",
        title="portal",
        description="a portal for the sign-in tests",
        routers=[sign_in_router(web), router],
        state=state,
        on_stop=[http.aclose],
    )
    return create_service_app(spec)


@asynccontextmanager
async def serve_portal(sock: Any, issuer: str, **options: Any) -> AsyncIterator[str]:
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with serve_app(portal_app(url, issuer, **options), sock=sock) as served:
        yield served


@dataclass(frozen=True)
class Person:
    id: str
    email: str
    password: str


async def make_person(
    db: Database,
    email: str,
    *,
    role: str = "coordinator",
    site_codes: tuple[str, ...] = ("WCM", "DFCI"),
    name: str = "Dana Coordinator",
    password: str = PASSWORD,
) -> Person:
    link = await users.create_user(
        db,
        email=email,
        display_name=name,
        role=role,
        site_codes=site_codes if role == "coordinator" else (),
        link_lifetime_s=3600,
        password=password,
    )
    return Person(link.user.id, email, password)


def hidden(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no hidden field {name} in the page"
    return html_lib.unescape(match.group(1))


async def submit_signin(
    http: httpx.AsyncClient, auth_url: str, page: httpx.Response, email: str, password: str, **headers: str
) -> httpx.Response:
    """Fill in the sign-in form ``page`` shows and send it (following the redirects)."""
    assert 'action="/signin"' in page.text, page.text[:500]
    return await http.post(
        f"{auth_url}/signin",
        data={
            "email": email,
            "password": password,
            "csrf_token": hidden(page.text, "csrf_token"),
            "authorize": hidden(page.text, "authorize"),
        },
        headers=headers,
        follow_redirects=True,
    )


async def enrol(db: Database, person: Person, key_encryption_secret: str) -> pyotp.TOTP:
    """The person with a confirmed authenticator, as if they had enrolled on the page (the code that
    confirmed it is the previous step's, so the current one is still unused)."""
    box = secret_box(key_encryption_secret)
    totp = pyotp.TOTP(await users.start_enrolment(db, person.id, box))
    earlier = totp.at(datetime.now(UTC) - timedelta(seconds=30))
    assert await users.check_totp(db, person.id, earlier, box, confirm=True)
    return totp

"""People sign in to a service's pages through the auth service (or any OIDC issuer): the OAuth 2.0
authorization code grant with PKCE (S256), then a session cookie of the service's own.

A service wires it once and guards its pages with ``signed_in``::

    web = WebSignIn(settings, WebSignInSettings(), prefix="/portal", service_name="Site portal")
    routers = [..., sign_in_router(web), portal_page.router]            # bootstrap.py

    Coordinator = Annotated[WebUser, Depends(signed_in(Scope.SITE_REFERRALS))]

    @router.get("/portal")
    async def portal(request: Request, user: Coordinator) -> HTMLResponse:
        return render(request, "portal.html", sites=sorted(user.principal.site_codes))

- ``GET <prefix>/signin?next=/portal``: to the issuer's ``/oauth/authorize`` with PKCE (S256) and a
  ``state``, both kept in a short-lived signed cookie until the callback.
- ``GET <prefix>/callback``: checks the ``state``, exchanges the code with authlib's
  ``AsyncOAuth2Client`` (with the ``code_verifier``), verifies the token with the service's own
  ``TokenValidator``, sets the session cookie, and returns to ``next`` (a path on this origin only).
- ``POST <prefix>/signout`` (with the form's ``csrf_token``): ends the session here and at the issuer.
- ``signed_in(*scopes)``: the ``WebUser`` (principal, access token, CSRF token), or a 303 to sign in
  (no session, a tampered cookie, idle longer than ``WEB_IDLE_TIMEOUT_S``, an expired token), or a 403
  page without the scopes; an unsafe method (POST...) must carry the form field ``csrf_token``.

The session is a cookie signed and timestamped with ``WEB_SESSION_SECRET`` (itsdangerous) holding the
access token and the CSRF token: no table anywhere. Re-issued on every page (``render``), so its
timestamp is the last use and ``max_age`` the idle expiry; the token's own ``exp`` ends it too (the
issuer's session then signs the person in again without a password, until it is idle itself).
``HttpOnly``, ``SameSite=Lax``, ``Secure`` when the service's public URL is https.
"""

from __future__ import annotations

import json
import secrets
import time
import warnings
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
from authlib.common.security import generate_token
from authlib.deprecate import AuthlibDeprecationWarning
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from itsdangerous import BadSignature, TimestampSigner, URLSafeTimedSerializer
from joserfc import jws
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.auth import Principal
from shared.deps import service_state
from shared.problems import ProblemError, Unauthorized
from shared.settings import ServiceSettings
from shared.web.pages import PageError, PageForbidden, pages_router, render

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "The httpx module is deprecated", AuthlibDeprecationWarning)
    from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError

__all__ = [
    "WebSignIn",
    "WebSignInSettings",
    "WebUser",
    "csrf_protected",
    "safe_next",
    "sign_in_router",
    "signed_in",
]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
FLOW_MAX_AGE_S = 600
"""From the sign-in redirect to the callback: ten minutes to type a password and a code."""


class WebSignInSettings(BaseSettings):
    """How a service's pages sign people in (prefix ``WEB_``; the issuer is ``OAUTH_ISSUER``)."""

    model_config = SettingsConfigDict(env_prefix="WEB_", extra="ignore")

    client_id: str = Field(default="", description="the portal client registered at the issuer")
    client_secret: SecretStr | None = Field(default=None, description="a confidential client's secret")
    session_secret: SecretStr = Field(
        default=SecretStr("development-only-web-session-secret"),
        description="signs the session cookie; every replica of the service shares it",
    )
    idle_timeout_s: int = Field(default=1800, ge=5, description="a session ends after this long unused")
    authorization_url: str | None = Field(
        default=None, description="where browsers go to sign in; default <OAUTH_ISSUER>/oauth/authorize"
    )
    scope: str = Field(default="", description="space-separated; default: what the client may have")
    cookie_name: str = "trialroute_session"


@dataclass(frozen=True)
class WebUser:
    """The person a page is for: who (verified), the token to call other services as them, and the
    token their forms carry (``csrf_token``)."""

    principal: Principal
    access_token: str
    csrf_token: str
    name: str
    """Their display name (the token's ``name``), for the page."""


def safe_next(target: str | None, default: str = "/") -> str:
    """Where to go after signing in: a path on this origin only (``/x``, never ``//host`` or ``/\\host``,
    which browsers read as another host, nor control characters), else ``default``."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return default
    if any(ord(c) < 0x20 or c == "\\" for c in target) or len(target) > 2000:
        return default
    return target


class SignInRequired(ProblemError):
    """No valid session: a page answers with a redirect to sign in (then back to the page)."""

    status = 401
    title = "Sign-in required"

    def __init__(self, location: str) -> None:
        super().__init__("sign in first")
        self.location = location

    def response(self, request: Request) -> Response | None:
        return RedirectResponse(self.location, status_code=303)


class WebSignIn:
    """One service's sign-in: the settings, the cookie serializer, and the URLs."""

    def __init__(
        self,
        settings: ServiceSettings,
        web: WebSignInSettings | None = None,
        *,
        prefix: str = "",
        service_name: str = "trialroute",
        home: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``clock`` (epoch seconds) times the sessions' idle expiry: tests move it forward."""
        web = web or WebSignInSettings()
        if not web.client_id:
            raise ValueError("WEB_CLIENT_ID: the portal client registered at the issuer")
        if settings.environment != "development" and web.session_secret.get_secret_value() == (
            "development-only-web-session-secret"
        ):
            raise ValueError("WEB_SESSION_SECRET must be set outside development")
        self.settings = settings
        self.web = web
        self.prefix = prefix.rstrip("/")
        self.service_name = service_name
        self.home = home or (self.prefix or "/")
        self.secure = settings.base_url.startswith("https://")
        issuer = settings.oauth.issuer.rstrip("/")
        self.authorization_url = web.authorization_url or f"{issuer}/oauth/authorize"
        self.signout_at_issuer = f"{self.authorization_url.rsplit('/oauth/', 1)[0]}/oauth/signout"
        self.token_url = settings.oauth.resolved_token_url
        self.redirect_uri = f"{settings.base_url.rstrip('/')}{self.prefix}/callback"
        secret = web.session_secret.get_secret_value()
        self._session = _serializer(secret, f"trialroute.web.session.{web.cookie_name}", clock)
        self._flow = _serializer(secret, f"trialroute.web.flow.{web.cookie_name}", clock)
        self.flow_cookie = f"{web.cookie_name}_flow"

    # URLs

    def signin_url(self, next_path: str | None = None) -> str:
        return f"{self.prefix}/signin?{urlencode({'next': safe_next(next_path, self.home)})}"

    @property
    def signout_url(self) -> str:
        return f"{self.prefix}/signout"

    # the session

    async def user(self, request: Request) -> WebUser | None:
        """The signed-in person, or ``None`` (no cookie, tampered, idle too long, token not valid)."""
        cookie = request.cookies.get(self.web.cookie_name)
        if not cookie or len(cookie) > 8192:
            return None
        try:
            data = self._session.loads(cookie, max_age=self.web.idle_timeout_s)
        except BadSignature:  # SignatureExpired is one: idle for longer than the timeout
            return None
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("t"), str)
            or not isinstance(data.get("c"), str)
        ):
            return None
        validator = service_state(request).token_validator
        if validator is None:
            raise RuntimeError("pages that sign people in need the service's token_validator")
        try:
            principal = await validator.validate(data["t"])
        except Unauthorized:  # expired, or a key the issuer no longer publishes
            return None
        if principal.user is None:
            return None  # a machine's token has no business in a person's session
        return WebUser(principal, data["t"], data["c"], _name(data["t"]) or principal.subject)

    def _session_cookie(self, user: WebUser) -> str:
        return self._session.dumps({"t": user.access_token, "c": user.csrf_token})

    def set_session(self, response: Response, user: WebUser) -> None:
        response.set_cookie(
            self.web.cookie_name,
            self._session_cookie(user),
            path="/",
            httponly=True,
            samesite="lax",
            secure=self.secure,
        )

    def end_session(self, response: Response) -> None:
        response.delete_cookie(
            self.web.cookie_name, path="/", httponly=True, samesite="lax", secure=self.secure
        )

    def remember(self, request: Request, user: WebUser) -> None:
        """What ``render`` needs for the layout and to keep the session alive."""
        request.state.web_user = user
        request.state.web_signout_url = self.signout_url
        request.state.web_service_name = self.service_name
        request.state.web_session_refresh = lambda response: self.set_session(response, user)

    def signed_in(self, *scopes: str) -> Callable[[Request], Awaitable[WebUser]]:
        needed = [str(s) for s in scopes]

        async def dependency(request: Request) -> WebUser:
            request.state.web_service_name = self.service_name
            user = await self.user(request)
            if user is None:
                safe = request.method in SAFE_METHODS
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                raise SignInRequired(self.signin_url(target if safe else None))
            self.remember(request, user)
            missing = [s for s in needed if s not in user.principal.scopes]
            if missing:
                raise PageForbidden(f"Your account may not use this page (it needs {' '.join(missing)}).")
            if request.method not in SAFE_METHODS:
                await check_csrf(request, user)
            return user

        return dependency


async def check_csrf(request: Request, user: WebUser) -> None:
    """A form that changes something carries the session's ``csrf_token``; else a 403 page."""
    try:
        form = await request.form()
    except Exception as exc:  # not a form at all (or a broken one): no token in it
        raise PageForbidden(
            "This form has expired or did not come from this site. Go back and try again."
        ) from exc
    submitted = form.get("csrf_token")
    if not isinstance(submitted, str) or not secrets.compare_digest(submitted, user.csrf_token):
        raise PageForbidden("This form has expired or did not come from this site. Go back and try again.")


def _name(token: str) -> str | None:
    """The ``name`` claim of a token verified already (read again only for the display name)."""
    try:
        claims = json.loads(jws.extract_compact(token.encode("ascii")).payload)
    except ValueError:
        return None
    name = claims.get("name") if isinstance(claims, dict) else None
    return name if isinstance(name, str) and name else None


def _web_of(request: Request) -> WebSignIn:
    """The service's ``WebSignIn``: the one its ``sign_in_router`` was made from (found once among the
    app's routes, then kept on the app)."""
    found = _found.get(request.app)
    if found is not None:
        return found
    web = _find_web(request.app.routes)
    if web is None:
        raise RuntimeError("signed_in needs the service's sign_in_router among its routers")
    _found[request.app] = web
    return web


_found: weakref.WeakKeyDictionary[Any, WebSignIn] = weakref.WeakKeyDictionary()


def _find_web(routes: Iterable[Any]) -> WebSignIn | None:
    for route in routes:
        for holder in (route, getattr(route, "original_router", None), getattr(route, "endpoint", None)):
            web = getattr(holder, "web_signin", None)
            if isinstance(web, WebSignIn):
                return web
        inner = getattr(getattr(route, "original_router", None), "routes", None) or getattr(
            route, "routes", None
        )
        if inner:
            web = _find_web(inner)
            if web is not None:
                return web
    return None


def signed_in(*scopes: str) -> Callable[[Request], Awaitable[WebUser]]:
    """A dependency: the signed-in ``WebUser`` with every one of ``scopes``; see the module docstring."""

    async def dependency(request: Request) -> WebUser:
        return await _web_of(request).signed_in(*scopes)(request)

    return dependency


async def csrf_protected(request: Request) -> None:
    """For a route that takes a form without ``signed_in`` (which checks it already on unsafe methods)."""
    web = _web_of(request)
    user = await web.user(request)
    if user is None:
        raise PageForbidden("Sign in first.")
    await check_csrf(request, user)


class CallbackRefused(PageError):
    status = 400
    title = "Sign-in did not complete"


def sign_in_router(web: WebSignIn) -> APIRouter:
    """``<prefix>/signin``, ``<prefix>/callback``, ``<prefix>/signout``, ``<prefix>/signedout`` and the
    stylesheet."""
    router = APIRouter(include_in_schema=False)
    router.web_signin = web  # type: ignore[attr-defined]  # how signed_in finds its WebSignIn
    router.include_router(pages_router())

    @router.get(f"{web.prefix}/signin")
    async def signin(next: str | None = Query(default=None, max_length=2000)) -> RedirectResponse:
        verifier = generate_token(64)
        async with _client(web) as client:
            url, state = client.create_authorization_url(web.authorization_url, code_verifier=verifier)
        response = RedirectResponse(url, status_code=303)
        flow = web._flow.dumps({"s": state, "v": verifier, "n": safe_next(next, web.home)})
        response.set_cookie(
            web.flow_cookie,
            flow,
            max_age=FLOW_MAX_AGE_S,
            path=f"{web.prefix}/callback",
            httponly=True,
            samesite="lax",
            secure=web.secure,
        )
        return response

    signin.web_signin = web  # type: ignore[attr-defined]  # (for FastAPI versions that copy routes)

    @router.get(f"{web.prefix}/callback")
    async def callback(
        request: Request,
        code: str | None = Query(default=None, max_length=500),
        state: str | None = Query(default=None, max_length=500),
        error: str | None = Query(default=None, max_length=100),
    ) -> Response:
        request.state.web_service_name = web.service_name
        try:
            flow = web._flow.loads(request.cookies.get(web.flow_cookie, ""), max_age=FLOW_MAX_AGE_S)
        except BadSignature:
            flow = None
        if not isinstance(flow, dict) or not state or not secrets.compare_digest(str(flow.get("s")), state):
            raise CallbackRefused("The sign-in took too long or did not start here. Please sign in again.")
        if error or not code:
            raise CallbackRefused("The sign-in was not completed. Please sign in again.")
        try:
            async with _client(web) as client:
                token = await client.fetch_token(web.token_url, code=code, code_verifier=flow["v"])
        except (OAuthError, httpx.HTTPError) as exc:
            raise CallbackRefused("The sign-in could not be completed. Please sign in again.") from exc
        access_token = token.get("access_token") if isinstance(token, dict) else None
        validator = service_state(request).token_validator
        if not isinstance(access_token, str) or validator is None:
            raise CallbackRefused("The sign-in could not be completed. Please sign in again.")
        try:
            principal = await validator.validate(access_token)
        except Unauthorized as exc:
            raise CallbackRefused("The sign-in gave a token this service does not accept.") from exc
        user = WebUser(
            principal, access_token, secrets.token_urlsafe(32), _name(access_token) or principal.subject
        )
        response = RedirectResponse(safe_next(str(flow.get("n")), web.home), status_code=303)
        web.set_session(response, user)
        response.delete_cookie(
            web.flow_cookie, path=f"{web.prefix}/callback", httponly=True, secure=web.secure
        )
        return response

    @router.post(f"{web.prefix}/signout")
    async def signout(request: Request) -> Response:
        user = await web.user(request)
        if user is not None:
            await check_csrf(request, user)
        back = f"{web.settings.base_url.rstrip('/')}{web.prefix}/signedout"
        query = urlencode({"client_id": web.web.client_id, "post_logout_redirect_uri": back})
        response = RedirectResponse(f"{web.signout_at_issuer}?{query}", status_code=303)
        web.end_session(response)
        return response

    @router.get(f"{web.prefix}/signedout")
    async def signed_out(request: Request) -> HTMLResponse:
        request.state.web_service_name = web.service_name
        return render(request, "signed_out.html", signin_url=web.signin_url())

    return router


def _serializer(secret: str, salt: str, clock: Callable[[], float]) -> URLSafeTimedSerializer:
    class Signer(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(clock())

    return URLSafeTimedSerializer(secret, salt=salt, signer=Signer)


def _client(web: WebSignIn) -> AsyncOAuth2Client:
    secret = web.web.client_secret
    return AsyncOAuth2Client(
        client_id=web.web.client_id,
        client_secret=secret.get_secret_value() if secret else None,
        token_endpoint_auth_method="client_secret_basic" if secret else "none",
        redirect_uri=web.redirect_uri,
        scope=web.web.scope or None,
        code_challenge_method="S256",
        timeout=10.0,
    )

"""The auth service's own pages: the authorization endpoint and the sign-in it shows (email and
password, then a TOTP code), TOTP enrolment, the set-password link, the account page and signing out.

Every form carries a CSRF token (``Sessions.csrf_token``, double-submit). Failed passwords and codes
are counted per source address and per account from that address (``AUTH_SIGNIN_*``, in the shared
``rate_hit`` table), never per account alone: a flood slows down its source, not the person, who can
still sign in from elsewhere. Over a limit the form answers 429 with ``Retry-After``, even for the
right password.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

import segno
from authlib.oauth2 import OAuth2Error
from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from services.auth import users
from services.auth.codes import Person
from services.auth.credentials import SecretBox, secret_box
from services.auth.deps import AuthState, AuthStateDep
from services.auth.domain import AccountError, Role, User
from services.auth.sessions import SignInSession
from shared.web.pages import render

router = APIRouter(include_in_schema=False)

Text = Annotated[str, Form(max_length=1024)]
Hidden = Annotated[str, Form(max_length=4096)]
SERVICE_NAME = "sign-in"


def _page(
    request: Request, auth: AuthState, template: str, *, status_code: int = 200, **context: Any
) -> HTMLResponse:
    """An auth page, with the browser's CSRF token in its forms (and in its cookie)."""
    request.state.web_service_name = SERVICE_NAME
    token = auth.sessions.csrf_value(request)
    response = render(request, template, status_code=status_code, csrf=token, **context)
    auth.sessions.set_csrf_cookie(response, token)
    return response


def _box(auth: AuthState) -> SecretBox:
    return secret_box(auth.settings.key_encryption_secret.get_secret_value())


def _continue(authorize: str) -> str:
    """Back to the authorization request after a step, or to the account page without one."""
    return f"/oauth/authorize?{authorize}" if authorize else "/account"


def _with(path: str, authorize: str) -> str:
    return f"{path}?{urlencode({'authorize': authorize})}" if authorize else path


def _refused(request: Request, auth: AuthState, detail: str, status: int = 403) -> HTMLResponse:
    return _page(request, auth, "error.html", status_code=status, title="Not allowed", detail=detail)


def _stage_after_password(auth: AuthState, user: User) -> str:
    if user.totp_confirmed:
        return "totp"
    return "enrol" if auth.settings.requires_totp else "done"


@router.get("/oauth/authorize")
async def authorize(request: Request, auth: AuthStateDep) -> Response:
    """RFC 6749 §4.1.1 with PKCE: a code for the person signed in here, or the sign-in page first."""
    try:
        check = await auth.token_server.check_authorization(request)
    except OAuth2Error as error:  # insecure_transport
        return _page(
            request,
            auth,
            "error.html",
            status_code=400,
            title="Sign-in refused",
            detail=error.description or error.error,
        )
    if check.error is not None:
        redirect = auth.token_server.error_redirect(check)
        if redirect is not None:
            return redirect
        detail = check.error.description or check.error.error
        return _page(request, auth, "error.html", status_code=400, title="Sign-in refused", detail=detail)
    query = request.url.query
    session = await auth.sessions.current(request)
    if session is not None and session.stage == "done":
        return await auth.token_server.issue_code(check, Person(session.user, session.created_at))
    if session is not None and session.stage == "totp":
        return RedirectResponse(_with("/signin/totp", query), status_code=303)
    if session is not None and session.stage == "enrol":
        return RedirectResponse(_with("/account/totp", query), status_code=303)
    return _page(request, auth, "signin.html", authorize=query, email="", error=None)


async def _throttled(request: Request, auth: AuthState, account: str) -> int | None:
    host = request.client.host if request.client else None
    return await auth.signin_throttle.retry_after(account.strip().lower(), host)


async def _failed(request: Request, auth: AuthState, account: str) -> None:
    host = request.client.host if request.client else None
    await auth.signin_throttle.record_failure(account.strip().lower(), host)


def _too_many(request: Request, auth: AuthState, wait: int) -> HTMLResponse:
    response = _page(
        request,
        auth,
        "error.html",
        status_code=429,
        title="Too many attempts",
        detail=f"Too many failed sign-ins from this network. Try again in {wait} seconds.",
    )
    response.headers["Retry-After"] = str(wait)
    return response


@router.post("/signin")
async def signin(
    request: Request,
    auth: AuthStateDep,
    email: Text = "",
    password: Text = "",
    csrf_token: Hidden = "",
    authorize: Hidden = "",
) -> Response:
    if not auth.sessions.csrf_ok(request, csrf_token):
        return _refused(request, auth, "This form has expired. Go back, reload the page and try again.")
    if (wait := await _throttled(request, auth, email)) is not None:
        return _too_many(request, auth, wait)
    user = await users.check_password(auth.db, email, password)
    if user is None:
        await _failed(request, auth, email)
        return _page(
            request,
            auth,
            "signin.html",
            status_code=401,
            authorize=authorize,
            email=email,
            error="The email address or the password is not right.",
        )
    response = RedirectResponse(_continue(authorize), status_code=303)
    stage = _stage_after_password(auth, user)
    if stage == "totp":
        response = RedirectResponse(_with("/signin/totp", authorize), status_code=303)
    elif stage == "enrol":
        response = RedirectResponse(_with("/account/totp", authorize), status_code=303)
    await auth.sessions.start(response, user, stage)
    return response


async def _session_at(request: Request, auth: AuthState, stage: str) -> SignInSession | None:
    session = await auth.sessions.current(request)
    return session if session is not None and session.stage == stage else None


@router.get("/signin/totp")
async def totp_form(
    request: Request, auth: AuthStateDep, authorize: str = Query(default="", max_length=4096)
) -> Response:
    if await _session_at(request, auth, "totp") is None:
        return RedirectResponse(_continue(authorize), status_code=303)
    return _page(request, auth, "totp.html", authorize=authorize, error=None)


@router.post("/signin/totp")
async def totp_check(
    request: Request, auth: AuthStateDep, code: Text = "", csrf_token: Hidden = "", authorize: Hidden = ""
) -> Response:
    if not auth.sessions.csrf_ok(request, csrf_token):
        return _refused(request, auth, "This form has expired. Go back, reload the page and try again.")
    session = await _session_at(request, auth, "totp")
    if session is None:
        return RedirectResponse(_continue(authorize), status_code=303)
    if (wait := await _throttled(request, auth, session.user.email)) is not None:
        return _too_many(request, auth, wait)
    if not await users.check_totp(auth.db, session.user.id, code, _box(auth)):
        await _failed(request, auth, session.user.email)
        return _page(
            request,
            auth,
            "totp.html",
            status_code=401,
            authorize=authorize,
            error="That code is not right. Try the current one.",
        )
    response = RedirectResponse(_continue(authorize), status_code=303)
    await auth.sessions.advance(session, response, "done")
    return response


@router.get("/account/totp")
async def enrol_form(
    request: Request, auth: AuthStateDep, authorize: str = Query(default="", max_length=4096)
) -> Response:
    session = await auth.sessions.current(request)
    if session is None or session.stage == "totp":
        return RedirectResponse(_continue(authorize), status_code=303)
    if session.user.totp_confirmed:
        return RedirectResponse(_continue(authorize), status_code=303)
    return await _enrol_page(request, auth, session, authorize, error=None)


async def _enrol_page(
    request: Request,
    auth: AuthState,
    session: SignInSession,
    authorize: str,
    *,
    error: str | None,
    status: int = 200,
) -> HTMLResponse:
    secret = await users.start_enrolment(auth.db, session.user.id, _box(auth))
    uri = users.provisioning_uri(secret, session.user.email)
    qr = segno.make(uri, error="m").svg_inline(scale=4, title="QR code for your authenticator app")
    return _page(
        request,
        auth,
        "enrol.html",
        status_code=status,
        authorize=authorize,
        secret=secret,
        otpauth_uri=uri,
        qr_svg=qr,
        error=error,
        required=session.stage == "enrol",
    )


@router.post("/account/totp")
async def enrol_confirm(
    request: Request, auth: AuthStateDep, code: Text = "", csrf_token: Hidden = "", authorize: Hidden = ""
) -> Response:
    if not auth.sessions.csrf_ok(request, csrf_token):
        return _refused(request, auth, "This form has expired. Go back, reload the page and try again.")
    session = await auth.sessions.current(request)
    if session is None or session.stage == "totp":
        return RedirectResponse(_continue(authorize), status_code=303)
    if (wait := await _throttled(request, auth, session.user.email)) is not None:
        return _too_many(request, auth, wait)
    if not await users.check_totp(auth.db, session.user.id, code, _box(auth), confirm=True):
        await _failed(request, auth, session.user.email)
        return await _enrol_page(
            request,
            auth,
            session,
            authorize,
            error="That code is not right. Try the current one.",
            status=401,
        )
    response = RedirectResponse(_continue(authorize), status_code=303)
    await auth.sessions.advance(session, response, "done")
    return response


@router.get("/account")
async def account(request: Request, auth: AuthStateDep) -> Response:
    session = await auth.sessions.current(request)
    if session is None:
        return _page(request, auth, "signin.html", authorize="", email="", error=None)
    if session.stage != "done":
        target = "/signin/totp" if session.stage == "totp" else "/account/totp"
        return RedirectResponse(target, status_code=303)
    user = session.user
    return _page(
        request,
        auth,
        "account.html",
        person=user,
        is_coordinator=user.role is Role.COORDINATOR,
        can_enrol=not user.totp_confirmed,
    )


@router.post("/signout")
async def signout(request: Request, auth: AuthStateDep, csrf_token: Hidden = "") -> Response:
    if not auth.sessions.csrf_ok(request, csrf_token):
        return _refused(request, auth, "This form has expired. Go back, reload the page and try again.")
    response = _page(request, auth, "signed_out.html", signin_url="/account")
    await auth.sessions.end(request, response)
    return response


@router.get("/oauth/signout")
async def signout_from_portal(
    request: Request,
    auth: AuthStateDep,
    client_id: str = Query(default="", max_length=200),
    post_logout_redirect_uri: str = Query(default="", max_length=2000),
) -> Response:
    """A portal signs the person out here too (RP-initiated, like OIDC's end-session endpoint), then
    the browser goes back to the portal, to an address on the origin of one of its redirect URIs."""
    portal = auth.settings.web_client(client_id)
    origins = {_origin(uri) for uri in portal.redirect_uris} if portal else set()
    back = post_logout_redirect_uri if _origin(post_logout_redirect_uri) in origins else None
    response: Response = (
        RedirectResponse(back, status_code=303)
        if back
        else _page(request, auth, "signed_out.html", signin_url="/account")
    )
    await auth.sessions.end(request, response)
    return response


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme in ("http", "https") and parts.netloc else ""


@router.get("/account/password")
async def password_form(
    request: Request, auth: AuthStateDep, token: str = Query(default="", max_length=200)
) -> Response:
    try:
        user = await users.link_user(auth.db, token)
    except users.LinkInvalid as exc:
        return _page(request, auth, "error.html", status_code=410, title="Link not valid", detail=str(exc))
    return _page(request, auth, "set_password.html", token=token, person=user, error=None)


@router.post("/account/password")
async def password_set(
    request: Request,
    auth: AuthStateDep,
    token: Hidden = "",
    password: Text = "",
    confirm: Text = "",
    csrf_token: Hidden = "",
) -> Response:
    if not auth.sessions.csrf_ok(request, csrf_token):
        return _refused(request, auth, "This form has expired. Go back, reload the page and try again.")
    try:
        user = await users.link_user(auth.db, token)
        if password != confirm:
            raise AccountError("confirm", "the two passwords differ")
        user = await users.set_password_with_link(auth.db, token, password)
    except users.LinkInvalid as exc:
        return _page(request, auth, "error.html", status_code=410, title="Link not valid", detail=str(exc))
    except AccountError as exc:
        return _page(
            request,
            auth,
            "set_password.html",
            status_code=422,
            token=token,
            person=user,
            error=exc.reason.capitalize() + ".",
        )
    stage = "enrol" if auth.settings.requires_totp and not user.totp_confirmed else "done"
    response = RedirectResponse("/account/totp" if stage == "enrol" else "/account", status_code=303)
    await auth.sessions.start(response, user, stage)
    return response

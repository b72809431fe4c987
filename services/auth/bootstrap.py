"""Wiring of the auth service: store, key ring, login throttle, authorization server, routes.

The auth service has one role, the API: it consumes and publishes no events, so ``roles`` is accepted
(every service's bootstrap takes it) and only changes anything if ``api`` is absent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
from fastapi import FastAPI

from services.auth import SERVICE, api, pages, store, users_api
from services.auth.assertions import ClientKeys
from services.auth.config import AuthSettings
from services.auth.deps import AuthState
from services.auth.keys import KeyRing, OwnTokenValidator, ensure_signing_key
from services.auth.migrations import MIGRATIONS
from services.auth.sessions import Sessions
from services.auth.throttle import LoginThrottle
from services.auth.tokens import TokenServer
from shared.app import ALL_ROLES, Loop, Role, ServiceSpec
from shared.app import create_app as create_service_app
from shared.db import Database
from shared.migrations import prepare_store
from shared.ratelimit import SlidingWindow, prune_loop
from shared.retry import pause
from shared.settings import OAuthSettings
from shared.web.pages import pages_router

log = logging.getLogger(__name__)

DESCRIPTION = (
    "OAuth2 authorization server (client credentials grant) issuing RFC 9068 JWT access tokens signed "
    "RS256, with rotating keys published as a JWKS. Clients sign in with a signed JWT (private_key_jwt, "
    "SMART Backend Services) or a secret. People (coordinators, ops) sign in to the portals through its "
    "authorization endpoint (authorization code grant with PKCE S256, password and TOTP). Any OIDC issuer "
    "can replace it."
)


def load_settings() -> AuthSettings:
    return AuthSettings()


def build(
    settings: AuthSettings, roles: frozenset[Role] = ALL_ROLES, *, clock: Callable[[], float] = time.time
) -> ServiceSpec:
    """``clock`` (epoch seconds) decides which keys sign and are published, and which failed logins are
    still counted: tests move it forward."""
    db = Database(settings.database_url)
    keyring = KeyRing(db, settings, clock=clock)
    window_s = settings.throttle_window_s
    throttle = LoginThrottle(
        db,
        by_client=SlidingWindow(db, "login-client", settings.throttle_client_failures, window_s, clock=clock),
        by_address=SlidingWindow(
            db, "login-address", settings.throttle_address_failures, window_s, clock=clock
        ),
    )
    signin_throttle = LoginThrottle(
        db,
        by_client=SlidingWindow(
            db, "signin-account", settings.signin_account_failures, window_s, clock=clock
        ),
        by_address=SlidingWindow(
            db, "signin-address", settings.signin_address_failures, window_s, clock=clock
        ),
    )
    # Fetches clients' JWK Sets (private_key_jwt); never follows redirects (the URL is the one registered).
    http = httpx.AsyncClient(timeout=settings.client_jwks_timeout_s, follow_redirects=False)
    server = TokenServer(db, settings, keyring, throttle, ClientKeys(settings, http))

    async def start() -> None:
        await prepare_store(db, MIGRATIONS, settings)
        await ensure_signing_key(db, settings)
        await keyring.refresh()

    async def signing_key() -> None:
        await keyring.refresh_if_stale()
        keyring.signing_key()

    return ServiceSpec(
        name=SERVICE,
        title="trialroute auth",
        description=DESCRIPTION,
        routers=[api.router, pages.router, users_api.router, pages_router()] if "api" in roles else [],
        loops=[prune_loop([*throttle.windows, *signin_throttle.windows]), forget_expired_loop(db, settings)],
        checks={"database": db.ping, "signing_key": signing_key},
        on_start=[start],
        on_stop=[db.dispose, http.aclose],
        max_body_bytes=min(settings.max_body_bytes, 16_384),
        state=AuthState(
            db=db,
            settings=settings,
            keyring=keyring,
            token_server=server,
            sessions=Sessions(db, settings),
            signin_throttle=signin_throttle,
            token_validator=OwnTokenValidator(
                keyring, _own_oauth(settings), settings.audience or SERVICE, http
            ),
        ),
    )


def _own_oauth(settings: AuthSettings) -> OAuthSettings:
    """Its own tokens: issued by itself, whatever ``OAUTH_*`` says (other services read those)."""
    return settings.oauth.model_copy(update={"issuer": settings.issuer})


def forget_expired_loop(db: Database, settings: AuthSettings, interval_s: float = 60.0) -> Loop:
    """Deletes codes and set-password links past their expiry and sign-in sessions idle too long
    (each is refused anyway when presented: this only keeps the tables small)."""

    async def run(stop: asyncio.Event) -> None:
        while not stop.is_set():
            await pause(stop, interval_s)
            if stop.is_set():
                return
            now = datetime.now(UTC)
            try:
                async with db.session() as session:
                    await store.forget_expired(session, now, now - timedelta(seconds=settings.session_idle_s))
            except Exception as error:  # a database away now: next time
                log.warning("expired sign-in rows not deleted", extra={"error": type(error).__name__})

    return Loop("forget-expired-signins", run)


def create_app(
    settings: AuthSettings | None = None,
    roles: frozenset[Role] = ALL_ROLES,
    *,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    return create_service_app(build(settings or load_settings(), roles, clock=clock))

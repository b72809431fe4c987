"""A browser's sign-in session with the auth service: what lets a person, once signed in, get codes for
every portal without typing the password again, until ``AUTH_SESSION_IDLE_S`` passes without use.

The cookie holds a random id (256 bits); the store keeps its SHA-256, the account and the stage
(``totp``: password right, code next; ``enrol``: a TOTP authenticator to enrol first; ``done``). Kept
in the store, not in a signed cookie, so that signing out, a password reset or a disabled account ends
it everywhere at once. Cookie: ``HttpOnly``, ``SameSite=Lax``, ``Secure`` when the public URL is https,
path ``/``, no ``Max-Age`` (gone when the browser closes); the idle expiry is the store's.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete
from sqlmodel import col
from starlette.requests import Request
from starlette.responses import Response

from services.auth import store
from services.auth.config import AuthSettings
from services.auth.domain import User
from shared.db import Database

COOKIE = "trialroute_auth"
CSRF_COOKIE = "trialroute_auth_csrf"

Stage = str  # "totp" | "enrol" | "done"


@dataclass(frozen=True)
class SignInSession:
    id_hash: str
    user: User
    stage: Stage
    created_at: datetime


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()


class Sessions:
    def __init__(self, db: Database, settings: AuthSettings) -> None:
        self.db = db
        self.settings = settings

    async def start(self, response: Response, user: User, stage: Stage) -> None:
        """A new session (any previous one in this browser is replaced: no session fixation)."""
        session_id = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        async with self.db.session() as session:
            session.add(
                store.WebSessionRow(
                    id_hash=_hash(session_id), user_id=user.id, stage=stage, created_at=now, last_seen_at=now
                )
            )
        self._set_cookie(response, session_id)

    async def current(self, request: Request) -> SignInSession | None:
        """The browser's session, if it exists, is not idle-expired and its account is enabled; marks
        it used now."""
        session_id = request.cookies.get(COOKIE)
        if not session_id or len(session_id) > 100:
            return None
        now = datetime.now(UTC)
        async with self.db.session() as session:
            row = await session.get(store.WebSessionRow, _hash(session_id))
            if row is None:
                return None
            if row.last_seen_at < now - timedelta(seconds=self.settings.session_idle_s):
                await session.delete(row)
                return None
            user = await store.get_user(session, row.user_id)
            if user is None or user.disabled:
                await session.delete(row)
                return None
            row.last_seen_at = now
            return SignInSession(row.id_hash, user.to_user(), row.stage, row.created_at)

    async def advance(self, current: SignInSession, response: Response, stage: Stage) -> None:
        """The next stage, under a new id (the old one, which a weaker step set, stops working)."""
        async with self.db.session() as session:
            await session.execute(
                delete(store.WebSessionRow).where(col(store.WebSessionRow.id_hash) == current.id_hash)
            )
        await self.start(response, current.user, stage)

    async def end(self, request: Request, response: Response) -> None:
        session_id = request.cookies.get(COOKIE)
        if session_id and len(session_id) <= 100:
            async with self.db.session() as session:
                await session.execute(
                    delete(store.WebSessionRow).where(col(store.WebSessionRow.id_hash) == _hash(session_id))
                )
        response.delete_cookie(
            COOKIE, path="/", secure=self.settings.secure_cookies, httponly=True, samesite="lax"
        )

    def _set_cookie(self, response: Response, session_id: str) -> None:
        response.set_cookie(
            COOKIE,
            session_id,
            path="/",
            secure=self.settings.secure_cookies,
            httponly=True,
            samesite="lax",
        )

    @staticmethod
    def csrf_value(request: Request) -> str:
        """The browser's form token (double-submit: a cookie and the same value in each form), made
        on first use. Guards the sign-in forms too, so nobody signs a browser in as someone else."""
        token = request.cookies.get(CSRF_COOKIE)
        return token if token and len(token) == 43 else secrets.token_urlsafe(32)

    def set_csrf_cookie(self, response: Response, token: str) -> None:
        response.set_cookie(
            CSRF_COOKIE, token, path="/", secure=self.settings.secure_cookies, httponly=True, samesite="lax"
        )

    @staticmethod
    def csrf_ok(request: Request, submitted: str | None) -> bool:
        expected = request.cookies.get(CSRF_COOKIE)
        return bool(expected and submitted and secrets.compare_digest(expected, submitted))

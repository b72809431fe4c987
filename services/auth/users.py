"""People's accounts: the operations ops run (``trialroute users``, ``/v1/users``) and the steps of a
sign-in (password, TOTP, set-password links). Each runs its own transaction, like ``registry``.

Passwords are argon2id hashes (``credentials``), checked off the event loop; a set-password link is a
random token of which only the SHA-256 is kept, used once, within ``AUTH_PASSWORD_LINK_LIFETIME_S``.
TOTP is pyotp's (RFC 6238: SHA-1, 6 digits, 30 s steps, one step of clock skew either way), its keys
sealed at rest (``credentials.SecretBox``); a step once used is refused again, so a code seen over a
shoulder cannot be replayed within its window.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyotp
from sqlalchemy.ext.asyncio import AsyncSession

from services.auth import store
from services.auth.credentials import SecretBox, hash_secret, verify_secret
from services.auth.domain import AccountError, User, check_account, normalize_email, password_problem
from shared.db import Database

ISSUER_NAME = "trialroute"
"""The name authenticator apps show beside the account."""


class UserExists(ValueError):
    pass


class UserNotFound(LookupError):
    pass


class LinkInvalid(ValueError):
    """A set-password link that is unknown, used already or expired (one answer for all three)."""


@dataclass(frozen=True)
class PasswordLink:
    user: User
    token: str
    expires_at: datetime

    def url(self, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/account/password?token={self.token}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


async def create_user(
    db: Database,
    *,
    email: str,
    display_name: str,
    role: str,
    site_codes: Sequence[str] = (),
    link_lifetime_s: int,
    password: str | None = None,
) -> PasswordLink:
    """Create an account and a one-time link to set its password (``password``: set now instead, for
    seeding demo accounts; the link is still made)."""
    codes = list(dict.fromkeys(c.strip() for c in site_codes if c.strip()))
    chosen = check_account(email, display_name, role, codes)
    email = normalize_email(email)
    if password is not None and (problem := password_problem(password, email)):
        raise AccountError("password", problem)
    password_hash = await asyncio.to_thread(hash_secret, password) if password is not None else None
    now = _now()
    row = store.UserRow(
        id=str(uuid.uuid4()),
        email=email,
        display_name=display_name.strip(),
        role=chosen.value,
        site_codes=codes,
        password_hash=password_hash,
        created_at=now,
        updated_at=now,
    )
    async with db.session() as session:
        if await store.user_by_email(session, email) is not None:
            raise UserExists(f"an account for {email} exists already")
        session.add(row)
        await session.flush()
        link = _new_link(session, row, link_lifetime_s, now)
    return link


def _new_link(session: AsyncSession, row: store.UserRow, lifetime_s: int, now: datetime) -> PasswordLink:
    token = secrets.token_urlsafe(32)
    expires_at = now + timedelta(seconds=lifetime_s)
    session.add(
        store.PasswordLinkRow(
            token_hash=token_hash(token), user_id=row.id, created_at=now, expires_at=expires_at
        )
    )
    return PasswordLink(row.to_user(), token, expires_at)


async def list_users(db: Database) -> list[User]:
    async with db.session() as session:
        return [row.to_user() for row in await store.list_users(session)]


async def get_user(db: Database, user_id: str) -> User:
    async with db.session() as session:
        row = await _row(session, user_id)
        return row.to_user()


async def _row(session: AsyncSession, id_or_email: str) -> store.UserRow:
    row = await store.user_by_email(session, id_or_email) if "@" in id_or_email else None
    if row is None and "@" not in id_or_email and len(id_or_email) <= 36:
        row = await store.get_user(session, id_or_email)
    if row is None:
        raise UserNotFound(id_or_email)
    return row


async def set_disabled(db: Database, id_or_email: str, disabled: bool) -> User:
    """Disable (or enable) an account: a disabled one cannot sign in and its sessions end now; tokens
    already issued run out within ``AUTH_USER_TOKEN_LIFETIME_S``."""
    async with db.session() as session:
        row = await _row(session, id_or_email)
        row.disabled = disabled
        row.updated_at = _now()
        if disabled:
            await store.forget_user_sessions(session, row.id)
        return row.to_user()


async def reset(
    db: Database, id_or_email: str, *, link_lifetime_s: int, reset_totp: bool = True
) -> PasswordLink:
    """Forget the password (and the TOTP enrolment, unless told not to), end the sessions, and make a
    new one-time link: what ops do for a person who lost their password or their phone."""
    now = _now()
    async with db.session() as session:
        row = await _row(session, id_or_email)
        row.password_hash = None
        if reset_totp:
            row.totp_secret, row.totp_confirmed, row.totp_last_step = None, False, None
        row.updated_at = now
        await store.forget_user_sessions(session, row.id)
        return _new_link(session, row, link_lifetime_s, now)


async def link_user(db: Database, token: str) -> User:
    """The account a link is for, without using it up (to show the form); ``LinkInvalid`` otherwise."""
    async with db.session() as session:
        link = await session.get(store.PasswordLinkRow, token_hash(token))
        if link is None or link.expires_at <= _now():
            raise LinkInvalid("this link is not valid (used already, expired, or mistyped)")
        row = await store.get_user(session, link.user_id)
        if row is None or row.disabled:
            raise LinkInvalid("this link is not valid (used already, expired, or mistyped)")
        return row.to_user()


async def set_password_with_link(db: Database, token: str, password: str) -> User:
    """Use the link (once) to set the password; ``AccountError`` (nothing used up) for a password the
    rules refuse, ``LinkInvalid`` for a link that is not valid."""
    user = await link_user(db, token)
    if problem := password_problem(password, user.email):
        raise AccountError("password", problem)
    password_hash = await asyncio.to_thread(hash_secret, password)
    async with db.session() as session:
        link = await store.take_row(session, store.PasswordLinkRow, token_hash(token))
        if link is None or link.expires_at <= _now():
            raise LinkInvalid("this link is not valid (used already, expired, or mistyped)")
        row = await store.get_user(session, link.user_id)
        if row is None or row.disabled:
            raise LinkInvalid("this link is not valid (used already, expired, or mistyped)")
        row.password_hash = password_hash
        row.updated_at = _now()
        await store.forget_user_sessions(session, row.id)
        return row.to_user()


async def check_password(db: Database, email: str, password: str) -> User | None:
    """The account, if the email and password are right and it is enabled. Unknown, disabled and
    password-less accounts cost the same argon2 check (a decoy hash), so answers do not tell them apart."""
    async with db.session() as session:
        row = await store.user_by_email(session, normalize_email(email))
        stored = row.password_hash if row is not None and not row.disabled else None
        user = row.to_user() if row is not None else None
    if len(password) > 1024:
        password = password[:1024]  # argon2 takes any length; a megabyte would only cost us time
    right = await asyncio.to_thread(verify_secret, stored, password)
    return user if right else None


# TOTP


def new_totp_secret() -> str:
    return pyotp.random_base32()


def provisioning_uri(secret: str, email: str) -> str:
    """The ``otpauth://`` URI an authenticator app reads (from the QR code or typed in)."""
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=ISSUER_NAME)


def _matching_step(secret: str, code: str, now: datetime) -> int | None:
    """The 30 s step whose code ``code`` is (this one, or one either side), else ``None``."""
    code = code.strip().replace(" ", "")
    if not (code.isdigit() and len(code) == 6):
        return None
    totp = pyotp.TOTP(secret)
    for offset in (0, -1, 1):
        moment = now + timedelta(seconds=offset * totp.interval)
        if totp.verify(code, for_time=moment, valid_window=0):
            return int(totp.timecode(moment))
    return None


async def start_enrolment(db: Database, user_id: str, box: SecretBox) -> str:
    """A new, unconfirmed TOTP secret for the account (replacing an unconfirmed one), returned to show;
    kept sealed in ``box``. A confirmed enrolment is kept: only ``reset`` removes it."""
    async with db.session() as session:
        row = await _row(session, user_id)
        if row.totp_confirmed and row.totp_secret:
            raise AccountError("totp", "a TOTP authenticator is enrolled already")
        secret = box.open(row.totp_secret) if row.totp_secret is not None else None
        if secret is None:
            secret = new_totp_secret()
            row.totp_secret = box.seal(secret)
            row.updated_at = _now()
        return secret


async def check_totp(db: Database, user_id: str, code: str, box: SecretBox, *, confirm: bool = False) -> bool:
    """Whether ``code`` is the account's current TOTP code, not used before; ``confirm``: the code
    that confirms an enrolment (the secret it checks against is then the unconfirmed one)."""
    now = _now()
    async with db.session() as session:
        row = await store.get_user(session, user_id)
        if row is None or row.disabled or row.totp_secret is None or row.totp_confirmed == confirm:
            return False
        secret = box.open(row.totp_secret)
        step = _matching_step(secret, code, now) if secret is not None else None
        if step is None or (row.totp_last_step is not None and step <= row.totp_last_step):
            return False
        row.totp_last_step = step
        if confirm:
            row.totp_confirmed = True
        row.updated_at = now
        return True


async def seed_user(
    db: Database,
    *,
    email: str,
    display_name: str,
    role: str,
    site_codes: Sequence[str],
    password: str,
    link_lifetime_s: int,
) -> User:
    """Create the account with ``password``, or give an existing one that password (enabled): the
    local system's demo accounts, the same at every start."""
    try:
        link = await create_user(
            db,
            email=email,
            display_name=display_name,
            role=role,
            site_codes=site_codes,
            link_lifetime_s=link_lifetime_s,
            password=password,
        )
        return link.user
    except UserExists:
        pass
    password_hash = await asyncio.to_thread(hash_secret, password)
    async with db.session() as session:
        row = await _row(session, normalize_email(email))
        row.password_hash, row.disabled, row.updated_at = password_hash, False, _now()
        return row.to_user()

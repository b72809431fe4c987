"""The auth store: registered clients, the client assertions seen (replay protection), signing keys,
failed logins, and people's accounts with what signing them in needs: set-password links, sign-in
sessions and authorization codes (SQLModel tables and their queries)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, Column, Text, delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col

from services.auth.domain import Client, KeySchedule, Role, User
from shared.ratelimit import RateHit
from shared.store import UTCDateTime, tables, timestamp


class ClientRow(SQLModel, table=True):
    __tablename__ = "oauth_client"
    __table_args__ = (
        CheckConstraint("clinic_id IS NULL OR site_code IS NULL", name="one_tenant"),
        # A secret, a JWK Set URL or a JWK Set: exactly one way to prove who it is.
        CheckConstraint(
            "(CASE WHEN secret_hash IS NULL THEN 0 ELSE 1 END)"
            " + (CASE WHEN jwks_url IS NULL THEN 0 ELSE 1 END)"
            " + (CASE WHEN jwks IS NULL THEN 0 ELSE 1 END) = 1",
            name="one_credential",
        ),
    )

    client_id: str = Field(primary_key=True, max_length=100)
    secret_hash: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    jwks_url: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # none_as_null: no JWK Set is SQL NULL (the constraint counts it), not the JSON value null.
    jwks: dict[str, Any] | None = Field(
        default=None, sa_column=Column(JSON(none_as_null=True), nullable=True)
    )
    scopes: list[str] = Field(sa_column=Column(JSON, nullable=False))
    audiences: list[str] = Field(sa_column=Column(JSON, nullable=False))
    clinic_id: str | None = Field(default=None, max_length=100)
    site_code: str | None = Field(default=None, max_length=100)
    enabled: bool = True
    created_at: datetime = timestamp(now_by_default=False)
    secret_changed_at: datetime = timestamp(now_by_default=False)

    def to_client(self) -> Client:
        return Client(
            client_id=self.client_id,
            secret_hash=self.secret_hash,
            scopes=tuple(self.scopes),
            audiences=tuple(self.audiences),
            clinic_id=self.clinic_id,
            site_code=self.site_code,
            enabled=self.enabled,
            created_at=self.created_at,
            jwks_url=self.jwks_url,
            jwks=self.jwks,
        )


class SeenAssertionRow(SQLModel, table=True):
    """A client assertion's ``jti``, kept until its ``exp``: one more with the same id is a replay.
    In the store, not in memory, so every replica refuses what another one accepted."""

    __tablename__ = "client_assertion_seen"

    client_id: str = Field(primary_key=True, max_length=100)
    jti: str = Field(primary_key=True, max_length=255)
    expires_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False, index=True))


class SigningKeyRow(SQLModel, table=True):
    __tablename__ = "signing_key"

    kid: str = Field(primary_key=True, max_length=100)
    private_pem: str = Field(sa_column=Column(Text, nullable=False), description="PKCS#8, encrypted")
    created_at: datetime = timestamp(now_by_default=False)
    signs_from: datetime = timestamp(now_by_default=False)
    signs_until: datetime | None = timestamp(nullable=True, now_by_default=False)
    retire_at: datetime | None = timestamp(nullable=True, now_by_default=False)

    def schedule(self) -> KeySchedule:
        return KeySchedule(
            kid=self.kid,
            created_at=self.created_at,
            signs_from=self.signs_from,
            signs_until=self.signs_until,
            retire_at=self.retire_at,
        )


class UserRow(SQLModel, table=True):
    """A person: a coordinator (of one or more sites) or ops. Signs in with a password (argon2id hash)
    and, once enrolled, a TOTP code (RFC 6238; the key encrypted with ``AUTH_KEY_ENCRYPTION_SECRET``)."""

    __tablename__ = "user_account"
    __table_args__ = (
        CheckConstraint("role IN ('coordinator', 'ops')", name="user_role"),
        CheckConstraint("totp_secret IS NOT NULL OR NOT totp_confirmed", name="confirmed_totp_has_secret"),
    )

    id: str = Field(primary_key=True, max_length=36)
    email: str = Field(max_length=254, unique=True, description="lower case; the login")
    display_name: str = Field(max_length=200)
    role: str = Field(max_length=20)
    site_codes: list[str] = Field(sa_column=Column(JSON, nullable=False))
    disabled: bool = False
    password_hash: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    totp_secret: str | None = Field(
        default=None,
        sa_column=Column(Text, nullable=True),
        description="base32, sealed (credentials.SecretBox)",
    )
    totp_confirmed: bool = False
    totp_last_step: int | None = Field(default=None, description="the last TOTP step used: no replay")
    created_at: datetime = timestamp(now_by_default=False)
    updated_at: datetime = timestamp(now_by_default=False)

    def to_user(self) -> User:
        return User(
            id=self.id,
            email=self.email,
            display_name=self.display_name,
            role=Role(self.role),
            site_codes=tuple(self.site_codes),
            disabled=self.disabled,
            has_password=self.password_hash is not None,
            totp_confirmed=self.totp_confirmed,
            created_at=self.created_at,
            updated_at=self.updated_at,
        )


class PasswordLinkRow(SQLModel, table=True):
    """A one-time set-password link: only the SHA-256 of its random token is kept."""

    __tablename__ = "password_link"

    token_hash: str = Field(primary_key=True, max_length=64)
    user_id: str = Field(foreign_key="user_account.id", index=True, max_length=36)
    created_at: datetime = timestamp(now_by_default=False)
    expires_at: datetime = timestamp(now_by_default=False)


class WebSessionRow(SQLModel, table=True):
    """A browser's sign-in session with the auth service (its cookie holds the random id; the SHA-256
    is kept). ``stage``: ``totp`` (password right, code next), ``enrol`` (must enrol TOTP) or ``done``."""

    __tablename__ = "web_session"
    __table_args__ = (CheckConstraint("stage IN ('totp', 'enrol', 'done')", name="session_stage"),)

    id_hash: str = Field(primary_key=True, max_length=64)
    user_id: str = Field(foreign_key="user_account.id", index=True, max_length=36)
    stage: str = Field(max_length=10)
    created_at: datetime = timestamp(now_by_default=False)
    last_seen_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False, index=True))


class AuthorizationCodeRow(SQLModel, table=True):
    """An authorization code (RFC 6749 §4.1), single use, short-lived; only its SHA-256 is kept."""

    __tablename__ = "authorization_code"
    __table_args__ = (CheckConstraint("code_challenge_method = 'S256'", name="pkce_s256"),)

    code_hash: str = Field(primary_key=True, max_length=64)
    client_id: str = Field(max_length=100)
    user_id: str = Field(foreign_key="user_account.id", max_length=36)
    redirect_uri: str = Field(sa_column=Column(Text, nullable=False))
    scope: str = Field(sa_column=Column(Text, nullable=False))
    code_challenge: str = Field(max_length=128)
    code_challenge_method: str = Field(max_length=10)
    auth_time: datetime = timestamp(now_by_default=False)
    expires_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False, index=True))


TABLES = tables(
    ClientRow,
    SeenAssertionRow,
    SigningKeyRow,
    RateHit,
    UserRow,
    PasswordLinkRow,
    WebSessionRow,
    AuthorizationCodeRow,
)
"""``RateHit``: the login throttle's failed authentications (``services.auth.throttle``)."""


async def get_client(session: AsyncSession, client_id: str) -> ClientRow | None:
    return await session.get(ClientRow, client_id)


async def list_clients(session: AsyncSession) -> Sequence[ClientRow]:
    result = await session.execute(select(ClientRow).order_by(col(ClientRow.client_id)))
    return result.scalars().all()


async def forget_assertions_expired(session: AsyncSession, before: datetime) -> None:
    """An assertion expired before ``before`` is refused on its ``exp``: its ``jti`` need not be kept."""
    await session.execute(delete(SeenAssertionRow).where(col(SeenAssertionRow.expires_at) < before))


async def signing_keys(session: AsyncSession) -> Sequence[SigningKeyRow]:
    result = await session.execute(select(SigningKeyRow).order_by(col(SigningKeyRow.created_at)))
    return result.scalars().all()


async def lock_signing_keys(session: AsyncSession) -> Sequence[SigningKeyRow]:
    """The keys, locked for a rotation on PostgreSQL so that two rotations do not interleave."""
    query = select(SigningKeyRow).order_by(col(SigningKeyRow.created_at))
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        query = query.with_for_update()
    result = await session.execute(query)
    return result.scalars().all()


async def delete_signing_keys(session: AsyncSession, kids: Sequence[str]) -> None:
    if kids:
        await session.execute(delete(SigningKeyRow).where(col(SigningKeyRow.kid).in_(kids)))


async def get_user(session: AsyncSession, user_id: str) -> UserRow | None:
    return await session.get(UserRow, user_id)


async def user_by_email(session: AsyncSession, email: str) -> UserRow | None:
    result = await session.execute(select(UserRow).where(func.lower(col(UserRow.email)) == email.lower()))
    return result.scalars().first()


async def list_users(session: AsyncSession) -> Sequence[UserRow]:
    result = await session.execute(select(UserRow).order_by(col(UserRow.email)))
    return result.scalars().all()


async def take_row(session: AsyncSession, model: Any, key: Any) -> Any:
    """Load and delete a single-use row (a code, a link) in one step: of two concurrent takers only
    the one whose DELETE removed the row gets it."""
    row = await session.get(model, key)
    if row is None:
        return None
    pk = next(iter(model.__table__.primary_key.columns))
    result = await session.execute(delete(model).where(pk == key))
    if getattr(result, "rowcount", 0) != 1:
        return None
    session.expunge(row)
    return row


async def forget_user_sessions(session: AsyncSession, user_id: str) -> None:
    """A password reset or a disabled account ends every sign-in session of the person."""
    await session.execute(delete(WebSessionRow).where(col(WebSessionRow.user_id) == user_id))


async def forget_expired(session: AsyncSession, now: datetime, idle_before: datetime) -> None:
    """Codes and links past their expiry, sessions idle since before ``idle_before``."""
    await session.execute(delete(AuthorizationCodeRow).where(col(AuthorizationCodeRow.expires_at) < now))
    await session.execute(delete(PasswordLinkRow).where(col(PasswordLinkRow.expires_at) < now))
    await session.execute(delete(WebSessionRow).where(col(WebSessionRow.last_seen_at) < idle_before))

"""The auth store: registered clients, the client assertions seen (replay protection), signing keys
and failed logins (SQLModel tables and their queries)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, Column, Text, delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col

from services.auth.domain import Client, KeySchedule
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


TABLES = tables(ClientRow, SeenAssertionRow, SigningKeyRow, RateHit)
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

"""The auth store: registered clients, signing keys and failed logins (SQLModel tables, their queries)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import JSON, CheckConstraint, Column, Text, delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col

from services.auth.domain import Client, KeySchedule
from shared.ratelimit import RateHit
from shared.store import tables, timestamp


class ClientRow(SQLModel, table=True):
    __tablename__ = "oauth_client"
    __table_args__ = (CheckConstraint("clinic_id IS NULL OR site_code IS NULL", name="one_tenant"),)

    client_id: str = Field(primary_key=True, max_length=100)
    secret_hash: str = Field(sa_column=Column(Text, nullable=False))
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
        )


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


TABLES = tables(ClientRow, SigningKeyRow, RateHit)
"""``RateHit``: the login throttle's failed authentications (``services.auth.throttle``)."""


async def get_client(session: AsyncSession, client_id: str) -> ClientRow | None:
    return await session.get(ClientRow, client_id)


async def list_clients(session: AsyncSession) -> Sequence[ClientRow]:
    result = await session.execute(select(ClientRow).order_by(col(ClientRow.client_id)))
    return result.scalars().all()


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

"""The eligibility store: assessments, one per referral revision, and which site may read them.

An assessment keeps what it decided and how (rule-set version, verdicts, a hash of the input), never
patient identity: the input itself (age, clinical block) is not kept, only its SHA-256, which is
enough to recognise a repeated delivery of the same revision.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import JSON, Column, UniqueConstraint, insert, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col

from shared.consumer import ProcessedEvent
from shared.outbox import OutboxRecord
from shared.store import bigint_pk, table_of, tables, timestamp, utcnow


class AssessmentRow(SQLModel, table=True):
    __tablename__ = "assessment"
    __table_args__ = (UniqueConstraint("referral_id", "revision", name="uq_assessment_revision"),)

    id: int | None = bigint_pk()
    referral_id: uuid.UUID = Field(index=True)
    revision: int
    clinic_id: str = Field(description="the referring clinic: who may read the assessment")
    referral_day: date
    ruleset: str
    decision: str
    score: float
    routable: bool
    criteria: list[dict[str, str]] = Field(sa_column=Column(JSON, nullable=False))
    input_hash: str = Field(max_length=64, description="SHA-256 of the canonical ScreeningInput")
    published: bool = Field(description="false for a revision that arrived after a newer one")
    source_event_id: uuid.UUID
    assessed_at: datetime = timestamp()


async def add_assessment(session: AsyncSession, **values: Any) -> None:
    """Store an assessment with one cached Core INSERT (an ORM object cost more than the statement)."""
    await session.execute(insert(table_of(AssessmentRow)), {"assessed_at": utcnow(), **values})


class SiteAccessRow(SQLModel, table=True):
    """A site a referral was routed to, or that declined it. The assigned site is the newest routing.

    One row per (referral, site) rather than one per referral: ``referral.routed`` and
    ``referral.site_decided`` are different topics, so a consumer catching up may see a decline before
    the routing it declines, or a later routing before an earlier one. A declined row stays declined
    (a referral never goes back to a site that declined it) and the highest (revision, rank) wins.
    """

    __tablename__ = "site_access"

    referral_id: uuid.UUID = Field(primary_key=True)
    site_code: str = Field(primary_key=True)
    revision: int = 0
    rank: int = 0
    routed: bool = False
    declined: bool = False
    updated_at: datetime = timestamp()


TABLES = tables(AssessmentRow, SiteAccessRow, OutboxRecord, ProcessedEvent)


async def assessments_of(session: AsyncSession, referral_id: uuid.UUID) -> Sequence[AssessmentRow]:
    """Every revision's assessment of the referral (a handful at most), in one round trip."""
    result = await session.execute(select(AssessmentRow).where(col(AssessmentRow.referral_id) == referral_id))
    return result.scalars().all()


async def record_routing(
    session: AsyncSession, referral_id: uuid.UUID, site_code: str, revision: int, rank: int
) -> None:
    row = await session.get(SiteAccessRow, (referral_id, site_code))
    if row is None:
        session.add(
            SiteAccessRow(
                referral_id=referral_id, site_code=site_code, revision=revision, rank=rank, routed=True
            )
        )
        return
    row.routed = True
    row.revision, row.rank = max((row.revision, row.rank), (revision, rank))
    row.updated_at = datetime.now(UTC)


async def record_decline(session: AsyncSession, referral_id: uuid.UUID, site_code: str) -> None:
    row = await session.get(SiteAccessRow, (referral_id, site_code))
    if row is None:
        session.add(SiteAccessRow(referral_id=referral_id, site_code=site_code, declined=True))
        return
    row.declined = True
    row.updated_at = datetime.now(UTC)


async def assigned_site(session: AsyncSession, referral_id: uuid.UUID) -> str | None:
    """The site of the newest routing, unless that site declined. An older routing never counts: the
    referral moved on from it, so it was declined even if that decline has not been consumed yet."""
    result = await session.execute(
        select(SiteAccessRow)
        .where(col(SiteAccessRow.referral_id) == referral_id, col(SiteAccessRow.routed).is_(True))
        .order_by(col(SiteAccessRow.revision).desc(), col(SiteAccessRow.rank).desc())
        .limit(1)
    )
    newest = result.scalar_one_or_none()
    return None if newest is None or newest.declined else newest.site_code
